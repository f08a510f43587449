"""The TensorRT loaders (port/engines/trt_loaders.py) where no TensorRT is needed: the
optimisation profile's shapes, the shared timing-cache file under its lock, the I/O description,
and clear refusals without TensorRT. The loaders' TensorRT calls run in tests/gpu/."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from port.engines.trt_loaders import (
    TENSORRT_MISSING,
    BatchRange,
    EngineFromBytes,
    IOTensor,
    NetworkFromOnnx,
    ProfileShapes,
    TimingCacheFile,
    import_tensorrt,
    make_logger,
    profile_shapes,
)
from port.ground.errors import BackendUnavailable, ModelError, UsageError

no_trt_only = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                 reason="this machine has TensorRT")
BATCHES = BatchRange(min=1, opt=16, max=32)


# -- the optimisation profile ----------------------------------------------------------------
def test_a_dynamic_batch_gets_the_range_and_the_other_axes_stay() -> None:
    shapes = profile_shapes("input", (-1, 3, 32, 32), BATCHES)
    assert shapes == ProfileShapes(min=(1, 3, 32, 32), opt=(16, 3, 32, 32), max=(32, 3, 32, 32))
    assert shapes.max == shapes[2]  # still a tuple for callers that unpack it


def test_a_fixed_batch_must_match_the_whole_range() -> None:
    assert profile_shapes("input", (8, 3, 32, 32), BatchRange(min=8, opt=8, max=8)).opt == (
        8, 3, 32, 32)
    with pytest.raises(UsageError) as info:
        profile_shapes("input", (8, 3, 32, 32), BATCHES)
    assert str(info.value) == (
        "the ONNX input 'input' has a fixed batch of 8: export it with a dynamic batch axis, or "
        "pass --min-batch/--opt-batch/--max-batch 8"
    )


@pytest.mark.parametrize(
    ("shape", "message"),
    [((), "is a scalar"), ((-1, 3, -1, -1), "dynamic axes beyond the batch")],
)
def test_inputs_porter_cannot_profile_are_model_errors(shape: tuple[int, ...],
                                                       message: str) -> None:
    with pytest.raises(ModelError, match=message):
        profile_shapes("input", shape, BATCHES)


def test_a_profile_fixed_at_one_batch_for_calibration() -> None:
    shapes = profile_shapes("input", (-1, 3, 8, 8), BATCHES).at_batch(4)
    assert shapes.min == shapes.opt == shapes.max == (4, 3, 8, 8)
    assert shapes.to_dict() == {"min": [4, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [4, 3, 8, 8]}


def test_io_tensors_describe_themselves_for_the_sidecar() -> None:
    inp = IOTensor(name="input", is_input=True, dtype=np.dtype(np.float32), shape=(-1, 3, 8, 8),
                   profile=profile_shapes("input", (-1, 3, 8, 8), BATCHES))
    out = IOTensor(name="logits", is_input=False, dtype=np.dtype(np.float16), shape=(-1, 10),
                   profile=None)
    assert inp.to_dict() == {
        "name": "input", "dtype": "float32", "shape": [-1, 3, 8, 8],
        "profile": {"min": [1, 3, 8, 8], "opt": [16, 3, 8, 8], "max": [32, 3, 8, 8]},
    }
    assert out.to_dict() == {"name": "logits", "dtype": "float16", "shape": [-1, 10]}


# -- the shared timing cache file ------------------------------------------------------------
def _add_line(line: str, pause: float = 0.0) -> Callable[[bytes], bytes]:
    """A merge that keeps what is on disk and adds ``line`` (a set of lines stands in for the
    timing entries TensorRT combines), pausing to widen any race."""

    def merge(on_disk: bytes) -> bytes:
        lines = set(on_disk.decode().split())
        time.sleep(pause)
        return "\n".join(sorted(lines | {line})).encode()

    return merge


def test_a_missing_cache_reads_empty_and_is_created_on_update(tmp_path: Path) -> None:
    cache = TimingCacheFile(tmp_path / "sub" / "trt.cache")
    assert cache.read() == b""
    assert cache.update(_add_line("a")) == 1
    assert cache.read() == b"a"
    cache.update(_add_line("b"))
    assert cache.read() == b"a\nb"


def test_concurrent_builds_lose_no_entries_and_leave_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "trt.cache"
    names = [f"build{i}" for i in range(6)]
    errors: list[BaseException] = []

    def build(name: str) -> None:
        try:
            # Each build reads the cache first, then merges its entries in: without the lock
            # around read-merge-write, builds that overlap would overwrite each other.
            TimingCacheFile(path).read()
            TimingCacheFile(path).update(_add_line(name, pause=0.05))
        except BaseException as exc:  # kept for the main thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_text().split() == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt.cache", "trt.cache.lock"]


def test_a_cache_locked_too_long_is_a_usage_error_naming_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "trt.cache"
    with FileLock(str(path) + ".lock"):
        with pytest.raises(UsageError, match=r"stayed locked by another build.*--timing-cache"):
            TimingCacheFile(path, timeout=0.2).read()
        with pytest.raises(UsageError, match="stayed locked"):
            TimingCacheFile(path, timeout=0.2).update(_add_line("x"))
    assert not path.exists()


# -- without TensorRT ------------------------------------------------------------------------
@no_trt_only
def test_without_tensorrt_every_loader_says_so_in_one_line(tmp_path: Path) -> None:
    calls = [
        import_tensorrt,
        lambda: make_logger(tmp_path / "trt.log"),
        NetworkFromOnnx(path=tmp_path / "m.onnx", logger=None, batches=BATCHES),
        EngineFromBytes(data=b"plan", logger=None),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable) as info:
            call()
        assert str(info.value) == TENSORRT_MISSING
    assert not (tmp_path / "trt.log").exists()
