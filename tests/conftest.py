"""Shared fixtures: the shipped sample, random-weight models, a quantized lenet5 artifact.

The quantized lenet5 (shipped reference weights, w8a8, 64 calibration images: what
``privquant quantize --model lenet5 --bits w8a8 --calib 64`` builds) is made once per session.
"""

from __future__ import annotations

import pytest
import torch

from privquant.models import build_model, input_shape
from privquant.models.calibration import load_calibration
from privquant.models.data import load_sample
from privquant.quant.search import single_thread

LENET_CALIB = 64


def randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def random_model():
    """Factory ``(name, seed) -> model``: random weights, random BN statistics, eval mode."""

    def make(name: str, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return randomize_bn(build_model(name), seed + 1)

    return make


@pytest.fixture(scope="session")
def calib_images():
    """Factory ``(name, n) -> uint8 images``: Fashion-MNIST train images or CIFAR-shaped noise."""

    def make(name: str, n: int) -> torch.Tensor:
        shape = input_shape(name)
        if shape == (1, 28, 28):
            return load_calibration(n)
        gen = torch.Generator().manual_seed(n)
        return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)

    return make


@pytest.fixture(scope="session")
def sample():
    """The shipped 500 Fashion-MNIST test images (uint8) and labels."""
    return load_sample()


@pytest.fixture(scope="session")
def lenet5_quantized():
    """Shipped lenet5 weights quantized at w8a8 with 64 calibration images (PTQ)."""
    import privquant

    with single_thread():
        return privquant.quantize("lenet5", load_calibration(LENET_CALIB), "w8a8", progress=False)


@pytest.fixture(scope="session")
def lenet5_artifact(lenet5_quantized, tmp_path_factory):
    """Path of ``lenet5_quantized`` saved as a .pq artifact (treat as read-only)."""
    path = tmp_path_factory.mktemp("artifact") / "lenet5-w8a8.pq"
    lenet5_quantized.save(path)
    return path


@pytest.fixture(scope="module")
def torch_single_thread():
    """One intra-op thread for the module: on this shared 2-core machine, multi-threaded torch on
    small tensors spends most of its time in OpenMP barriers (up to ~1000x slower)."""
    with single_thread():
        yield
