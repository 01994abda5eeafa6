"""Output policies over the network: ``serve --output topk:3`` / ``label`` as real processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from net_helpers import LENET, Services

import privquant
from privquant.ops.argmax import plain_topk
from privquant.program import run_plain
from privquant.serving import Client

pytestmark = pytest.mark.multiprocess


@pytest.mark.parametrize(
    "output", ["topk:3", pytest.param("label", marks=pytest.mark.slow)]
)  # label by default is also what the README test runs
def test_client_learns_only_what_the_policy_allows(tmp_path, sample, output):
    art = privquant.load(LENET)
    x = sample[0][:5]
    np.save(tmp_path / "batch.npy", x.numpy())
    svc = Services(tmp_path, LENET, timeout=20, extra=("--output", output, "--max-batch", "3"))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "privquant.cli", "client", *svc.client_args(),
             "--expect-hash", art.architecture_hash(), "--input", str(tmp_path / "batch.npy"),
             "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        ref = run_plain(art.program, x)
        k = 3 if output == "topk:3" else 1
        assert res["output"] == output and res["batches"] == [3, 2]
        assert res["labels"] == ref.argmax(1).tolist()
        assert "logits" not in res and "logits_int" not in res
        assert ("topk" in res) == (k == 3)
        if k == 3:
            assert res["topk"] == plain_topk(ref, 3).tolist()
        with Client(
            svc.server_addr, server_key=svc.server_fp, dealer_key=svc.dealer_fp,
            expect_hash=art.architecture_hash(), timeout=30, log=lambda m: None,
        ) as c:  # fmt: skip
            assert c.policy.output == output
            out = c.infer(x[:2])
        assert out["labels"] == ref[:2].argmax(1).tolist() and "logits" not in out
    finally:
        svc.stop()


def test_server_refuses_topk_beyond_the_classes(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "privquant.cli", "serve", str(LENET), "--key", "nokey",
         "--output", "topk:11", "--dealer", "127.0.0.1:1", "--dealer-key", "0" * 64],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "10 classes" in r.stderr


def test_prediction_order_matches_torch(sample):
    logits = run_plain(privquant.load(LENET).program, sample[0][:20])
    assert torch.equal(plain_topk(logits, 1)[:, 0], logits.argmax(1))
