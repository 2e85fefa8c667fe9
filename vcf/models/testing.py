"""Tiny fixed-seed networks for tests: registered only when this module is imported, never listed otherwise."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from vcf.models.registry import (
    KINETICS_MEAN,
    KINETICS_STD,
    ModelRecord,
    Preprocess,
    WeightsSource,
    list_models,
    register,
)

# Layers of a tiny network by the rank of its input: convolution, batch norm, pooling, first stride.
_TINY_LAYERS: dict[int, tuple[Any, Any, Any, Any]] = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, 2),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d, (1, 2, 2)),
}


class TinyNet(nn.Module):
    """Two strided convolutions, global pooling and a linear layer: a fast stand-in for real CNNs.

    Args:
        dims: 2 for (B, 3, H, W) images, 3 for (B, 3, T, H, W) clips (the first stride keeps time).
        width: Channels of the pooled features.
        num_classes: Outputs of the linear layer.
    """

    def __init__(self, dims: int = 2, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        conv, norm, pool, first_stride = _TINY_LAYERS[dims]
        self.features = nn.Sequential(
            conv(3, 8, 3, stride=first_stride, padding=1, bias=False),
            norm(8),
            nn.ReLU(inplace=True),
            conv(8, width, 3, stride=2, padding=1, bias=False),
            norm(width),
            nn.ReLU(inplace=True),
        )
        self.avgpool = pool(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images or clips to (B, num_classes) logits."""
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyNet2d(TinyNet):
    """:class:`TinyNet` for (B, 3, H, W) images."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__(2, width, num_classes)


class TinyNet3d(TinyNet):
    """:class:`TinyNet` for (B, 3, T, H, W) clips."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__(3, width, num_classes)


def _seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    """Builds ``cls`` with a fixed seed, so test features are the same in every process and run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls()
    # A random BatchNorm keeps unit statistics; spread them so the layer is not an identity.
    with torch.no_grad():
        for index, module in enumerate(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            channels = torch.arange(module.num_features, dtype=torch.float32)
            module.running_mean.copy_(0.01 * channels - 0.02 * index)
            module.running_var.copy_(1.0 + 0.05 * channels)
    return model


def register_test_models() -> None:
    """Registers ``test_tiny2d`` and ``test_tiny3d`` (once; importing this module does it)."""
    if "test_tiny2d" in list_models():
        return
    builtin = WeightsSource(builtin=True, license="test model: fixed-seed random weights")
    register(
        ModelRecord(
            name="test_tiny2d",
            kind="2d",
            builder=functools.partial(_seeded, TinyNet2d),
            weights=builtin,
            preprocess=Preprocess(resize=36, crop=32),
            layers={"avgpool": 16, "fc": 10},
            description="tiny 2D test model with fixed random weights (fast tests)",
        )
    )
    register(
        ModelRecord(
            name="test_tiny3d",
            kind="3d",
            builder=functools.partial(_seeded, TinyNet3d),
            weights=builtin,
            preprocess=Preprocess(resize=36, crop=32, mean=KINETICS_MEAN, std=KINETICS_STD),
            layers={"avgpool": 16, "fc": 10},
            clip_len=4,
            clip_fps=8.0,
            description="tiny 3D test model with fixed random weights (fast tests)",
        )
    )


register_test_models()
