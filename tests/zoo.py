"""A test model zoo of "bring your own model" idioms (not shipped as products).

Every model takes a 1x28x28 image (``uint8 / 255``) and returns 10 logits; each exercises idioms
that users write and the op table has to cover:

* :class:`LeNetClassic` -- conv -> max pool -> ReLU (the classic order), ``x.view(x.size(0), -1)``,
  a final ``log_softmax`` (dropped);
* :class:`PreActResNet` -- pre-activation residual blocks (BN -> ReLU on the residual stream, a
  shortcut conv on the activated tensor), ``F.adaptive_avg_pool2d``;
* :class:`GeluMLP` -- an MLP with GELU, BatchNorm1d after a linear layer and LayerNorm-free
  residuals, ``x.reshape(x.shape[0], -1)``;
* :class:`MobileSiLU` -- a MobileNet-style net: Hardswish stem, inverted residual with SiLU,
  depthwise conv with ``padding='same'``, a squeeze-and-excitation gate (Hardsigmoid, a broadcast
  product), ``x.mean((2, 3))``;
* :class:`CatMulNet` -- ``torch.cat`` on channels, a sigmoid gate times a branch (elementwise
  product of two secrets), LeakyReLU, ``F.max_pool2d``;
* :class:`NormNet` -- input normalization ``(x - mean) / std`` with buffers in front of a padded
  conv (kept as a public affine map), Tanh, ``torch.flatten``;
* :class:`NormFoldNet` -- the same with Python numbers in front of an unpadded conv (folded into
  its weights), a final ``softmax`` (dropped).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, **kw):
    pad = kw.pop("padding", k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False, **kw), nn.BatchNorm2d(cout)
    )


class LeNetClassic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.relu(self.pool(self.conv1(x)))
        x = self.pool(self.conv2(x)).relu()
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(8, 8)
        self.layer2 = PreActBlock(8, 16, 2)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class MlpBlock(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class GeluMLP(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.inp = nn.Linear(28 * 28, d)
        self.bn = nn.BatchNorm1d(d)
        self.blocks = nn.Sequential(MlpBlock(d, 2 * d), MlpBlock(d, 2 * d))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        h = F.gelu(self.bn(self.inp(x)))
        h = self.blocks(h)
        return self.head(F.gelu(h))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        h = c * expand
        self.expand = conv_bn(c, h, 1)
        self.dw = nn.Sequential(
            nn.Conv2d(h, h, 3, 1, padding="same", groups=h, bias=False), nn.BatchNorm2d(h)
        )
        self.se = SqueezeExcite(h)
        self.project = conv_bn(h, c, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        y = self.act(self.expand(x))
        y = self.act(self.dw(y))
        y = self.se(y)
        return x + self.project(y)


class MobileSiLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 8, 3, 2)
        self.hs = nn.Hardswish()
        self.block1 = InvertedResidual(8)
        self.down = conv_bn(8, 16, 3, 2)
        self.block2 = InvertedResidual(16)
        self.head = conv_bn(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.hs(self.stem(x))
        x = self.block1(x)
        x = F.silu(self.down(x))
        x = self.block2(x)
        x = F.hardswish(self.head(x))
        return self.fc(x.mean((2, 3)))


class CatMulNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = F.relu(self.conv0(x))
        x = F.max_pool2d(x, 2)
        a = self.act(self.conv_a(x))
        g = torch.sigmoid(self.conv_b(x))
        y = torch.cat([x, a * g], dim=1)
        y = F.max_pool2d(F.relu(self.conv1(y)), kernel_size=2, stride=2)
        return self.fc(y.flatten(1))


class NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.2860]).reshape(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([0.3530]).reshape(1, 1, 1, 1))
        self.conv1 = conv_bn(1, 8, 3, 2)
        self.conv2 = conv_bn(8, 16, 3, 2)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = torch.tanh(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


class NormFoldNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 4, 2)
        self.conv2 = conv_bn(8, 16, 3, 2)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = (x - 0.2860) / 0.3530
        x = F.relu(self.conv1(x))
        x = F.elu(self.conv2(x))
        x = x.view(-1, 16 * 7 * 7)
        return F.softmax(self.fc(x), dim=-1)


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (1d and 2d), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """Zoo model ``name`` with seeded random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomized(ZOO[name](), seed + 1)


ZOO = {
    "lenet-classic": LeNetClassic,
    "preact-resnet": PreActResNet,
    "gelu-mlp": GeluMLP,
    "mobile-silu": MobileSiLU,
    "cat-mul": CatMulNet,
    "norm": NormNet,
    "norm-fold": NormFoldNet,
}
