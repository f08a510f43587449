"""INT8 on ONNX Runtime's CPU kernels: accuracy and speed on this CPU and on one without VNNI.

Why: ONNX Runtime's x86 int8 kernels saturate on CPUs without VNNI (see port/engines/int8_cpu.py),
so the same INT8 file scores differently on such a CPU. This script measures, side by side:

- ``fp32``: porter's FP32 ONNX of a ResNet-9 trained by ``porter train`` on real CIFAR-10 images
  (500 per class from ../shared/data, 4 epochs; reused from .cache/ once trained);
- ``full/fast``: porter's default INT8 QDQ graph (full-range weights: the TensorRT form) on ORT's
  default kernels;
- ``full/exact``: the same file with ``session.x64quantprecision=1`` (ORT's exact U8U8 kernels,
  what ``porter evaluate`` uses where the CPU saturates);
- ``7bit/fast``: ``porter export --int8-weights 7bit`` (|w| <= 64) on the default kernels.

Top-1 is on 1,000 real CIFAR-10 test images. Each variant is run natively (this CPU) and, when
``qemu-x86_64`` is installed (Debian package ``qemu-user``), under ``qemu-x86_64 -cpu Haswell``:
an emulated AVX2 CPU without AVX-512 or VNNI, which ORT's CPUID dispatch sees as such, so its
saturating kernels really run. Emulated timings are meaningless and not shown; native latency is
the median over interleaved rounds at batch 16 (ratios side by side, one process).

    .venv/bin/python bench/int8_cpu_kernels.py [--rounds 15] [--no-emulation] [--epochs 4]

Last line: top-1 of each variant natively and emulated, and the exact/fast latency ratio here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared/data/cifar10-jpeg.tar.gz"
DATA = REPO / ".cache" / "cifar10-subset-500-100"
PER_CLASS = {"train": 500, "test": 100}
VARIANTS = (("fp32", "model.fp32.onnx", False), ("full/fast", "model.int8.onnx", False),
            ("full/exact", "model.int8.onnx", True), ("7bit/fast", "model.int8-7bit.onnx", False))


def _porter(*args: str) -> None:
    subprocess.run([str(REPO / ".venv/bin/porter"), *args], check=True, cwd=REPO)


def prepare(work: Path, epochs: int) -> None:
    """Train (once), export FP32 + INT8 (full and 7-bit), save the preprocessed test images."""
    import numpy as np

    from port.data.archive import extract_imagefolder_archive
    from port.data.datasets import load_split, materialize
    from port.data.spec import parse_data_spec
    from port.models.checkpoint import load_model

    data = extract_imagefolder_archive(ARCHIVE, DATA, per_class=PER_CLASS)
    run = REPO / ".cache" / f"bench-int8-cpu-resnet9-e{epochs}"
    if not (run / "model.pt").is_file():
        shutil.rmtree(run, ignore_errors=True)
        _porter("train", "--run", str(run), "--data", str(data), "--recipe", "quick",
                "--limit", "5000", "--val-limit", "1000", "--epochs", str(epochs), "--width",
                "0.5")
    for extra in ([], ["--precision", "int8", "--calib-images", "256"]):
        _porter("export", "--run", str(run), "--to", "onnx", *extra)
    seven = run.parent / f"{run.name}-7bit"
    shutil.rmtree(seven, ignore_errors=True)
    shutil.copytree(run, seven)
    _porter("export", "--run", str(seven), "--to", "onnx", "--precision", "int8",
            "--calib-images", "256", "--int8-weights", "7bit")
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "model.fp32.onnx", work / "model.fp32.onnx")
    shutil.copy(run / "model.int8.onnx", work / "model.int8.onnx")
    shutil.copy(seven / "model.int8.onnx", work / "model.int8-7bit.onnx")
    _, card, _ = load_model(run / "model.pt")
    split = load_split(parse_data_spec(str(data)), "val", preprocess=card.preprocess, limit=1000,
                       seed=0)
    images, labels = materialize(split)
    np.save(work / "images.npy", images)
    np.save(work / "labels.npy", labels)


def worker(work: Path, rounds: int) -> dict:
    """Top-1 of every variant, and (rounds > 0) interleaved batch-16 latency. ORT only."""
    import numpy as np
    import onnxruntime as ort

    from port.ground.cpu import describe

    images, labels = np.load(work / "images.npy"), np.load(work / "labels.npy")
    sessions = {}
    for name, file, exact in VARIANTS:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if exact:
            options.add_session_config_entry("session.x64quantprecision", "1")
        sessions[name] = ort.InferenceSession(str(work / file), options,
                                              providers=["CPUExecutionProvider"])
    top1 = {}
    for name, sess in sessions.items():
        logits = np.concatenate([sess.run(None, {"input": images[i:i + 100]})[0]
                                 for i in range(0, len(images), 100)])
        top1[name] = float(np.mean(logits.argmax(1) == labels))
    times: dict[str, list[float]] = {name: [] for name in sessions}
    batch = {"input": images[:16]}
    for sess in sessions.values():  # warm-up
        for _ in range(5):
            sess.run(None, batch)
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for name in order:
            start = time.perf_counter()
            for _ in range(5):
                sessions[name].run(None, batch)
            times[name].append((time.perf_counter() - start) / 5 * 1e3)
    latency = {k: statistics.median(v) for k, v in times.items() if v}
    return {"cpu": describe(), "top1": top1, "latency_ms": latency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-emulation", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rounds)))
        return
    work = REPO / ".cache" / "bench-int8-cpu-files"
    prepare(work, args.epochs)
    script = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work)]
    results = {"native": json.loads(subprocess.run(
        [*script, "--rounds", str(args.rounds)], check=True, capture_output=True, text=True,
        cwd=REPO).stdout.strip().splitlines()[-1])}
    qemu = shutil.which("qemu-x86_64")
    if qemu and not args.no_emulation:
        out = subprocess.run([qemu, "-cpu", "Haswell", *script, "--rounds", "0"], check=True,
                             capture_output=True, text=True, cwd=REPO)
        results["emulated Haswell"] = json.loads(out.stdout.strip().splitlines()[-1])
    elif not args.no_emulation:
        print("qemu-x86_64 not found (apt install qemu-user): no emulated non-VNNI run")
    for where, res in results.items():
        print(f"\n{where}: {res['cpu']}")
        for name, _, _ in VARIANTS:
            lat = res["latency_ms"].get(name)
            print(f"  {name:<11} top-1 {res['top1'][name]:.4f}"
                  + (f"   batch-16 latency {lat:7.2f} ms" if lat else ""))
    native = results["native"]
    lat = native["latency_ms"]
    summary = "; ".join(
        f"{where}: " + ", ".join(f"{k} {v:.3f}" for k, v in res["top1"].items())
        for where, res in results.items())
    ratio = lat["full/exact"] / lat["full/fast"] if lat else float("nan")
    print(f"\nINT8 top-1 {summary}; exact/fast kernel latency here {ratio:.2f}x, "
          f"7bit/full fast {lat['7bit/fast'] / lat['full/fast']:.2f}x")


if __name__ == "__main__":
    main()
