"""Known-MSB lift from ``Z_2^m`` to ``Z_2^ell`` without a dealer: one correlated OT per element.

Source: SiRNN's ``MSB_to_Wrap`` (Rathee et al., S&P 2021): for ``0 <= q < 2^(m-1)`` shared as
``q = q0 + q1 mod 2^m``, the wrap ``w`` in ``q0 + q1 = q + 2^m * w`` is ``msb(q0) or msb(q1)``.
SiRNN evaluates it with a 1-out-of-4 OT; here ``a0 or a1 = a0 + a1 - a0*a1`` and the product of
P0's bit ``a0`` and P1's bit ``a1`` is one COT product (:mod:`.cotprod`, P1 the chooser), made
directly in ``Z_2^(ell-m)`` because only ``2^m * w`` is needed.

Steps: offline ``n`` random OTs (P0 sender); online P1 sends ``d = a1 xor rho`` (``n`` bits) while
P0 sends ``z`` (``n*(ell-m)`` bits); with shares ``s0 + s1 = a0*a1 mod 2^(ell-m)``, party ``j``
outputs ``q_j - 2^m * (a_j - s_j) mod 2^ell``.

Cost::

    offline = (128/k - 1) * n bits;  online = n * (ell - m + 1) bits, 1 round
"""

from __future__ import annotations

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.lift import LiftSig
from privquant.protocols.ot import cotprod
from privquant.protocols.ot.common import EXCHANGE, Batch, OtProtocol, session_of
from privquant.protocols.ot.cotprod import CotSpec
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, Party


def spec(sig: LiftSig) -> CotSpec:
    return CotSpec(CLIENT, sig.n, sig.ell - sig.m)


def check(sig: LiftSig) -> None:
    if not 2 <= sig.m < sig.ell:
        raise PrivQuantError(f"lift needs 2 <= m < ell, got m={sig.m}, ell={sig.ell}")
    ring.check_ell(sig.ell)


def full_cost(k: int, sig: LiftSig) -> OtCost:
    return cotprod.cost(k, [spec(sig)]) if sig.n else OtCost()


def online(party: Party, sig: LiftSig, rot, q: torch.Tensor, tag: str = "lift") -> torch.Tensor:
    """This party's share in ``Z_2^ell`` of ``q`` (shares mod ``2^m``, ``q < 2^(m-1)``)."""
    check(sig)
    m, ell = sig.m, sig.ell
    shape = q.shape
    qm = ring.reduce(q.reshape(-1), m).numpy()
    a = ((qm >> (m - 1)) & 1).astype(np.uint8)
    x = a if party.rank == CLIENT else a.astype(np.int64)
    (s,) = cotprod.online(party, [spec(sig)], [rot], [x], tag)
    w = a.astype(np.int64) - s
    out = torch.from_numpy(qm) - torch.from_numpy(w << m)
    return ring.reduce(out, ell).reshape(shape)


class OtLift(OtProtocol):
    """Known-MSB lift ``Z_2^m -> Z_2^ell`` by one COT per element (see the module docstring)."""

    kind = "lift"

    def full_cost(self, sig: LiftSig) -> OtCost:
        return full_cost(self.k, sig)

    def online_steps(self, sig: LiftSig) -> list[str]:
        return [EXCHANGE] if sig.n else []

    def offline(self, corr, sig: LiftSig, state=None):
        check(sig)
        b = Batch()
        b.add(cotprod.requests([spec(sig)]))
        res = b.run(session_of(corr, self.k), "ot.lift")
        return res[0] if res else None

    def online(self, party: Party, sig: LiftSig, pre, q, tag: str = "lift"):
        return online(party, sig, pre, q, tag)


OT_LIFT = OtLift()

__all__ = ["OT_LIFT", "OtLift", "full_cost", "online", "spec"]
