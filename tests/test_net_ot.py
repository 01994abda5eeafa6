"""Serving without a dealer: ``serve --preprocessing ot`` and a client as real processes over TLS;
no dealer process exists, the client pins only the server, and its logits equal the plaintext
integer program's."""

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


def test_ot_mode_serving_two_processes_exact(tmp_path, sample):
    art = privquant.load(LENET)
    x = sample[0][:3]
    np.save(tmp_path / "batch.npy", x.numpy())
    keys = make_keys(tmp_path, "server")
    addr = f"127.0.0.1:{free_port()}"
    server = Proc(
        "serve", str(LENET), "--key", str(keys["server"][0]), "--listen", addr,
        "--preprocessing", "ot", "--output", "logits", "--max-batch", "2", "--timeout", "30",
    )  # fmt: skip
    try:
        server.wait_line("serving")
        r = subprocess.run(
            [sys.executable, "-m", "privquant.cli", "client", "--server", addr,
             "--server-key", keys["server"][1], "--expect-hash", art.architecture_hash(),
             "--input", str(tmp_path / "batch.npy"), "--json"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        ref = run_plain(art.program, x)
        assert res["batches"] == [2, 1]
        assert res["labels"] == ref.argmax(1).tolist()
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
