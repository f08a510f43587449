"""Does the one-pass sensitivity ranking pick the layers that brute force would?

``port.export.sensitivity.rank_layers`` ranks every candidate layer of a converted graph from one
run of the FP32 and the converted graph (the error each layer adds). The brute-force alternative
converts the graph once per layer with only that layer's FP32 unit kept in FP32 and measures how
much the logits' error (relative L2 against FP32) drops, on held-out images. This script computes
both for one FP32 ONNX and prints them side by side with their Spearman rank correlation and the
overlap of their top-3.

    .venv/bin/python bench/autofix_sensitivity.py [MODEL.fp32.onnx --data DIR] \
        [--precision int8] [--calib 256] [--sens 64] [--heldout 500]

DIR is an ImageFolder with train/ and test/ (or val/) splits, e.g. /work/cifar10. The model's
preprocessing comes from its porter metadata. Without a model (``make bench``) it builds the
small model of tests/export/test_autofix.py, clean and with its planted faults, on the tests'
real CIFAR-10 subset, and compares both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from port.data.datasets import load_split, materialize
from port.data.spec import parse_data_spec
from port.export.metadata import read_card
from port.export.sensitivity import candidate_nodes, fp32_unit, rank_layers


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    """Logits of the graph at ``path`` on ORT's CPU provider (batches of 64)."""
    from port.engines.onnxrt import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as runner:
        name = runner.input_metadata()[0].name
        out = runner.logits_output()
        return np.concatenate([runner.infer({name: images[i:i + 64]})[out]
                               for i in range(0, len(images), 64)])


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref||."""
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (no ties expected in float errors)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main() -> None:
    """Rank, brute-force, compare, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--data")
    parser.add_argument("--precision", default="int8", choices=("int8", "fp16"))
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--sens", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=500)
    args = parser.parse_args()
    if args.model is None:
        with tempfile.TemporaryDirectory() as tmp:
            args.data = str(_subset())
            for plant in (False, True):
                args.model = _featnet(Path(tmp), args.data, plant)
                compare(args)
        return
    if not args.data:
        parser.error("--data DIR is needed with a model")
    compare(args)


def _subset() -> Path:
    """The tests' real CIFAR-10 subset (extracted from the archive once, cached in .cache/)."""
    from port.data.archive import extract_imagefolder_archive
    from tests.conftest import SUBSET_DIR, SUBSET_PER_CLASS, cifar_archive

    return extract_imagefolder_archive(cifar_archive(), SUBSET_DIR, per_class=SUBSET_PER_CLASS)


def _featnet(tmp: Path, data: str, plant: bool) -> Path:
    """The tests' small model (random convolutions, real BN statistics, fitted head) as ONNX."""
    from port.export.onnx import export_onnx
    from port.models.card import ModelCard
    from tests.export.test_autofix import _planted_model

    train = load_split(parse_data_spec(data), "train", seed=0)
    x, y = materialize(train)
    card = ModelCard(arch="featnet", num_classes=10, classes=train.classes,
                     preprocess=train.preprocess)
    path = tmp / f"featnet-{'planted' if plant else 'clean'}.onnx"
    export_onnx(_planted_model(x, y, plant=plant), card, path, sample=x[:8],
                exporter="torchscript")
    return path


def compare(args: argparse.Namespace) -> None:
    """Rank one model's layers both ways and print the comparison."""
    card = read_card(args.model)
    spec = parse_data_spec(args.data)
    train, _ = materialize(load_split(spec, "train", preprocess=card.preprocess,
                                      limit=max(args.calib, args.sens), seed=0))
    test, _ = materialize(load_split(spec, "val", preprocess=card.preprocess,
                                     limit=args.heldout, seed=0))
    fp32 = onnx.load(str(args.model))
    ref = logits(args.model, test)

    def convert(nodes: list[str], out: Path) -> None:
        if args.precision == "int8":
            from port.export.quantize import quantize_int8

            quantize_int8(args.model, out, train[:args.calib], exclude_nodes=nodes,
                          progress=False)
        else:
            from port.export.fp16 import convert_fp16

            convert_fp16(args.model, out, keep_fp32=nodes, sample_images=test[:32])

    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp) / "start.onnx"
        convert([], start)
        base = rel_error(logits(start, test), ref)
        t0 = time.perf_counter()
        candidates = candidate_nodes(fp32, args.precision)
        ranking = rank_layers(args.model, start, train[:args.sens], candidates, args.precision)
        rank_s = time.perf_counter() - t0
        brute, t0 = {}, time.perf_counter()
        for r in ranking:
            path = Path(tmp) / "one.onnx"
            convert(fp32_unit(fp32, r.node, args.precision), path)
            brute[r.node] = base - rel_error(logits(path, test), ref)
        brute_s = time.perf_counter() - t0

    print(f"{args.model.name} {args.precision}: logits rel. error {base:.4f} with no FP32 layer; "
          f"{len(ranking)} candidates; ranking {rank_s:.1f} s, brute force {brute_s:.1f} s")
    print(f"{'layer':48s} {'added (1 pass)':>15s} {'logit err drop (brute)':>23s}")
    for r in ranking:
        print(f"{r.node:48s} {r.added:15.4f} {brute[r.node]:23.4f}")
    by_brute = sorted(brute, key=brute.__getitem__, reverse=True)
    top = [r.node for r in ranking[:3]]
    print(f"Spearman rank correlation: "
          f"{spearman([r.added for r in ranking], [brute[r.node] for r in ranking]):.3f}; "
          f"top-1 same: {ranking[0].node == by_brute[0]}; top-3 overlap: "
          f"{len(set(top) & set(by_brute[:3]))}/3")


if __name__ == "__main__":
    main()
