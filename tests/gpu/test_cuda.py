"""The pycuda layer on a real GPU (port/engines/cuda.py): owned contexts, pinned buffers, phase
events. Its GPU-free parts are tested in tests/engines/test_cuda.py."""

from __future__ import annotations

import numpy as np
import pytest

from port.engines.cuda import (
    CudaContext,
    PhaseEvents,
    device_count,
    device_info,
    host_device_buffer,
    import_driver,
)
from port.ground.errors import UsageError

pytestmark = pytest.mark.gpu
GPU_NEEDS = "pycuda"  # tests/gpu/conftest.py: pycuda and a CUDA GPU, no TensorRT


def test_device_info_names_the_gpu_and_refuses_a_missing_index() -> None:
    info = device_info(0)
    assert info.name and info.compute_capability >= (5, 0) and info.total_memory > 0
    count = device_count()
    with pytest.raises(UsageError, match=f"CUDA device {count} does not exist"):
        device_info(count)


@pytest.mark.parametrize("primary", [True, False])
def test_contexts_open_push_pop_and_close_cleanly(primary: bool) -> None:
    cuda = import_driver()
    ctx = CudaContext(0, primary=primary).open()
    assert ctx.is_open and ctx.info is not None
    with ctx.active(), ctx.active():  # re-entrant
        assert cuda.Context.get_current() is not None
    ctx.synchronize()
    with pytest.raises(RuntimeError, match="while the context is pushed"), ctx.active():
        ctx.close()
    ctx.close()
    assert not ctx.is_open


def test_pinned_buffers_round_trip_and_events_time_the_phases() -> None:
    cuda = import_driver()
    data = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    with CudaContext(0) as ctx, ctx.active():
        buf = host_device_buffer(64, np.float32)
        try:
            stream = cuda.Stream()
            events = PhaseEvents.create()
            np.copyto(buf.view(data.shape), data)
            events.start.record(stream)
            cuda.memcpy_htod_async(buf.device, buf.host, stream)
            events.inputs_copied.record(stream)
            events.computed.record(stream)
            stream.synchronize()  # the host side is overwritten next
            buf.host[:] = -1
            cuda.memcpy_dtoh_async(buf.host, buf.device, stream)
            events.outputs_copied.record(stream)
            times = events.elapsed()
            np.testing.assert_array_equal(buf.view(data.shape), data)
            assert min(times.h2d_ms, times.compute_ms, times.d2h_ms) >= 0
            assert times.total_ms >= times.h2d_ms
        finally:
            buf.free()
        assert buf.device is None
