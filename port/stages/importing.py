"""`porter import`: register a model made elsewhere as the run's reference.

A state_dict is rebuilt with a registry architecture and saved as the run's ``model.pt`` (with
its ModelCard), so every later stage treats it exactly like a trained model. An ONNX file is
copied into the run as is (its bytes are what the user deploys) and its card is taken from
porter's metadata when present, from the flags otherwise, and everything the graph itself says
(layout, channels, batch, size, dtype, output form, precision: port.models.onnx_signature)
overrides neither: a flag that contradicts the file is refused naming both values. External
data files (``model.onnx.data``) are copied with the model and recorded as its companions.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from port.atomic import atomic_path
from port.digest import sha256_file
from port.errors import ModelError, UsageError, first_line
from port.formats import FORMATS
from port.limits import (
    MAX_BATCH,
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
    mean: tuple[float, ...] | None = None  # one value per channel (1 or 3)
    std: tuple[float, ...] | None = None
    classes: str | None = None  # comma-separated names or a file with one per line
    data: str | None = None
    width: float | None = None
    # State dicts from other code bases: the container entry holding the weights (default:
    # the usual ones, see port.models.checkpoint.read_state_dict) and prefix renames OLD=NEW.
    weights_key: str | None = None
    key_map: tuple[str, ...] = ()
    # What an ONNX graph cannot say: NCHW|NHWC for a shape that could be either, RGB|BGR.
    layout: str | None = None
    color_order: str | None = None


def check_import_flags(req: ImportRequest) -> None:
    """Range checks of the numeric flags, before any file is read or anything allocated."""
    check_int("--num-classes", req.num_classes, 1, MAX_CLASSES)
    check_int("--image-size", req.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    check_float("--width", req.width, lo=0.0, hi=MAX_WIDTH, lo_open=True)
    for flag, value, allowed in (("--layout", req.layout, ("NCHW", "NHWC")),
                                 ("--color-order", req.color_order, ("RGB", "BGR"))):
        if value is not None and value not in allowed:
            raise UsageError(f"{flag} must be {' or '.join(allowed)}, got {value!r}")
    for flag, values in (("--mean", req.mean), ("--std", req.std)):
        if values is not None and len(values) not in (1, 3):
            raise UsageError(f"{flag} takes one value per channel (1 or 3), got {len(values)}")
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


def _contradiction(flag: str, value: object, source: Path, said: str, fix: str) -> UsageError:
    """A flag that says something else than the model file: name both values and the fix."""
    return UsageError(f"{flag} {value} contradicts {source}: {said}; {fix}")


def _size_from_graph(req: ImportRequest, sig: Any) -> int | None:
    """The square input size the graph fixes, checked against --image-size (None: not fixed)."""
    fixed = {d for d in (sig.height, sig.width) if d is not None}
    if sig.height is not None and sig.width is not None and sig.height != sig.width:
        raise ModelError(f"{req.source}: the input takes {sig.height}x{sig.width} images; porter "
                         "feeds square images: re-export the model with a square input (or "
                         "with a symbolic height and width)")
    for value in fixed:
        if req.image_size is not None and req.image_size != value:
            raise _contradiction("--image-size", req.image_size, req.source,
                                 f"its input {sig.input_name[:64]!r} takes {value} px",
                                 f"drop --image-size or pass --image-size {value}")
        if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
            raise ModelError(f"{req.source}: the input takes {value} px images; porter feeds "
                             f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px: re-export the model with "
                             "a supported (or symbolic) size")
    return sig.image_size


def _card_from_flags(req: ImportRequest, arch: str, inferred_classes: int | None, *,
                     sig: Any = None):
    """Build a ModelCard from the flags (and the data set, when given).

    ``sig`` (an ONNX graph's :class:`~port.models.onnx_signature.Signature`) supplies what the
    graph says: its class count and size win over nothing, and a flag that contradicts them is
    refused; mean/std must have one value per input channel.
    """
    from port.data.preprocess import Preprocess
    from port.models.card import ModelCard

    names = _class_names(req)
    if sig is not None and sig.num_classes is not None and req.num_classes is not None \
            and req.num_classes != sig.num_classes:
        raise _contradiction("--num-classes", req.num_classes, req.source,
                             f"its output {sig.output_name[:64]!r} has {sig.num_classes} "
                             "classes", "drop --num-classes (the file says it)")
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
    graph_size = _size_from_graph(req, sig) if sig is not None else None
    if graph_size is not None:
        size = graph_size
    elif req.image_size is not None:
        size = req.image_size
    elif req.data:
        from port.data.datasets import native_image_size
        from port.data.spec import parse_data_spec

        size = native_image_size(parse_data_spec(req.data))
    else:
        raise UsageError("cannot tell the input size: pass --image-size (or --data)")
    channels = sig.channels if sig is not None else 3
    per_channel = "R,G,B" if channels == 3 else "one value"
    for flag, values in (("--mean", req.mean), ("--std", req.std)):
        if values is not None and len(values) != channels:
            raise UsageError(f"{flag} has {len(values)} values but the model takes {channels} "
                             f"channel{'s' if channels != 1 else ''}: pass {per_channel}")
    if req.mean is None or req.std is None:
        if req.data and channels == 3:
            from port.data.datasets import default_preprocess
            from port.data.spec import parse_data_spec

            pre = default_preprocess(parse_data_spec(req.data), image_size=size)
            mean, std = req.mean or pre.mean, req.std or pre.std
        else:
            raise UsageError(f"cannot tell the normalisation: pass --mean and --std "
                             f"({per_channel} each)")
    else:
        mean, std = req.mean, req.std
    kwargs = {"width": req.width} if req.width is not None else {}
    pre = Preprocess.for_size(size, mean, std)
    if req.color_order is not None:  # what the model was trained on; no file says it
        pre = replace(pre, color_order=req.color_order)
    return ModelCard(arch=arch, num_classes=num_classes, classes=names, preprocess=pre,
                     model_kwargs=kwargs)


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


# Names porter itself writes in a run: an external data file must not take one (a later export
# would overwrite it, or the run's sweep of leftovers remove it).
_RUN_NAMES = frozenset({"manifest.json", "model.pt", "model.onnx", "report", "checkpoints",
                        "metrics.jsonl", "train.yaml", "curves.png", "model.weights.npz"})
_RUN_SUFFIXES = (".onnx", ".pt", ".pth", ".engine", ".plan", ".json", ".npz")


def _load_graph(source: Path) -> Any:
    """The ONNX proto without its external weights; unreadable bytes are a ``ModelError``."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(source), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelError(f"{source} is not a readable ONNX file ({first_line(exc, limit=120)}): "
                         "re-export it") from None


def _check_data_names(source: Path, files: list[str]) -> None:
    """Refuse external data files whose names porter uses for its own files in a run."""
    for rel in files:
        top = rel.split("/")[0]
        if top in _RUN_NAMES or top.startswith(".") or rel.lower().endswith(_RUN_SUFFIXES):
            raise ModelError(f"{source}: external data file {rel[:120]!r} has a name porter uses "
                             "in a run: re-save the model with another location (e.g. "
                             "location='weights.data')")


def _check_flags_against_card(req: ImportRequest, card: Any) -> None:
    """A flag given with a file that carries porter's card must say what the card says."""
    pre = card.preprocess
    given = [("--num-classes", req.num_classes, card.num_classes),
             ("--image-size", req.image_size, pre.image_size),
             ("--mean", req.mean and list(req.mean), list(pre.mean)),
             ("--std", req.std and list(req.std), list(pre.std)),
             ("--color-order", req.color_order, pre.color_order)]
    names = _class_names(req) if req.classes else None  # --data names are checked by evaluate
    given.append(("--classes", names, list(card.classes)))
    for flag, value, recorded in given:
        if value is not None and value != recorded:
            shown = recorded if not isinstance(recorded, list) else ",".join(
                str(v) for v in recorded[:5]) + ("..." if len(recorded) > 5 else "")
            raise _contradiction(flag, str(value)[:60] if not isinstance(value, list) else
                                 ",".join(str(v) for v in value[:5]), req.source,
                                 f"its porter card says {shown}",
                                 f"drop {flag} (the card is what the model was exported with)")


def _import_onnx(run: Path, req: ImportRequest) -> tuple[Path, dict, dict, list[Path]]:
    """Copy the ONNX file (and its external data) into the run: (model.onnx, card, what was
    read from the graph, the data files copied)."""
    import onnx

    from port.export.metadata import card_from_metadata
    from port.models.onnx_data import external_data_files
    from port.models.onnx_signature import apply_signature, read_signature

    proto = _load_graph(req.source)
    # Before the checker: a missing or escaping data file is named as such, not blamed on the
    # graph (the checker's error for it mentions the opset).
    data_files = external_data_files(proto, req.source)
    _check_data_names(req.source, data_files)
    try:
        onnx.checker.check_model(str(req.source), full_check=False)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError,
            OSError, ValueError) as exc:
        raise ModelError(
            f"{req.source} is not a valid ONNX model ({first_line(exc, limit=120)}): "
            "re-export it"
        ) from None
    sig = read_signature(proto, layout=req.layout, source=str(req.source))
    props = {p.key: p.value for p in proto.metadata_props}
    card = card_from_metadata(props, source=str(req.source))  # porter's card: checked below
    if card is None:
        card = _card_from_flags(req, req.arch or "external-onnx", sig.num_classes, sig=sig)
    else:  # porter's card, untrusted: its own values first, then against the graph
        check_card(card.to_dict(), str(req.source), outputs=sig.num_classes)
        if card.input_name != sig.input_name:
            raise ModelError(f"{req.source}: the model card's input {card.input_name[:64]!r} is "
                             f"not an input of the graph (its image input is "
                             f"{sig.input_name[:64]!r}): fix the card or re-export the model")
        size = sig.image_size
        if size is not None and size != card.preprocess.image_size:
            raise ModelError(f"{req.source}: the model card says {card.preprocess.image_size} "
                             f"px but the graph's input takes {size} px: fix the card or "
                             "re-export the model")
        _check_flags_against_card(req, card)
    if sig.batch is not None and sig.batch > MAX_BATCH:
        raise ModelError(f"{req.source}: the input has a fixed batch of {sig.batch}; porter "
                         f"runs at most {MAX_BATCH} images at once: re-export it with a smaller "
                         "(or dynamic) batch")
    card = apply_signature(card, sig)
    check_card(card.to_dict(), str(req.source), outputs=sig.num_classes)
    # Every later stage runs the reference on ONNX Runtime: a graph it cannot load (an IR or
    # opset newer than it reads, a custom op, a broken data file) is refused now, not at
    # evaluate. Unoptimised: loading is the check, not the graph rewrites.
    from port.engines.ort_session import create_session

    create_session(req.source, what=str(req.source), optimize=False,
                   hint=f"re-export it with an IR version, opset and operators this ONNX Runtime "
                        f"reads (the file has IR {proto.ir_version}, opset {sig.opset}; "
                        "`porter doctor` shows ONNX Runtime's version)")
    out = run / "model.onnx"
    targets = [run / rel for rel in data_files]
    for target in targets:  # never overwrite a file that is somebody's (checked before copying)
        if target.exists():
            raise UsageError(f"{target} exists but is not recorded in the run: porter will not "
                             "overwrite it; move it away or import into a new --run directory")
    # Through port.atomic (fsync before the rename): the manifest must never register a copy
    # that a crash could leave half on disk. The data files first: the graph needs them.
    folder = req.source.absolute().parent  # where the locations point (see onnx_data)
    written: list[Path] = []
    try:
        for rel, target in zip(data_files, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(folder / rel, tmp)
            written.append(target)
        with atomic_path(out) as tmp:
            shutil.copyfile(req.source, tmp)
    except BaseException:
        # A copy that failed half-way (a full disk) leaves no data file behind that the next
        # import would then refuse as "not recorded".
        for path in written:
            path.unlink(missing_ok=True)
        raise
    read = {"precision": sig.precision, "opset": sig.opset, "signature": sig.describe()}
    if data_files:
        read["external_data"] = data_files
    return out, card.to_dict(), read, targets


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
    if suffix not in FORMATS["onnx"].suffixes and req.layout is not None:
        raise UsageError(f"--layout applies to ONNX files (porter's own networks take NCHW), "
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
        companions: list[Path] = []
        if suffix in FORMATS["onnx"].suffixes:
            path, card, how, companions = _import_onnx(run, req)
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
        signature = how.get("signature", "")  # printed below and kept in the record
        params = ReferenceParams(card=card, data=req.data, extra={
            "source": str(req.source), "source_sha256": source_sha256, **how})
        # External data files are companions: `porter status` shows the model modified when
        # one of them changes, like the .onnx itself.
        record = manifest.record("import", kind, path, id=REFERENCE_ID, params=params,
                                 companions=companions)
    if described:
        console.print(described, highlight=False, markup=False)
    if signature:  # what was read from the graph, so a wrong guess is seen at once
        console.print(f"read {signature}", highlight=False, markup=False)
    console.print(f"[green]imported[/green] {req.source} as {record.path} ({kind}, "
                  f"{card['num_classes']} classes, {card['preprocess']['image_size']} px)")
