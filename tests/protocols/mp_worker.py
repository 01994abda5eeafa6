"""One party per OS process over CrypTen's communicator (driven by test_proto_multiprocess.py).

usage: python mp_worker.py RANK PORT MODE [TIMEOUT]; prints one JSON line with results and stats.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from privquant.errors import PrivQuantError
from privquant.protocols import (
    CryptenTransport,
    Party,
    establish_seeds,
    init_communicator,
    make_provider,
    shutdown_communicator,
)
from privquant.protocols import requant as rq
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import HEADER, tag_code
from privquant.protocols.transport.crypten import PIECE_BYTES, _Handles


def big_messages() -> list[tuple[str, int]]:
    """(tag, n) of the 16-bit exchanges of mode "big": the first message from the peer has 4
    pieces, then an empty one, 4 pieces again (window posted), then 11 pieces (> WINDOW)."""
    big = 3 * PIECE_BYTES // 2 + 5
    return [("big", big), ("empty", 0), ("big2", big), ("huge", 5 * PIECE_BYTES)]


def main() -> None:
    rank, port, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    torch.set_num_threads(1)
    out: dict = {"rank": rank}
    dealer = mode in ("basic", "big", "mismatch")
    try:
        # meeting the peers may take a while on a loaded machine (imports); receives use `timeout`
        init_timeout = timeout if mode == "alone" else max(timeout, 45.0)
        init_communicator(rank, f"tcp://127.0.0.1:{port}", dealer=dealer, timeout=init_timeout)
        party = Party(rank, CryptenTransport(timeout=timeout))
        if mode == "basic":
            seeds = establish_seeds(party, master=42)
            corr = make_provider(party, seeds)
            with party.scope("dealer"):
                r = corr.random((100,), 13)
                s = corr.share_ring(lambda: r.value * 5, (100,), 13)  # one dealer message
            with party.scope("exchange"):
                if rank < 2:
                    y = party.exchange(torch.full((50,), rank + 1), 11, "ex")
                    out["y"] = y.tolist()
            # a real protocol over the real transport: fused requant, n = 64
            sig = rq.RequantSig(64, 20, 12, 0, 15, -(1 << 19), (1 << 19) - 1, 20)
            pre = rq.FUSED.offline(corr, sig)
            if rank < 2:
                t = torch.arange(-(1 << 19), 1 << 19, (1 << 20) // 64)
                t0, t1 = ring.share(t, 20, torch.Generator().manual_seed(1))
                with party.scope("requant"):
                    q = rq.FUSED.online(party, sig, pre, t0 if rank == 0 else t1)
                out["q"] = q.tolist()
                out["r"], out["s"] = r.share.tolist(), s.tolist()
            else:
                out["r_value"] = r.value.tolist()
        elif mode == "mismatch":
            if rank == 0:
                party.recv(1, (10,), 8, "layer1.open")
            elif rank == 1:
                party.send(0, torch.zeros(12, dtype=torch.int64), 8, "layer7.open")
        elif mode == "big":  # messages of several pieces and empty ones, P0 <-> P1 and D -> P1
            with party.scope("big"):
                if rank < 2:
                    out["ok"] = []
                    for tag, n in big_messages():  # 16-bit elements
                        x = torch.arange(n, dtype=torch.int64) * (rank + 1)
                        y = party.exchange(x, 16, tag)
                        expect = ring.reduce(torch.arange(n, dtype=torch.int64) * (2 - rank), 16)
                        out["ok"].append(torch.equal(y, expect))
                if rank == 2:
                    party.send(1, torch.arange(PIECE_BYTES, dtype=torch.int64), 8, "d", "offline")
                elif rank == 1:
                    d = party.recv(2, (PIECE_BYTES,), 8, "d", "offline")
                    out["dealer_ok"] = torch.equal(d, torch.arange(PIECE_BYTES) % 256)
        elif mode == "mismatch_long":  # the peer's message is far longer than the one expected
            if rank == 0:
                party.recv(1, (10,), 8, "layer1.open")
            else:
                party.send(0, torch.zeros(3 * PIECE_BYTES, dtype=torch.int64), 8, "layer1.open")
        elif mode == "mismatch_short":  # expected several pieces, the peer sends a short message
            if rank == 0:
                party.recv(1, (3 * PIECE_BYTES,), 8, "layer1.open")
            else:
                party.send(0, torch.zeros(10, dtype=torch.int64), 8, "layer1.open")
        elif mode == "v1_peer":  # a format-v1 sender: header alone, then an unbounded payload
            if rank == 0:
                party.recv(1, (10,), 8, "layer1.open")
            else:
                payload = torch.zeros(2 * PIECE_BYTES, dtype=torch.uint8)
                h = HEADER.pack(0xA7, 1 << 4, 1, tag_code("layer1.open", 8, 10), 10, 1)
                t = party.transport
                for w in (
                    t._isend(torch.frombuffer(bytearray(h), dtype=torch.uint8), 0),
                    t._isend(payload, 0),
                ):
                    party._pending.append(_Handles([w], t.timeout, "v1"))
        elif mode == "silent":
            if rank == 0:
                party.recv(1, (10,), 8, "never")
            else:
                time.sleep(timeout + 1)
        elif mode == "dead":
            if rank == 1:
                os._exit(3)
            if rank == 0:
                party.recv(1, (10,), 8, "never")
        party.flush()
        out["stats"] = party.stats.as_dict()
        out["scopes"] = {k: v.as_dict() for k, v in party.scopes.items()}
    except PrivQuantError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    shutdown_communicator()


if __name__ == "__main__":
    main()
