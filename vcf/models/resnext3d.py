"""Kensho Hara's 3D ResNeXt with its parameter names, so the released Kinetics checkpoints load."""

from __future__ import annotations

import math

import torch
from torch import nn

# The parameter names (conv1, bn1, layer1..4 with conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/.1, fc)
# follow models/resnext.py of kenshohara/3D-ResNets-PyTorch and video-classification-3d-cnn-pytorch:
# renaming any of them would make the published checkpoints unloadable.


class ResNeXtBottleneck3d(nn.Module):
    """Bottleneck block with a grouped 3x3x3 convolution; the output has ``2 * planes`` channels."""

    expansion = 2

    def __init__(
        self, inplanes: int, planes: int, cardinality: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        mid_planes = cardinality * (planes // 32)
        self.conv1 = nn.Conv3d(inplanes, mid_planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid_planes)
        self.conv2 = nn.Conv3d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn2 = nn.BatchNorm3d(mid_planes)
        self.conv3 = nn.Conv3d(mid_planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block to a (B, C, T, H, W) tensor."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ResNeXt3d(nn.Module):
    """3D ResNeXt with type-B (projection) shortcuts, as trained on Kinetics-400 by Hara et al. (CVPR 2018).

    The original pools with a fixed ``AvgPool3d((1, 4, 4))`` sized for 16x112x112 clips; an adaptive pool gives
    the same numbers for that input and also accepts other clip sizes. It has no parameters, so checkpoints
    are unaffected.

    Args:
        layers: Number of blocks in each of the four stages.
        cardinality: Number of groups of the 3x3x3 convolutions.
        num_classes: Outputs of the final ``fc`` layer.
    """

    def __init__(self, layers: tuple[int, int, int, int], cardinality: int = 32, num_classes: int = 400) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=(3, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(3, 3, 3), stride=2, padding=1)
        self.layer1 = self._make_layer(128, layers[0], cardinality)
        self.layer2 = self._make_layer(256, layers[1], cardinality, stride=2)
        self.layer3 = self._make_layer(512, layers[2], cardinality, stride=2)
        self.layer4 = self._make_layer(1024, layers[3], cardinality, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cardinality * 32 * ResNeXtBottleneck3d.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, cardinality: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        out_planes = planes * ResNeXtBottleneck3d.expansion
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(out_planes),
            )
        stage = [ResNeXtBottleneck3d(self.inplanes, planes, cardinality, stride, downsample)]
        self.inplanes = out_planes
        stage.extend(ResNeXtBottleneck3d(self.inplanes, planes, cardinality) for _ in range(1, blocks))
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps a (B, 3, T, H, W) clip batch to (B, num_classes) logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnext101_3d(num_classes: int = 400) -> ResNeXt3d:
    """ResNeXt-101 (32 groups, shortcut B): 2048-d features after ``avgpool``, Kinetics-400 classes by default."""
    return ResNeXt3d((3, 4, 23, 3), cardinality=32, num_classes=num_classes)
