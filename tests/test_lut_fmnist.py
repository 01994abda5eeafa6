"""The Fashion-MNIST SiLU network of bench/lut_fmnist.py (trained here, weights in
bench/weights/silunet.pt): its lookup-table program is exact and close to FP32.

The w4a4 + QAT figure (FP32 89.40%, integer program 88.58% on the 10k test images) is
bench/lut_fmnist.md; QAT takes ~17 min here, so the default test checks PTQ on the shipped
500-image sample and the slow test the FP32 and w8a8 figures on the full test split."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import privquant
from privquant.models.calibration import load_calibration
from privquant.models.data import fmnist_dir, load_fashion_mnist

pytestmark = pytest.mark.usefixtures("torch_single_thread")
ROOT = Path(__file__).resolve().parents[1]
HAVE_FMNIST = (fmnist_dir() / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.fixture(scope="module")
def silunet():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from lut_fmnist import SiluNet
    finally:
        sys.path.remove(str(ROOT / "bench"))
    net = SiluNet()
    net.load_state_dict(torch.load(ROOT / "bench/weights/silunet.pt", weights_only=True))
    return net.eval()


def test_silunet_w8a8_ptq_on_the_sample(silunet, sample):
    images, labels = sample
    art = privquant.quantize(silunet, load_calibration(256), "w8a8", progress=False)
    res = art.evaluate(images, labels)
    assert res["fp32_top1"] >= 88.0
    assert res["int_top1"] >= res["fp32_top1"] - 1.5, res
    assert res["fakequant_int_agreement"] >= 99.0, res
    assert [op.attrs["bits"] for op in art.program.ops if op.kind == "lut"] == [8] * 4


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist is not installed")
def test_silunet_full_test_set_fp32_and_w8a8():
    sys.path.insert(0, str(ROOT / "bench"))
    from lut_fmnist import SiluNet

    net = SiluNet()
    net.load_state_dict(torch.load(ROOT / "bench/weights/silunet.pt", weights_only=True))
    xte, yte = load_fashion_mnist("test")
    art = privquant.quantize(net.eval(), load_calibration(256), "w8a8", progress=False)
    res = art.evaluate(xte, yte)
    assert res["fp32_top1"] == pytest.approx(89.40, abs=0.01)
    assert abs(res["fp32_top1"] - res["int_top1"]) <= 1.0, res
