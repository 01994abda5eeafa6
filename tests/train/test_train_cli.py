"""``privquant train --workers N --grad-compression METHOD`` and ``privquant quantize
--qat-epochs E --workers N --grad-compression METHOD`` end to end (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import privquant

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="needs dataset-fashion-mnist")


def cli(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "privquant.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@needs_fmnist
def test_train_two_workers_private_terngrad(tmp_path):
    out = tmp_path / "m.pt"
    r = cli(
        *("train", "--model", "lenet5", "--limit", "96", "--epochs", "1", "--batch-size", "24"),
        *("--workers", "2", "--grad-compression", "terngrad", "--summable", "--private"),
        *("--clip", "0", "--bucket-cap-mb", "0.05", "--out", str(out), "--json"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["world"] == 2 and res["method"] == "terngrad"
    assert res["options"] == {"summable": True, "private": True, "clip": 0.0}
    assert res["replicas_identical"] and res["bytes"]["measured_equals_declared"]
    assert 3.5 < res["bytes"]["ratio_wire"] < 4.0  # int8 ring vs fp32: a constant ~3.9x
    assert set(torch.load(out, weights_only=True)) == set(
        privquant.models.build_model("lenet5").state_dict()
    )


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--grad-compression", "qsgd", "--density", "0.1"], "--density does not apply to"),
        (["--grad-compression", "qsgd", "--private"], "add --summable"),
        (["--grad-compression", "dgc", "--density", "2"], "--density must be in"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_bad_options_one_line(tmp_path, extra, message):
    r = cli("train", "--model", "lenet5", "--out", str(tmp_path / "m.pt"), "--workers", "2", *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("privquant: error: ") and message in lines[0]


@needs_fmnist
def test_quantize_with_distributed_qat(tmp_path):
    out = tmp_path / "l.pq"
    r = cli(
        *("quantize", "--model", "lenet5", "--bits", "w8a8", "--calib", "32"),
        *("--qat-epochs", "1", "--qat-limit", "640", "--workers", "2"),
        *("--grad-compression", "qsgd", "--levels", "7", "--out", str(out), "--json"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["qat_workers"] == 2 and res["qat_grad_compression"]["method"] == "qsgd"
    assert res["qat_replicas_identical"] and res["qat_measured_equals_declared"]
    assert 0 < res["qat_bytes_per_step"] < res["qat_fp32_bytes_per_step"] / 5
    art = privquant.load(out)
    assert art.info["qat_epochs"] == 1
