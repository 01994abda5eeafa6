"""Serving without a dealer: ``serve --preprocessing ot`` and a client as real processes over TLS;
no dealer process exists and the client pins only the server. Under ``logits`` the client's
logits equal the plaintext integer program's; under the default ``label`` (the dealer-free
secure argmax) it gets exactly the plaintext labels and no logits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from net_helpers import LENET, Proc, free_port, make_keys

import privquant
from privquant.program import run_plain
from privquant.serving import Client

pytestmark = pytest.mark.multiprocess


@pytest.mark.parametrize("output", ["logits", "label"])
def test_ot_mode_serving_two_processes_exact(tmp_path, sample, output):
    art = privquant.load(LENET)
    x = sample[0][:3]
    np.save(tmp_path / "batch.npy", x.numpy())
    keys = make_keys(tmp_path, "server")
    addr = f"127.0.0.1:{free_port()}"
    policy = ["--output", "logits", "--max-batch", "2"] if output == "logits" else []
    server = Proc(
        "serve", str(LENET), "--key", str(keys["server"][0]), "--listen", addr,
        "--preprocessing", "ot", *policy, "--timeout", "60",
    )  # fmt: skip
    try:
        server.wait_line("serving")
        r = subprocess.run(
            [sys.executable, "-m", "privquant.cli", "client", "--server", addr,
             "--server-key", keys["server"][1], "--expect-hash", art.architecture_hash(),
             "--input", str(tmp_path / "batch.npy"), "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        ref = run_plain(art.program, x)
        assert res["labels"] == ref.argmax(1).tolist()
        if output == "label":  # the server's default policy
            assert res["output"] == "label"
            assert "logits" not in res and "logits_int" not in res
            return
        assert res["batches"] == [2, 1]
        assert res["logits_int"] == ref.tolist()
        # the Python client sees the offer: no dealer to pin, none contacted
        with Client(
            addr, server_key=keys["server"][1], expect_hash=art.architecture_hash(),
            timeout=60, log=lambda m: None,
        ) as c:  # fmt: skip
            assert c.policy.preprocessing == "ot" and not c.policy.needs_dealer
            out = c.infer(x[:1])
        assert out["labels"] == ref[:1].argmax(1).tolist()
    finally:
        assert server.stop() == 0, server.lines
