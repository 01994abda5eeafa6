"""The OT layer between two real OS processes over CrypTen's communicator (gloo, loopback): base
OTs, a large extension batch (several transport pieces, n not a multiple of 8), triples and a
millionaire comparison; results exact and measured == declared."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from privquant.protocols.preprocessing.ot import millionaire, triples
from privquant.protocols.preprocessing.ot.cost import measured
from privquant.protocols.preprocessing.ot.extension import extend_cost, setup_cost
from privquant.protocols.transport.channel import CommStats

pytestmark = pytest.mark.multiprocess
WORKER = Path(__file__).with_name("ot_mp_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("k", [1, 4])
def test_ot_layer_over_gloo(k, tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "TORCH_CPP_LOG_LEVEL": "FATAL",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(port), str(k), "30", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in (0, 1)
    ]
    outs = {}
    deadline = time.monotonic() + 120
    try:
        for r, p in enumerate(procs):
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            assert lines, f"rank {r} printed nothing (exit {p.returncode}): {stderr[-2000:]}"
            outs[r] = json.loads(lines[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert all("error" not in o for o in outs.values()), outs
    a, b = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    r = b["r"].astype(bool)[:, None]
    np.testing.assert_array_equal(b["m"], np.where(r, a["m1"], a["m0"]))
    assert 0.45 < b["r"].mean() < 0.55

    def cost(scope):
        return measured([CommStats.from_dict(outs[i]["scopes"][scope]) for i in (0, 1)])

    n = len(b["r"])
    assert cost("rot") == extend_cost(k, n)
    assert cost("and") == triples.offline_cost(k, 1000)
    assert cost("mill") == millionaire.cost(k, 200, 16)
    tot = measured([CommStats.from_dict(outs[i]["stats"]) for i in (0, 1)])
    assert tot.setup_bits == setup_cost(k).setup_bits
    abc0, abc1 = outs[0]["abc"], outs[1]["abc"]
    av, bv, cv = (np.array(abc0[i]) ^ np.array(abc1[i]) for i in range(3))
    np.testing.assert_array_equal(cv, av & bv)
    x = (np.arange(200) * 7919) % (1 << 16)
    y = (np.arange(200) * 104729 + 3) % (1 << 16)
    np.testing.assert_array_equal(np.array(outs[0]["lt"]) ^ np.array(outs[1]["lt"]), x < y)
