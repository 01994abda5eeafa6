"""The HE linear layer between two real OS processes over CrypTen's communicator (gloo,
loopback): MB-sized raw messages cut into pieces, exact shares, measured == declared."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from privquant.protocols.linear import ring_lin
from privquant.protocols.preprocessing import he
from privquant.protocols.primitives import ring
from privquant.protocols.transport.crypten import PIECE_BYTES

pytestmark = pytest.mark.multiprocess
HERE = Path(__file__).parent
ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_he_layer_between_two_processes():
    sys.path.insert(0, str(HERE))
    import he_worker

    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "TORCH_CPP_LOG_LEVEL": "FATAL",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "he_worker.py"), str(r), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in (0, 1)
    ]
    outs = {}
    deadline = time.monotonic() + 150
    try:
        for r, p in enumerate(procs):
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            outs[r] = json.loads(lines[-1]) if lines else {"error": stderr[-2000:]}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert all("error" not in o for o in outs.values()), outs
    sig, wb = he_worker.SIG, he_worker.W_BITS
    w, a = he_worker.inputs()
    y = ring.reduce(torch.tensor(outs[0]["share"]) + torch.tensor(outs[1]["share"]), sig.ell)
    assert torch.equal(y.reshape(sig.y_shape), ring_lin(sig, w, a))
    pl = he.plan(sig, wb)
    lay = [outs[r]["scopes"]["layer"] for r in (0, 1)]
    assert lay[1]["bits_sent"]["offline"] == 8 * pl.query_bytes
    assert lay[0]["bits_sent"]["offline"] == 8 * pl.response_bytes
    assert sum(x["bits_sent"]["offline"] for x in lay) == he.cost(sig, wb).offline_bits
    assert outs[1]["scopes"]["setup"]["bits_sent"]["setup"] == pl.params.pk_bits
    assert min(pl.query_bytes, pl.response_bytes) > 2 * PIECE_BYTES  # several pieces each way
