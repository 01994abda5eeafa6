"""MUX: an XOR-shared bit times an additively shared ring value, by two correlated OTs.

Source: the multiplexer of CrypTFlow2/SCI (Rathee et al., CCS 2020, section 4.1 "F_MUX"),
arranged here as two bit-times-value products (:func:`.messages.products`) in one round.

``s = s0 xor s1`` and ``x = x0 + x1 mod 2^ell``:
``s*x = (s0 xor s1)*x0 + (s0 xor s1)*x1`` and ``(s0 xor s1)*x_i = s_i*x_i + s_j*(1 - 2*s_i)*x_i``
(``j = 1 - i``). So each party adds its local ``s_i*x_i`` and takes part in two products: as value
holder with ``delta_i = (1 - 2*s_i)*x_i`` (the peer's bit ``s_j`` chooses) and as bit holder for the
peer's ``delta_j``.

* offline (:func:`offline`): ``n`` random OTs in each direction: ``2*(128/k - 1)*n`` bits, 1 round;
* online (:func:`online`): ``2*n*(ell + 1)`` bits, 1 round (:func:`cost`).
"""

from __future__ import annotations

import numpy as np
import torch

from privquant.protocols.preprocessing.ot import messages
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import OtRequest, OtSession, extend_cost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


def requests(n: int) -> list[OtRequest]:
    return [OtRequest(SERVER, n), OtRequest(CLIENT, n)]


def offline(session: OtSession, n: int, phase: str = "offline"):
    """The random OTs of ``n`` multiplexers: ``(rot P0->P1, rot P1->P0)``."""
    return tuple(session.batch(requests(n), phase=phase, tag="ot.mux"))


def cost(k: int, n: int, ell: int) -> OtCost:
    off = extend_cost(k, n).alongside(extend_cost(k, n))
    return off.then(messages.product_cost(n, ell).alongside(messages.product_cost(n, ell)))


def online(
    party: Party, rots, s: torch.Tensor, x: torch.Tensor, ell: int, tag: str = "ot.mux"
) -> torch.Tensor:
    """This party's share of ``s*x`` mod ``2^ell`` (``s`` uint8 XOR share, ``x`` int64 share)."""
    ell = ring.check_ell(ell)
    if tuple(s.shape) != tuple(x.shape):
        raise OtError("MUX: the bit and the value must have the same shape")
    rot01, rot10 = rots
    mine, theirs = (rot01, rot10) if party.rank == SERVER else (rot10, rot01)
    sb = s.reshape(-1).numpy().astype(np.uint8)
    xv = ring.reduce(x.reshape(-1), ell)
    if sb.size != len(mine):
        raise OtError(f"MUX: {sb.size} elements but {len(mine)} prepared OTs")
    delta = ring.reduce((1 - 2 * torch.from_numpy(sb.astype(np.int64))) * xv, ell).numpy()
    (a,), (b,) = messages.products(party, [(mine, delta)], [(theirs, sb, None)], ell, tag)
    out = torch.from_numpy(sb.astype(np.int64)) * xv + torch.from_numpy(a) + torch.from_numpy(b)
    return ring.reduce(out, ell).reshape(x.shape)
