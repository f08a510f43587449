"""ONNX Runtime (CPU) INT8 vs FP32: porter's INT8 next to a plain ``quantize_static``, and top-1.

Issue 11 item 4: porter's INT8 speed-up over FP32 on ONNX Runtime's CPU provider must reach at
least 0.95x the speed-up of a plain ``quantize_static`` of the same model (uint8 activations, QDQ,
per-channel weights), with top-1 within the INT8 gate. Two models, each measured in one process:

- ResNet-18 at 224 px (torchvision, random init: weights do not change the arithmetic),
  calibrated on random images;
- a CIFAR-10 ResNet-9 trained by porter (``--cifar-run``, default ``/work/cifar-run``),
  calibrated on its training split exactly as ``porter export`` does, with top-1 on the real
  CIFAR-10 test set (``--data``, default ``/work/cifar10``; 10,000 images).

Variants, all with the same session options (CPU provider, ``--threads`` intra-op threads, one
inter-op thread, ``ORT_ENABLE_ALL``, thread spinning off unless ``--spin``):

- ``fp32``: porter's FP32 ONNX;
- ``porter``: porter's INT8 file (symmetric int8, the graph TensorRT builds) as porter's runner
  hands it to the CPU provider: its CPU form (``port.engines.int8_cpu_graph``);
- ``porter-file``: the same file as written (what ran before the CPU form existed);
- ``porter-uint8``: ``porter export --int8-activations uint8`` (asymmetric, ORT-CPU only): the
  "choose the activation type at export" alternative;
- ``plain``: ``quant_pre_process`` + ``quantize_static(QDQ, per_channel=True, QUInt8
  activations, QInt8 weights)`` with ONNX Runtime's defaults otherwise, same calibration images.

Timing is interleaved: every round times each variant once, alternating the order, so load from
other processes on a shared machine hits all variants alike; the speed-up is the median over
rounds of the per-round FP32/INT8 ratio. For each variant the script prints how ORT's CPU
provider rewrote the graph (fused QLinearConv, float Conv and Relu left).

    .venv/bin/python bench/int8_vs_fp32.py [--rounds 10] [--threads 2] [--batch 16]
        [--cifar-run /work/cifar-run] [--data /work/cifar10] [--skip-resnet18] [--skip-cifar]

The last lines give, per model, porter's speed-up, the plain one and their ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

CALIB_IMAGES_R18 = 32  # random-init model and images: calibration only sets scales, not speed


def _session_options(threads: int, spin: bool) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spin:
        # ORT's worker threads busy-wait between ops by default. On a CPU shared with other
        # processes that spinning competes with the work itself and hurts graphs with many short
        # ops (INT8: QLinear ops, transposes) far more than FP32.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _models(paths: dict[str, Path]) -> dict[str, bytes]:
    """Each variant as the bytes ORT gets: ``porter`` is the file's CPU form, as the runner does."""
    from port.engines.int8_cpu_graph import cpu_form

    models = {v: p.read_bytes() for v, p in paths.items()}
    form, record = cpu_form(str(paths["porter"]), "porter's INT8")
    assert isinstance(form, bytes), record  # a symmetric QDQ graph always has pairs to rewrite
    models["porter"] = form
    return models


def _fused_ops(model: bytes, threads: int, spin: bool) -> str:
    """How ORT's CPU provider rewrote the graph: fused QLinearConv vs float Conv, float Relu."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = _session_options(threads, spin)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath)
                                  .graph.node)
    conv = ops["Conv"] + ops["FusedConv"]
    return (f"QLinearConv {ops['QLinearConv']:2d}, float Conv {conv}, float Relu {ops['Relu']:2d}, "
            f"Q {ops['QuantizeLinear']:2d}, DQ {ops['DequantizeLinear']:2d}")


def _variants(fp32: Path, calib: np.ndarray, workdir: Path, stem: str) -> dict[str, Path]:
    """porter's INT8 (symmetric and uint8) and a plain quantize_static of ``fp32``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    from port.export.quantize import quantize_int8

    paths = {"fp32": fp32, "porter": workdir / f"{stem}.int8.onnx"}
    quantize_int8(fp32, paths["porter"], calib, batch_size=16, progress=False)
    paths["porter-file"] = paths["porter"]
    paths["porter-uint8"] = workdir / f"{stem}.uint8.onnx"
    quantize_int8(fp32, paths["porter-uint8"], calib, activation_type="uint8", batch_size=16,
                  progress=False)
    pre, plain = workdir / f"{stem}.pre.onnx", workdir / f"{stem}.plain.onnx"
    quant_pre_process(str(fp32), str(pre))
    reader = _plain_reader(calib)
    quantize_static(str(pre), str(plain), reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    paths["plain"] = plain
    return paths


def _plain_reader(calib: np.ndarray) -> Any:
    """A plain CalibrationDataReader over ``calib`` in batches of 16 (input name "input")."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calib), 16))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {"input": calib[start:start + 16]}

    return Reader()


def _time(models: dict[str, bytes], batch: np.ndarray, rounds: int, threads: int, spin: bool
          ) -> dict[str, list[float]]:
    """Seconds per run of each variant on ``batch``, interleaved round by round."""
    import onnxruntime as ort

    sessions = {v: ort.InferenceSession(m, _session_options(threads, spin),
                                        providers=["CPUExecutionProvider"])
                for v, m in models.items()}
    for s in sessions.values():  # warm-up: first runs allocate and pack weights
        for _ in range(2):
            s.run(None, {"input": batch})
    times: dict[str, list[float]] = {v: [] for v in models}
    order = list(models)
    for r in range(rounds):
        for v in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            sessions[v].run(None, {"input": batch})
            times[v].append(time.perf_counter() - t0)
    return times


def _top1(model: bytes, images: np.ndarray, labels: np.ndarray, threads: int) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, _session_options(threads, False),
                                providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": images[i:i + 500]})[0].argmax(1)
                           for i in range(0, len(images), 500)])
    return float(np.mean(pred == labels))


def _measure(title: str, paths: dict[str, Path], batch: np.ndarray, args: argparse.Namespace,
             test: tuple[np.ndarray, np.ndarray] | None) -> tuple[float, float]:
    """Print the table of one model; return (porter speed-up, plain speed-up)."""
    models = _models(paths)
    times = _time(models, batch, args.rounds, args.threads, args.spin)
    print(f"\n{title}, batch {len(batch)}, ORT CPU, {args.threads} threads, {args.rounds} rounds")
    header = f"  {'variant':13s} {'p50 ms':>8s} {'vs fp32':>8s}"
    if test is not None:
        header += f" {'top-1':>7s} {'kept':>7s}"
    print(header + "  graph after ORT's CPU fusions")
    speedups, ref = {}, None
    for v, model in models.items():
        ratio = statistics.median(f / q for f, q in zip(times["fp32"], times[v], strict=True))
        speedups[v] = ratio
        line = f"  {v:13s} {statistics.median(times[v]) * 1000:8.1f} {ratio:7.2f}x"
        if test is not None:
            acc = _top1(model, *test, args.threads)
            ref = acc if v == "fp32" else ref
            line += f" {acc:7.4f} {acc / ref:6.1%}"
        print(line + "  " + _fused_ops(model, args.threads, args.spin))
    return speedups["porter"], speedups["plain"]


def _resnet18(workdir: Path, args: argparse.Namespace) -> tuple[float, float]:
    import torch
    import torchvision

    from port.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from port.export.onnx import export_onnx
    from port.models.card import ModelCard

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((4, 3, 224, 224), dtype=np.float32)
    calib = rng.standard_normal((CALIB_IMAGES_R18, 3, 224, 224), dtype=np.float32)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    card = ModelCard(arch="resnet18", num_classes=1000, classes=[str(i) for i in range(1000)],
                     preprocess=Preprocess.for_size(224, IMAGENET_MEAN, IMAGENET_STD))
    fp32 = workdir / "resnet18.onnx"
    export_onnx(model, card, fp32, sample=sample, exporter="torchscript")
    paths = _variants(fp32, calib, workdir, "resnet18")
    batch = rng.standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    return _measure("ResNet-18 @ 224 px (random init)", paths, batch, args, None)


def _cifar(workdir: Path, args: argparse.Namespace) -> tuple[float, float] | None:
    from port.data.datasets import load_split, materialize, subset
    from port.data.spec import parse_data_spec
    from port.export.calibration import select_calibration
    from port.export.context import DEFAULT_CALIB_IMAGES
    from port.models.card_codec import read_card

    if not (args.cifar_run / "model.pt").is_file():
        print(f"\nCIFAR-10: skipped, no trained run at {args.cifar_run} (porter train ...)")
        return None
    run = workdir / "cifar-run"
    shutil.copytree(args.cifar_run, run, ignore=shutil.ignore_patterns("*.onnx", "report*"))
    subprocess.run([str(REPO / ".venv/bin/porter"), "export", "--run", str(run), "--to", "onnx"],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    fp32 = run / "model.fp32.onnx"
    card = read_card(fp32)
    assert card is not None, "porter's FP32 ONNX carries its ModelCard"
    spec = parse_data_spec(args.data)
    train = load_split(spec, "train", preprocess=card.preprocess)
    chosen = select_calibration(len(train), min(DEFAULT_CALIB_IMAGES, len(train)), seed=0)
    calib, _ = materialize(subset(train, list(chosen.indices)))
    test = materialize(load_split(spec, "val", preprocess=card.preprocess))
    paths = _variants(fp32, calib, workdir, "cifar")
    return _measure(f"CIFAR-10 {card.arch} from {args.cifar_run} (calibrated on {len(calib)} "
                    f"train images; top-1 on {len(test[1])} test images)", paths,
                    test[0][:args.batch], args, test)


def main() -> None:
    """Parse flags, build, time, print; the last lines compare porter with plain per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cifar-run", type=Path, default=Path("/work/cifar-run"))
    parser.add_argument("--data", default="/work/cifar10")
    parser.add_argument("--skip-resnet18", action="store_true")
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument("--spin", action="store_true",
                        help="let ORT threads spin-wait (its default; slower on a shared CPU)")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from port.ground.cpu import describe

    torch.set_num_threads(args.threads)
    print(f"onnxruntime {ort.__version__}; {describe()}; {args.threads} threads, "
          f"spinning {'on' if args.spin else 'off'}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="porter-bench-int8-") as tmp:
        if not args.skip_resnet18:
            results["resnet18 224px"] = _resnet18(Path(tmp), args)
        if not args.skip_cifar:
            got = _cifar(Path(tmp), args)
            if got is not None:
                results["cifar10 resnet9"] = got
    print(f"\nINT8/FP32 speed-up at batch {args.batch} (median of per-round ratios); "
          "target porter >= 0.95x plain")
    for name, (porter, plain) in results.items():
        print(f"{name}: porter {porter:.2f}x, plain quantize_static {plain:.2f}x, "
              f"porter/plain {porter / plain:.2f}")


if __name__ == "__main__":
    main()
