"""What feeding through ``port.engines.adapter`` costs: adapted runner vs the bare runner.

``porter evaluate`` and ``port.load`` now wrap every runner in an :class:`AdaptedRunner`, which
converts porter's canonical NCHW float32 batch to what the graph takes. For porter's own models
(NCHW, dynamic batch) it should cost next to nothing; for an NHWC graph it adds one transpose
copy, and for a fixed-batch graph the chunking. This times, interleaved in one process on the
same ONNX Runtime session settings, the median ``infer`` of:

- an NCHW graph: bare runner vs adapted runner (the identity case);
- the same network as an NHWC graph (transpose inside the graph): bare runner fed NHWC by hand vs
  adapted runner fed NCHW (the transpose moves from the caller to the adapter).

The network is porter's CIFAR ResNet-18 at width 0.25 (random weights), exported with PyTorch's
legacy TorchScript exporter; batches 1 and 32, ``--runs`` timed runs each, alternating.

    .venv/bin/python bench/adapter_overhead.py [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def _export(folder: Path) -> tuple[Path, Path]:
    import torch

    from port.models.registry import create_model

    torch.manual_seed(0)
    net = create_model("resnet18_cifar", 10, width=0.25).eval()

    class Channelslast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.permute(0, 3, 1, 2))

    nchw, nhwc = folder / "nchw.onnx", folder / "nhwc.onnx"
    axes = {"x": {0: "n"}, "y": {0: "n"}}
    for module, sample, path in ((net, torch.zeros(1, 3, 32, 32), nchw),
                                 (Channelslast().eval(), torch.zeros(1, 32, 32, 3), nhwc)):
        torch.onnx.export(module, (sample,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes, opset_version=17)
    return nchw, nhwc


def _times_ms(runner: Any, feed: dict[str, np.ndarray], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.infer(feed, check_inputs=False)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    """Print median ms per infer for each pair and the adapted/bare ratio."""
    from port.engines.adapter import AdaptedRunner, GraphIO
    from port.engines.onnxrt import OnnxRuntimeRunner
    from port.ground.cpu import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    print(f"cpu: {describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        nchw, nhwc = _export(Path(tmp))
        for batch in (1, 32):
            images = np.random.default_rng(0).standard_normal(
                (batch, 3, 32, 32)).astype(np.float32)
            for label, path, bare_feed in (
                    ("NCHW graph", nchw, images),
                    ("NHWC graph", nhwc, np.ascontiguousarray(images.transpose(0, 2, 3, 1)))):
                kw = {"providers": ["CPUExecutionProvider"], "threads": 1}
                bare = OnnxRuntimeRunner(path, **kw)
                adapted = AdaptedRunner(OnnxRuntimeRunner(path, **kw),
                                        io=GraphIO.for_onnx(path))
                with bare, adapted:
                    for _ in range(10):  # warm-up
                        bare.infer({"x": bare_feed}, check_inputs=False)
                        adapted.infer({"x": images}, check_inputs=False)
                    t_bare, t_adapted = [], []
                    for _ in range(args.runs // 10):  # interleaved blocks: load hits both alike
                        t_bare += _times_ms(bare, {"x": bare_feed}, 10)
                        t_adapted += _times_ms(adapted, {"x": images}, 10)
                b, a = statistics.median(t_bare), statistics.median(t_adapted)
                print(f"{label} batch {batch:>2}: bare {b:8.3f} ms  adapted {a:8.3f} ms  "
                      f"ratio {a / b:.3f}")


if __name__ == "__main__":
    main()
