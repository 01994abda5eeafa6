"""Evaluate a multilinear polynomial in secret bits (and secret ring values) with ONE opening.

This is the B2A/selection step that ends every nonlinear protocol. The value to produce is a
polynomial

    q = sum_m coef_m * prod_{x in bits(m)} x * [R_m]            (in Z_{2^ell})

in XOR-shared bits ``x`` (e.g. the clip indicators, borrows), at most one secret ring value ``R_m``
per monomial (e.g. ``floor(r / 2^k)``), and public coefficients (ints or per-element tensors that
may depend on an earlier opening). Dealer daBits ``rho_x`` (XOR and arithmetic shares of a random
bit) mask the bits: both parties send ``e_x = x xor rho_x`` (1 bit each), then, with the public
``e_x``, ``x = e_x + (1 - 2 e_x) rho_x`` and

    prod_{x in B} x * R
        = sum_{S subset of B} prod_{x in B\\S} e_x * prod_{x in S} (1 - 2 e_x) * [rho_S * R]

is linear in the dealer-provided arithmetic shares of ``rho_S = prod_{x in S} rho_x`` and
``rho_S * R`` -- computable locally. Products of any degree therefore cost no extra round
(the classic "masked bits + preprocessed monomials" trick, cf. the daBit / edaBit literature,
Rotaru-Wood 2019, Escudero et al. 2020).

Dealer material (:func:`offline`): per bit variable one random bit with both XOR shares seeded; one
message with arithmetic shares (``ell`` bits each, P0's seeded) of every ``rho_S`` (``S``
non-empty subset of a monomial's bits) and ``rho_S * R`` (``S`` any subset; ``S`` empty only when
``R``'s shares are not already held). Cost for ``n`` elements, ``V`` bit variables and ``I``
dealer items (:func:`cost`)::

    online = 2*n*V bits, rounds = [V > 0], offline = n*ell*I bits
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from privquant.protocols.base import Protocol
from privquant.protocols.preprocessing.base import Need, Provider
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.transport.channel import SERVER, Party

Key = tuple[tuple[str, ...], str | None]
Coef = int | torch.Tensor


def _is_zero(c: Coef) -> bool:
    return isinstance(c, int) and c == 0


class Poly:
    """Multilinear polynomial over bit variables and arithmetic secrets (see module docstring).

    Coefficients are ints or tensors. Terms with an int coefficient 0 are dropped; tensor terms are
    kept, so the *set of monomials* depends only on public structure -- the dealer builds the same
    polynomial with placeholder tensors and gets the same monomials.
    """

    def __init__(self, terms: dict[Key, Coef] | None = None):
        self.terms: dict[Key, Coef] = {k: v for k, v in (terms or {}).items() if not _is_zero(v)}

    @staticmethod
    def const(c: Coef) -> Poly:
        return Poly({((), None): c})

    @staticmethod
    def var(name: str) -> Poly:
        return Poly({((name,), None): 1})

    @staticmethod
    def arith(name: str) -> Poly:
        return Poly({((), name): 1})

    @staticmethod
    def _lift(x) -> Poly:
        return x if isinstance(x, Poly) else Poly.const(x)

    def __add__(self, other) -> Poly:
        other = Poly._lift(other)
        out = dict(self.terms)
        for k, v in other.terms.items():
            out[k] = out[k] + v if k in out else v
        return Poly(out)

    __radd__ = __add__

    def __neg__(self) -> Poly:
        return Poly({k: -v for k, v in self.terms.items()})

    def __sub__(self, other) -> Poly:
        return self + (-Poly._lift(other))

    def __rsub__(self, other) -> Poly:
        return Poly._lift(other) - self

    def __mul__(self, other) -> Poly:
        other = Poly._lift(other)
        out: dict[Key, Coef] = {}
        for (b1, a1), v1 in self.terms.items():
            for (b2, a2), v2 in other.terms.items():
                if a1 is not None and a2 is not None:
                    raise ValueError("product of two arithmetic secrets is not supported")
                k = (tuple(sorted(set(b1) | set(b2))), a1 if a1 is not None else a2)
                v = v1 * v2
                out[k] = out[k] + v if k in out else v
        return Poly(out)

    __rmul__ = __mul__

    def reduced(self, ell: int) -> Poly:
        """Drop int coefficients that vanish modulo ``2^ell``."""
        m = ring.mask(ell)
        return Poly(
            {k: v for k, v in self.terms.items() if not (isinstance(v, int) and v & m == 0)}
        )

    @property
    def bit_vars(self) -> tuple[str, ...]:
        return tuple(sorted({x for (b, _a) in self.terms for x in b}))


@dataclass(frozen=True)
class PolySpec:
    """Public structure: bit variables to open, dealer items ``(S, arith)``, ring, provided R's."""

    vars: tuple[str, ...]
    items: tuple[Key, ...]
    ell: int
    n: int

    @staticmethod
    def of(poly: Poly, ell: int, n: int, provided: tuple[str, ...] = ()) -> PolySpec:
        items: set[Key] = set()
        for bits, a in poly.terms:
            for r in range(len(bits) + 1):
                for s in itertools.combinations(bits, r):
                    if a is None and not s:
                        continue
                    if not s and a in provided:
                        continue
                    items.add((s, a))
        order = sorted(items, key=lambda k: (k[1] or "", len(k[0]), k[0]))
        return PolySpec(poly.bit_vars, tuple(order), ell, n)

    def cost(self, preprocessing: str = "dealer") -> Cost:
        return SELECTION.cost(self, preprocessing)


@dataclass
class PolyPre:
    rho: dict[str, torch.Tensor] | None
    prods: torch.Tensor | None


class Selection(Protocol):
    """One-opening evaluation of a polynomial in masked bits (see the module docstring); its
    signature is the polynomial's public structure, a :class:`PolySpec`.

    Cost: online ``2*n*V`` bits, ``[V > 0]`` rounds; needs ``n*I`` products in Z_2^ell."""

    kind = "selection"

    def online_cost(self, sig: PolySpec) -> Cost:
        v = len(sig.vars)
        return Cost(online_bits=2 * sig.n * v, rounds=1 if v else 0)

    def needs(self, sig: PolySpec) -> list[Need]:
        return [Need("products", sig.n, sig.ell, len(sig.items))] if sig.items else []

    def offline(self, corr: Provider, sig: PolySpec, state=None, arith=None) -> PolyPre:
        """``arith[name]()`` returns the provider-known value of the arithmetic secret ``name``."""
        return _offline(corr, sig, arith)

    def online(self, party, sig: PolySpec, pre, poly, bits, provided=None, tag="poly"):
        """See :func:`_online`."""
        return _online(party, sig, pre, poly, bits, provided, tag)


def _offline(corr: Provider, spec: PolySpec, arith_fns: dict | None = None) -> PolyPre:
    """daBits for ``spec.vars`` and one provider request for the shares of ``spec.items``."""
    arith_fns = arith_fns or {}
    n = spec.n
    rho = {v: corr.random_bits((n,)) for v in spec.vars}
    prods = None
    if spec.items:

        def values() -> torch.Tensor:
            cache = {
                a: ring.reduce(arith_fns[a]().reshape(n), spec.ell)
                for a in {a for _s, a in spec.items if a is not None}
            }
            rows = []
            for s, a in spec.items:
                v = torch.ones(n, dtype=torch.int64)
                for x in s:
                    v = v * rho[x].value.to(torch.int64)
                if a is not None:
                    v = v * cache[a]
                rows.append(v)
            return ring.reduce(torch.stack(rows), spec.ell)

        prods = corr.products(values, (len(spec.items), n), spec.ell)
    if corr.role not in (0, 1):
        return PolyPre(None, None)
    return PolyPre({v: r.share for v, r in rho.items()}, prods)


def _online(
    party: Party,
    spec: PolySpec,
    pre: PolyPre,
    poly: Poly,
    bits: dict[str, torch.Tensor],
    provided: dict[str, torch.Tensor] | None = None,
    tag: str = "poly",
) -> torch.Tensor:
    """This party's share (int64, mod 2^ell) of ``poly`` evaluated at the XOR-shared ``bits``."""
    provided = provided or {}
    n, ell = spec.n, spec.ell
    if poly.bit_vars != spec.vars:
        raise AssertionError("polynomial does not match its precomputed structure")
    e: dict[str, torch.Tensor] = {}
    if spec.vars:
        masked = torch.stack([bits[v].reshape(n).to(torch.uint8) ^ pre.rho[v] for v in spec.vars])
        opened = masked ^ party.exchange_bits(masked, tag)
        e = {v: opened[i].to(torch.int64) for i, v in enumerate(spec.vars)}
    index = {k: i for i, k in enumerate(spec.items)}
    sgn = {x: 1 - 2 * ex for x, ex in e.items()}  # the factor of a variable in the subset s
    acc = torch.zeros(n, dtype=torch.int64)
    for (b, a), coef in poly.terms.items():
        # a public coefficient stays a Python int (or its own tensor, broadcast) until it meets
        # a tensor: products wrap mod 2^64 and are reduced mod 2^ell at the end
        if isinstance(coef, torch.Tensor):
            c0 = coef.reshape(-1).to(torch.int64)
        else:
            c0 = coef & ring.mask(ell)
        for r in range(len(b) + 1):
            for s in itertools.combinations(b, r):
                g = c0
                for x in b:
                    g = g * (sgn[x] if x in s else e[x])
                if not s and a is None:
                    if party.rank == SERVER:
                        acc += g
                elif not s and a in provided:
                    acc += g * provided[a].reshape(n)
                else:
                    acc += g * pre.prods[index[(s, a)]]
    return ring.reduce(acc, ell)


SELECTION = Selection()
