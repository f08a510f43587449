"""port.engines.adapter: porter's canonical batch fed to graphs that take another form.

Real ONNX graphs (tests/e2e/foreign.py) on real ONNX Runtime: the adapted runner must give the
same logits for the NHWC / float64 / fixed-batch / [N,C,1,1] graph as a plain run of the same
graph fed by hand in its own form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from port.engines.adapter import AdaptedRunner, GraphIO
from port.engines.base import shape_mismatch
from port.engines.onnxrt import OnnxRuntimeRunner
from port.ground.errors import DataError
from tests.e2e.foreign import batch1, float64, nhwc, softmax_nc11

RNG = np.random.default_rng(0)
IMAGES = RNG.standard_normal((5, 3, 32, 32)).astype(np.float32)  # canonical NCHW, odd count


def _plain(path: Path, feed: np.ndarray) -> np.ndarray:
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as runner:
        name = runner.input_metadata()[0].name
        return runner.infer({name: feed})[runner.output_names()[0]]


def _adapted(path: Path, images: np.ndarray) -> tuple[np.ndarray, AdaptedRunner]:
    io = GraphIO.for_onnx(path)
    runner = AdaptedRunner(OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]), io=io)
    with runner:
        return runner.infer({io.input_name: images})[runner.logits_output()], runner


def test_nhwc_graph_gets_the_transposed_batch(tmp_path: Path) -> None:
    path = nhwc(tmp_path)
    got, runner = _adapted(path, IMAGES)
    np.testing.assert_array_equal(got, _plain(path, IMAGES.transpose(0, 2, 3, 1).copy()))
    assert runner.io is None  # released on exit
    assert GraphIO.for_onnx(path).canonical_meta().shape == (None, 3, 32, 32)


def test_float64_graph_gets_a_cast_batch(tmp_path: Path) -> None:
    path = float64(tmp_path)
    got, _ = _adapted(path, IMAGES)
    np.testing.assert_array_equal(got, _plain(path, IMAGES.astype(np.float64)))


def test_fixed_batch_graph_runs_in_padded_chunks_and_drops_the_padding(tmp_path: Path) -> None:
    path = batch1(tmp_path)
    io = GraphIO.for_onnx(path)
    assert io.batch == 1
    got, _ = _adapted(path, IMAGES)
    want = np.concatenate([_plain(path, IMAGES[i:i + 1]) for i in range(len(IMAGES))])
    assert got.shape == (5, 10)
    np.testing.assert_array_equal(got, want)


def test_padding_repeats_a_real_image_and_is_dropped() -> None:
    io = GraphIO(input_name="x", batch=4)
    chunks = list(io.chunks(IMAGES))
    assert [real for _, real in chunks] == [4, 1]
    last, _ = chunks[1]
    assert last.shape == (4, 3, 32, 32)
    assert all(np.array_equal(last[i], IMAGES[4]) for i in range(4))
    seen = io.run(lambda feed: {"y": feed["x"].reshape(len(feed["x"]), -1)[:, :2]}, IMAGES)
    np.testing.assert_array_equal(seen["y"], IMAGES.reshape(5, -1)[:, :2])


def test_nc11_softmax_head_is_squeezed(tmp_path: Path) -> None:
    path = softmax_nc11(tmp_path)
    got, _ = _adapted(path, IMAGES)
    want = _plain(path, IMAGES)
    assert want.shape == (5, 10, 1, 1) and got.shape == (5, 10)
    np.testing.assert_array_equal(got, want[:, :, 0, 0])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_wrong_channels_or_size_are_named(tmp_path: Path) -> None:
    io = GraphIO.for_onnx(nhwc(tmp_path))
    with pytest.raises(DataError, match=r"1 channel.*takes 3 \(colour\)"):
        io.check(IMAGES[:, :1])
    with pytest.raises(DataError, match=r"16x16 px.*32x32 px"):
        io.check(IMAGES[:, :, :16, :16])


@pytest.mark.parametrize(("got", "want", "named"), [
    ((8, 3, 32, 32), (None, 32, 32, 3), "takes NHWC"),
    ((8, 32, 32, 3), (None, 3, 32, 32), "takes NCHW"),
    ((8, 3, 32, 32), (1, 3, 32, 32), "fixed batch of 1"),
    ((8, 3, 28, 28), (None, 1, 28, 28), "takes 1 channel"),
    ((8, 3, 64, 64), (None, 3, 32, 32), "resize/crop"),
])
def test_shape_mismatch_names_the_real_difference(got: tuple, want: tuple, named: str) -> None:
    line = shape_mismatch(got, want)
    assert named in line
    assert ("resize/crop" in line) == (named == "resize/crop")


def test_cardless_onnx_is_fed_as_its_signature_says(tmp_path: Path) -> None:
    """An imported ONNX has no porter card in its metadata: the graph's own signature decides."""
    from port.engines.adapter import adapt

    path = nhwc(tmp_path)
    with adapt(OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"])) as runner:
        assert runner.io is not None and runner.io.layout == "NHWC"
        got = runner.infer({"image": IMAGES})[runner.logits_output()]
    np.testing.assert_array_equal(got, _plain(path, IMAGES.transpose(0, 2, 3, 1).copy()))


def test_a_card_that_contradicts_the_graph_is_refused_and_releases_the_runner(
        tmp_path: Path) -> None:
    from port.data.preprocess import Preprocess
    from port.ground.errors import ModelError
    from port.models.card import ModelCard

    card = ModelCard(arch="x", num_classes=10, classes=[str(i) for i in range(10)],
                     preprocess=Preprocess.for_size(32, (0.5,), (0.2,)), channels=1,
                     input_name="image")
    inner = OnnxRuntimeRunner(batch1(tmp_path), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelError, match=r"3 channels .* card says 1"):
        AdaptedRunner(inner, card).activate()
    assert not inner.is_active


def test_latency_is_timed_on_the_graph_form_not_the_conversion(tmp_path: Path) -> None:
    # evaluate times timed_form(): the inner runner on a feed converted once, outside the loop.
    path = nhwc(tmp_path)
    io = GraphIO.for_onnx(path)
    inner = OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"])
    with AdaptedRunner(inner, io=io) as runner:
        timed, feed = runner.timed_form({io.input_name: IMAGES})
        assert timed is inner
        assert feed[io.input_name].shape == (5, 32, 32, 3)
        assert feed[io.input_name].flags.c_contiguous
    fixed = batch1(tmp_path / "b1")
    io1 = GraphIO.for_onnx(fixed)
    with AdaptedRunner(OnnxRuntimeRunner(fixed, providers=["CPUExecutionProvider"]),
                       io=io1) as runner:
        # More images than the fixed batch: several graph runs, so the adapter itself is timed.
        timed, _ = runner.timed_form({io1.input_name: IMAGES})
        assert timed is runner
