"""PyTorch runner: the reference every exported artifact is compared against.

The loader is a ``porter-model/1`` checkpoint path (rebuilt with
:func:`port.models.checkpoint.load_model`) or a zero-argument callable returning
``(nn.Module, ModelCard)``. Inference runs under ``torch.inference_mode`` on the chosen device,
in channels_last memory format on CUDA (what cuDNN's fastest convolution kernels want).
torch is imported inside the methods so that importing :mod:`port.engines` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from port.engines.base import Loader, Runner, TensorMeta
from port.ground.errors import BackendUnavailable, ModelError, UsageError

if TYPE_CHECKING:
    import torch

    from port.models.card import ModelCard


class TorchRunner(Runner):
    """Runs an ``nn.Module`` classifier; ``device`` is e.g. ``cpu``, ``cuda``, ``cuda:1``."""

    backend = "torch"

    def __init__(self, loader: Loader, device: str = "cpu") -> None:
        super().__init__(loader)
        self.requested_device = device
        self.card: ModelCard | None = None  # set by activate
        self.payload: dict[str, Any] = {}  # the checkpoint's extra keys (empty for callables)
        self._model: torch.nn.Module | None = None
        self._device: torch.device | None = None

    @property
    def timing_mode(self) -> str:  # type: ignore[override]
        """On CUDA a timed run includes the copies to and from the GPU and a device sync."""
        if self._device is not None and self._device.type == "cuda":
            return ("host to host, device-synchronised: H2D copy, compute and D2H copy "
                    "in each run")
        return Runner.timing_mode

    @property
    def device(self) -> str:
        """The torch device, with its index once active (``cuda`` becomes ``cuda:0``)."""
        return str(self._device) if self._device is not None else self.requested_device

    def input_metadata(self) -> list[TensorMeta]:
        """One float32 NCHW input with a dynamic batch axis, named as the card says."""
        card = self._require_card()
        return [TensorMeta(card.input_name, np.dtype(np.float32), (None, *card.input_shape))]

    def output_metadata(self) -> list[TensorMeta]:
        """One float32 ``[batch, num_classes]`` logits output, named as the card says."""
        card = self._require_card()
        return [TensorMeta(card.output_name, np.dtype(np.float32), (None, card.num_classes))]

    # -- lifecycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        import torch

        device = _parse_device(self.requested_device)
        model, card = self._load()
        model = model.eval()
        if device.type == "cuda":
            # channels_last lets cuDNN pick its NHWC kernels (faster convs, tensor cores).
            model = model.to(device, memory_format=torch.channels_last)
        else:
            model = model.to(device)
        self._model, self.card, self._device = model, card, device

    def _load(self) -> tuple[torch.nn.Module, ModelCard]:
        if callable(self.loader):
            loaded = self.loader()
            if not (isinstance(loaded, tuple) and len(loaded) == 2):
                raise TypeError(  # a programming error in the caller, not a user mistake
                    f"TorchRunner loader must return (nn.Module, ModelCard), got {type(loaded)}"
                )
            return loaded
        from port.models.checkpoint import load_model

        model, card, payload = load_model(Path(self.loader), map_location="cpu")
        self.payload = payload
        return model, card

    def _deactivate(self) -> None:
        on_cuda = self._device is not None and self._device.type == "cuda"
        self._model = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()  # hand the weights' memory back for the next runner

    # -- inference -------------------------------------------------------------------------
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        assert self._model is not None and self.card is not None and self._device is not None
        # from_numpy shares memory; ascontiguousarray only copies views torch cannot take
        # (negative strides).
        x = torch.from_numpy(np.ascontiguousarray(feed[self.card.input_name]))
        if self._device.type == "cuda":
            x = x.to(self._device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        else:
            x = x.to(self._device)
        with torch.inference_mode():
            out = self._model(x)
        if not isinstance(out, torch.Tensor):
            raise ModelError(
                f"the model returned {type(out).__name__}, not a tensor of logits: wrap it so "
                "forward() returns one tensor"
            )
        return {self.card.output_name: out.float().cpu().numpy()}

    def synchronize(self) -> None:
        """Wait for queued CUDA work (torch launches kernels asynchronously)."""
        if self._device is not None and self._device.type == "cuda":
            import torch

            torch.cuda.synchronize(self._device)

    def model_card(self) -> ModelCard | None:
        """The checkpoint's card (read at activate)."""
        return self.card

    def _require_card(self) -> ModelCard:
        if self.card is None:
            raise RuntimeError("TorchRunner.input_metadata() needs activate() first")
        return self.card


def _parse_device(text: str) -> torch.device:
    """``torch.device`` from text, checking CUDA is there; ``cuda`` gets the current index."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(
            f"unknown torch device '{text}': use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"device '{text}' needs CUDA but torch sees no GPU here: use --device cpu"
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"device '{text}' does not exist: this machine has "
                f"{torch.cuda.device_count()} GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
        device = torch.device("cuda", index)
    return device
