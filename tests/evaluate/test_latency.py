"""measure_latency's protocol (warm-up, run counts, synchronisation, prepared feed) and maths.

The runner here is a real ``Runner`` subclass over numpy that records what it is asked to do;
no timing is asserted (timings live in bench/).
"""

from __future__ import annotations

import numpy as np
import pytest

from port.engines.base import Runner, TensorMeta
from port.evaluate.latency import measure_latency, summarize_ms
from port.ground.errors import UsageError


class _RecordingRunner(Runner):
    """A linear classifier in numpy that logs infer/synchronize calls and the feeds it saw."""

    backend = "numpy"

    def __init__(self) -> None:
        super().__init__(lambda: None)
        self.events: list[str] = []
        self.feeds: list[dict[str, np.ndarray]] = []
        self.weight = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float16)

    @property
    def device(self) -> str:
        return "cpu"

    def input_metadata(self) -> list[TensorMeta]:
        return [TensorMeta("x", np.dtype(np.float16), (None, 12))]

    def output_metadata(self) -> list[TensorMeta]:
        return [TensorMeta("logits", np.dtype(np.float16), (None, 4))]

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        self.events.append("check")
        super().check_feed(feed)

    def _activate(self) -> None:
        self.events.append("activate")

    def _deactivate(self) -> None:
        self.events.append("deactivate")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.events.append("infer")
        self.feeds.append(feed)
        return {"logits": feed["x"] @ self.weight}

    def synchronize(self) -> None:
        self.events.append("sync")


def test_warmup_then_min_runs_each_synchronised() -> None:
    runner = _RecordingRunner()
    batch = np.ones((3, 12), dtype=np.float32)
    with runner:
        stats = measure_latency(runner, batch, warmup=2, min_runs=5, min_seconds=0.0)
    # Two untimed warm-ups and one sync, then every timed run ends with its own sync.
    # The feed is checked once, before the clock: no timed run pays for the check.
    assert runner.events == ["activate", "check", "infer", "infer", "sync",
                             *["infer", "sync"] * 5, "deactivate"]
    assert set(stats) == {"p50", "p90", "p99", "mean", "runs", "repeats", "p50_range",
                          "p99_range"}
    assert stats["runs"] == 5 and stats["repeats"] == 5  # five runs cut into five blocks
    assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]


def test_feed_is_converted_once_before_timing() -> None:
    runner = _RecordingRunner()
    with runner:
        measure_latency(runner, np.ones((3, 12), dtype=np.float32), warmup=1, min_runs=3,
                        min_seconds=0.0)
    # float32 images became the runner's float16 input once; every run got the same array.
    assert all(f["x"].dtype == np.float16 for f in runner.feeds)
    assert len({id(f["x"]) for f in runner.feeds}) == 1


def test_max_runs_caps_a_long_min_seconds() -> None:
    runner = _RecordingRunner()
    with runner:
        measure_latency(runner, {"x": np.ones((1, 12), np.float16)}, warmup=0, min_runs=2,
                        min_seconds=3600.0, max_runs=4)
    assert runner.events.count("infer") == 4


def test_summary_percentiles() -> None:
    times = np.arange(1.0, 101.0)  # 1..100 ms
    stats = summarize_ms(times)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5)


def test_bad_settings_are_usage_errors() -> None:
    runner = _RecordingRunner()
    with runner, pytest.raises(UsageError, match="out of range"):
        measure_latency(runner, np.ones((1, 12), np.float32), min_runs=0)


def test_spread_over_repeats_brackets_each_block() -> None:
    from port.evaluate.latency import spread_ms

    # Two quiet blocks and a noisy one: the range shows the noise the single p50 hides.
    times = np.array([1.0] * 10 + [1.0] * 10 + [5.0] * 10)
    spread = spread_ms(times, repeats=3)
    assert spread == {"runs": 30, "repeats": 3, "p50_range": [1.0, 5.0],
                      "p99_range": [1.0, 5.0]}
    assert spread_ms(np.array([2.0]), repeats=5)["repeats"] == 1
