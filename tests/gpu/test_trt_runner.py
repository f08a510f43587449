"""The pycuda TensorRT runner: profile limits, compatibility refusals, phase timing, teardown,
and reuse of the timing cache across builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from port.engines.tensorrt import TensorRTRunner
from port.engines.trt_sidecar import sidecar_path
from port.export.tensorrt import build_engine
from port.export.trt_options import TrtBuildOptions
from port.ground.errors import ModelError, UsageError
from tests.gpu.conftest import Trained

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def small_engine(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FP16 engine whose profile allows batches 2..8."""
    engine = tmp_path_factory.mktemp("engine") / "model_fp16.engine"
    build_engine(trained.fp16_onnx, engine,
                 TrtBuildOptions(precision="fp16", min_batch=2, opt_batch=4, max_batch=8),
                 trained.card)
    return engine


def test_batches_outside_the_profile_are_refused_naming_its_limits(small_engine: Path,
                                                                   trained: Trained) -> None:
    with TensorRTRunner(small_engine) as runner:
        name = runner.input_metadata()[0].name
        assert runner.input_metadata()[0].shape == (None, 3, 32, 32)
        assert runner.profile().max == (8, 3, 32, 32) and runner.profile().min == (2, 3, 32, 32)
        runner.infer({name: trained.images[:8]})  # the max batch fits
        with pytest.raises(UsageError, match=r"outside the engine's optimisation profile.*max "
                                             r"\(8, 3, 32, 32\).*--max-batch"):
            runner.infer({name: trained.images[:9]})
        with pytest.raises(UsageError, match="outside the engine's optimisation profile"):
            runner.infer({name: trained.images[:1]})  # below min 2
        with pytest.raises(UsageError, match="dtype"):
            runner.infer({name: trained.images[:4].astype(np.float16)})


def test_outputs_are_sliced_to_the_batch_and_not_aliased(small_engine: Path,
                                                         trained: Trained) -> None:
    with TensorRTRunner(small_engine) as runner:
        name, out = runner.input_metadata()[0].name, runner.output_names()[0]
        first = runner.infer({name: trained.images[:3]})[out]
        second = runner.infer({name: trained.images[3:8]})[out]
        assert first.shape == (3, 10) and second.shape == (5, 10)
        again = runner.infer({name: trained.images[:3]})[out]
        np.testing.assert_array_equal(first, again)  # the pinned buffer was reused in between


def test_phase_timing_reports_h2d_compute_d2h(small_engine: Path, trained: Trained) -> None:
    with TensorRTRunner(small_engine) as runner:
        name = runner.input_metadata()[0].name
        phases = runner.time_phases({name: trained.images[:8]}, runs=10, warmup=2)
    assert set(phases) == {"h2d_ms", "compute_ms", "d2h_ms", "total_ms", "runs"}
    assert all(phases[k] >= 0 for k in ("h2d_ms", "compute_ms", "d2h_ms"))
    assert phases["total_ms"] >= phases["compute_ms"] and phases["runs"] == 10


def test_activate_deactivate_cycles_release_everything(small_engine: Path,
                                                       trained: Trained) -> None:
    import torch

    torch.cuda.synchronize()
    free_before, _ = torch.cuda.mem_get_info()
    runner = TensorRTRunner(small_engine)
    for _ in range(5):
        runner.activate()
        runner.infer({runner.input_metadata()[0].name: trained.images[:2]})
        runner.deactivate()
    assert not runner.is_active and runner.input_metadata() == []
    free_after, _ = torch.cuda.mem_get_info()
    # Engines, contexts and buffers are freed on deactivate: five cycles leave no growing pile.
    assert free_after >= free_before - 64 * 1024**2


def _edited_copy(engine: Path, tmp_path: Path, **changes: object) -> Path:
    copy = tmp_path / engine.name
    copy.write_bytes(engine.read_bytes())
    side = json.loads(sidecar_path(engine).read_text())
    side.update(changes)
    sidecar_path(copy).write_text(json.dumps(side))
    return copy


def test_engine_from_another_tensorrt_version_is_refused(small_engine: Path,
                                                         tmp_path: Path) -> None:
    copy = _edited_copy(small_engine, tmp_path, tensorrt_version="9.9.9")
    with pytest.raises(ModelError, match=r"another TensorRT version.*TensorRT 9\.9\.9"):
        TensorRTRunner(copy).activate()


def test_engine_for_another_gpu_is_refused(small_engine: Path, tmp_path: Path) -> None:
    side = json.loads(sidecar_path(small_engine).read_text())
    copy = _edited_copy(small_engine, tmp_path,
                        gpu={"name": "Imaginary GPU", "compute_capability": "5.2"})
    assert side["gpu"]["compute_capability"] != "5.2"
    with pytest.raises(ModelError, match=r"another GPU.*Imaginary GPU"):
        TensorRTRunner(copy).activate()


def test_engine_that_does_not_match_its_sidecar_is_refused(small_engine: Path,
                                                           tmp_path: Path) -> None:
    copy = _edited_copy(small_engine, tmp_path, engine_sha256="0" * 64)
    with pytest.raises(ModelError, match="does not match its sidecar"):
        TensorRTRunner(copy).activate()


def test_timing_cache_is_reused_and_updated_across_builds(trained: Trained,
                                                          tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    opts = TrtBuildOptions(precision="fp16", max_batch=8, opt_batch=8, timing_cache=cache)
    first = build_engine(trained.fp16_onnx, tmp_path / "a.engine", opts, trained.card)
    assert cache.is_file() and cache.stat().st_size > 0
    assert first["timing_cache"]["reused"] is False
    assert first["timing_cache"]["saved_bytes"] == cache.stat().st_size
    size_after_first = cache.stat().st_size

    second = build_engine(trained.fp16_onnx, tmp_path / "b.engine", opts, trained.card)
    assert second["timing_cache"]["reused"] is True
    assert second["timing_cache"]["loaded_bytes"] == size_after_first
    assert cache.stat().st_size >= size_after_first  # merged, never shrunk

    # A different network (FP32) adds its own tactics to the same file.
    build_engine(trained.fp32_onnx, tmp_path / "c.engine",
                 TrtBuildOptions(precision="fp32", max_batch=8, opt_batch=8, timing_cache=cache),
                 trained.card)
    assert cache.stat().st_size > size_after_first
