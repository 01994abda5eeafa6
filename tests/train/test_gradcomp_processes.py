"""Real OS processes over loopback (gloo): every method at W = 2 and 4 leaves bit-identical
replicas, and the bytes each rank's kernel reports sending on every compressed step equal the
closed-form declaration; private aggregation changes no bit of the result; checkpoints resume
exactly; torchrun joins; peers' malformed payloads stop training with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privquant.errors import PeerError
from privquant.train.ddp import RunConfig
from privquant.train.launch import free_port, launch_local

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]

VARIANTS = {
    "none": ("none", {}),
    "fp16": ("fp16", {}),
    "terngrad": ("terngrad", {}),
    "terngrad-shared": ("terngrad", {"summable": True}),
    "qsgd": ("qsgd", {"levels": 7, "bucket": 128}),
    "qsgd-l2-private": ("qsgd", {"norm": "l2", "summable": True, "private": True}),
    # 2*W*s + 1 > 256: int32 ring words, masks uniform mod 2^32, so gloo's int32 SUM wraps
    "qsgd-wide-private": ("qsgd", {"levels": 100, "summable": True, "private": True}),
    "dgc": ("dgc", {"density": 0.01, "clip": 1.0}),
    "bingrad": ("bingrad", {}),
    "orq": ("orq", {"levels": 4}),
    "co3": ("co3", {}),
}
FAST_W4 = ("terngrad", "qsgd-l2-private", "co3", "dgc")  # the rest: @slow


def config(variant: str, **kw) -> RunConfig:
    method, opts = VARIANTS[variant]
    return RunConfig(
        model="lenet5",
        data="synthetic",
        limit=96,
        test_limit=32,
        batch_size=24,
        epochs=2,
        lr=0.05,
        method=method,
        options=dict(opts),
        bucket_cap_mb=0.05,  # lenet5 (247 kB of gradients) spreads over several buckets
        progress=False,
        timeout=60.0,
        **kw,
    )


def run(variants: list[str], world: int, **kw) -> list[dict]:
    """Train each variant in turn with the same ``world`` processes (one process group)."""
    return launch_local([config(v, **kw) for v in variants], world, deadline_s=600)


def check(res: dict, world: int) -> None:
    assert res["world"] == world and res["steps"] == 8
    assert res["replicas_identical"] and res["params_identical"]
    b = res["bytes"]
    assert b["measured_equals_declared"], b["per_rank"]
    for r in b["per_rank"]:
        assert r["steps"] >= 5  # compressed steps compared (after the 2 warm-up steps)
        assert r["measured_per_step"] == r["wire_per_step"] > 0


def test_two_workers_every_method():
    names = sorted(VARIANTS)
    for name, res in zip(names, run(names, 2), strict=True):
        assert res["options"] == VARIANTS[name][1]
        check(res, 2)
        ratio = res["bytes"]["ratio_wire"]
        if name == "none":
            assert ratio == 1.0
        elif name == "qsgd-wide-private":  # int32 words + the norms' all_reduce: above fp32
            assert 0.9 < ratio < 1.0
        else:
            assert ratio > 1.9, name


def test_four_workers_fast_methods():
    for res in run(list(FAST_W4), 4):
        check(res, 4)


@pytest.mark.slow
def test_four_workers_every_method():
    for res in run(sorted(set(VARIANTS) - set(FAST_W4)), 4):
        check(res, 4)


def test_private_aggregation_changes_no_bit():
    """Masked and unmasked summable runs (same seed) end bit-identical, with equal bytes."""
    for private in ("qsgd-l2-private", "qsgd-wide-private"):
        method, opts = VARIANTS[private]
        VARIANTS["clear"] = (method, {**opts, "private": False})
        try:
            a, b = run([private, "clear"], 2)
        finally:
            del VARIANTS["clear"]
        assert a["state_hash"] == b["state_hash"]
        assert a["bytes"]["per_rank"] == b["bytes"]["per_rank"]


def test_checkpoint_resume_is_exact(tmp_path):
    """Stop after 5 steps, save every rank's model/optimizer/compressor state, resume in new
    processes: the result equals the uninterrupted run bit for bit (DGC: momentum, residuals
    and the sampling RNG all live in the compressor's state_dict)."""
    straight, _ = launch_local(
        [config("dgc"), config("dgc", stop_at=5, checkpoint=str(tmp_path))], 2, deadline_s=600
    )
    (resumed,) = run(["dgc"], 2, resume=str(tmp_path))
    assert resumed["state_hash"] == straight["state_hash"]
    assert resumed["bucket_state_resets"] == 0
    assert resumed["bytes"]["measured_equals_declared"]


def test_torchrun_join(tmp_path):
    """``privquant train`` under torchrun joins the job (rank 0 reports)."""
    out = tmp_path / "m.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
        f"--master-port={free_port()}", "-m", "privquant.cli", "train", "--model", "lenet5",
        "--limit", "64", "--epochs", "1", "--batch-size", "32", "--grad-compression", "orq",
        "--levels", "8", "--out", str(out), "--json",
    ]  # fmt: skip
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs the Fashion-MNIST package")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["world"] == 2 and res["options"] == {"levels": 8}
    assert res["replicas_identical"] and res["bytes"]["measured_equals_declared"]
    assert torch.load(out, weights_only=True)


def test_dead_worker_is_one_error_line():
    cfg = RunConfig(model="lenet5", data="synthetic", limit=32, method="qsgd", options={},
                    progress=False, timeout=20.0, resume="/nonexistent/ckpt")  # fmt: skip
    with pytest.raises(PeerError, match=r"^rank \d"):
        launch_local(cfg, 2, deadline_s=120)
