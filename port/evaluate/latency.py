"""Latency of one runner on one prepared batch: warm-up, then timed runs until stable.

The feed is built and checked once before the clock starts (timed runs call
``infer(feed, check_inputs=False)``); each run is timed from just before ``infer``
to just after ``runner.synchronize()`` (a no-op for synchronous backends, a stream/device sync
for asynchronous ones), so queued device work is never mistaken for finished work.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from port.engines.base import Runner
from port.ground.errors import UsageError


def measure_latency(
    runner: Runner,
    sample_batch: np.ndarray | dict[str, np.ndarray],
    *,
    warmup: int = 10,
    min_runs: int = 20,
    min_seconds: float = 1.0,
    max_runs: int = 100_000,
    repeats: int = 5,
) -> dict[str, Any]:
    """``{"p50", "p90", "p99", "mean"}`` in milliseconds for one ``infer`` on ``sample_batch``,
    with ``runs`` and the spread over ``repeats``: the timed runs cut into that many consecutive
    blocks, ``p50_range``/``p99_range`` = [lowest, highest] block percentile. A wide range says
    the machine was noisy while it measured; one figure alone cannot.

    ``runner`` must be active. ``sample_batch`` is an array for the runner's only input, or a
    ready feed dict. After ``warmup`` untimed runs (allocator, autotuning and cache warm-up),
    runs are timed until there are at least ``min_runs`` of them *and* at least ``min_seconds``
    have passed (so p99 of a fast model rests on hundreds of samples), capped at ``max_runs``.
    """
    if min_runs < 1 or warmup < 0 or min_seconds < 0 or max_runs < min_runs:
        raise UsageError(
            f"latency settings warmup={warmup} min_runs={min_runs} min_seconds={min_seconds} "
            f"max_runs={max_runs} are out of range: use warmup >= 0, 1 <= min_runs <= max_runs"
        )
    feed = sample_batch if isinstance(sample_batch, dict) else _feed_for(runner, sample_batch)

    runner.check_feed(feed)  # once: the same feed runs every time, the check is not timed
    for _ in range(warmup):
        runner.infer(feed, check_inputs=False)
    runner.synchronize()

    times_ns: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_seconds * 1e9)
    while len(times_ns) < max_runs and (len(times_ns) < min_runs or clock() < deadline):
        start = clock()
        runner.infer(feed, check_inputs=False)
        runner.synchronize()
        times_ns.append(clock() - start)
    times_ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    return {**summarize_ms(times_ms), **spread_ms(times_ms, repeats)}


def spread_ms(times_ms: np.ndarray, repeats: int) -> dict[str, Any]:
    """p50 and p99 of each of ``repeats`` consecutive blocks of runs, as [min, max] ranges."""
    blocks = [b for b in np.array_split(times_ms, max(1, min(repeats, len(times_ms)))) if len(b)]
    p50s = [float(np.percentile(b, 50)) for b in blocks]
    p99s = [float(np.percentile(b, 99)) for b in blocks]
    return {"runs": len(times_ms), "repeats": len(blocks), "p50_range": [min(p50s), max(p50s)],
            "p99_range": [min(p99s), max(p99s)]}


def summarize_ms(times_ms: np.ndarray) -> dict[str, float]:
    """Percentiles (linear interpolation) and mean of a set of run times in ms."""
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(np.mean(times_ms))}


def _feed_for(runner: Runner, batch: np.ndarray) -> dict[str, np.ndarray]:
    metas = runner.input_metadata()
    if len(metas) != 1:
        raise UsageError(
            f"{runner.backend} runner has {len(metas)} inputs: pass a feed dict naming each one"
        )
    meta = metas[0]
    # Convert once here, outside the timed loop: the timing is of inference, not of casting.
    return {meta.name: np.ascontiguousarray(batch, dtype=meta.dtype)}
