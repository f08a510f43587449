"""write_report and render_table on a real evaluate() report."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

from rich.console import Console

from port.evaluate.report import REPORT_FILES, render_markdown, render_table, write_report


def test_write_report_writes_every_file(tmp_path: Path, torch_and_onnx_evaluation: tuple
                                        ) -> None:
    import numpy as np

    from port.ground.digest import sha256_file

    report, outputs = copy.deepcopy(torch_and_onnx_evaluation)
    written = write_report(report, tmp_path / "report", outputs=outputs)
    assert [p.name for p in written] == list(REPORT_FILES)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(REPORT_FILES)
    assert json.loads(written[0].read_text()) == report
    # outputs.npz: what report.json says it is, each row's logits as evaluated, no pickles
    npz_path = written[-1]
    assert report["outputs"] == {"file": "outputs.npz", "sha256": sha256_file(npz_path),
                                 "rows": ["model@torch", "onnx-fp32@onnxruntime"],
                                 "images": 40, "classes": 10}
    with np.load(npz_path, allow_pickle=False) as npz:
        assert np.array_equal(npz["labels"], outputs.labels)
        for row in ("model@torch", "onnx-fp32@onnxruntime"):
            assert npz[f"logits/{row}"].dtype == np.float32
            assert np.array_equal(npz[f"logits/{row}"], outputs.logits[row])
            assert np.array_equal(npz[f"predictions/{row}"], outputs.logits[row].argmax(1))
    top1 = float(np.mean(outputs.logits["model@torch"].argmax(1) == outputs.labels))
    assert top1 == report["rows"][0]["top1"]
    for png in written[2:4]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    md = written[1].read_text()
    assert md.startswith("# porter evaluation report") and "**PASSED**" in md
    assert "| `model` | torch | cpu | fp32 |" in md
    assert "| `onnx-fp32` | onnxruntime | CPUExecutionProvider | fp32 |" in md
    assert "p50 ms @1" in md and "p50 ms @16" in md
    assert "## Gates" in md and "| int8 | - | - | 0.99 |" in md
    assert "- spec: synthetic" in md and "- images: 40" in md


def test_failed_and_skipped_rows_and_nan_are_reported(tmp_path: Path,
                                                      torch_and_onnx_report: dict) -> None:
    report = copy.deepcopy(torch_and_onnx_report)
    report["passed"] = False
    bad = report["rows"][1]
    bad.update(passed=False, why="fp16 gate: logits contain NaN or inf | overflow",
               max_abs_diff=float("nan"), precision="fp16")
    skipped = dict.fromkeys(bad)
    skipped.update(artifact="trt-fp16", kind="engine", backend="tensorrt", precision="fp16",
                   latency_ms={}, throughput={}, passed=None,
                   why="skipped: the tensorrt backend needs the 'tensorrt' module")
    report["rows"].append(skipped)
    json_path, md_path, *_ = write_report(report, tmp_path)
    saved = json.loads(json_path.read_text())
    assert saved["rows"][1]["max_abs_diff"] is None  # JSON has no NaN
    assert saved["rows"][2]["passed"] is None
    md = md_path.read_text()
    assert "**FAILED**" in md
    assert r"**FAIL**: fp16 gate: logits contain NaN or inf \| overflow" in md
    assert "skipped: the tensorrt backend" in md
    assert render_markdown(report) == md


def test_render_table(torch_and_onnx_report: dict) -> None:
    table = render_table(torch_and_onnx_report)
    assert table.row_count == len(torch_and_onnx_report["rows"])
    out = io.StringIO()
    Console(file=out, width=220, force_terminal=False).print(table)
    text = out.getvalue()
    assert "PASSED" in text and "onnx-fp32" in text and "CPUExecutionProvider" in text
    assert "p50 ms @16" in text and "pass" in text


def test_the_plot_helper_draws_what_this_process_draws(tmp_path: Path,
                                                       torch_and_onnx_report: dict) -> None:
    """The helper process (which loads matplotlib during the pass) writes the same plot files
    as drawing them here; a helper that cannot serve leaves the plots to this process."""
    import sys

    from port.evaluate.plot_process import PlotProcess

    report = copy.deepcopy(torch_and_onnx_report)
    here = write_report(copy.deepcopy(report), tmp_path / "here")
    helper = PlotProcess()
    try:
        assert helper.wait_ready()
        assert helper.request(report, tmp_path / "lat.png", tmp_path / "acc.png")
        assert helper.finish()
    finally:
        helper.close()
    assert (tmp_path / "lat.png").read_bytes() == here[2].read_bytes()
    assert (tmp_path / "acc.png").read_bytes() == here[3].read_bytes()

    # Helpers that fail in each way: not ready, dead after "ready", silent after the request.
    for code in ("print('busy')", "print('ready', flush=True)",
                 "import sys; print('ready', flush=True); sys.stdin.readline()"):
        out = tmp_path / f"fallback-{len(code)}"
        helper = PlotProcess([sys.executable, "-c", code])
        try:
            written = write_report(copy.deepcopy(report), out, plotter=helper)
        finally:
            helper.close()
        assert written[2].read_bytes() == here[2].read_bytes(), code
        assert written[3].read_bytes() == here[3].read_bytes(), code


def test_markdown_gate_table_has_a_column_per_gate_limit(torch_and_onnx_report: dict) -> None:
    from port.gates import LIMIT_NAMES, Gates

    md = render_markdown(torch_and_onnx_report)
    header = md.split("## Gates", 1)[1].strip().splitlines()[0]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells == ["precision", "min agreement", "max top1 drop (pp)", "min top1 ratio"]
    assert len(cells) == 1 + len(LIMIT_NAMES)
    # Every registered precision's gate is a row (bf16 too), its values as the report has them.
    assert set(torch_and_onnx_report["gates"]) == set(Gates().to_dict())
    assert "| int8 | - | - | 0.99 |" in md
