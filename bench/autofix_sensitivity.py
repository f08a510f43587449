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
from port.export.sensitivity import candidate_nodes, fp32_unit, rank_layers
from port.models.card_codec import read_card


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


def without_quantization(converted: onnx.ModelProto, fp32: onnx.ModelProto,
                         unit: list[str], layer: str) -> onnx.ModelProto:
    """``converted`` with ``unit`` reading FP32 (graph surgery, no re-calibration).

    Every DequantizeLinear input of the unit's nodes is bypassed (a weight's by the FP32
    initializer, an activation's by the tensor before its QuantizeLinear), and the readers of
    ``layer``'s quantized output read its FP32 output instead.
    """
    model = onnx.ModelProto()
    model.CopyFrom(converted)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    for node in graph.node:
        if node.name not in unit:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in inits:  # a quantized weight: the FP32 one of the same input slot
                original = fp32_nodes[node.name].input[i]
                if original not in inits:
                    graph.initializer.append(fp32_inits[original])
                    inits.add(original)
                node.input[i] = original
            elif dq.input[0] in producer and producer[dq.input[0]].op_type == "QuantizeLinear":
                node.input[i] = producer[dq.input[0]].input[0]
    out = next(n for n in graph.node if n.name == layer).output[0]
    quantized = {n.output[0] for n in graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in producer
                 and producer[n.input[0]].op_type == "QuantizeLinear"
                 and producer[n.input[0]].input[0] == out}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in quantized:
                node.input[i] = out
    return model


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
        loo, t0 = {}, time.perf_counter()
        if args.precision == "int8":
            converted = onnx.load(str(start))
            sens = train[:args.sens]
            sens_ref = logits(args.model, sens)
            sens_base = rel_error(logits(start, sens), sens_ref)
            for r in ranking:
                path = Path(tmp) / "loo.onnx"
                onnx.save(without_quantization(converted, fp32,
                                               fp32_unit(fp32, r.node, "int8"), r.node),
                          str(path))
                loo[r.node] = sens_base - rel_error(logits(path, sens), sens_ref)
        loo_s = time.perf_counter() - t0
        brute, t0 = {}, time.perf_counter()
        for r in ranking:
            path = Path(tmp) / "one.onnx"
            convert(fp32_unit(fp32, r.node, args.precision), path)
            brute[r.node] = base - rel_error(logits(path, test), ref)
        brute_s = time.perf_counter() - t0

    print(f"{args.model.name} {args.precision}: logits rel. error {base:.4f} with no FP32 layer; "
          f"{len(ranking)} candidates; ranking {rank_s:.1f} s, brute force {brute_s:.1f} s")
    print(f"{'layer':40s} {'added (1 pass)':>15s} {'drop, no recalib.':>18s} "
          f"{'drop (brute)':>13s}")
    for r in ranking:
        print(f"{r.node:40s} {r.added:15.4f} {loo.get(r.node, float('nan')):18.4f} "
              f"{brute[r.node]:13.4f}")
    by_brute = sorted(brute, key=brute.__getitem__, reverse=True)
    nodes = [r.node for r in ranking]
    if loo:
        by_loo = sorted(loo, key=loo.__getitem__, reverse=True)
        print(f"leave-one-out without re-calibration ({loo_s:.1f} s) vs brute force: Spearman "
              f"{spearman([loo[n] for n in nodes], [brute[n] for n in nodes]):.3f}; top-1 same: "
              f"{by_loo[0] == by_brute[0]}; top-3 overlap: "
              f"{len(set(by_loo[:3]) & set(by_brute[:3]))}/3")
    print(f"one pass vs brute force: Spearman "
          f"{spearman([r.added for r in ranking], [brute[n] for n in nodes]):.3f}; "
          f"top-1 same: {nodes[0] == by_brute[0]}; top-3 overlap: "
          f"{len(set(nodes[:3]) & set(by_brute[:3]))}/3")


if __name__ == "__main__":
    main()
