"""`porter import MODEL.onnx`: validate the graph and copy it into the run as is (its bytes are
what the user deploys), with its external data files beside it under the same relative names.

Refused: unreadable bytes, a graph the ONNX checker rejects, a missing or escaping data file, a
data file named like one of porter's own run files, and a graph ONNX Runtime cannot load (every
later stage runs the reference on it). The card: :func:`port.importing.card.onnx_card`.

A graph with unnamed nodes or nodes out of topological order is the one exception to "as is":
:mod:`port.importing.normalise` names and sorts them (computing the same function), the run gets
that graph, and the record says what changed (``normalised``) beside the source's sha256.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from port.ground.atomic import atomic_path
from port.ground.errors import ModelError, UsageError, first_line
from port.importing.card import onnx_card
from port.importing.request import Imported, ImportRequest

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


def _check_graph(path: Path, what: Path) -> None:
    """The ONNX checker's verdict on the file at ``path`` (external data included), as a
    ``ModelError`` naming ``what`` (the user's file)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError,
            OSError, ValueError) as exc:
        raise ModelError(
            f"{what} is not a valid ONNX model ({first_line(exc, limit=120)}): re-export it"
        ) from None


def _check_loadable(path: Path, proto: Any, opset: int | None, what: Path) -> None:
    """Every later stage runs the reference on ONNX Runtime: a graph it cannot load (an IR or
    opset newer than it reads, a custom op, a broken data file) is refused now, not at evaluate.
    Unoptimised: loading is the check, not the graph rewrites."""
    from port.engines.ort_session import create_session

    create_session(path, what=str(what), optimize=False,
                   hint=f"re-export it with an IR version, opset and operators this ONNX Runtime "
                        f"reads (the file has IR {proto.ir_version}, opset {opset}; "
                        "`porter doctor` shows ONNX Runtime's version)")


def _copy_into(run: Path, source: Path, data_files: list[str],
               graph: Callable[[Path], None] | None = None) -> tuple[Path, list[Path]]:
    """Copy the data files, then the graph, into ``run``: (model.onnx, the data files).

    ``graph``, when given, writes the graph itself (a normalised one) to the path it is given,
    and checks it there, beside the copied data files, before it becomes ``model.onnx``."""
    out = run / "model.onnx"
    targets = [run / rel for rel in data_files]
    for target in targets:  # never overwrite a file that is somebody's (checked before copying)
        if target.exists():
            raise UsageError(f"{target} exists but is not recorded in the run: porter will not "
                             "overwrite it; move it away or import into a new --run directory")
    # Through port.ground.atomic (fsync before the rename): the manifest must never register a copy
    # that a crash could leave half on disk. The data files first: the graph needs them.
    folder = source.absolute().parent  # where the locations point (see onnx_data)
    written: list[Path] = []
    try:
        for rel, target in zip(data_files, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(folder / rel, tmp)
            written.append(target)
        with atomic_path(out) as tmp:
            if graph is None:
                shutil.copyfile(source, tmp)
            else:
                graph(tmp)
    except BaseException:
        # A copy that failed half-way (a full disk) leaves no data file behind that the next
        # import would then refuse as "not recorded".
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return out, targets


def import_onnx(run: Path, req: ImportRequest) -> Imported:
    """Validate the ONNX file, build its card, copy it (and its external data) into the run;
    ``how`` holds what was read from the graph (precision, opset, signature, data files)."""
    from port.importing.normalise import normalise_graph
    from port.models.onnx_data import external_data_files
    from port.models.onnx_signature import read_signature

    source = req.source
    proto = _load_graph(source)
    # Before the checker: a missing or escaping data file is named as such, not blamed on the
    # graph (the checker's error for it mentions the opset).
    data_files = external_data_files(proto, source)
    _check_data_names(source, data_files)
    fixed = normalise_graph(proto.graph)
    if not fixed.changed:
        _check_graph(source, source)
    sig = read_signature(proto, layout=req.layout, source=str(source))
    card = onnx_card(req, proto, sig)
    if not fixed.changed:
        _check_loadable(source, proto, sig.opset, source)
        out, targets = _copy_into(run, source, data_files)
    else:
        def write_and_check(path: Path) -> None:
            import onnx

            onnx.save(proto, str(path))  # the graph only: its weights stay where they point
            _check_graph(path, source)
            _check_loadable(path, proto, sig.opset, source)

        out, targets = _copy_into(run, source, data_files, graph=write_and_check)
    read: dict[str, Any] = {"precision": sig.precision, "opset": sig.opset,
                            "signature": sig.describe()}
    if data_files:
        read["external_data"] = data_files
    if fixed.changed:
        read["normalised"] = {**fixed.to_dict(), "what": fixed.describe()}
    return Imported(out, "onnx", card.to_dict(), read, targets)
