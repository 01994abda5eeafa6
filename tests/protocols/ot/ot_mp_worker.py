"""One party per OS process over CrypTen's communicator (gloo, loopback), running the OT layer
(driven by test_ot_multiprocess.py).

usage: python ot_mp_worker.py RANK PORT K TIMEOUT OUTDIR; prints one JSON line with small results
and its stats, and writes its random-OT keys (test values) to OUTDIR/rank{RANK}.npz.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols import CryptenTransport, Party, init_communicator, shutdown_communicator
from privquant.protocols.preprocessing.ot import millionaire, triples
from privquant.protocols.preprocessing.ot.extension import OtSession
from privquant.protocols.transport.channel import SERVER

N_ROT = 70001  # not a multiple of 8, several transport pieces


def main() -> None:
    rank, port, k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    timeout, outdir = float(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    out: dict = {"rank": rank}
    try:
        init_communicator(rank, f"tcp://127.0.0.1:{port}", dealer=False, timeout=max(timeout, 45))
        party = Party(rank, CryptenTransport(timeout=timeout))
        s = OtSession(party, k, sid=b"mp")
        s.setup()
        with party.scope("rot"):
            res = s.rot(SERVER, N_ROT)
        if rank == SERVER:
            np.savez(f"{outdir}/rank0.npz", m0=res.m0, m1=res.m1)
        else:
            np.savez(f"{outdir}/rank1.npz", r=res.r, m=res.m)
        with party.scope("and"):
            t = triples.offline(s, 1000)
            out["abc"] = [t.a.tolist(), t.b[:, 0].tolist(), t.c[:, 0].tolist()]
        x = (np.arange(200) * 7919) % (1 << 16)
        y = (np.arange(200) * 104729 + 3) % (1 << 16)
        with party.scope("mill"):
            pre = millionaire.offline(s, 200, 16)
            out["lt"] = millionaire.online(party, pre, x if rank == SERVER else y).tolist()
        party.flush()
        out["scopes"] = {n: st.as_dict() for n, st in party.scopes.items()}
        out["stats"] = party.stats.as_dict()
        party.close()
    except PrivQuantError as e:
        out["error"] = str(e)
    finally:
        shutdown_communicator()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
