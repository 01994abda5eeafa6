"""The plan of one HE linear layer and its exact, closed-form cost (no HE is executed).

``plan(sig, w_bits)`` fixes, from public values only (``LinearSig`` geometry, ring ``ell``, weight
bit width ``b_w``, statistical parameter ``sigma``): the ring degree ``n``, the primes, the flood
width and the packing; it tries every ``n`` of :data:`~.params.RING_DEGREES` and every layout of
:func:`~.layout.best_layout` and keeps the cheapest. Both parties compute the same plan.

Traffic of one layer (each party sends one message; ``send_raw`` counts 8 bits per byte)::

    query    (P1 -> P0)  32 + n_in * n sum_i bitlen(q_i) / 8           bytes (seed, then c0s)
    response (P0 -> P1)  n_out * n b1 / 8  +  ceil(|y| b0 / 8)          bytes
    bits = 8 * (query + response);   rounds = 2 (P1 -> P0 -> P1)

``n`` is a multiple of 8, so only the ``c0`` part rounds. Setup, once per session and SEAL
context (``n``, ``ell``, primes): the public key, ``2 n sum_{all primes} bitlen(q) / 8`` bytes
P1 -> P0 (:func:`setup_cost`). ``cost(sig, w_bits, phase)`` puts the bits in ``offline_bits`` for
the Delphi-style use (preprocessing a random mask; 0 online rounds) or ``online_bits`` with
``rounds = 2`` for the Cheetah-style online use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from privquant.errors import PrivQuantError
from privquant.protocols.preprocessing.he.layout import Geometry, Layout, best_layout
from privquant.protocols.preprocessing.he.params import (
    RING_DEGREES,
    SIGMA,
    HeParams,
    choose_params,
)
from privquant.protocols.primitives import packing
from privquant.protocols.primitives.cost import Cost

PHASES = ("offline", "online")
SEED_BYTES = 32  # the query's seed for the ciphertexts' uniform parts
MAX_W_BITS = 16


@dataclass(frozen=True)
class HePlan:
    geo: Geometry
    layout: Layout
    params: HeParams
    w_bits: int
    sigma: int

    @property
    def n_used(self) -> int:
        return self.geo.n_out

    @property
    def l1(self) -> int:
        return self.layout.l1_bound(self.w_bits)

    @property
    def query_bytes(self) -> int:
        return SEED_BYTES + self.layout.n_in * self.params.query_ct_bits // 8

    @property
    def response_c1_bytes(self) -> int:
        return self.layout.n_resp * self.params.response_c1_bits // 8

    @property
    def response_c0_bytes(self) -> int:
        return packing.packed_nbytes(self.n_used, self.params.b0)

    @property
    def response_bytes(self) -> int:
        return self.response_c1_bytes + self.response_c0_bytes

    @property
    def bits(self) -> int:
        return 8 * (self.query_bytes + self.response_bytes)

    def cost(self, phase: str = "offline") -> Cost:
        if phase == "online":
            return Cost(online_bits=self.bits, rounds=2)
        return Cost(offline_bits=self.bits)


def plan_key(sig) -> tuple:
    """The public fields of ``sig`` a plan depends on (not the layer name)."""
    return (
        sig.kind,
        tuple(sig.x_shape),
        tuple(sig.w_shape),
        int(sig.ell),
        tuple(sig.stride),
        tuple(sig.padding),
        int(sig.groups),
    )


def plan(sig, w_bits: int, sigma: int = SIGMA) -> HePlan:
    """The cheapest secure plan for layer ``sig`` with ``w_bits``-bit signed weights."""
    if not 1 <= int(w_bits) <= MAX_W_BITS:
        raise PrivQuantError(f"HE linear: weight bit width must be 1..{MAX_W_BITS}, got {w_bits}")
    return _plan(plan_key(sig), int(w_bits), int(sigma))


class _Sig:
    def __init__(self, key):
        (
            self.kind,
            self.x_shape,
            self.w_shape,
            self.ell,
            self.stride,
            self.padding,
            self.groups,
        ) = key


@lru_cache(maxsize=4096)
def _plan(key: tuple, w_bits: int, sigma: int) -> HePlan:
    geo = Geometry.of(_Sig(key))
    ell = key[3]
    best = None
    for n in RING_DEGREES:

        def params_of(mw, n=n):
            return choose_params(n, ell, mw * geo.fan_in * (1 << (w_bits - 1)), geo.n_out, sigma)

        def query_bits(mw, params_of=params_of):
            p = params_of(mw)
            return None if p is None else p.query_ct_bits

        p1 = params_of(1)
        if p1 is None:
            continue
        found = best_layout(geo, n, query_bits, p1.response_c1_bits)
        if found is None:
            continue
        lay, _ = found
        params = params_of(lay.mw)
        cand = HePlan(geo, lay, params, w_bits, sigma)
        if best is None or cand.bits < best.bits:
            best = cand
    if best is None:
        raise PrivQuantError(
            f"no 128-bit-secure BFV parameters for a {key[0]} layer at ell={ell}, w_bits={w_bits}"
        )
    best.params.check(best.l1, best.n_used, sigma)
    return best


def cost(sig, w_bits: int, phase: str = "offline", sigma: int = SIGMA) -> Cost:
    """Closed-form traffic of one HE linear layer (see the module docstring)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}")
    return plan(sig, w_bits, sigma).cost(phase)


def setup_cost(params_list) -> Cost:
    """Setup traffic for a set of parameter sets: one public key per distinct SEAL context."""
    from privquant.protocols.preprocessing.he.sealio import context_key

    seen = {}
    for p in params_list:
        seen.setdefault(context_key(p), p)
    return Cost(setup_bits=sum(p.pk_bits for p in seen.values()))
