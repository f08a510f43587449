"""Where and how a run executes: device, mixed precision, memory format."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from port.ground.errors import BackendUnavailable, UsageError
from port.train.recipe import TrainConfig


@dataclass(frozen=True)
class Runtime:
    """The resolved ``device`` / ``amp`` / ``channels_last`` of a config on this machine."""

    device: torch.device
    amp: bool  # autocast to amp_dtype (+ GradScaler for float16)
    channels_last: bool
    amp_dtype: torch.dtype = torch.float16

    @classmethod
    def from_config(cls, cfg: TrainConfig, local_rank: int | None = None) -> Runtime:
        """Resolve ``auto`` values; ``BackendUnavailable`` when CUDA is asked for but absent.

        ``local_rank`` (distributed runs): process k of a machine uses ``cuda:k``.
        """
        if cfg.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(cfg.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable(
                    f"device {cfg.device} asked for but CUDA is not available here: "
                    "use --device cpu (or auto)"
                )
            if local_rank is not None:
                if device.index is not None:
                    raise UsageError(
                        f"device {cfg.device} names one GPU but each process of a distributed "
                        "run takes its own (cuda:LOCAL_RANK): use --device cuda or auto"
                    )
                device = torch.device("cuda", local_rank)
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index >= torch.cuda.device_count():
                raise UsageError(
                    f"device {device} does not exist: this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s); use fewer processes per node"
                )
            device = torch.device("cuda", index)
        on_cuda = device.type == "cuda"
        dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        amp = on_cuda if cfg.amp == "auto" else bool(cfg.amp)
        if amp and not on_cuda and dtype == torch.float16:
            # fp16 autocast on CPU is slow and GradScaler is CUDA-only: refuse, don't rewrite.
            raise UsageError("amp with float16 needs a CUDA device: set amp to auto or false, or "
                             "amp_dtype to bfloat16 on CPU")
        channels_last = on_cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
        return cls(device=device, amp=amp, channels_last=channels_last, amp_dtype=dtype)

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients need a GradScaler; bfloat16 (fp32's exponent range) does not."""
        return self.amp and self.amp_dtype == torch.float16

    @property
    def memory_format(self) -> torch.memory_format:
        """Memory format for the model and every input batch."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``amp_dtype`` when AMP is on; a no-op context otherwise (no per-step
        cost)."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaler for fp16 gradients; disabled (a pass-through) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.loss_scaling)

    def free_memory(self) -> dict[str, Any]:
        """Where training allocates and how much is free there (``free``/``where`` keywords for
        ``port.ground.limits.check_allocation``): the GPU's free memory on CUDA, else the host's."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return {"free": int(free), "where": str(self.device)}
        return {}

    def describe(self) -> dict[str, Any]:
        """For metrics and logs: the device name and the effective switches."""
        name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                else "cpu")
        return {"device": str(self.device), "device_name": name, "amp": self.amp,
                "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp else None,
                "channels_last": self.channels_last}


def synchronize(device: torch.device) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (for honest timings)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
