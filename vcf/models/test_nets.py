"""Tiny CNNs with fixed-seed weights: fast stand-ins for real models in tests and examples."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet2d(nn.Module):
    """Two strided convolutions, global pooling and a linear layer: a fast stand-in for real CNNs."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images to (B, num_classes) logits."""
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyNet3d(nn.Module):
    """The 3D counterpart of :class:`TinyNet2d`, for (B, 3, T, H, W) clips."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1, bias=False),
            nn.BatchNorm3d(8),
            nn.ReLU(inplace=True),
            nn.Conv3d(8, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, T, H, W) clips to (B, num_classes) logits."""
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
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
