"""INT8 calibration settings against top-1 on real CIFAR-10: the table porter's defaults come from.

For a trained porter run (default: the CIFAR-10 ResNet-9 in ``/work/cifar-run``), this script
exports the FP32 ONNX once into a scratch copy of the run, then for every combination of
calibration method x calibration image count x per-channel weights makes porter's INT8 graph
(``port.export.quantize.quantize_int8``: symmetric int8, the graph TensorRT builds) and scores it
on the whole test split (10,000 images) with porter's ONNX Runtime runner on the CPU, as
``porter evaluate`` would. Calibration images are drawn from the training split exactly as
``porter export`` draws them (``select_calibration``, seed 0, evaluation preprocessing).

Columns: top-1, its ratio to FP32 (porter's INT8 gate is >= 0.99), top-1 agreement with FP32,
and the seconds the quantization took (calibration + graph writing).

    .venv/bin/python bench/int8_calibration.py [--run /work/cifar-run] [--data /work/cifar10]
        [--methods minmax,entropy,percentile] [--counts 256,512,1024] [--per-channel both]
        [--limit N (test images, default all)] [--threads 2]

The last line names the best setting (highest top-1; ties to the faster export).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def _top1(path: Path, images: np.ndarray, labels: np.ndarray, threads: int
          ) -> tuple[float, np.ndarray]:
    """Top-1 and predictions of an ONNX file on porter's ORT CPU runner (what evaluate runs)."""
    from port.engines.onnxrt import OnnxRuntimeRunner

    preds = []
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"], threads=threads) as runner:
        name, out = runner.input_metadata()[0].name, runner.logits_output()
        for i in range(0, len(images), 250):
            preds.append(runner.infer({name: images[i:i + 250]})[out].argmax(1))
    pred = np.concatenate(preds)
    return float(np.mean(pred == labels)), pred


def main() -> None:
    """Parse flags, export FP32 once, quantize and score every setting, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("/work/cifar-run"))
    parser.add_argument("--data", default="/work/cifar10")
    parser.add_argument("--methods", default="minmax,entropy,percentile")
    parser.add_argument("--counts", default="256,512,1024")
    parser.add_argument("--per-channel", choices=("both", "on", "off"), default="both")
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from port.data.datasets import load_split, materialize, subset
    from port.data.spec import parse_data_spec
    from port.export.calibration import select_calibration
    from port.export.quantize import quantize_int8
    from port.models.card_codec import read_card

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    counts = [int(c) for c in args.counts.split(",")]
    channels = {"both": [True, False], "on": [True], "off": [False]}[args.per_channel]
    with tempfile.TemporaryDirectory(prefix="porter-bench-calib-") as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("*.onnx", "report*"))
        subprocess.run([str(REPO / ".venv/bin/porter"), "export", "--run", str(run), "--to",
                        "onnx"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        fp32 = run / "model.fp32.onnx"
        card = read_card(fp32)
        assert card is not None, "porter's FP32 ONNX carries its ModelCard"
        spec = parse_data_spec(args.data)
        test = load_split(spec, "val", preprocess=card.preprocess)
        if args.limit:
            test = subset(test, list(range(0, len(test), max(1, len(test) // args.limit))))
        x_test, y_test = materialize(test)
        train = load_split(spec, "train", preprocess=card.preprocess)
        ref, ref_pred = _top1(fp32, x_test, y_test, args.threads)
        print(f"{args.run} ({card.arch}), {len(y_test)} test images of {args.data}; "
              f"calibration from its {len(train)} training images (seed 0)")
        print(f"FP32 top-1 {ref:.4f}; INT8 gate: ratio >= 0.99\n")
        print("| method | calib images | per-channel | top-1 | ratio to FP32 | agreement | "
              "export s |")
        print("|---|---:|---|---:|---:|---:|---:|")
        rows = []
        for count in counts:
            chosen = select_calibration(len(train), count, seed=0)
            calib, _ = materialize(subset(train, list(chosen.indices)))
            for method in methods:
                for per_channel in channels:
                    out = run / f"model.int8-{method}-{count}-{int(per_channel)}.onnx"
                    t0 = time.perf_counter()
                    quantize_int8(fp32, out, calib, method=method, per_channel=per_channel,
                                  progress=False)
                    seconds = time.perf_counter() - t0
                    top1, pred = _top1(out, x_test, y_test, args.threads)
                    agree = float(np.mean(pred == ref_pred))
                    rows.append((top1, -seconds, method, count, per_channel))
                    print(f"| {method} | {count} | {'yes' if per_channel else 'no'} | "
                          f"{top1:.4f} | {top1 / ref:.3f} | {agree:.4f} | {seconds:.1f} |",
                          flush=True)
                    out.unlink()
        top1, neg_s, method, count, per_channel = max(rows)
        print(f"\nbest: {method}, {count} images, per-channel {per_channel}: top-1 {top1:.4f} "
              f"= {top1 / ref:.3f} of FP32, {-neg_s:.1f} s")


if __name__ == "__main__":
    main()
