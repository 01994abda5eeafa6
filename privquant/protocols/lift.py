"""Lift shares of a small non-negative value from ``Z_{2^m}`` to ``Z_{2^L}`` (``L > m``).

Source: the known-MSB wrap of SiRNN's ``MSB_to_Wrap`` (Rathee et al. 2021): for a value
``0 <= q < 2^(m-1)`` shared as ``q = q0 + q1 mod 2^m``, the wrap ``w`` in ``q0 + q1 = q + 2^m*w``
(integers) is ``w = msb(q0) or msb(q1)`` -- both MSBs set forces a wrap, neither forbids one, and
exactly one set with ``q < 2^(m-1)`` needs one. SiRNN evaluates it with a 1-out-of-4 OT; here the
OR of the two parties' private bits ``a0, a1`` is one dealer-assisted product.

Steps (``n`` elements):

1. Dealer: ``rho0`` (known to P0 and D) and ``rho1`` (known to P1 and D), both seeded; arithmetic
   shares of ``rho0*rho1`` in ``Z_{2^L}`` (P0's seeded, P1's by correction: ``n*L`` bits).
2. Each party sends ``f_j = a_j xor rho_j`` (``a_j`` = bit ``m-1`` of its share): one exchange,
   ``2*n`` bits, 1 round. ``f_j`` is uniform to the other party.
3. With ``x xor rho = f + (1 - 2f)*rho`` for bits: ``a0*a1 = f0*f1 + f0*(1-2f1)*rho1
   + f1*(1-2f0)*rho0 + (1-2f0)*(1-2f1)*rho0*rho1`` is linear in values the parties hold
   (``rho0`` at P0, ``rho1`` at P1, shares of ``rho0*rho1``), so ``w = a0 + a1 - a0*a1`` and
   ``x_j = q_j - 2^m * w_j`` are local.

Cost::

    online = 2*n bits, offline = n*L bits, rounds = 1

Used by the fused requantization: its selection polynomial is evaluated in the output's small
ring (``m = bitlen(hi - lo) + 1`` bits, e.g. 5 for a 4-bit output) and lifted once, instead of
having every dealer item of the polynomial in the next layer's wide ring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from privquant.errors import PrivQuantError
from privquant.protocols.base import Protocol
from privquant.protocols.preprocessing.base import Need, Provider
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.transport.channel import SERVER, Party


@dataclass(frozen=True)
class LiftSig:
    """``n`` elements from ``Z_{2^m}`` to ``Z_{2^ell}``."""

    n: int
    m: int
    ell: int


@dataclass
class LiftPre:
    rho: torch.Tensor | None  # this party's private bit rho_j (n,) uint8
    prod: torch.Tensor | None  # this party's arithmetic share of rho0*rho1 (n,) int64


class Lift(Protocol):
    """Known-MSB lift (see the module docstring). Cost: online ``2*n`` bits, 1 round; needs
    ``n`` ``bit_product`` items in Z_2^ell."""

    kind = "lift"

    def online_cost(self, sig: LiftSig) -> Cost:
        return Cost(online_bits=2 * sig.n, rounds=1) if sig.n else Cost()

    def needs(self, sig: LiftSig) -> list[Need]:
        return [Need("bit_product", sig.n, sig.ell)] if sig.n else []

    def offline(self, corr: Provider, sig: LiftSig, state=None) -> LiftPre:
        rho0, rho1 = corr.private_bits((sig.n,))
        prod = corr.bit_product(rho0, rho1, (sig.n,), sig.ell)
        mine = rho0 if corr.role == SERVER else rho1
        return LiftPre(mine, prod)

    def online(self, party: Party, sig: LiftSig, pre: LiftPre, q, tag: str = "lift"):
        return _online(party, pre, q, sig.m, sig.ell, tag)


def _online(
    party: Party, pre: LiftPre, q: torch.Tensor, m: int, ell: int, tag: str = "lift"
) -> torch.Tensor:
    """This party's share in ``Z_{2^ell}`` of ``q`` (shares ``q`` mod ``2^m``, ``q < 2^(m-1)``)."""
    if not 2 <= m < ell:
        raise PrivQuantError(f"lift needs 2 <= m < ell, got m={m}, ell={ell}")
    shape = q.shape
    qm = ring.reduce(q.reshape(-1), m)
    a = ((qm >> (m - 1)) & 1).to(torch.uint8)
    f_mine = a ^ pre.rho
    f_other = party.exchange_bits(f_mine, f"{tag}.msb")
    if party.rank == SERVER:
        f0, f1 = f_mine.long(), f_other.long()
    else:
        f0, f1 = f_other.long(), f_mine.long()
    rho = pre.rho.long()
    # this party's share of a0*a1 (see the module docstring)
    prod = (1 - 2 * f0) * (1 - 2 * f1) * pre.prod
    if party.rank == SERVER:
        prod = prod + f0 * f1 + f1 * (1 - 2 * f0) * rho
    else:
        prod = prod + f0 * (1 - 2 * f1) * rho
    w = a.long() - prod
    return ring.reduce(qm - (w << m), ell).reshape(shape)


LIFT = Lift()

__all__ = ["LIFT", "Lift", "LiftPre", "LiftSig"]
