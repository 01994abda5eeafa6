"""B2A: XOR-shared bits to additive shares in Z_2^ell, one correlated OT per bit.

Source: the COT-based bit-to-arithmetic conversion of SiRNN/SCI (Rathee et al., S&P 2021,
"B2A") and ALSZ13's correlated OT, here with the derandomization of :mod:`.messages` so that the
online part is a single simultaneous round.

``b = b0 xor b1 = b0 + b1 - 2*b0*b1``. The product ``b0*b1`` of P0's bit and P1's bit is one
:func:`.messages.products` instance: P0 is the value holder with ``delta = b0`` (an ``ell``-bit
value), P1 the bit holder with ``c = b1``; with shares ``s0 + s1 = b0*b1``:
``[b]_0 = b0 - 2*s0`` and ``[b]_1 = b1 - 2*s1`` (mod ``2^ell``).

* offline (:func:`offline`): ``n`` random OTs P0 -> P1: ``(128/k - 1)*n`` bits, 1 round;
* online (:func:`online`): P0 sends ``z`` (``n*ell`` bits) while P1 sends ``d`` (``n`` bits):
  ``n*(ell + 1)`` bits, 1 round (:func:`cost`).
"""

from __future__ import annotations

import numpy as np
import torch

from privquant.protocols.preprocessing.ot import messages
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import OtRequest, OtSession, extend_cost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import SERVER, Party


def requests(n: int) -> list[OtRequest]:
    return [OtRequest(SERVER, n)]


def offline(session: OtSession, n: int, phase: str = "offline"):
    """The random OTs of ``n`` conversions (both parties call it)."""
    return session.batch(requests(n), phase=phase, tag="ot.b2a")[0]


def cost(k: int, n: int, ell: int) -> OtCost:
    """Offline + online cost of ``n`` conversions into ``Z_2^ell``."""
    return extend_cost(k, n).then(messages.product_cost(n, ell))


def online(party: Party, rot, b: torch.Tensor, ell: int, tag: str = "ot.b2a") -> torch.Tensor:
    """This party's additive share (int64 in ``[0, 2^ell)``, shape of ``b``) of the XOR-shared
    bits ``b`` (this party's uint8 0/1 share)."""
    ell = ring.check_ell(ell)
    shape = tuple(b.shape)
    bits = b.reshape(-1).numpy().astype(np.uint8)
    if bits.size != len(rot):
        raise OtError(f"B2A: {bits.size} bits but {len(rot)} prepared OTs")
    if party.rank == SERVER:
        s = messages.products(party, [(rot, bits.astype(np.int64))], [], ell, tag)[0][0]
    else:
        s = messages.products(party, [], [(rot, bits, None)], ell, tag)[1][0]
    out = torch.from_numpy(bits.astype(np.int64)) - 2 * torch.from_numpy(s)
    return ring.reduce(out, ell).reshape(shape)
