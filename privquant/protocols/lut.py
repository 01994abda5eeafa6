"""Secret lookup of a public table: ``y = T[x - lo]`` for a shared ``x`` in ``[lo, lo + N)``.

Any elementwise function of a ``b``-bit activation is a table of ``N = 2^b`` entries, so GELU,
SiLU, sigmoid, ... of a quantized model are evaluated *exactly* (the table is the quantized
function) at a cost that depends on ``b``, not on a polynomial approximation.

Source: the one-hot ("rotated one-hot vector") table lookup with preprocessing, as in
Dessouky et al., "Pushing the communication barrier in secure computation using lookup tables"
(NDSS 2017, the OP-LUT protocol) and its use for activations in low-bit networks (e.g. Keller &
Sun, "Secure quantized training for deep learning", ICML 2022, Section 4): the dealer shares the
one-hot vector ``e_r`` of a random index ``r``; the parties open ``c = i - r`` and rotate the
public table by ``c``.

Notation: ``x`` shared in ``Z_{2^L_in}`` (any ``L_in >= nb``), ``i = x - lo mod N`` the index
(``N = 2^nb``, ``nb`` = index bits; shares reduce mod ``N`` locally because ``N`` divides
``2^L_in``), ``L`` the output ring, ``T`` the public table with entries in ``[out_lo, out_hi]``.

Steps:

1. Dealer: ``r`` uniform in ``Z_N`` (both arithmetic shares seeded, free) and additive shares in
   ``Z_{2^Lp}`` of the one-hot vector ``e_r`` (``N`` entries; P0's seeded, P1's by correction:
   ``n*N*Lp`` offline bits, kind ``one_hot``).
2. Each party sends ``i_j - r_j mod N`` (``nb`` bits); both learn ``c = i - r mod N``
   (one exchange: ``2*n*nb`` online bits, 1 round). ``c`` is uniform: it reveals nothing.
3. Each party outputs ``y_j = sum_k T'[(c + k) mod N] * e_r,j[k] mod 2^Lp``; the sum of the two is
   ``T'[(c + r) mod N] = T'[i]`` (local).

Plans (chosen by :meth:`LutSig.plan` for the fewest total bits, then rounds, from public data):

* ``direct``: ``T' = T`` and ``Lp = L``.
* ``lift``: ``T' = T - out_lo`` in ``[0, out_hi - out_lo]`` and ``Lp = m = bitlen(out_hi -
  out_lo) + 1`` (the output's small ring), then the known-MSB lift to ``Z_{2^L}``
  (:mod:`privquant.protocols.lift`: ``2*n`` online bits, ``n*L`` offline bits, 1 round) and P0
  adds ``out_lo``; only when ``2 <= m < L``.
* ``const``: one table entry (``N = 1``): shares ``(T[0], 0)``, no traffic.

Cost (``n`` elements)::

    direct: online = 2*n*nb,        offline = n*N*L,          rounds = 1
    lift:   online = 2*n*nb + 2*n,  offline = n*N*m + n*L,    rounds = 2
    const:  0

Example: a 4-bit GELU (``nb = 4``, unsigned 4-bit output, ``m = 5``) into a 16-bit ring:
lift plan, 10 online + 96 offline bits per element, 2 rounds (direct: 8 + 256, 1).

Fusion with the requantization that produces ``x``: the table reads only ``x mod N``, so its
input tensor needs no ring wider than its own bounds; the preceding requant then emits ``x``
directly in its small ring (no lift of its own) and this protocol changes the ring once, to the
next layer's, while evaluating the function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from privquant.errors import PrivQuantError
from privquant.protocols.base import Protocol
from privquant.protocols.lift import LIFT, LiftPre, LiftSig
from privquant.protocols.preprocessing.base import Need, Provider
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.protocols.transport.channel import SERVER, Party

MAX_INDEX_BITS = 8
CHUNK = 1 << 20  # table entries gathered at once in the online phase


@dataclass(frozen=True)
class LutSig:
    """Public signature: ``n`` elements, index bits ``nb``, input lower bound ``lo``, the table
    (``2^nb`` entries), its output range ``[out_lo, out_hi]`` and the output ring ``ell``."""

    n: int
    nb: int
    lo: int
    table: tuple[int, ...]
    out_lo: int
    out_hi: int
    ell: int

    @cached_property
    def plan(self) -> tuple[str, int]:
        """``(kind, Lp)``: ``const``, ``direct`` (Lp = ell) or ``lift`` (Lp = m)."""
        L = ring.check_ell(self.ell)
        if not 0 <= self.nb <= MAX_INDEX_BITS:
            raise PrivQuantError(f"lookup table index has {self.nb} bits (at most 8)")
        if len(self.table) != 1 << self.nb:
            raise PrivQuantError(f"lookup table has {len(self.table)} entries, not 2^{self.nb}")
        inside = all(self.out_lo <= v <= self.out_hi for v in self.table)
        if self.out_lo > self.out_hi or not inside:
            raise PrivQuantError("lookup table entries lie outside the declared output range")
        if ring.signed_bits(self.out_lo, self.out_hi) > L:
            raise PrivQuantError(
                f"lookup output range [{self.out_lo}, {self.out_hi}] does not fit the {L}-bit ring"
            )
        if self.nb == 0:
            return "const", L
        m = (self.out_hi - self.out_lo).bit_length() + 1
        direct = _cost("direct", self.n, self.nb, L, L)
        if 2 <= m < L:
            lifted = _cost("lift", self.n, self.nb, m, L)
            if (_bits(lifted), lifted.rounds) < (_bits(direct), direct.rounds):
                return "lift", m
        return "direct", L


def _bits(c: Cost) -> int:
    return c.online_bits + c.offline_bits + c.setup_bits


def _parts(kind: str, n: int, nb: int, lp: int, ell: int) -> tuple[Cost, list[Need]]:
    if kind == "const" or n == 0:
        return ZERO, []
    size = 1 << nb
    online = Cost(online_bits=2 * n * nb, rounds=1)
    needs = [Need("random", n, nb), Need("one_hot", n, lp, items=size)]
    if kind == "lift":
        lsig = LiftSig(n, lp, ell)
        online = online.then(LIFT.online_cost(lsig))
        needs += LIFT.needs(lsig)
    return online, needs


def _cost(kind: str, n: int, nb: int, lp: int, ell: int) -> Cost:
    from privquant.protocols.preprocessing.base import need_cost

    online, needs = _parts(kind, n, nb, lp, ell)
    return online.then(need_cost(needs, "dealer"))


@dataclass
class LutPre:
    r: torch.Tensor | None  # this party's share of r in Z_N (n,)
    e: torch.Tensor | None  # this party's shares of e_r in Z_{2^Lp} (n, N)
    lift: LiftPre | None


class Lut(Protocol):
    """Table lookup by a rotated one-hot vector (see the module docstring)."""

    kind = "lut"

    def online_cost(self, sig: LutSig) -> Cost:
        kind, lp = sig.plan
        return _parts(kind, sig.n, sig.nb, lp, sig.ell)[0]

    def needs(self, sig: LutSig) -> list[Need]:
        kind, lp = sig.plan
        return _parts(kind, sig.n, sig.nb, lp, sig.ell)[1]

    def offline(self, corr: Provider, sig: LutSig, state=None) -> LutPre | None:
        kind, lp = sig.plan
        if kind == "const" or sig.n == 0:
            return None
        r = corr.random((sig.n,), sig.nb)
        e = corr.one_hot(r, 1 << sig.nb, lp)
        lpre = LIFT.offline(corr, LiftSig(sig.n, lp, sig.ell)) if kind == "lift" else None
        return LutPre(r.share, e, lpre)

    def online(self, party: Party, sig: LutSig, pre: LutPre | None, x: torch.Tensor, tag="lut"):
        kind, lp = sig.plan
        shape = x.shape
        if x.numel() != sig.n:
            raise PrivQuantError(f"lookup expects {sig.n} elements, got {x.numel()}")
        mine = party.rank == SERVER
        if kind == "const" or sig.n == 0:
            v = sig.table[0] if mine else 0
            return ring.reduce(torch.full(shape, v, dtype=torch.int64), sig.ell)
        nb, size = sig.nb, 1 << sig.nb
        i = ring.reduce(x.reshape(-1) - (sig.lo if mine else 0), nb)
        cs = ring.reduce(i - pre.r, nb)
        c = ring.reduce(cs + party.exchange(cs, nb, f"{tag}.open"), nb)
        base = torch.tensor(sig.table, dtype=torch.int64)
        if kind == "lift":
            base = base - sig.out_lo
        # rotated[e, k] = T'[(c_e + k) mod N]: a gather, then a row-wise dot with the one-hot
        # share (in chunks of CHUNK table entries to bound memory)
        y = torch.empty(sig.n, dtype=torch.int64)
        cols = torch.arange(size).reshape(1, -1)
        step = max(1, CHUNK // size)
        for s in range(0, sig.n, step):
            idx = (c[s : s + step].reshape(-1, 1) + cols) & (size - 1)
            y[s : s + step] = (base[idx] * pre.e[s : s + step]).sum(1)
        y = ring.reduce(y, lp)
        if kind == "lift":
            y = LIFT.online(party, LiftSig(sig.n, lp, sig.ell), pre.lift, y, tag=f"{tag}.lift")
            if mine:
                y = y + sig.out_lo
        return ring.reduce(y, sig.ell).reshape(shape)


LUT = Lut()

__all__ = ["LUT", "MAX_INDEX_BITS", "Lut", "LutPre", "LutSig"]
