"""`porter import`: register a model made elsewhere as the run's reference.

A state_dict is rebuilt with a registry architecture and saved as the run's ``model.pt`` (with
its ModelCard), so every later stage treats it exactly like a trained model. An ONNX file is
copied into the run as is (its bytes are what the user deploys) and its card is taken from
porter's metadata when present, from the flags otherwise.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from port.atomic import atomic_path
from port.digest import sha256_file
from port.errors import ModelError, UsageError, first_line
from port.formats import FORMATS
from port.limits import (
    MAX_CLASSES,
    MAX_IMAGE_SIZE,
    MAX_WIDTH,
    MIN_IMAGE_SIZE,
    check_card,
    check_float,
    check_int,
)
from port.manifest import Manifest, run_lock
from port.manifest_params import ReferenceParams
from port.stages.common import REFERENCE_ID


@dataclass
class ImportRequest:
    """Flags of `porter import`."""

    source: Path
    arch: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    classes: str | None = None  # comma-separated names or a file with one per line
    data: str | None = None
    width: float | None = None
    # State dicts from other code bases: the container entry holding the weights (default:
    # the usual ones, see port.models.checkpoint.read_state_dict) and prefix renames OLD=NEW.
    weights_key: str | None = None
    key_map: tuple[str, ...] = ()


def check_import_flags(req: ImportRequest) -> None:
    """Range checks of the numeric flags, before any file is read or anything allocated."""
    check_int("--num-classes", req.num_classes, 1, MAX_CLASSES)
    check_int("--image-size", req.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    check_float("--width", req.width, lo=0.0, hi=MAX_WIDTH, lo_open=True)
    for flag, values in (("--mean", req.mean), ("--std", req.std)):
        for v in values or ():
            check_float(flag, v, lo=0.0 if flag == "--std" else None, lo_open=True)


def _class_names(req: ImportRequest) -> list[str] | None:
    """Class names from --classes (a list or a file), or from --data's folders."""
    if req.classes:
        path = Path(req.classes)
        try:
            is_file = path.is_file()
        except OSError:  # a long comma-separated list is no file name (ENAMETOOLONG)
            is_file = False
        if is_file:
            # Bounded read: the names land in the manifest and in every exported file.
            limit = MAX_CLASSES * 258
            if path.stat().st_size > limit:
                raise UsageError(f"--classes file {path} is over {limit} bytes: give one short "
                                 "name per line")
            names = [line.strip() for line in path.read_text(errors="replace").splitlines()
                     if line.strip()]
        else:
            names = [c.strip() for c in req.classes.split(",") if c.strip()]
        return names
    if req.data:
        from port.data.datasets import dataset_classes
        from port.data.spec import parse_data_spec

        return dataset_classes(parse_data_spec(req.data))
    return None


def _card_from_flags(req: ImportRequest, arch: str, inferred_classes: int | None):
    """Build a ModelCard from the flags (and the data set, when given)."""
    from port.data.preprocess import Preprocess
    from port.models.card import ModelCard

    names = _class_names(req)
    num_classes = req.num_classes or (len(names) if names else None) or inferred_classes
    if num_classes is None:
        raise UsageError("cannot tell the number of classes: pass --num-classes or --classes")
    if names is None:
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(
            f"--classes names {len(names)} classes but the model has {num_classes}: "
            "pass one name per output"
        )
    if req.image_size is not None:
        size = req.image_size
    elif req.data:
        from port.data.datasets import native_image_size
        from port.data.spec import parse_data_spec

        size = native_image_size(parse_data_spec(req.data))
    else:
        raise UsageError("cannot tell the input size: pass --image-size (or --data)")
    if req.mean is None or req.std is None:
        if req.data:
            from port.data.datasets import default_preprocess
            from port.data.spec import parse_data_spec

            pre = default_preprocess(parse_data_spec(req.data), image_size=size)
            mean, std = req.mean or pre.mean, req.std or pre.std
        else:
            raise UsageError("cannot tell the normalisation: pass --mean R,G,B and --std R,G,B")
    else:
        mean, std = req.mean, req.std
    kwargs = {"width": req.width} if req.width is not None else {}
    return ModelCard(arch=arch, num_classes=num_classes, classes=names,
                     preprocess=Preprocess.for_size(size, mean, std), model_kwargs=kwargs)


def _import_state_dict(run: Path, req: ImportRequest) -> tuple[Path, dict, dict]:
    """Rebuild ``--arch`` from the file's weights: (model.pt, card, how the weights were read)."""
    from port.models.checkpoint import apply_state_dict, parse_key_map, read_state_dict, save_model
    from port.models.registry import create_model, get_entry

    if not req.arch:
        raise UsageError("importing a state_dict needs --arch (see `porter models`)")
    get_entry(req.arch)  # an unknown name is refused before the (large) file is read
    renames = [parse_key_map(text) for text in req.key_map]  # before the file is read
    foreign = read_state_dict(req.source, weights_key=req.weights_key, key_map=renames)
    state = foreign.state  # str keys and tensors only (checked there)
    # The classifier's weight tells the class count when no flag does; a 0-dim "weight" tells
    # nothing (the shape check below names it).
    inferred = next((int(v.shape[0]) for k, v in state.items()
                     if k.endswith(("fc.weight", "linear.weight", "classifier.weight"))
                     and v.dim() >= 1), None)
    card = _card_from_flags(req, req.arch, inferred)
    check_card(card.to_dict(), str(req.source))
    model = create_model(req.arch, card.num_classes, **card.model_kwargs)
    apply_state_dict(model, state, str(req.source),
                     hint=f"check --arch {req.arch} and --num-classes {card.num_classes}, or "
                          "rename keys with --key-map OLD=NEW")
    out = run / "model.pt"
    save_model(out, model, card, extra={"imported_from": str(req.source)})
    # What was done to reach the weights goes into the import record: a reader of the manifest
    # can tell the EMA from the plain weights and repeat the renames.
    how = {"weights_key": foreign.container, "stripped_prefixes": foreign.stripped,
           "dropped_keys": foreign.dropped,
           "key_map": foreign.key_map, "describe": foreign.describe()}
    return out, card.to_dict(), how


def _import_onnx(run: Path, req: ImportRequest) -> tuple[Path, dict]:
    import onnx

    from port.export.metadata import read_card

    try:
        onnx.checker.check_model(str(req.source), full_check=False)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError,
            OSError, ValueError) as exc:
        raise ModelError(
            f"{req.source} is not a valid ONNX model ({first_line(exc, limit=120)}): "
            "re-export it"
        ) from None
    card = read_card(req.source)  # porter's card when present: untrusted, checked below
    proto = onnx.load(str(req.source), load_external_data=False)
    outputs = proto.graph.output
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if not inputs or not outputs:
        raise ModelError(f"{req.source} has no graph inputs or outputs: re-export it")
    dims = outputs[0].type.tensor_type.shape.dim
    inferred = dims[-1].dim_value if dims and dims[-1].dim_value > 0 else None
    if card is None:
        card = _card_from_flags(req, req.arch or "external-onnx", inferred)
        card.input_name = inputs[0].name
        card.output_name = outputs[0].name
    check_card(card.to_dict(), str(req.source), outputs=inferred)
    if card.input_name not in {i.name for i in inputs}:
        raise ModelError(f"{req.source}: the model card's input {card.input_name[:64]!r} is not "
                         "an input of the graph: fix the card or re-export the model")
    out = run / "model.onnx"
    # Through port.atomic (fsync before the rename): the manifest must never register a copy
    # that a crash could leave half on disk.
    with atomic_path(out) as tmp:
        shutil.copyfile(req.source, tmp)
    return out, card.to_dict()


def run_import(run: Path, req: ImportRequest, *, console: Console) -> None:
    """Validate and copy/convert the model into the run; record it as the reference."""
    if not req.source.is_file():
        raise UsageError(f"{req.source} not found: pass the path of a .pt/.pth or .onnx file")
    suffix = req.source.suffix.lower()
    # .npz: framework-neutral weights (port.stages.weights), rebuilt like a state_dict.
    importable = (*FORMATS["checkpoint"].suffixes, *FORMATS["onnx"].suffixes, ".npz")
    if suffix not in importable:
        raise UsageError(f"cannot import '{req.source.name}': expected a "
                         f"{', '.join(importable)} file")
    if suffix in FORMATS["onnx"].suffixes and (req.weights_key or req.key_map):
        raise UsageError("--weights-key and --key-map apply to state_dict files (.pt/.pth), "
                         f"not to {req.source.name}")
    check_import_flags(req)
    # The run lock from the first read to the record: a concurrent train/import/export of this
    # run is refused; a refused import leaves no run directory it created behind.
    with run_lock(run, "import", create=True):
        manifest = Manifest(run)
        if manifest.get(REFERENCE_ID) is not None:
            raise UsageError(
                f"run {run} already has a reference model: import into a new --run directory"
            )
        # A model file the manifest does not list (a deleted or moved-away manifest, a file put
        # there by hand) is somebody's work: never overwrite it.
        for name in ("model.pt", "model.onnx"):  # what _import_state_dict/_import_onnx write
            if (run / name).exists():
                raise UsageError(
                    f"{run / name} exists but is not recorded in {manifest.path}: porter will "
                    "not overwrite it; move it away or import into a new --run directory"
                )
        source_sha256 = sha256_file(req.source)  # the bytes this import reads
        how: dict = {}
        if suffix in FORMATS["onnx"].suffixes:
            path, card = _import_onnx(run, req)
            kind = "onnx"
        elif suffix == ".npz":
            from port.models.weights_npz import import_npz

            path, card, how = import_npz(run, req, card_from_flags=_card_from_flags,
                                         class_names=_class_names)
            kind = "checkpoint"
        else:
            path, card, how = _import_state_dict(run, req)
            kind = "checkpoint"
        described = how.pop("describe", "")
        params = ReferenceParams(card=card, data=req.data, extra={
            "source": str(req.source), "source_sha256": source_sha256, **how})
        record = manifest.record("import", kind, path, id=REFERENCE_ID, params=params)
    if described:
        console.print(described, highlight=False, markup=False)
    console.print(f"[green]imported[/green] {req.source} as {record.path} ({kind}, "
                  f"{card['num_classes']} classes, {card['preprocess']['image_size']} px)")
