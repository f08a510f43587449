"""The TensorRT runner (port/engines/tensorrt.py) where no TensorRT/GPU is needed: clear refusals
and a clean state after them. Inference itself is tested in tests/gpu/test_trt_runner.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from port.engines.tensorrt import TensorRTRunner
from port.engines.trt_loaders import TENSORRT_MISSING
from port.ground.errors import BackendUnavailable

no_trt_only = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                 reason="this machine has TensorRT")


def test_a_runner_names_its_device_and_has_no_io_before_activate(tmp_path: Path) -> None:
    runner = TensorRTRunner(tmp_path / "m.engine", device_index=1)
    assert runner.device == "cuda:1" and runner.backend == "tensorrt"
    assert runner.input_metadata() == [] and runner.output_names() == []
    with pytest.raises(RuntimeError, match=r"time_phases\(\) called before activate\(\)"):
        runner.time_phases({})


@no_trt_only
def test_runner_without_tensorrt_is_backend_unavailable(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really a plan")
    runner = TensorRTRunner(engine)
    with pytest.raises(BackendUnavailable) as info:
        runner.activate()
    assert str(info.value) == TENSORRT_MISSING
    assert not runner.is_active
    runner.deactivate()  # nothing was acquired: deactivating is harmless
