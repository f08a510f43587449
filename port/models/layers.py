"""Building blocks of the fast CIFAR-10 recipe: activations, ghost BatchNorm, patch whitening.

Each of these changes only how a network *trains*, or is a fixed linear layer, so the deployed
(eval-mode) graph stays plain: ``GhostBatchNorm2d`` in eval mode is exactly ``BatchNorm2d``, and
``PatchWhitening`` is an ordinary ``Conv2d`` whose weights are computed, not learned. Both
export to ONNX as a BatchNormalization and a Conv node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from port.ground.errors import UsageError
from port.ground.vocab import ACTIVATIONS

# CELU's alpha in Page's "bag of tricks" ResNet-9: a smooth ReLU whose negative side saturates at
# -alpha; smoothness gives better-behaved gradients at the high learning rates of short runs.
CELU_ALPHA = 0.3
# Added to every eigenvalue before the 1/sqrt scaling: directions with almost no variance (pixel
# noise, JPEG artefacts) are damped instead of being blown up to unit variance. Page's value.
WHITEN_EPS = 1e-2
WHITEN_KERNELS = (2, 3)


def make_activation(name: str) -> nn.Module:
    """``relu`` | ``celu`` (alpha 0.3) | ``gelu`` as a module; ``UsageError`` for anything else."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "celu":
        return nn.CELU(alpha=CELU_ALPHA)
    if name == "gelu":
        return nn.GELU()
    raise UsageError(f"unknown activation {name!r}: use one of {', '.join(ACTIVATIONS)}")


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises each group of ``virtual_batch`` images with its own statistics.

    Hoffer et al. (2017) "Train longer, generalize better": statistics of small virtual batches
    are noisier, which regularises like a small batch does, while the optimizer still takes
    large-batch steps. Page's fast ResNet-9 uses groups of 32 in batches of 512.

    In a batch of N = S * virtual_batch images, ghost batch ``s`` holds images ``s, s+S, s+2S,
    ...`` (a free reshape of the batch). This is also exactly how a distributed run of S
    processes splits a global batch (see :mod:`port.data.gpu_loader`), so one process with
    ghost batches reproduces S processes with per-process BatchNorm. Running statistics move by
    the mean of the ghost batches' statistics. Batches that do not split evenly, and eval mode,
    use plain BatchNorm; the state dict is BatchNorm2d's.
    """

    def __init__(self, num_features: int, virtual_batch: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        if virtual_batch < 1:
            raise UsageError(f"ghost batch size must be >= 1, got {virtual_batch}")
        self.virtual_batch = int(virtual_batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-ghost-batch normalisation in training, BatchNorm2d otherwise."""
        n = x.shape[0]
        if not self.training or n <= self.virtual_batch or n % self.virtual_batch:
            return super().forward(x)
        splits = n // self.virtual_batch
        c, h, w = x.shape[1:]
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        # (N, C, H, W) -> (N/S, S*C, H, W): channel block s holds images s, s+S, ... so one
        # batch_norm call normalises every ghost batch with its own statistics.
        running_mean = running_var = None
        if self.track_running_stats:
            running_mean = self.running_mean.repeat(splits)
            running_var = self.running_var.repeat(splits)
        weight = self.weight.repeat(splits) if self.weight is not None else None
        bias = self.bias.repeat(splits) if self.bias is not None else None
        y = F.batch_norm(x.reshape(n // splits, splits * c, h, w), running_mean, running_var,
                         weight, bias, True, factor, self.eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(splits, c).mean(0))
                self.running_var.copy_(running_var.view(splits, c).mean(0))
        y = y.reshape(n, c, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch={self.virtual_batch}"


def image_patches(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Every ``kernel`` x ``kernel`` patch (stride 1, no padding) of NCHW ``images`` as rows,
    flattened in Conv2d weight order (channel, row, column): shape (N * H' * W', C * k * k)."""
    c = images.shape[1]
    patches = images.unfold(2, kernel, 1).unfold(3, kernel, 1)  # N, C, H', W', k, k
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel)


def patch_whitening_weights(
    images: torch.Tensor, kernel: int, eps: float = WHITEN_EPS, chunk: int = 512
) -> torch.Tensor:
    """Conv filters that whiten the ``kernel``-sized patches of ``images`` (float NCHW).

    The patch second-moment matrix M (inputs are normalised, so their mean is about 0) has
    eigenpairs (l_i, v_i); filter i is v_i / sqrt(l_i + eps), so on these patches the outputs
    are decorrelated with variance l_i / (l_i + eps), about 1 (the approach of tysam-code's
    hlb-CIFAR10 and Keller Jordan's airbench). Accumulated in float64 over chunks of images,
    so 5,000 CIFAR images need little memory. Returns (C*k*k, C, k, k), largest variance first.
    """
    c = images.shape[1]
    d = c * kernel * kernel
    moment = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    count = 0
    for start in range(0, images.shape[0], chunk):
        p = image_patches(images[start : start + chunk].float(), kernel).double()
        moment += p.T @ p
        count += p.shape[0]
    if count == 0:
        raise UsageError("patch whitening needs at least one training image")
    eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
    return filters.reshape(d, c, kernel, kernel).float()


class PatchWhitening(nn.Conv2d):
    """A fixed first layer: ``kernel`` x ``kernel`` conv with 3*k*k filters that whiten the input
    patches (:func:`patch_whitening_weights`), not trained.

    Why: decorrelated, unit-variance inputs make the first learned layer's optimisation problem
    well conditioned, which is worth several epochs in a 10-epoch run (Page's "bag of tricks",
    airbench). Its weights are a plain (frozen) parameter, so checkpoints carry them and ONNX
    export sees an ordinary Conv. Until :meth:`fit` is called it is a random conv.
    """

    def __init__(self, in_channels: int, kernel: int) -> None:
        if kernel not in WHITEN_KERNELS:
            raise UsageError(
                f"whitening kernel must be one of {', '.join(map(str, WHITEN_KERNELS))}, got "
                f"{kernel}"
            )
        # k=3 keeps the image size (padding 1); k=2 (airbench) has no symmetric padding and
        # shrinks 32 px to 31 px, which the max-pools and the global pool absorb.
        d = in_channels * kernel * kernel
        super().__init__(in_channels, d, kernel, padding=(kernel - 1) // 2, bias=False)
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float = WHITEN_EPS) -> None:
        """Set the filters from normalised float NCHW training ``images``."""
        kernel = self.kernel_size[0]
        weights = patch_whitening_weights(images.to(self.weight.device), kernel, eps)
        self.weight.copy_(weights)
