"""A BGR model (OpenCV, Caffe) gets its channels swapped by every preprocessing path porter has.

Its mean/std are given in its own B,G,R order; the swap happens before they are applied, so a
BGR model fed by porter computes what its RGB twin (first layer's input channels reversed)
computes on the same images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

from port.data.preprocess import Preprocess
from tests.inprocess import cli
from tests.onnx_graphs import graph_model

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _images(folder: Path, count: int = 6) -> list[Path]:
    return sorted(folder.glob("test/*/*.jpg"))[:count]


def test_every_preprocessing_path_swaps_to_bgr(cifar_subset_dir: Path) -> None:
    from port.data.datasets import _normalise_uint8
    from port.data.pixels import preprocess_images
    from port.data.transforms import eval_transform

    rgb = Preprocess.for_size(32, MEAN, STD)
    bgr = replace(Preprocess.for_size(32, MEAN[::-1], STD[::-1]), color_order="BGR")
    paths = _images(cifar_subset_dir)
    want = preprocess_images(paths, rgb)[:, ::-1]  # same numbers, channels in B,G,R order
    # The torch-free path (evaluate's stream, port.load, calibration of imported models).
    assert np.array_equal(preprocess_images(paths, bgr), want)
    # torchvision's per-image transform (state-dict references, training's eval pass).
    per_image = np.stack([eval_transform(bgr)(Image.open(p)).numpy() for p in paths])
    assert np.array_equal(per_image, want)
    # The vectorised in-memory path (cifar10 arrays).
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert np.array_equal(_normalise_uint8(pixels, bgr).numpy(), want)
    assert not np.array_equal(preprocess_images(paths, replace(bgr, color_order="RGB")), want)


def test_bgr_model_evaluates_like_its_rgb_twin(cifar_subset_dir: Path, tmp_path: Path) -> None:
    model = graph_model(["N", 3, 32, 32], ["N", 10])
    onnx.save(model, tmp_path / "rgb.onnx")
    # The twin reads B,G,R: its 1x1 conv's input channels reversed.
    weights = {t.name: t for t in model.graph.initializer}
    w = numpy_helper.to_array(weights["w"])
    weights["w"].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, ::-1]), "w"))
    onnx.save(model, tmp_path / "bgr.onnx")

    logits = {}
    for name, order, mean, std in (("rgb", "RGB", MEAN, STD), ("bgr", "BGR", MEAN[::-1],
                                                                   STD[::-1])):
        run = tmp_path / f"run-{name}"
        got = cli("import", tmp_path / f"{name}.onnx", "--run", run, "--data", cifar_subset_dir,
                  "--color-order", order, "--mean", ",".join(map(str, mean)),
                  "--std", ",".join(map(str, std)))
        assert got.code == 0, got.err
        got = cli("evaluate", "--run", run, "--limit", "40", "--batch-sizes", "1",
                  "--workers", "0")
        assert got.code == 0, got.err
        with np.load(run / "report" / "outputs.npz") as outputs:
            logits[name] = outputs["logits/model@onnxruntime"]
    # Same model, same images: only the order of a 3-term sum differs.
    np.testing.assert_allclose(logits["bgr"], logits["rgb"], rtol=0, atol=1e-5)
    assert np.array_equal(logits["bgr"].argmax(1), logits["rgb"].argmax(1))
