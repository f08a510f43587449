"""The pycuda layer (port/engines/cuda.py) where no GPU is needed: buffer views, device info,
phase-time arithmetic, context misuse, and clear refusals without pycuda. What needs a GPU is in
tests/gpu/test_cuda.py."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from port.engines.cuda import (
    PYCUDA_MISSING,
    CudaContext,
    DeviceInfo,
    HostDeviceBuffer,
    PhaseTimes,
    device_count,
    import_driver,
)
from port.ground.errors import BackendUnavailable

no_pycuda_only = pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None,
                                    reason="this machine has pycuda")


def _buffer(count: int, dtype: type = np.float32) -> HostDeviceBuffer:
    """A buffer whose host side is ordinary memory (the view logic does not care it is not
    pinned) and that has no device side."""
    host = np.zeros(count, dtype)
    return HostDeviceBuffer(host=host, device=None, nbytes=host.nbytes)


def test_buffer_views_are_shaped_prefixes_of_the_host_array() -> None:
    buf = _buffer(32 * 3)
    view = buf.view((2, 3))
    assert view.shape == (2, 3) and np.shares_memory(view, buf.host)
    view[:] = 7
    assert buf.host[:6].tolist() == [7] * 6 and buf.host[6] == 0
    assert buf.view((32, 3)).shape == (32, 3)  # the whole buffer


def test_a_view_larger_than_the_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="needs 99 elements, the buffer holds 96"):
        _buffer(96).view((33, 3))


def test_free_without_a_device_side_is_a_no_op() -> None:
    buf = _buffer(4)
    buf.free()
    buf.free()
    assert buf.device is None


def test_device_info_formats_its_compute_capability() -> None:
    info = DeviceInfo(index=0, name="NVIDIA L4", compute_capability=(8, 9), total_memory=1 << 34)
    assert info.cc_text == "8.9"


def test_phase_times_average_per_phase() -> None:
    samples = [
        PhaseTimes(h2d_ms=1.0, compute_ms=4.0, d2h_ms=0.5, total_ms=5.5),
        PhaseTimes(h2d_ms=3.0, compute_ms=2.0, d2h_ms=1.5, total_ms=6.5),
    ]
    mean = PhaseTimes.mean(samples)
    assert mean == PhaseTimes(h2d_ms=2.0, compute_ms=3.0, d2h_ms=1.0, total_ms=6.0)
    assert mean.to_dict() == {"h2d_ms": 2.0, "compute_ms": 3.0, "d2h_ms": 1.0, "total_ms": 6.0}
    with pytest.raises(ValueError, match="at least one sample"):
        PhaseTimes.mean([])


def test_a_context_must_be_opened_before_use_and_closing_an_unopened_one_is_harmless() -> None:
    ctx = CudaContext(0)
    assert not ctx.is_open
    with pytest.raises(RuntimeError, match=r"active\(\) before open\(\)"), ctx.active():
        pass
    ctx.close()
    assert not ctx.is_open


@no_pycuda_only
def test_without_pycuda_every_entry_point_names_it() -> None:
    for call in (import_driver, device_count, CudaContext(0).open):
        with pytest.raises(BackendUnavailable) as info:
            call()
        assert str(info.value) == PYCUDA_MISSING
