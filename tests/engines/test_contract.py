"""The Runner contract, run against every registered runner.

The CPU backends run here; the TensorRT runner runs the same tests from
``tests/gpu/test_trt_contract.py`` (GPU-only tests live under tests/gpu/), which imports them
with its own ``make_runner`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from port import engines, formats
from port.engines.base import Runner
from port.ground.errors import BackendUnavailable, UsageError
from tests.engines.tiny import Tiny

# Max abs logit difference to eager torch; TensorRT picks its own kernels (and summation order);
# OpenVINO's bf16/f16 entries compute in 8/11-bit mantissas on purpose.
TOLERANCE = {"torch": 1e-5, "onnxruntime": 1e-4, "openvino": 1e-4, "openvino-bf16": 0.1,
             "openvino-f16": 0.05, "tensorrt": 1e-3}

# Every registered backend that needs no GPU runs the contract here; GPU ones run the same tests
# from tests/gpu/test_trt_contract.py with their own make_runner fixture.
BACKENDS = [name for name, entry in formats.BACKENDS.items() if entry.hardware is None]
GPU_BACKENDS = [name for name, entry in formats.BACKENDS.items() if entry.hardware is not None]


def test_every_registered_runner_is_covered() -> None:
    assert set(BACKENDS) | set(GPU_BACKENDS) == set(engines.RUNNERS)
    assert set(TOLERANCE) == set(engines.RUNNERS)  # a new backend states how close it must be
    assert "openvino" in BACKENDS and GPU_BACKENDS == ["tensorrt"]


@pytest.fixture(params=BACKENDS)
def make_runner(request: pytest.FixtureRequest, tiny: Tiny) -> Callable[[], Runner]:
    """A factory of fresh, inactive runners for the backend under test, built by engines.load;
    a backend this machine cannot run (not installed, no bf16/f16 arithmetic) skips, saying
    why."""
    name = request.param
    path = tiny.checkpoint if name == "torch" else tiny.onnx
    if not engines.available(name):
        pytest.skip(f"{name} is not installed here")
    probe = engines.load(path, backend=name)
    try:
        probe.activate()
    except BackendUnavailable as exc:
        pytest.skip(f"{name} cannot run here: {exc}")
    finally:
        probe.deactivate()
    return lambda: engines.load(path, backend=name)


def test_activate_and_deactivate_are_idempotent(make_runner: Callable[[], Runner]) -> None:
    runner = make_runner()
    assert not runner.is_active
    runner.activate()
    runner.activate()
    assert runner.is_active
    assert isinstance(runner.device, str) and runner.device
    runner.deactivate()
    runner.deactivate()
    assert not runner.is_active
    runner.activate()  # a deactivated runner can be brought back
    assert runner.is_active
    runner.deactivate()


def test_context_manager_activates_and_releases(make_runner: Callable[[], Runner],
                                                tiny: Tiny) -> None:
    runner = make_runner()
    with runner as active:
        assert active is runner and runner.is_active
        name = runner.input_metadata()[0].name
        runner.infer({name: tiny.images[:1]})
    assert not runner.is_active


def test_infer_before_activate_raises(make_runner: Callable[[], Runner], tiny: Tiny) -> None:
    runner = make_runner()
    with pytest.raises(RuntimeError, match="before activate"):
        runner.infer({tiny.card.input_name: tiny.images[:1]})


def test_input_metadata_has_a_dynamic_batch(make_runner: Callable[[], Runner],
                                            tiny: Tiny) -> None:
    with make_runner() as runner:
        (meta,) = runner.input_metadata()
    assert meta.name == tiny.card.input_name
    assert meta.dtype == np.float32
    assert meta.shape == (None, *tiny.card.input_shape)


@pytest.mark.parametrize("batch", [1, 3])
def test_infer_returns_logits_for_the_batch(make_runner: Callable[[], Runner], tiny: Tiny,
                                            batch: int) -> None:
    x = tiny.images[:batch]
    with make_runner() as runner:
        out = runner.infer({tiny.card.input_name: x})
    assert list(out) == [tiny.card.output_name]
    logits = out[tiny.card.output_name]
    assert logits.shape == (batch, tiny.card.num_classes)
    assert logits.dtype == np.float32
    diff = float(np.max(np.abs(logits - tiny.expected(x))))
    assert diff < TOLERANCE[runner.backend], f"{runner.backend} differs from torch by {diff}"


def test_bad_feeds_are_usage_errors(make_runner: Callable[[], Runner], tiny: Tiny) -> None:
    name = tiny.card.input_name
    x = tiny.images[:1]
    bad = {
        "wrong name": {"image": x},
        "extra name": {name: x, "mask": x},
        "no inputs": {},
        "wrong shape": {name: np.zeros((1, 3, 16, 16), np.float32)},
        "wrong rank": {name: x[0]},
        "wrong dtype": {name: x.astype(np.float64)},
    }
    with make_runner() as runner:
        for what, feed in bad.items():
            with pytest.raises(UsageError) as e:
                runner.infer(feed)
            assert "\n" not in str(e.value), what
        runner.infer({name: x})  # still usable after rejected feeds


def test_name_outputs_and_the_logits_output(make_runner: Callable[[], Runner],
                                            tiny: Tiny) -> None:
    runner = make_runner()
    assert runner.backend in runner.name and runner.name  # a label for reports and errors
    with runner:
        (out,) = runner.output_metadata()
        assert out.name == tiny.card.output_name == runner.logits_output()
        assert out.dtype == np.float32
        assert out.shape[-1] == tiny.card.num_classes and out.shape[0] in (None, -1)


def test_unchecked_infer_skips_only_the_check(make_runner: Callable[[], Runner],
                                              tiny: Tiny) -> None:
    # The latency loop checks a feed once, then times infer(feed, check_inputs=False).
    x = tiny.images[:2]
    feed = {tiny.card.input_name: x}
    with make_runner() as runner:
        checked = runner.infer(feed)[tiny.card.output_name]
        unchecked = runner.infer(feed, check_inputs=False)[tiny.card.output_name]
        np.testing.assert_array_equal(checked, unchecked)
        with pytest.raises(UsageError):
            runner.infer({"image": x})  # checked by default


def test_optional_hooks_have_declared_defaults(make_runner: Callable[[], Runner],
                                               tiny: Tiny) -> None:
    feed = {tiny.card.input_name: tiny.images[:1]}
    with make_runner() as runner:
        runner.synchronize()
        phases = runner.time_phases(feed, runs=2)
        # Only backends that can split transfer from compute answer; the others say None.
        if runner.backend == "tensorrt":
            assert phases is not None and phases["compute_ms"] > 0
        else:
            assert phases is None
        assert isinstance(runner.details(), dict)
