"""Classify every image in a folder with a porter ONNX export, using only ``port.load``.

Needs onnxruntime, numpy, Pillow and porter's source (no torch):

    python examples/python/classify_folder.py runs/demo/model.fp32.onnx photos/ [--top-k 3]

Prints the top classes of each image and the throughput (images/s, preprocessing included).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import port

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}


def main() -> int:
    """Parse the arguments, classify the folder, print results and images/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="porter ONNX file (model.fp32.onnx, ...)")
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="images per inference call")
    args = parser.parse_args()

    images = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not images:
        print(f"no images in {args.folder}", file=sys.stderr)
        return 2
    with port.load(args.model) as predictor:
        start = time.perf_counter()
        results = []
        for i in range(0, len(images), args.batch):
            results += predictor.predict(images[i:i + args.batch], top_k=args.top_k)
        seconds = time.perf_counter() - start
    for path, result in zip(images, results, strict=True):
        top = ", ".join(f"{c} {p:.1%}" for c, p in zip(result.classes, result.probabilities,
                                                         strict=True))
        print(f"{path}: {top}")
    print(f"{len(images)} images in {seconds:.2f} s: {len(images) / seconds:.1f} images/s "
          f"({predictor.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
