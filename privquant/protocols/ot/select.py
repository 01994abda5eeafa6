"""Evaluate a selection polynomial on XOR-shared bits without a dealer, in one round of
correlated-OT products.

The polynomial (a :class:`~privquant.protocols.bitpoly.Poly`) is, in ``Z_2^ell``::

    q = sum_t coef_t * prod_{x in B_t} x  [* R]

over XOR-shared bits ``x = x0 xor x1``; ``coef_t`` is a public int or a tensor known to P0
(e.g. derived from the opening ``c`` that only P0 sees); ``R`` (at most one per term, int
coefficient) is a value known to P1 (e.g. ``floor(r / 2^k)`` of its own mask).

Source: the multilinear ("arithmetic") expansion of a Boolean function of XOR shares and one
Gilboa/COT product per cross monomial (the COT multiplexer and B2A of SCI, Rathee et al. 2020,
generalized to products of several bits; :mod:`.cotprod`).

Split ``q = f0 + f1`` into the terms without ``R`` (``f0``, coefficients at P0) and with ``R``
(``f1``). With ``x = x0 + (1 - 2 x0) x1`` for bits, for each term::

    prod_{x in B} x = sum_{S subset B} prod_{B\\S} x0 * prod_S (1 - 2 x0) * prod_S x1

so ``f0 = sum_S A_S * Y_S`` with ``A_S`` computable by P0 and ``Y_S = prod_{i in S} x1_i`` a bit
P1 computes; symmetrically ``f1 = sum_S B_S * Z_S`` with ``B_S`` at P1 (from ``x1`` and ``R``) and
``Z_S = prod_S x0_i`` at P0. ``A_{}`` and ``B_{}`` are local; every other ``S`` is one product
group of :mod:`.cotprod` (chooser P1 for ``f0``, P0 for ``f1``). If every term contributing to
``A_S`` has an int coefficient divisible by ``2^e``, the product is made in ``Z_2^(ell - e)`` and
shifted (e.g. a bit weighted by ``2^(L-k)``).

The set of subsets and the ``e``'s depend only on the polynomial's structure (both parties build
it, P1 with placeholder tensors), so the cost is public (:class:`SelSpec`)::

    offline = (128/k - 1) * n * (|S1| + |S2|)          bits (random OTs, batched)
    online  = n * sum_{S in S1 u S2} (ell - e_S + 1)    bits, 1 round (0 if no product)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.bitpoly import Poly
from privquant.protocols.ot import cotprod
from privquant.protocols.ot.cotprod import CotSpec
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.transport.channel import CLIENT, SERVER, Party

Subset = tuple[str, ...]


def _v2(c: int, ell: int) -> int:
    c &= (1 << ell) - 1
    return ell if c == 0 else (c & -c).bit_length() - 1


@dataclass(frozen=True)
class SelSpec:
    """Public structure: ``s1`` (P1 chooses) and ``s2`` (P0 chooses) as ``(subset, e)``."""

    vars: tuple[str, ...]
    s1: tuple[tuple[Subset, int], ...]
    s2: tuple[tuple[Subset, int], ...]
    ell: int
    n: int

    @staticmethod
    def of(poly: Poly, ell: int, n: int) -> SelSpec:
        e1: dict[Subset, int] = {}
        e2: dict[Subset, int] = {}
        for (bits, a), coef in poly.terms.items():
            if a is not None and isinstance(coef, torch.Tensor):
                raise PrivQuantError("selection: a P1 value needs an int coefficient")
            v = _v2(coef, ell) if isinstance(coef, int) else 0
            target = e1 if a is None else e2
            for r in range(1, len(bits) + 1):
                for s in itertools.combinations(bits, r):
                    target[s] = min(target.get(s, ell), v)
        key = lambda kv: (len(kv[0]), kv[0])  # noqa: E731
        s1 = tuple(sorted(((s, e) for s, e in e1.items() if e < ell), key=key))
        s2 = tuple(sorted(((s, e) for s, e in e2.items() if e < ell), key=key))
        return SelSpec(poly.bit_vars, s1, s2, ell, n)

    @property
    def cots(self) -> tuple[CotSpec, ...]:
        return tuple(CotSpec(CLIENT, self.n, self.ell - e) for _s, e in self.s1) + tuple(
            CotSpec(SERVER, self.n, self.ell - e) for _s, e in self.s2
        )

    def cost(self, k: int) -> OtCost:
        return cotprod.cost(k, self.cots)


def _coef(c, n: int, ell: int) -> np.ndarray:
    if isinstance(c, torch.Tensor):
        return c.reshape(-1).to(torch.int64).expand(n).numpy().view(np.uint64)
    return np.full(n, c & ((1 << ell) - 1), dtype=np.uint64)


def _expand(terms, mine: dict[str, np.ndarray], n: int, ell: int, provided=None):
    """``{S: coefficient of prod_S other-party-bits}`` of ``sum terms`` given this party's bits
    ``mine`` (uint64 0/1); ``provided`` multiplies terms that carry the arithmetic secret."""
    out: dict[Subset, np.ndarray] = {}
    for (bits, a), coef in terms:
        g0 = _coef(coef, n, ell)
        if a is not None:
            g0 = g0 * provided
        for r in range(len(bits) + 1):
            for s in itertools.combinations(bits, r):
                g = g0.copy()
                for x in bits:
                    g = g * (np.uint64(1) - np.uint64(2) * mine[x]) if x in s else g * mine[x]
                out[s] = out[s] + g if s in out else g
    return out


def _monomial(bits: dict[str, np.ndarray], s: Subset, n: int) -> np.ndarray:
    v = np.ones(n, dtype=np.uint8)
    for x in s:
        v &= bits[x]
    return v


def online(
    party: Party,
    spec: SelSpec,
    rots: list,
    poly: Poly,
    bits: dict[str, np.ndarray],
    r_value: np.ndarray | None = None,
    tag: str = "sel",
) -> np.ndarray:
    """This party's share (int64 (n,) mod ``2^ell``) of ``poly`` at the XOR-shared ``bits``.

    ``rots``: this party's random OTs of ``spec.cots`` (in order); ``r_value`` (P1 only): the
    value of the arithmetic secret ``R``."""
    n, ell, me = spec.n, spec.ell, party.rank
    mask = np.uint64((1 << ell) - 1)
    if poly.bit_vars != spec.vars:
        raise AssertionError("selection polynomial does not match its precomputed structure")
    mb = {v: np.asarray(bits[v], dtype=np.uint8).reshape(-1) for v in spec.vars}
    if any(b.size != n for b in mb.values()):
        raise PrivQuantError(f"selection expects {n} bits per variable")
    mb64 = {v: b.astype(np.uint64) for v, b in mb.items()}
    f0 = [(k, c) for k, c in poly.terms.items() if k[1] is None]
    f1 = [(k, c) for k, c in poly.terms.items() if k[1] is not None]
    inputs = []
    acc = np.zeros(n, dtype=np.uint64)
    if me == SERVER:
        a = _expand(f0, mb64, n, ell)
        acc += a.get((), np.zeros(n, np.uint64))
        for s, e in spec.s1:
            inputs.append(a.get(s, np.zeros(n, np.uint64)) >> np.uint64(e))
        for s, _e in spec.s2:
            inputs.append(_monomial(mb, s, n))
    else:
        if f1 and r_value is None:
            raise PrivQuantError("selection: P1 must provide its value R")
        rv = None if r_value is None else np.asarray(r_value, dtype=np.int64).view(np.uint64)
        b = _expand(f1, mb64, n, ell, rv.reshape(-1) if rv is not None else None) if f1 else {}
        acc += b.get((), np.zeros(n, np.uint64))
        for s, _e in spec.s1:
            inputs.append(_monomial(mb, s, n))
        for s, e in spec.s2:
            inputs.append(b.get(s, np.zeros(n, np.uint64)) >> np.uint64(e))
    inputs = [x.view(np.int64) if x.dtype == np.uint64 else x for x in inputs]
    shares = cotprod.online(party, spec.cots, rots, inputs, tag)
    for (_s, e), sh in zip(spec.s1 + spec.s2, shares):
        acc += sh.view(np.uint64) << np.uint64(e)
    return (acc & mask).view(np.int64)
