"""`porter import`: turn a model made elsewhere into a run's reference model file and card.

One module per kind of file: :mod:`.state_dict` (``.pt``/``.pth`` weights rebuilt with a
registry architecture), :mod:`.npz` (``porter-weights/1``, rebuilt the same way),
:mod:`.onnx_model` (an ONNX graph validated and copied as is, with its external data);
:mod:`.card` builds the ModelCard from the flags and what the file says, :mod:`.request` holds
the flags and their checks. The stage (``port.stages.importing``) takes the run's lock, calls
:func:`import_model` and records the result. Submodules are imported when used, so checking the
flags imports no torch or onnx.
"""

from __future__ import annotations

from pathlib import Path

from port.formats import FORMATS
from port.importing.request import Imported, ImportRequest


def import_model(run: Path, req: ImportRequest) -> Imported:
    """Write ``req.source``'s model into ``run`` by its kind of file (suffix checked by
    :func:`port.importing.request.check_request`)."""
    suffix = req.source.suffix.lower()
    if suffix in FORMATS["onnx"].suffixes:
        from port.importing.onnx_model import import_onnx

        return import_onnx(run, req)
    if suffix == ".npz":  # framework-neutral weights (porter weights export)
        from port.importing.npz import import_npz

        return import_npz(run, req)
    from port.importing.state_dict import import_state_dict

    return import_state_dict(run, req)
