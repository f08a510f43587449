"""Peak memory and wall time of `porter evaluate` on 1,000 / 5,000 / 20,000 images at 224 px.

Makes a temporary ImageFolder of CIFAR-10 test JPEGs upscaled to 224x224 (from /work/cifar10, or
the CIFAR-10 JPEG archive elsewhere; images are reused in turn when more are asked for than the
source has), imports a small ONNX classifier with a 224 px input as the run's reference (four
strided convolutions + global average pool + linear, ~0.02 GFLOPs per image: the point is the
data path, not the model), then for each image count runs, as separate processes:

- porter: ``porter evaluate --run R --data DIR_N --batch-sizes 32 [--workers W]``;
- bare: this file with ``--bare DIR_N``: list the files like ImageFolder, decode, resize and crop
  them with Pillow in the same number of spawned worker processes (uint8 back, as porter's
  workers send), normalise with numpy in place into one reused buffer (porter's arithmetic), feed
  ONNX Runtime batches of 32 (the same session settings), take the top-1, then time batch 32 as
  porter does
  (``_bare_latency`` of bench/evaluate_vs_bare_ort.py, same warm-up/min runs/min seconds).

Per run it prints peak RSS (the process's own VmHWM, polled from /proc, and the process tree's
maximum from ``wait4``), RSS per image, and wall time; last, the spread of porter's RSS per image
from the smallest to the largest count (target: flat, within 10%) and porter's wall time over
bare per count, the median of the back-to-back pairs (target <= 1.15).

    .venv/bin/python bench/evaluate_memory.py [--counts 1000,5000,20000] [--workers N]
                                              [--repeats 3] [--warmup 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

SIZE = 224  # image and model input size
BATCH = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_DIRS = (Path("/work/cifar10/test"),)


# -- data ------------------------------------------------------------------------------------------
def _source_images(tmp: Path) -> list[Path]:
    """CIFAR-10 test JPEGs, classes interleaved (so any prefix has every class): the unpacked
    set if present, else extracted from the archive."""
    root = next((r for r in CIFAR_DIRS if r.is_dir()), None)
    if root is None:
        from port.data.archive import extract_imagefolder_archive
        from tests.conftest import cifar_archive

        root = extract_imagefolder_archive(cifar_archive(), tmp / "cifar",
                                           per_class={"train": 1, "test": 1000}) / "test"
    per_class = [sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()]
    return [files[i] for i in range(max(map(len, per_class))) for files in per_class
            if i < len(files)]


def make_folder(root: Path, count: int, sources: list[Path]) -> Path:
    """``root/{train,val}/<class>/`` with ``count`` val images upscaled to 224 px (JPEG q90).

    Only the largest folder is written; smaller ones link to its first files per class.
    """
    from PIL import Image

    classes = sorted({p.parent.name for p in sources})
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = sources[i % len(sources)]
        out = root / "val" / src.parent.name / f"{i:06d}.jpg"
        with Image.open(src) as img:
            img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(out, quality=90)
    for name in classes:  # one training image per class: the layout porter expects
        first = next((root / "val" / name).iterdir())
        shutil.copy(first, root / "train" / name / first.name)
    return root


def link_subset(big: Path, root: Path, count: int) -> Path:
    """A folder whose val split holds the first ``count`` of ``big``'s images (symlinks)."""
    files = sorted((big / "val").rglob("*.jpg"), key=lambda p: p.name)[:count]
    shutil.copytree(big / "train", root / "train", symlinks=True)
    for f in files:
        (root / "val" / f.parent.name).mkdir(parents=True, exist_ok=True)
        (root / "val" / f.parent.name / f.name).symlink_to(f)
    return root


# -- model -----------------------------------------------------------------------------------------
def make_model(path: Path) -> Path:
    """A small 224 px ONNX classifier (10 classes), dynamic batch, input ``input``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 7, stride=4, padding=3), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                             "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return path


# -- the bare loop -----------------------------------------------------------------------------
def _bare_preprocess(paths: list[str]) -> np.ndarray:
    """Decode, RGB, resize the shorter side to 256 (bilinear), centre-crop 224: uint8 NHWC
    (a quarter of the bytes to send back, as porter's workers do; normalised by the caller)."""
    from PIL import Image

    resize = round(SIZE * 256 / 224)
    out = np.empty((len(paths), SIZE, SIZE, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = resize / min(w, h)
            img = img.resize((max(resize, int(w * scale)), max(resize, int(h * scale))),
                             Image.Resampling.BILINEAR)
            left, top = (img.width - SIZE) // 2, (img.height - SIZE) // 2
            out[i] = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)
    return out


def _bare_normalise(crops: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize as a careful script writes it: in place, into one reused buffer
    (the same float32 operations as porter, so the comparison is of everything around them)."""
    out = buffer[:len(crops)]
    np.copyto(out, crops.transpose(0, 3, 1, 2), casting="unsafe")
    out /= np.float32(255)
    out -= np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    out /= np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return out


def bare(folder: Path, model: Path, workers: int) -> None:
    """The whole evaluation as plainly as it can be written (run in its own process)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    import onnxruntime as ort

    from bench.evaluate_vs_bare_ort import _bare_latency

    val = folder / "val"
    classes = sorted(d.name for d in val.iterdir() if d.is_dir())
    files = [(str(p), c) for c, name in enumerate(classes)
             for p in sorted((val / name).iterdir())]
    labels = np.asarray([c for _, c in files])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    tasks = [[p for p, _ in files[i:i + BATCH]] for i in range(0, len(files), BATCH)]
    top1: list[np.ndarray] = []
    first = None

    def decoded() -> Iterator[np.ndarray]:
        if workers == 0:  # as porter's --workers 0: decode in this process
            yield from map(_bare_preprocess, tasks)
            return
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            ahead = 16  # batches decoding ahead of the one being run (porter: 2 chunks)
            futures = [pool.submit(_bare_preprocess, t) for t in tasks[:ahead]]
            for i in range(len(tasks)):
                yield futures[i].result()
                futures[i] = None  # type: ignore[call-overload]
                if i + ahead < len(tasks):
                    futures.append(pool.submit(_bare_preprocess, tasks[i + ahead]))

    buffer = np.empty((BATCH, 3, SIZE, SIZE), dtype=np.float32)
    for crops in decoded():
        batch = _bare_normalise(crops, buffer)
        first = batch.copy() if first is None else first
        top1.append(session.run(None, {"input": batch})[0].argmax(1))
    accuracy = float(np.mean(np.concatenate(top1) == labels))
    p50 = _bare_latency(session, {"input": first}, warmup=10, min_runs=20, min_seconds=1.0)
    print(f"bare: {len(files)} images, top-1 {accuracy:.4f}, p50 @{BATCH} {p50:.3f} ms")


# -- measuring a process -------------------------------------------------------------------------
def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd``; its wall time, own peak RSS (VmHWM, polled) and the tree's (wait4), MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    peak = [0]

    def poll() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.returncode is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except (OSError, ValueError):
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out = proc.stdout.read() if proc.stdout else b""  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    watcher.join(1)
    if proc.returncode not in (0, 1):  # 1: a gate failed, which this bench does not care about
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode()[-3000:]}")
    return {"wall_s": wall, "own_mb": peak[0] / 1024, "tree_mb": usage.ru_maxrss / 1024}


def main() -> None:
    """Make the data and the run, then measure porter and bare per count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,5000,20000")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes for both sides (default: porter's default)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="back-to-back pairs per count (sides alternate which goes first)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted runs of each side per count, first (caches, page cache)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="make/reuse the images and run here instead of a temporary folder")
    parser.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from port.data.stream import check_workers

    workers = check_workers(args.workers)
    if args.bare:
        bare(args.bare, args.model, workers)
        return

    counts = sorted(int(c) for c in args.counts.split(","))
    tmp_ctx = tempfile.TemporaryDirectory(prefix="porter-evalmem-") if args.keep is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else args.keep
    work.mkdir(parents=True, exist_ok=True)
    porter = str(Path(sys.executable).parent / "porter")
    try:
        big = work / f"images-{counts[-1]}"
        if not (big / "val").is_dir():
            t = time.perf_counter()
            make_folder(big, counts[-1], _source_images(work))
            print(f"made {counts[-1]} images of {SIZE}x{SIZE} in {time.perf_counter() - t:.0f} s")
        folders = {n: big if n == counts[-1] else work / f"images-{n}" for n in counts}
        for n, folder in folders.items():
            if not (folder / "val").is_dir():
                link_subset(big, folder, n)
        model = work / "small224.onnx"
        run = work / "run"
        if not (run / "manifest.json").is_file():
            make_model(model)
            subprocess.run([porter, "import", str(model), "--run", str(run), "--data", str(big),
                            "--image-size", str(SIZE), "--mean", ",".join(map(str, IMAGENET_MEAN)),
                            "--std", ",".join(map(str, IMAGENET_STD))], check=True,
                           stdout=subprocess.DEVNULL)
        print(f"model: 4 strided convs + avgpool + linear, {SIZE} px input (ONNX, "
              f"{model.stat().st_size / 1e3:.0f} kB); {workers} decoding worker(s); "
              f"{os.cpu_count()} CPUs")
        rows = []
        for n in counts:
            commands = {
                "porter": [porter, "evaluate", "--run", str(run), "--data", str(folders[n]),
                           "--batch-sizes", str(BATCH), "--workers", str(workers)],
                "bare": [sys.executable, __file__, "--bare", str(folders[n]), "--model",
                         str(model), "--workers", str(workers)]}
            for _ in range(args.warmup):
                for cmd in commands.values():
                    measure(cmd)
            for r in range(args.repeats):
                sides = ("porter", "bare") if r % 2 == 0 else ("bare", "porter")
                got = {side: measure(commands[side]) for side in sides}
                p, b = got["porter"], got["bare"]
                rows.append((n, p, b))
                print(f"{n:>6} images: porter {p['wall_s']:7.1f} s, peak RSS {p['own_mb']:6.0f} MB "
                      f"(tree {p['tree_mb']:.0f} MB) = {p['own_mb'] * 1024 / n:7.1f} kB/image | "
                      f"bare {b['wall_s']:7.1f} s, peak RSS {b['own_mb']:6.0f} MB | "
                      f"porter/bare wall {p['wall_s'] / b['wall_s']:.2f}")
        peaks = {n: max(p["own_mb"] for m, p, _ in rows if m == n) for n in counts}
        growth = peaks[counts[-1]] / peaks[counts[0]] - 1
        # The median of the pairs (each pair ran back to back, sides alternating per repeat):
        # on a shared machine single runs swing by 20-40%, the pairs much less.
        ratios = {n: float(np.median([p["wall_s"] / b["wall_s"] for m, p, b in rows if m == n]))
                  for n in counts}
        print(f"porter peak RSS {peaks[counts[0]]:.0f} MB at {counts[0]} images -> "
              f"{peaks[counts[-1]]:.0f} MB at {counts[-1]} ({growth:+.1%}; target within 10%: "
              f"{'yes' if abs(growth) <= 0.10 else 'NO'}); porter/bare wall: "
              + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items())
              + f" (median of {args.repeats} pair(s); target <= 1.15: "
              + ", ".join(f"{n} {'yes' if r <= 1.15 else 'NO'}" for n, r in ratios.items()) + ")")
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
