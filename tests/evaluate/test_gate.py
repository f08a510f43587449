"""`porter gate`: the recorded per-image outputs re-gated at new thresholds, no model run."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from port import engines
from port.evaluate.compare import ArrayChunks, Candidate, Outputs, evaluate_stream
from port.evaluate.report import write_report
from port.manifest import Manifest
from tests.inprocess import cli, refused

from .conftest import FAST_LATENCY


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]) -> Path:
    """The session's tiny ONNX imported as a run's reference and evaluated by the real CLI on
    ONNX Runtime (the reference row) and OpenVINO (a second row of the same file), decoding
    in-process: the cheapest real evaluate with two (artifact, backend) rows."""
    run = tmp_path_factory.mktemp("gate") / "run"
    for args in (("import", artifacts["onnx"], "--run", run, "--data", "synthetic"),
                 ("evaluate", "--run", run, "--limit", "40", "--batch-sizes", "4",
                  "--workers", "0", "--backends", "OpenVINO")):
        done = cli(*args)
        assert done.code == 0, done.err
    return run


def _files(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in [run / "manifest.json", *sorted((run / "report").iterdir())]}


def test_evaluate_saves_outputs_and_gate_rechecks_them(evaluated_run: Path) -> None:
    report = json.loads((evaluated_run / "report" / "report.json").read_text())
    assert report["outputs"]["rows"] == ["model@onnxruntime", "model@openvino"]
    assert [(r["artifact"], r["backend"]) for r in report["rows"]] == [
        ("model", "onnxruntime"), ("model", "openvino")]
    assert report["rows"][1]["compute_precision"] == "fp32"  # the f32 hint, set explicitly
    assert report["outputs"]["images"] == 40
    record = Manifest(evaluated_run).get("report")
    assert record is not None and "report/outputs.npz" in record.metrics["files"]
    before = _files(evaluated_run)
    done = cli("gate", "--run", evaluated_run)
    assert done.code == 0, done.err
    assert "PASS  model@onnxruntime (fp32)" in done.out and "PASSED: 40 images" in done.out
    assert "PASS  model@openvino (fp32)" in done.out
    as_json = cli("gate", "--run", evaluated_run, "--json", "--min-agreement", "1")
    assert as_json.code == 0, as_json.err
    result = json.loads(as_json.out)
    assert result["gates"]["fp32"]["min_agreement"] == 1.0
    # --gate is the general form of the four flags, and the later value wins
    strict = cli("gate", "--run", evaluated_run, "--json", "--min-agreement", "0.5",
                 "--gate", "fp32.min_agreement=1", "--gate", "fp32.max_top1_drop_pp=none")
    assert strict.code == 0, strict.err
    gates = json.loads(strict.out)["gates"]["fp32"]
    assert gates["min_agreement"] == 1.0 and gates["max_top1_drop_pp"] is None
    assert [r["top1"] for r in result["rows"]] == [r["top1"] for r in report["rows"]]
    assert _files(evaluated_run) == before  # nothing re-written, nothing recorded


def _record(run: Path, report: dict, outputs: Outputs | None) -> None:
    """What the evaluate stage does with a report: write it and record it with companions."""
    written = write_report(copy.deepcopy(report), run / "report", outputs=outputs)
    Manifest(run).record("evaluate", "report", written[0], id="report", parents=["model"],
                         companions=written[1:])


@pytest.fixture(scope="module")
def broken_evaluation(tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path],
                      eval_data: tuple) -> tuple[dict, Outputs]:
    """The reference against an ONNX with scrambled weights: a row that fails the FP32 gate."""
    proto = onnx.load(str(artifacts["onnx"]))
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 1:
            rng = np.random.default_rng(len(init.name))
            init.CopyFrom(numpy_helper.from_array(rng.permutation(arr.ravel()).reshape(arr.shape),
                                                  init.name))
    broken = tmp_path_factory.mktemp("broken") / "broken.onnx"
    onnx.save(proto, str(broken))
    ckpt = artifacts["checkpoint"]
    images, labels, _ = eval_data
    return evaluate_stream(
        Candidate("model", "fp32", "checkpoint", ckpt, None, lambda: engines.load(ckpt)),
        [Candidate("broken", "fp32", "onnx", broken, None, lambda: engines.load(broken))],
        ArrayChunks(images, labels), batch_sizes=(4,), progress=False, **FAST_LATENCY)


@pytest.fixture
def failing_run(evaluated_run: Path, broken_evaluation: tuple, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    _record(run, *broken_evaluation)
    return run


def test_new_thresholds_change_the_verdict(failing_run: Path, broken_evaluation: tuple) -> None:
    report, _ = broken_evaluation
    assert report["rows"][1]["passed"] is False  # evaluate's verdict at the default gate
    before = _files(failing_run)
    strict = cli("gate", "--run", failing_run)
    assert strict.code == 1, strict.err
    assert "FAIL  broken@onnxruntime (fp32)" in strict.out
    assert "fp32 gate: top-1 agreement" in strict.out
    loose = cli("gate", "--run", failing_run, "--min-agreement", "0", "--max-top1-drop", "100")
    assert loose.code == 0, loose.err + loose.out
    assert "PASS  broken@onnxruntime (fp32)" in loose.out
    gated = cli("gate", "--run", failing_run, "--gate", "fp32.min_agreement=0",
                "--gate", "fp32.max_top1_drop_pp=100")
    assert gated.code == 0 and "PASS  broken@onnxruntime (fp32)" in gated.out
    assert _files(failing_run) == before  # the recorded report keeps evaluate's verdict


def test_outputs_that_do_not_match_the_report_are_refused(failing_run: Path,
                                                          broken_evaluation: tuple) -> None:
    npz = failing_run / "report" / "outputs.npz"
    report, outputs = broken_evaluation
    # Edited after the record: the manifest sees it.
    with np.load(npz) as f:
        arrays = dict(f)
    arrays["logits/broken@onnxruntime"] = arrays["logits/model@torch"]
    np.savez(npz, **arrays)
    refused(cli("gate", "--run", failing_run), "report", "modified")
    # Recorded, but without the rows report.json says ran.
    _record(failing_run, report, Outputs(outputs.labels,
                                         {"model@torch": outputs.logits["model@torch"]}))
    refused(cli("gate", "--run", failing_run), "outputs.npz holds rows ['model@torch']")
    # An older report without per-image outputs.
    _record(failing_run, report, None)
    refused(cli("gate", "--run", failing_run), "no per-image outputs", "porter evaluate")
    # Gone, and the manifest knows.
    _record(failing_run, report, outputs)
    npz.unlink()
    refused(cli("gate", "--run", failing_run), "outputs.npz", "does not exist")


def test_bad_thresholds_and_runs_are_refused(tmp_path: Path) -> None:
    refused(cli("gate", "--run", tmp_path, "--int8-min-ratio", "2"), "--int8-min-ratio")
    refused(cli("gate", "--run", tmp_path / "nowhere"), "no porter run")


def test_a_report_from_before_rows_per_backend_is_still_re_gated(
        failing_run: Path, broken_evaluation: tuple) -> None:
    """Schema 1 (one row per artifact, outputs.npz keyed by artifact id) is read as it was."""
    report, outputs = broken_evaluation
    old = copy.deepcopy(report)
    old.pop("schema")
    old["reference"].pop("row")
    for row in old["rows"]:
        for key in ("row", "compute_precision", "gated_as"):
            row.pop(key)
    by_artifact = {key.split("@")[0]: value for key, value in outputs.logits.items()}
    _record(failing_run, old, Outputs(outputs.labels, by_artifact))
    done = cli("gate", "--run", failing_run, "--min-agreement", "0", "--max-top1-drop", "100")
    assert done.code == 0, done.err
    assert "PASS  broken (fp32)" in done.out and "PASS  model (fp32)" in done.out
