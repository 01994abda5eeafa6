"""ResNets built from one shared BasicBlock.

* ``resnet8``: 1x28x28 input, stem 16 channels, three stages of one block (16/32/64).
* ``resnet18-cifar``: 3x32x32 input, the standard CIFAR ResNet-18 (no max pool).

Conventions the fx quantizer relies on: every conv is followed by a BatchNorm2d (so the conv has
no bias), activations are separate ``nn.ReLU()`` modules, and the residual add is a Python ``+``
followed by its own ReLU module.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two conv3x3+BN layers with an identity or conv1x1+BN shortcut; ReLU after the add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class ResNet(nn.Module):
    """Stem conv3x3+BN+ReLU, stages of BasicBlocks, global average pool, linear classifier."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...],
        blocks_per_stage: tuple[int, ...],
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        in_ch = widths[0]
        for i, (width, n_blocks) in enumerate(zip(widths, blocks_per_stage)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet8(num_classes: int = 10) -> ResNet:
    """ResNet-8 for 1x28x28 inputs: stages of one block with widths 16/32/64, strides 1/2/2."""
    return ResNet(1, (16, 32, 64), (1, 1, 1), num_classes)


def resnet18_cifar(num_classes: int = 10) -> ResNet:
    """Standard CIFAR ResNet-18 for 3x32x32 inputs: 4 stages x 2 blocks, widths 64..512."""
    return ResNet(3, (64, 128, 256, 512), (2, 2, 2, 2), num_classes)
