"""The external data files of an ONNX model (``model.onnx`` + ``model.onnx.data``), checked.

A large ONNX model keeps its weights in files named by each tensor's ``location`` entry,
relative to the model's folder. Importing such a model copies those files with it, so they are
read here from the graph alone (no weights loaded) and each one is refused unless it is a plain
relative path to an existing file inside the model's own folder: a hostile or careless model
must not make porter read ``/etc/...`` or ``../other-project`` into a run.

Torch-free; ``onnx`` is imported by the caller that loaded the proto.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from port.ground.errors import ModelError

EXTERNAL = 1  # onnx.TensorProto.EXTERNAL


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of a graph that can hold weights: initializers and node attributes,
    subgraphs (If/Loop/Scan bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_locations(model: Any) -> list[str]:
    """The distinct ``location`` entries of the model's external tensors, in graph order."""
    found: dict[str, None] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location != EXTERNAL:
            continue
        entry = {e.key: e.value for e in tensor.external_data}
        location = entry.get("location", "")
        found.setdefault(location, None)
    return list(found)


def external_data_files(model: Any, model_path: Path) -> list[str]:
    """The model's external data files as relative POSIX paths, each checked to be safe.

    Refused with a one-line ``ModelError``: an empty location, an absolute one, one that leaves
    the model's folder (``..``, or a symlink pointing out of it), and a missing file (named, so
    it is not mistaken for a problem with the graph).
    """
    # Locations are relative to the folder the model is read from (what onnx.load and ONNX
    # Runtime use, also through a link to the .onnx); "inside" is checked on resolved paths.
    folder = model_path.absolute().parent
    real_folder = folder.resolve()
    files = []
    for location in external_locations(model):
        shown = location[:120]
        fix = ("keep the data files in the model's folder, as the exporter wrote them "
               "(onnx.save(..., save_as_external_data=True, location='model.onnx.data'))")
        if not location:
            raise ModelError(f"{model_path}: a tensor is stored outside the file without a "
                             f"location: re-export the model; {fix}")
        posix = PurePosixPath(location.replace("\\", "/"))
        if posix.is_absolute() or location.startswith(("/", "\\")) or ":" in posix.parts[0]:
            raise ModelError(f"{model_path}: external data location {shown!r} is an absolute "
                             f"path; porter copies only files inside the model's folder: {fix}")
        if ".." in posix.parts:
            raise ModelError(f"{model_path}: external data location {shown!r} leaves the "
                             f"model's folder; porter copies only files inside it: {fix}")
        path = folder.joinpath(*posix.parts)
        if not path.resolve().is_relative_to(real_folder):
            raise ModelError(f"{model_path}: external data {shown!r} is a link to "
                             f"{path.resolve()}, outside the model's folder: {fix}")
        if not path.is_file():
            raise ModelError(f"{model_path} keeps its weights in {shown!r}, which is missing "
                             f"from {folder}: put the data file next to the model")
        files.append(posix.as_posix())
    return files
