"""evaluate() end to end: real TorchRunner and OnnxRuntimeRunner on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from port import engines
from port.engines.torch_runner import TorchRunner
from port.evaluate.accuracy import accuracy
from port.evaluate.compare import Candidate, evaluate
from port.gates import Gates
from port.ground.errors import BackendUnavailable, UsageError
from port.models.card import ModelCard

# DESIGN.md "Evaluate report", field by field.
TOP_LEVEL = {"schema", "passed", "dataset", "reference", "rows"}
REFERENCE = {"row", "artifact", "backend", "device", "top1"}
ROW = {"row", "artifact", "backend", "device", "precision", "compute_precision", "gated_as",
       "top1", "top5", "top1_drop_pp", "agreement", "max_abs_diff", "mean_abs_diff",
       "latency_ms", "throughput", "size_bytes", "passed", "why"}
LATENCY = {"p50", "p90", "p99", "mean", "runs", "repeats", "p50_range", "p99_range"}
FAST = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0}


def test_report_is_schema_complete(torch_and_onnx_report: dict, artifacts: dict[str, Path],
                                   eval_model: tuple[torch.nn.Module, ModelCard],
                                   eval_data: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    report = torch_and_onnx_report
    images, labels, _ = eval_data
    assert set(report) >= TOP_LEVEL
    assert report["passed"] is True
    assert report["dataset"] == {"spec": "synthetic", "split": "val", "images": 40}
    assert set(report["reference"]) == REFERENCE
    with torch.inference_mode():
        expected = accuracy(eval_model[0](torch.from_numpy(images)).numpy(), labels)
    assert report["reference"] == {"row": "model@torch", "artifact": "model", "backend": "torch",
                                   "device": "cpu", "top1": expected["top1"]}
    assert report["schema"] == 2
    assert [r["row"] for r in report["rows"]] == ["model@torch", "onnx-fp32@onnxruntime"]
    ref_row, onnx_row = report["rows"]
    for row in report["rows"]:
        assert set(row) >= ROW, ROW - set(row)
        assert 0 <= row["top1"] <= row["top5"] <= 1
        assert set(row["latency_ms"]) == {"1", "16"} == set(row["throughput"])
        for size, stats in row["latency_ms"].items():
            assert set(stats) == LATENCY and 0 < stats["p50"] <= stats["p99"]
            lo, hi = stats["p50_range"]
            assert lo <= stats["p50"] <= hi and stats["runs"] >= stats["repeats"] >= 1
            assert row["throughput"][size] == pytest.approx(int(size) / (stats["mean"] / 1e3))
        # Every row says what one timed run covers (CPU backends: synchronous host to host).
        assert row["timing"].startswith("host to host, synchronous")
        assert row["passed"] is True and row["why"] is None
    assert (ref_row["artifact"], ref_row["backend"], ref_row["device"]) == ("model", "torch", "cpu")
    assert ref_row["agreement"] == 1.0 and ref_row["top1_drop_pp"] == 0.0
    assert ref_row["max_abs_diff"] == 0.0 and ref_row["top5"] == expected["top5"]
    assert ref_row["size_bytes"] == artifacts["checkpoint"].stat().st_size
    assert onnx_row["backend"] == "onnxruntime" and onnx_row["device"] == "CPUExecutionProvider"
    assert onnx_row["precision"] == "fp32" and onnx_row["agreement"] == 1.0
    assert onnx_row["max_abs_diff"] < 1e-4 and onnx_row["top1"] == ref_row["top1"]
    assert onnx_row["size_bytes"] == artifacts["onnx"].stat().st_size
    json.dumps(report, allow_nan=False)  # plain JSON types only


def test_a_different_model_fails_its_gate(tmp_path: Path, artifacts: dict[str, Path],
                                          eval_data: tuple[np.ndarray, np.ndarray, list[str]]
                                          ) -> None:
    proto = onnx.load(str(artifacts["onnx"]))
    for init in proto.graph.initializer:  # scramble every weight: a different function
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 1:
            rng = np.random.default_rng(len(init.name))
            init.CopyFrom(numpy_helper.from_array(rng.permutation(arr.ravel()).reshape(arr.shape),
                                                  init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    ckpt = artifacts["checkpoint"]
    images, labels, _ = eval_data
    report = evaluate(
        Candidate("model", "fp32", "checkpoint", ckpt, None, lambda: engines.load(ckpt)),
        [Candidate("broken", "fp32", "onnx", broken, 123, lambda: engines.load(broken))],
        images, labels, batch_sizes=(2,), progress=False, eval_batch_size=16, **FAST)
    row = report["rows"][1]
    assert row["passed"] is False and report["passed"] is False
    assert row["why"].startswith("fp32 gate: top-1 agreement ")
    assert row["agreement"] < 0.999 and row["max_abs_diff"] > 1e-3
    assert row["size_bytes"] == 123  # the given size wins over the file's
    assert report["dataset"] == {"images": 40}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the cuda candidate")
def test_a_candidate_that_cannot_run_here_is_skipped(
        artifacts: dict[str, Path], eval_data: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    ckpt = artifacts["checkpoint"]
    images, labels, _ = eval_data
    report = evaluate(
        Candidate("model", "fp32", "checkpoint", ckpt, None, lambda: engines.load(ckpt)),
        [Candidate("model-cuda", "fp16", "checkpoint", ckpt, None,
                   lambda: TorchRunner(ckpt, device="cuda"))],
        images[:8], labels[:8], batch_sizes=(1,), progress=False, **FAST)
    skipped = report["rows"][1]
    assert set(skipped) >= ROW
    assert skipped["passed"] is None and skipped["why"].startswith("skipped: device 'cuda' needs")
    assert skipped["backend"] == "torch" and skipped["precision"] == "fp16"
    assert skipped["top1"] is None and skipped["latency_ms"] == {}
    assert skipped["size_bytes"] == ckpt.stat().st_size
    assert report["passed"] is True  # every row that ran passed


def test_the_reference_must_run(artifacts: dict[str, Path],
                                eval_data: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    ckpt = artifacts["checkpoint"]
    images, labels, _ = eval_data

    def unavailable() -> TorchRunner:
        raise BackendUnavailable("the test backend is not here: use another")

    with pytest.raises(BackendUnavailable, match="not here"):
        evaluate(Candidate("model", "fp32", "checkpoint", ckpt, None, unavailable), [],
                 images[:4], labels[:4], progress=False, **FAST)


def test_bad_requests_fail_before_any_work(artifacts: dict[str, Path],
                                           eval_data: tuple[np.ndarray, np.ndarray, list[str]]
                                           ) -> None:
    images, labels, _ = eval_data
    ckpt = artifacts["checkpoint"]
    made: list[str] = []

    def factory() -> TorchRunner:
        made.append("runner")
        return engines.load(ckpt)

    ref = Candidate("model", "fp32", "checkpoint", ckpt, None, factory)
    with pytest.raises(UsageError, match="no accuracy gate for precision 'fp8'"):
        evaluate(ref, [Candidate("x", "fp8", "onnx", None, None, factory)], images, labels,
                 progress=False, gates=Gates())
    with pytest.raises(UsageError, match="batch sizes"):
        evaluate(ref, [], images, labels, batch_sizes=(0,), progress=False)
    with pytest.raises(UsageError, match=r"same \(artifact, backend\) row twice"):
        evaluate(ref, [Candidate("model", "fp32", "checkpoint", ckpt, None, factory)], images,
                 labels, progress=False)
    assert made == []


def test_progress_bar_shows_each_row(artifacts: dict[str, Path],
                                     eval_data: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    import io

    from rich.console import Console

    ckpt, onnx_path = artifacts["checkpoint"], artifacts["onnx"]
    images, labels, _ = eval_data
    out = io.StringIO()
    evaluate(Candidate("model", "fp32", "checkpoint", ckpt, None, lambda: engines.load(ckpt)),
             [Candidate("onnx-fp32", "fp32", "onnx", onnx_path, None,
                        lambda: engines.load(onnx_path))],
             images, labels, batch_sizes=(4,), progress=True,
             console=Console(file=out, width=120, force_terminal=False), **FAST)
    text = out.getvalue()
    assert "model (torch)" in text and "onnx-fp32 (onnxruntime)" in text and "40/40" in text
