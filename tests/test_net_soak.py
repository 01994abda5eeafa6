"""One ``privquant serve`` process: 100 sequential sessions and 4 concurrent clients of resnet8,
all bit-exact, server RSS after session 100 within 10% of after session 10; SIGTERM lets a
running session finish. Slow (a few minutes): ``pytest -m slow tests/test_net_soak.py``."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch
from net_helpers import RESNET, Services

import privquant
from privquant.program import run_plain
from privquant.serving import Client

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _client(svc, art, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (1, *art.input_shape), dtype=torch.uint8, generator=g)
    with Client(
        svc.server_addr, server_key=svc.server_fp, dealer_key=svc.dealer_fp,
        expect_hash=art.architecture_hash(), timeout=60, log=lambda m: None,
    ) as c:  # fmt: skip
        out = c.infer(x)
    return torch.equal(torch.tensor(out["logits_int"]), run_plain(art.program, x))


def test_100_sequential_and_4_concurrent_sessions(tmp_path):
    art = privquant.load(RESNET)
    svc = Services(tmp_path, timeout=60)
    try:
        rss = {}
        t0 = time.time()
        for i in range(1, 101):
            assert _client(svc, art, i), f"session {i} differs"
            if i in (10, 100):
                time.sleep(0.5)
                rss[i] = svc.server.rss_kb
        seq_s = time.time() - t0
        print(f"100 sequential sessions in {seq_s:.1f} s; server RSS (kB) {rss}")
        assert rss[100] <= 1.10 * rss[10], rss
        ok = [None] * 4
        ts = [threading.Thread(target=lambda k=k: ok.__setitem__(k, _client(svc, art, 1000 + k)))
              for k in range(4)]  # fmt: skip
        [t.start() for t in ts]
        [t.join(300) for t in ts]
        assert ok == [True] * 4
        deadline = time.time() + 20  # the server logs a session just after the client is done
        while sum("inference(s)" in ln for ln in svc.server.lines) < 104 and time.time() < deadline:
            time.sleep(0.1)
        done = [ln for ln in svc.server.lines if "inference(s)" in ln]
        assert len(done) == 104 and not any("dropped" in ln for ln in svc.server.lines)
        # SIGTERM while a session runs: it finishes, then the server exits 0
        res = []
        th = threading.Thread(target=lambda: res.append(_client(svc, art, 7)))
        th.start()
        time.sleep(1.0)
        svc.server.p.send_signal(signal.SIGTERM)
        th.join(120)
        assert res == [True]
        assert svc.server.p.wait(60) == 0
    finally:
        svc.stop()
