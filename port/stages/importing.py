"""`porter import`: register a model made elsewhere as the run's reference.

A state_dict (or a ``porter-weights/1`` npz) is rebuilt with a registry architecture and saved
as the run's ``model.pt`` (with its ModelCard), so every later stage treats it exactly like a
trained model. An ONNX file is copied into the run as is, with its external data files as the
record's companions. What the file says and the flags that may not contradict it: the
``port.importing`` package; this module checks the flags, takes the run's lock, calls the
package and records the reference.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from port.ground.digest import sha256_file
from port.ground.errors import UsageError
from port.ground.vocab import REFERENCE_ID
from port.importing.request import ImportRequest as ImportRequest  # the CLI's request
from port.importing.request import check_request
from port.manifest import Manifest, run_lock
from port.manifest.params import ReferenceParams

# What an import writes into the run (port.importing: state_dict/npz, onnx_model).
_MODEL_FILES = ("model.pt", "model.onnx")


def run_import(run: Path, req: ImportRequest, *, console: Console) -> None:
    """Validate and copy/convert the model into the run; record it as the reference."""
    from port.importing import import_model

    check_request(req)
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
        for name in _MODEL_FILES:
            if (run / name).exists():
                raise UsageError(
                    f"{run / name} exists but is not recorded in {manifest.path}: porter will "
                    "not overwrite it; move it away or import into a new --run directory"
                )
        source_sha256 = sha256_file(req.source)  # the bytes this import reads
        imported = import_model(run, req)
        how = dict(imported.how)
        described = how.pop("describe", "")
        signature = how.get("signature", "")  # printed below and kept in the record
        params = ReferenceParams(card=imported.card, data=req.data, extra={
            "source": str(req.source), "source_sha256": source_sha256, **how})
        # External data files are companions: `porter status` shows the model modified when
        # one of them changes, like the .onnx itself.
        record = manifest.record("import", imported.kind, imported.path, id=REFERENCE_ID,
                                 params=params, companions=imported.companions)
    if described:
        console.print(described, highlight=False, markup=False)
    if signature:  # what was read from the graph, so a wrong guess is seen at once
        console.print(f"read {signature}", highlight=False, markup=False)
    if how.get("normalised"):  # the run's model.onnx is not byte for byte the source
        console.print(f"normalised: {how['normalised']['what']} (the same function; "
                      f"{record.path} differs from the source file, whose sha256 is recorded)",
                      highlight=False, markup=False)
    card = imported.card
    console.print(f"[green]imported[/green] {req.source} as {record.path} ({imported.kind}, "
                  f"{card['num_classes']} classes, {card['preprocess']['image_size']} px)")
