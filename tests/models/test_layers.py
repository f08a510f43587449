"""The fast recipe's layers: patch whitening whitens, ghost BatchNorm splits, ResNet-9 options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from port.ground.errors import UsageError
from port.models.layers import (
    GhostBatchNorm2d,
    PatchWhitening,
    image_patches,
    make_activation,
    patch_whitening_weights,
)
from port.models.registry import create_model


def _correlated_images(n: int = 64, size: int = 12) -> torch.Tensor:
    """Smooth, channel-correlated images: neighbouring pixels and channels covary strongly,
    like natural images (the case whitening exists for)."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n, 1, size + 4, size + 4, generator=gen)
    smooth = F.avg_pool2d(base, 3, stride=1)[:, :, :size, :size]
    mix = torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    return smooth * mix + 0.1 * torch.randn(n, 3, size, size, generator=gen)


@pytest.mark.parametrize("kernel", [2, 3])
def test_whitening_outputs_have_identity_covariance_on_the_patches(kernel: int) -> None:
    images = _correlated_images()
    patches = image_patches(images, kernel).double()
    before = patches.T @ patches / len(patches)
    scale = torch.diag(before).sqrt()
    correlation = before / (scale[:, None] * scale[None, :])
    assert (correlation - torch.eye(len(before))).abs().max() > 0.5  # strongly correlated
    eps = 1e-6  # tiny: every direction is scaled to (almost exactly) unit variance
    filters = patch_whitening_weights(images, kernel, eps=eps).double()
    out = patches @ filters.flatten(1).T  # what the conv computes at every valid position
    cov = out.T @ out / len(out)
    torch.testing.assert_close(cov, torch.eye(3 * kernel * kernel, dtype=torch.float64),
                               atol=1e-3, rtol=0)


def test_whitening_layer_is_a_frozen_conv_that_matches_the_patch_maths() -> None:
    images = _correlated_images(16)
    layer = PatchWhitening(3, 3)
    assert not layer.weight.requires_grad and layer.bias is None
    layer.fit(images)
    y = layer(images)
    assert y.shape == (16, 27, 12, 12)  # 3x3 with padding 1 keeps the size
    # Interior outputs are the filters applied to the patches.
    want = image_patches(images, 3) @ layer.weight.flatten(1).T
    got = y[:, :, 1:-1, 1:-1].permute(0, 2, 3, 1).reshape(-1, 27)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert PatchWhitening(3, 2)(images).shape == (16, 12, 11, 11)
    with pytest.raises(UsageError, match="whitening kernel"):
        PatchWhitening(3, 5)


def test_ghost_batchnorm_normalises_each_group_separately() -> None:
    torch.manual_seed(0)
    ghost = GhostBatchNorm2d(4, virtual_batch=8, momentum=0.1)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 1.5)
        ghost.bias.uniform_(-0.5, 0.5)
    x = torch.randn(32, 4, 5, 5) * 3 + 1
    y = ghost(x)
    splits = 32 // 8
    for s in range(splits):  # ghost batch s = images s, s+4, s+8, ...
        ref = nn.BatchNorm2d(4, momentum=0.1)
        ref.load_state_dict({k: v for k, v in ghost.state_dict().items()} |
                            {"running_mean": torch.zeros(4), "running_var": torch.ones(4)})
        torch.testing.assert_close(y[s::splits], ref(x[s::splits]), atol=1e-5, rtol=1e-5)
    # Running statistics moved by the mean of the groups' statistics.
    means = torch.stack([x[s::splits].mean((0, 2, 3)) for s in range(splits)]).mean(0)
    torch.testing.assert_close(ghost.running_mean, 0.1 * means, atol=1e-5, rtol=1e-5)
    assert int(ghost.num_batches_tracked) == 1
    # Different from BatchNorm over the whole batch, identical to it in eval mode.
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(ghost.state_dict())
    assert not torch.allclose(y, plain.train()(x), atol=1e-3)
    plain.load_state_dict(ghost.state_dict())
    torch.testing.assert_close(ghost.eval()(x), plain.eval()(x))


def test_ghost_batchnorm_falls_back_on_uneven_batches() -> None:
    ghost, plain = GhostBatchNorm2d(3, virtual_batch=8), nn.BatchNorm2d(3)
    x = torch.randn(12, 3, 4, 4)  # 12 is not a multiple of 8: one plain batch
    torch.testing.assert_close(ghost(x), plain(x))


def test_activations() -> None:
    assert isinstance(make_activation("celu"), nn.CELU)
    assert isinstance(make_activation("gelu"), nn.GELU)
    with pytest.raises(UsageError, match="relu, celu, gelu"):
        make_activation("swish")


def test_resnet9_options_build_and_keep_the_state_dict_of_plain_bn() -> None:
    model = create_model("resnet9", 10, width=0.25, activation="gelu", whiten=3, ghost_batch=4)
    assert isinstance(model.prep[0], PatchWhitening)
    assert sum(isinstance(m, GhostBatchNorm2d) for m in model.modules()) == 8
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 8
    assert model.train()(torch.randn(8, 3, 32, 32)).shape == (8, 10)
    # Ghost BN is training-only: the same weights load into the model built without it.
    deployed = create_model("resnet9", 10, width=0.25, activation="gelu", whiten=3)
    deployed.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(deployed.eval()(x), model.eval()(x))
