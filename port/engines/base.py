"""The Runner protocol: one way to run any artifact (Polygraphy's backend/base/runner.py pattern).

A runner takes a *loader* (a path or a zero-argument callable returning what the backend needs),
does its heavy work in :meth:`activate` and releases it in :meth:`deactivate`. :meth:`infer`
checks the feed against :meth:`input_metadata` before the backend sees it, so a wrong name,
shape or dtype ends in a clear ``UsageError`` rather than a backend stack trace; a timing loop
checks once and then calls ``infer(feed, check_inputs=False)``.

The contract: a :attr:`name`, :meth:`input_metadata` and :meth:`output_metadata` (so callers
know which output holds the logits, :meth:`logits_output`, instead of guessing), :meth:`infer`,
:attr:`device`, and three optional hooks with safe defaults: :meth:`synchronize` (asynchronous
backends), :meth:`time_phases` (backends that can time H2D / compute / D2H apart; ``None``
means "cannot") and :meth:`details` (how it really ran).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from port.ground.errors import UsageError
from port.ground.vocab import CHANNELS

Loader = Path | str | Callable[[], Any]


@dataclass(frozen=True)
class TensorMeta:
    """Name, dtype and shape of one input; ``None`` in ``shape`` marks a dynamic axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def shape_mismatch(got: tuple[int, ...], want: tuple[int | None, ...]) -> str:
    """The real difference between a fed image batch's shape and the input's, and the fix.

    Only a spatial difference is a resize/crop problem; a transposed batch is a layout problem,
    a wrong channel count a colour one and a wrong first axis a fixed batch.
    """
    shown = tuple("?" if s is None else s for s in want)
    head = f"has shape {got}, the model expects {shown}"
    if len(got) != len(want):
        return f"{head}: feed a rank-{len(want)} batch"

    def fits(g: tuple[int, ...], w: tuple[int | None, ...]) -> bool:
        return all(b is None or a == b for a, b in zip(g, w, strict=True))

    if len(got) == 4:
        if fits((got[0], got[2], got[3], got[1]), want):
            return (f"{head}: the model takes NHWC (channels last) and the batch is NCHW; its "
                    "model card must say layout NHWC (porter import --layout NHWC)")
        if fits((got[0], got[3], got[1], got[2]), want):
            return (f"{head}: the model takes NCHW (channels first) and the batch is NHWC; "
                    "transpose it to NCHW")
        if fits(got[1:], want[1:]):
            return (f"{head}: the model takes a fixed batch of {want[0]}; feed batches of "
                    f"{want[0]} (porter pads a short last batch when the card says batch "
                    f"{want[0]})")
        channel_axis = 1 if want[1] in CHANNELS else 3 if want[3] in CHANNELS else None
        if channel_axis is not None and got[channel_axis] != want[channel_axis]:
            return (f"{head}: the model takes {want[channel_axis]} channel(s), the batch has "
                    f"{got[channel_axis]}; preprocess with the model's card "
                    f"({want[channel_axis]}-channel mean/std)")
    return f"{head}: resize/crop the images to the model's input size"


class Runner(abc.ABC):
    """Base class of every backend runner. Use as a context manager."""

    backend: str = "base"  # torch | onnxruntime | tensorrt
    # What one timed infer() covers, for report rows (a latency figure means nothing without it).
    timing_mode: str = "host to host, synchronous: inputs and outputs in host memory"

    def __init__(self, loader: Loader, *, name: str | None = None) -> None:
        self.loader = loader
        self.is_active = False
        # A label for reports and errors (Polygraphy's runner name): backend + artifact file.
        where = Path(loader).name if isinstance(loader, str | Path) else "in-memory"
        self.name = name or f"{self.backend}:{where}"

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> None:
        """Load the artifact and allocate what inference needs. Idempotent."""
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        """Release everything :meth:`activate` acquired. Idempotent."""
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- inference -------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray], check_inputs: bool = True
              ) -> dict[str, np.ndarray]:
        """Run one batch; returns output name -> host array.

        ``check_inputs=False`` skips the feed check: for timing loops that checked the same
        feed once already (the check is not what they measure).
        """
        if not self.is_active:
            raise RuntimeError(f"{type(self).__name__}.infer() called before activate()")
        if check_inputs:
            self.check_feed(feed)
        return self._infer(feed)

    def logits_output(self) -> str:
        """The name of the output that holds the class scores.

        The only output; else the one called ``logits``; else the only rank-2 output.
        ``ModelError`` when that does not single one out (export a single logits output).
        """
        from port.ground.errors import ModelError

        outputs = self.output_metadata()
        if len(outputs) == 1:
            return outputs[0].name
        named = [m for m in outputs if m.name == "logits"]
        rank2 = [m for m in outputs if len(m.shape) == 2]
        for chosen in (named, rank2):
            if len(chosen) == 1:
                return chosen[0].name
        raise ModelError(f"{self.name} returns outputs {[m.name for m in outputs]} and none is "
                         "'logits': export the classifier with a single logits output")

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Raise ``UsageError`` naming the first mismatch between ``feed`` and the inputs."""
        metas = {m.name: m for m in self.input_metadata()}
        missing = sorted(set(metas) - set(feed))
        extra = sorted(set(feed) - set(metas))
        if missing or extra:
            raise UsageError(
                f"{self.backend} runner: feed names {sorted(feed)} do not match the model's inputs "
                f"{sorted(metas)}: pass exactly the model's input names"
            )
        for name, arr in feed.items():
            meta = metas[name]
            if np.dtype(arr.dtype) != np.dtype(meta.dtype):
                raise UsageError(
                    f"{self.backend} runner: input '{name}' has dtype {arr.dtype}, the model "
                    f"expects {np.dtype(meta.dtype)}: convert the array first"
                )
            rank_ok = len(arr.shape) == len(meta.shape)
            if not rank_ok or any(
                want is not None and want != got
                for want, got in zip(meta.shape, arr.shape, strict=True)
            ):
                raise UsageError(f"{self.backend} runner: input '{name}' "
                                 f"{shape_mismatch(tuple(arr.shape), tuple(meta.shape))}")

    def time_phases(self, feed: dict[str, np.ndarray], runs: int = 50
                    ) -> dict[str, float] | None:
        """Mean host-to-device, compute and device-to-host ms (``h2d_ms``, ``compute_ms``,
        ``d2h_ms``, ...), timed apart as trtexec does; ``None`` for a backend that cannot
        separate them (the default)."""
        return None

    def details(self) -> dict[str, Any]:
        """How the artifact really ran, beyond :attr:`device` (e.g. which INT8 kernels and why,
        ``compute_precision`` where the backend chose it); empty when there is nothing to add.
        Valid after activate; goes into report rows."""
        return {}

    def model_card(self) -> Any:
        """The porter model card the artifact carries (ONNX metadata, IR rt_info, engine
        sidecar, checkpoint), or ``None`` when it carries none. Valid after activate; each
        backend reads its own artifacts, so no caller asks which backend it holds."""
        return None

    def synchronize(self) -> None:  # noqa: B027 - optional hook, a no-op for synchronous backends
        """Wait for queued device work (no-op for synchronous backends); used by latency timing."""

    # -- what subclasses provide -------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where it runs, e.g. ``cpu``, ``cuda:0``, ``CPUExecutionProvider``."""

    @abc.abstractmethod
    def input_metadata(self) -> list[TensorMeta]:
        """The inputs this artifact takes (valid after activate)."""

    @abc.abstractmethod
    def output_metadata(self) -> list[TensorMeta]:
        """The outputs it returns, in order (valid after activate); ``None`` = dynamic axis."""

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
