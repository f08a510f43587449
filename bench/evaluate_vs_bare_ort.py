"""Overhead of porter's latency measurement vs a bare ONNX Runtime loop (target: within 5%).

Builds torchvision-layout ResNet-18 (``port.models`` "resnet18") at 32x32, exports it with
porter's ONNX exporter, then times, interleaved in one process on the same input:

- porter: ``measure_latency(OnnxRuntimeRunner(...), batch)`` (feed checks, dict plumbing,
  synchronize), and
- bare: ``session.run(None, feed)`` in a plain ``perf_counter_ns`` loop on a session made with the
  same settings (CPU provider, same intra-op thread count, same log level),

at batch 1 and 32, in many short rounds that alternate which side goes first. Each round gives
one porter/bare ratio of p50s measured back to back, so drift in a shared machine's load hits
both sides of a ratio alike; the last line is the median of those ratios per batch size.

    .venv/bin/python bench/evaluate_vs_bare_ort.py [--rounds 15] [--seconds 0.2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def _bare_latency(session: object, feed: dict[str, np.ndarray], *, warmup: int, min_runs: int,
                  min_seconds: float) -> float:
    """p50 in ms of the plainest loop there is: session.run between two clock reads."""
    for _ in range(warmup):
        session.run(None, feed)
    times: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_seconds * 1e9)
    while len(times) < min_runs or clock() < deadline:
        start = clock()
        session.run(None, feed)
        times.append(clock() - start)
    return float(np.percentile(np.asarray(times) / 1e6, 50))


def main() -> None:
    """Export, then time porter vs bare per batch size; print the ratios last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per batch size")
    parser.add_argument("--seconds", type=float, default=0.2, help="min timed seconds per side")
    parser.add_argument("--min-runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads for both sides (1 = steadier on a busy machine)")
    parser.add_argument("--batch-sizes", default="1,32")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from port.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from port.engines.onnxrt import OnnxRuntimeRunner
    from port.evaluate.latency import measure_latency
    from port.export.onnx import export_onnx
    from port.models.card import ModelCard
    from port.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    card = ModelCard(arch="resnet18", num_classes=10, classes=[f"c{i}" for i in range(10)],
                     preprocess=Preprocess.for_size(32, IMAGENET_MEAN, IMAGENET_STD))
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((max(sizes), 3, 32, 32)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.onnx"
        metrics = export_onnx(model, card, path, sample=images[:8])
        print(f"exported resnet18 @32 px: {metrics['bytes'] / 1e6:.1f} MB, opset "
              f"{metrics['opset']}, parity max |diff| {metrics['max_abs_diff']:.1e}")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        runner = OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"], threads=args.threads)
        settings = {"warmup": args.warmup, "min_runs": args.min_runs,
                    "min_seconds": args.seconds}
        ratios: dict[int, float] = {}
        with runner:
            for size in sizes:
                feed = {card.input_name: np.ascontiguousarray(images[:size])}
                porter_p50, bare_p50 = [], []
                for r in range(args.rounds):
                    sides = ["porter", "bare"] if r % 2 == 0 else ["bare", "porter"]
                    for side in sides:
                        if side == "porter":
                            porter_p50.append(measure_latency(runner, feed, **settings)["p50"])
                        else:
                            bare_p50.append(_bare_latency(session, feed, **settings))
                p, b = statistics.median(porter_p50), statistics.median(bare_p50)
                paired = [x / y for x, y in zip(porter_p50, bare_p50, strict=True)]
                ratios[size] = statistics.median(paired)
                print(f"batch {size:>3}: porter p50 {p:8.3f} ms   bare p50 {b:8.3f} ms   "
                      f"median paired ratio {ratios[size]:.3f} (range {min(paired):.3f}.."
                      f"{max(paired):.3f}; {args.rounds} rounds, {args.threads} thread(s))")
    within = all(abs(r - 1) <= 0.05 for r in ratios.values())
    print("porter/bare ORT p50 ratio: "
          + ", ".join(f"batch {s} {r:.3f}" for s, r in ratios.items())
          + f" (target within 5%: {'yes' if within else 'NO'})")


if __name__ == "__main__":
    main()
