"""One party of the HE linear layer per OS process over CrypTen's communicator (gloo), driven
by test_he_processes.py. usage: python he_worker.py RANK PORT; prints one JSON line."""

from __future__ import annotations

import json
import sys

import torch

from privquant.protocols import CryptenTransport, Party, init_communicator, shutdown_communicator
from privquant.protocols.linear import LinearSig
from privquant.protocols.preprocessing import he
from privquant.protocols.primitives import ring

SIG = LinearSig("conv2d", (1, 64, 16, 16), (64, 64, 3, 3), 18, (1, 1), (1, 1), key="mp")
W_BITS = 4


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Test data (each party uses only its own: P0 the weights, P1 the tensor)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randint(-8, 8, SIG.w_shape, generator=g)
    return w, ring.uniform(g, SIG.x_shape, SIG.ell)


def main() -> None:
    rank, port = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    out: dict = {"rank": rank}
    try:
        init_communicator(rank, f"tcp://127.0.0.1:{port}", dealer=False, timeout=60.0)
        party = Party(rank, CryptenTransport(timeout=60.0))
        pl = he.plan(SIG, W_BITS)
        with party.scope("setup"):
            keys = he.setup(party, [pl.params])
        w, a = inputs()
        with party.scope("layer"):
            if rank == 0:
                share = he.server(party, SIG, W_BITS, w, keys)
            else:
                share = he.client(party, SIG, W_BITS, a, keys)
        party.close()
        out["share"] = share.reshape(-1).tolist()
        out["scopes"] = {k: v.as_dict() for k, v in party.scopes.items()}
        shutdown_communicator()
    except Exception as e:  # reported to the test, which fails on it
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
