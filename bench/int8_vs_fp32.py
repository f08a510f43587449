"""ONNX Runtime (CPU) INT8 vs FP32: latency and throughput for ResNet-18/50 at 224 px, and top-1.

Target (issue 3): on this machine's AVX-512 VNNI CPU, INT8 at least 3.3x faster than FP32 for
ResNet-18 at batch 16.

What runs, all in one process with the same session options (CPU provider, ``--threads`` intra-op
threads, one inter-op thread, ``ORT_ENABLE_ALL``, thread spinning off unless ``--spin``):

- ``fp32``: torchvision ResNet (random init: weights do not change the arithmetic) exported by
  porter's ONNX exporter (TorchScript, dynamic batch);
- ``int8``: porter's default INT8, ``quantize_int8`` (QDQ, per-channel symmetric INT8 weights,
  symmetric INT8 activations: the graph TensorRT can build);
- ``uint8``: ``quantize_int8(activation_type="uint8")``, asymmetric UINT8 activations, the form
  ORT's docs recommend for x86 CPUs and that TensorRT cannot build;
- ``int8-shared`` (with ``--diagnose``): the symmetric graph without porter's per-Q parameter
  copies, to show what ORT's CPU fusion does with it.

Timing is interleaved: every round times each variant once per batch size, alternating the order,
so load from other processes on a shared machine hits all variants alike; the speed-up is the
median over rounds of the per-round FP32/INT8 ratio. For each variant the script also prints how
many convolutions ORT fused into QLinearConv, read from the session's optimized graph.

The top-1 change is measured on the small CIFAR-10 model of tests/export/test_quantize.py (same
recipe, same weight cache) on the real CIFAR-10 test images of the subset the tests use.

    .venv/bin/python bench/int8_vs_fp32.py [--rounds 10] [--threads 2] [--archs resnet18,resnet50]
        [--batches 1,16] [--diagnose] [--skip-accuracy] [--spin]

The last line is the ResNet-18 batch-16 INT8/FP32 speed-up of both INT8 forms.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
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

ARCHIVE = REPO.parent / "shared/data/cifar10-jpeg.tar.gz"
SUBSET = REPO / ".cache" / "cifar10-subset-100-50"  # the tests' subset (tests/conftest.py)
CALIB_IMAGES = 32  # random-init models: calibration only sets scales, not speed


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
        # ops (INT8: QLinear ops, transposes) far more than FP32: measured here at 2 threads,
        # ResNet-18 b1 FP32 128 -> 59 ms and the INT8 speed-up 2.45x -> 3.70x when it is off.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _fused_ops(path: Path, threads: int, spin: bool) -> str:
    """How ORT's CPU provider rewrote the graph: fused QLinearConv vs float Conv, float Relu."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = _session_options(threads, spin)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath)
                                  .graph.node)
    conv = ops["Conv"] + ops["FusedConv"]
    return (f"QLinearConv {ops['QLinearConv']}, float Conv {conv}, float Relu {ops['Relu']}, "
            f"QLinearAdd {ops['QLinearAdd']}")


def _build(arch: str, workdir: Path, diagnose: bool) -> dict[str, Path]:
    """FP32 ONNX of a torchvision ResNet plus its INT8 variants; returns variant -> path."""
    import onnx
    import torch
    import torchvision

    from port.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from port.export.onnx import export_onnx
    from port.export.quantize import quantize_int8
    from port.models.card import ModelCard

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((4, 3, 224, 224), dtype=np.float32)
    calib = rng.standard_normal((CALIB_IMAGES, 3, 224, 224), dtype=np.float32)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    card = ModelCard(arch=arch, num_classes=1000, classes=[str(i) for i in range(1000)],
                     preprocess=Preprocess.for_size(224, IMAGENET_MEAN, IMAGENET_STD))
    paths = {"fp32": workdir / f"{arch}.onnx"}
    export_onnx(model, card, paths["fp32"], sample=sample, exporter="torchscript")
    paths["int8"] = workdir / f"{arch}.int8.onnx"
    quantize_int8(paths["fp32"], paths["int8"], calib, batch_size=8, progress=False)
    paths["uint8"] = workdir / f"{arch}.uint8.onnx"
    quantize_int8(paths["fp32"], paths["uint8"], calib, activation_type="uint8", batch_size=8,
                  progress=False)
    if diagnose:
        # The same symmetric graph with Q parameters shared again, as quantize_static writes it.
        shared = onnx.load(str(paths["int8"]))
        for node in shared.graph.node:
            if node.op_type == "QuantizeLinear":
                for i in range(1, min(len(node.input), 3)):
                    base, sep, tail = node.input[i].rpartition("_q")
                    if sep and tail.isdigit():
                        node.input[i] = base
        used = {i for n in shared.graph.node for i in n.input}
        kept = [t for t in shared.graph.initializer if t.name in used]
        del shared.graph.initializer[:]
        shared.graph.initializer.extend(kept)
        paths["int8-shared"] = workdir / f"{arch}.int8-shared.onnx"
        onnx.save(shared, str(paths["int8-shared"]))
    return paths


def _time(paths: dict[str, Path], batches: list[int], rounds: int, threads: int, spin: bool
          ) -> dict[tuple[str, int], list[float]]:
    """Seconds per run for each (variant, batch), interleaved round by round."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    inputs = {b: rng.standard_normal((b, 3, 224, 224), dtype=np.float32) for b in batches}
    sessions = {v: ort.InferenceSession(str(p), _session_options(threads, spin),
                                        providers=["CPUExecutionProvider"])
                for v, p in paths.items()}
    for s in sessions.values():  # warm-up: first runs allocate and pack weights
        for b in batches:
            for _ in range(2):
                s.run(None, {"input": inputs[b]})
    times: dict[tuple[str, int], list[float]] = {(v, b): [] for v in paths for b in batches}
    order = list(paths)
    for r in range(rounds):
        for b in batches:
            for v in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                sessions[v].run(None, {"input": inputs[b]})
                times[(v, b)].append(time.perf_counter() - t0)
    return times


def _report_latency(arch: str, paths: dict[str, Path], batches: list[int],
                    times: dict[tuple[str, int], list[float]], threads: int, spin: bool
                    ) -> dict[tuple[str, int], float]:
    """Print p50 latency, throughput and the per-round median speed-up; return the speed-ups."""
    speedups = {}
    print(f"\n{arch} @ 224 px, ORT CPU, {threads} threads")
    for v, p in paths.items():
        print(f"  {v:12s} {p.stat().st_size / 1e6:7.1f} MB  {_fused_ops(p, threads, spin)}")
    print(f"  {'variant':12s} {'batch':>5s} {'p50 ms':>9s} {'p90 ms':>9s} {'img/s':>8s} "
          f"{'vs fp32':>8s}")
    for b in batches:
        for v in paths:
            t = np.array(times[(v, b)]) * 1000
            ratio = statistics.median(f / q for f, q in zip(times[("fp32", b)], times[(v, b)],
                                                             strict=True))
            speedups[(v, b)] = ratio
            print(f"  {v:12s} {b:5d} {np.percentile(t, 50):9.1f} {np.percentile(t, 90):9.1f} "
                  f"{b / np.percentile(t, 50) * 1000:8.1f} {ratio:7.2f}x")
    return speedups


def _load_test_recipe() -> Any:
    """tests/export/test_quantize.py: SmallNet, its training recipe and its weight cache."""
    spec = importlib.util.spec_from_file_location(
        "porter_test_quantize", REPO / "tests/export/test_quantize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _accuracy(workdir: Path) -> None:
    """Top-1 of FP32, INT8 (both activation types) and FP16 on the CIFAR-10 test subset."""
    import hashlib
    import json

    import onnxruntime as ort
    import torch

    from port.data.archive import extract_imagefolder_archive
    from port.data.datasets import load_split, materialize
    from port.data.spec import parse_data_spec
    from port.export.calibration import select_calibration
    from port.export.fp16 import convert_fp16
    from port.export.onnx import export_onnx
    from port.export.quantize import quantize_int8
    from port.models.card import ModelCard

    if not ARCHIVE.is_file():
        print(f"\ntop-1: skipped, {ARCHIVE} not found")
        return
    root = extract_imagefolder_archive(ARCHIVE, SUBSET, per_class={"train": 100, "test": 50})
    data = parse_data_spec(str(root))
    train, test = load_split(data, "train"), load_split(data, "val")
    x_train, y_train = materialize(train)
    x_test, y_test = materialize(test)
    recipe = _load_test_recipe()
    key = hashlib.sha256(json.dumps([recipe.TRAIN, torch.__version__, len(x_train)])
                         .encode()).hexdigest()[:12]
    cache = REPO / ".cache" / f"test-quantize-smallnet-{key}.pt"
    if cache.is_file():
        model = recipe.SmallNet(width=recipe.TRAIN["width"])
        model.load_state_dict(torch.load(cache, weights_only=True))
        model.eval()
    else:
        model = recipe._train(x_train, y_train)
        cache.parent.mkdir(exist_ok=True)
        torch.save(model.state_dict(), cache)
    card = ModelCard(arch="smallnet", num_classes=10, classes=train.classes,
                     preprocess=train.preprocess)
    fp32 = workdir / "cifar.onnx"
    export_onnx(model, card, fp32, sample=x_test[:8], exporter="torchscript")
    cs = select_calibration(len(x_train), recipe.CALIB_IMAGES, seed=0)
    paths = {"fp32": fp32}
    for act in ("int8", "uint8"):
        paths[act] = workdir / f"cifar.{act}.onnx"
        quantize_int8(fp32, paths[act], x_train[cs.indices], activation_type=act, progress=False)
    paths["fp16"] = workdir / "cifar.fp16.onnx"
    fp16 = convert_fp16(fp32, paths["fp16"], sample_images=x_test[:64])

    def top1(path: Path) -> float:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = np.concatenate([sess.run(None, {"input": x_test[i:i + 100]})[0]
                                 for i in range(0, len(x_test), 100)])
        return float(np.mean(logits.argmax(1) == y_test))

    ref = top1(fp32)
    print(f"\ntop-1 on {len(y_test)} CIFAR-10 test images (SmallNet trained on "
          f"{len(y_train)} images; INT8 calibrated on {cs.count} train images)")
    for v, p in paths.items():
        acc = top1(p)
        note = f"  ({fp16['ort_cpu']['how']})" if v == "fp16" else ""
        print(f"  {v:6s} top-1 {acc:.4f}  change {100 * (acc - ref):+.2f} pp  "
              f"kept {acc / ref:.2%}{note}")


def main() -> None:
    """Parse flags, build, time, print; the last line is the ResNet-18 b16 INT8 speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed runs per variant and batch")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--diagnose", action="store_true",
                        help="also time the symmetric graph with shared Q parameters")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--spin", action="store_true",
                        help="let ORT threads spin-wait (its default; slower on a shared CPU)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]

    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, {args.rounds} rounds, "
          f"batches {batches}, spinning {'on' if args.spin else 'off'}")
    speedups: dict[tuple[str, str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="porter-bench-int8-") as tmp:
        workdir = Path(tmp)
        for arch in archs:
            paths = _build(arch, workdir, args.diagnose)
            times = _time(paths, batches, args.rounds, args.threads, args.spin)
            report = _report_latency(arch, paths, batches, times, args.threads, args.spin)
            for (v, b), r in report.items():
                speedups[(arch, v, b)] = r
        if not args.skip_accuracy:
            _accuracy(workdir)

    print("\nINT8 / FP32 speed-up (median of per-round ratios)")
    for (arch, v, b), r in speedups.items():
        if v != "fp32":
            print(f"  {arch} {v:12s} batch {b:3d}: {r:.2f}x")
    sym, asym = speedups.get(("resnet18", "int8", 16)), speedups.get(("resnet18", "uint8", 16))
    if sym is not None and asym is not None:
        print(f"resnet18 batch 16 INT8/FP32: {sym:.2f}x symmetric int8 (porter default, "
              f"TensorRT-ready), {asym:.2f}x uint8 (ORT CPU only); target >= 3.3x")


if __name__ == "__main__":
    main()
