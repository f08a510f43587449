"""A backend is one registry entry: add a made-up one and run it, not only list it.

The entry below is all this test adds to porter (plus its runner class, here in the test
module): a Backend in ``port.formats.BACKENDS`` and its name in the ONNX format's backends.
Then ``engines.load``, the row plan, ``porter evaluate``'s stage (rows, report, outputs.npz,
the option reaching the runner) and ``porter gate`` pick it up with no other change.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from rich.console import Console

from port import engines, formats
from port.engines.onnxrt import OnnxRuntimeRunner
from port.formats import BACKENDS, FORMATS, Backend, Option

NAME = "ort-made-up"


class MadeUpRunner(OnnxRuntimeRunner):
    """ONNX Runtime on a set number of threads, remembering each it was built with: a runner
    porter has never seen."""

    backend = NAME
    built_with: ClassVar[list[int | None]] = []

    def __init__(self, loader: object, **kwargs: object) -> None:
        super().__init__(loader, **kwargs)  # type: ignore[arg-type]
        MadeUpRunner.built_with.append(self.threads)


@pytest.fixture()
def made_up_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """The made-up entry registered for the test (and removed after it)."""
    entry = Backend(
        name=NAME, description="ONNX Runtime on one thread (a test's made-up backend)",
        runner=f"{__name__}:MadeUpRunner", distributions=("onnxruntime",),
        needs=(("onnxruntime", "pip install onnxruntime"),),
        options=(Option("made_up_threads", int, "Threads of the made-up backend.", default=1,
                        kwarg="threads"),),
    )
    monkeypatch.setitem(BACKENDS, NAME, entry)
    onnx = FORMATS["onnx"]
    monkeypatch.setitem(FORMATS, "onnx", dataclasses.replace(
        onnx, backends=(*onnx.backends, NAME)))
    yield entry


def test_engines_load_runs_the_made_up_backend(made_up_backend: Backend,
                                               artifacts: dict[str, Path],
                                               eval_data: tuple) -> None:
    images = eval_data[0][:4]
    runner = engines.load(artifacts["onnx"], backend=NAME,
                          **made_up_backend.runner_kwargs({}))
    assert isinstance(runner, MadeUpRunner) and runner.backend == NAME
    with runner, engines.load(artifacts["onnx"]) as ort:
        name = runner.input_metadata()[0].name
        got = next(iter(runner.infer({name: images}).values()))
        want = next(iter(ort.infer({name: images}).values()))
        assert runner.threads == 1  # the option's default reached the constructor
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert engines.RUNNERS[NAME] is MadeUpRunner
    assert NAME in formats.backend_formats() and engines.available(NAME)


def test_evaluate_and_gate_make_and_regate_its_row(made_up_backend: Backend,
                                                   artifacts: dict[str, Path],
                                                   tmp_path: Path) -> None:
    from port.stages.evaluate import EvaluateRequest, run_evaluate
    from port.stages.gate import GateRequest, run_gate
    from port.stages.importing import ImportRequest, run_import

    MadeUpRunner.built_with.clear()
    run = tmp_path / "run"
    console = Console(file=io.StringIO(), width=200)
    run_import(run, ImportRequest(source=artifacts["onnx"], data="synthetic"),
               console=console)
    req = EvaluateRequest(compare=True, limit=40, batch_sizes=(1,), workers=0,
                          backends=("onnxruntime", NAME),
                          backend_options={"made_up_threads": 2})
    assert run_evaluate(run, req, console=console) is True
    report = json.loads((run / "report" / "report.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert report["reference"]["row"] == "model@onnxruntime"
    assert set(rows) == {"model@onnxruntime", f"model@{NAME}"}, sorted(rows)  # reference first
    row = rows[f"model@{NAME}"]
    # The same graph on the same library: identical answers, and the option reached the runner.
    assert row["backend"] == NAME and row["agreement"] == 1.0 and row["passed"] is True
    assert row["max_abs_diff"] < 1e-4
    assert MadeUpRunner.built_with and set(MadeUpRunner.built_with) == {2}  # --made-up-threads
    record = next(a for a in json.loads((run / "manifest.json").read_text())["artifacts"]
                  if a["id"] == "report")
    assert record["params"]["made_up_threads"] == 2 and record["params"]["backends"] == [
        "onnxruntime", NAME]
    with np.load(run / "report" / "outputs.npz") as npz:
        assert f"logits/model@{NAME}" in npz.files
    # porter gate reads the row back by its key and re-gates it.
    verdicts = run_gate(run, GateRequest())
    assert verdicts["passed"] is True
    assert [(r["row"], r["backend"], r["passed"]) for r in verdicts["rows"]] == [
        ("model@onnxruntime", "onnxruntime", True), (f"model@{NAME}", NAME, True)]
    assert verdicts["rows"][1]["gated_as"] == "fp32"
