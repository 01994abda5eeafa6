"""Fused requantization: truncation + ReLU/clip + ring change from ONE masked opening.

Input: arithmetic shares in ``Z_{2^L}`` (``L = sig.ell``) of the pre-sum ``t`` with public bounds
``tlo <= t <= thi``, ``-2^(L-1) <= tlo``, ``thi < 2^(L-1)``. Output: shares in ``Z_{2^L'}``
(``L' = sig.ell_out``, smaller or larger than ``L``) of::

    q = clip(floor(t / 2^k), lo, hi)          (k = sig.shift)

Sources: masked-opening truncation with exact wrap/borrow correction (SecureML's idea made exact
as in CrypTFlow2/SiRNN), threshold tests from the same opening (Rabbit, Makri et al. 2021) and the
MSB-of-masked-difference test (as in SecureNN/ABY3 comparisons), B2A with daBits; the fusion of
all of them into one opening, one shared prefix circuit and one final opening is this project's
(PrivQuant, Xu et al. 2024, fuse the operators between two linear layers).

Notation: ``H = 2^(L-1)``, ``k`` := ``min(k, L-1)`` (``floor(t/2^k)`` is the same for all
``k >= L-1`` because ``|t| <= 2^(L-1)``), ``u = t + H`` in ``[0, 2^L)``, ``r`` the dealer mask,
``c = u + r mod 2^L`` the opening, ``x_low = x mod 2^(L-1)``, ``x_mid = floor(x_low / 2^k)``,
``b = [c mod 2^k < r mod 2^k]`` (the low-k borrow), ``T_a = lo*2^k + H`` and
``T_h = (hi+1)*2^k + H`` (so ``z >= lo <=> u >= T_a`` and ``z > hi <=> u >= T_h``).

Steps (mode ``msb``, the usual one):

1. Dealer: ``r`` (both arithmetic shares seeded), XOR shares of its low ``rbits`` bits (P1's by
   correction), the AND triples and the final-stage daBits/products (see below).
2. P0 adds ``H``; both open ``c = u + r`` (one exchange, ``2*n*L`` bits).
3. For each needed threshold ``T`` (a multiple of ``2^k``) let ``C_T = c - T + H mod 2^L``. If
   ``u - T`` stays in ``[-H, H)`` over the region where the test matters, then
   ``x = C_T - r mod 2^L = u - T + H`` and the test is its MSB:
   ``[u >= T] = msb(C_T) xor r_(L-1) xor beta_T`` with ``beta_T = [C_T,low < r_low]``.
   All ``beta_T`` share the low ``k`` bits of ``C_T`` (equal to those of ``c``), so the low prefix
   tree (whose root is ``b``) is computed ONCE and joined with each threshold's ``L-1-k`` high bits
   (:mod:`privquant.protocols.compare`, all levels batched in the same exchanges).
4. Truncation without a wrap bit: on the region ``S`` where ``lo <= z <= hi``, with a reference
   ``T_ref = 2^k * floor(S_lo / 2^k)`` such that ``S_hi - T_ref < H`` (``T_ref = T_a`` when the
   lower clip is secret), ``x = u - T_ref + H`` has MSB 1 and
   ``z - lo = P - R - b + 2^(L-1-k) * beta_ref`` with public ``P = (C_ref)_mid + (T_ref - T_a)/2^k``
   and ``R = r_mid`` (dealer-shared in ``Z_{2^L'}``). ``beta_ref`` is needed only if
   ``2^(L-1-k) mod 2^L' != 0``; ``b`` only if ``k > 0``.
5. Selection in ``Z_{2^L'}`` with ``a = [z >= lo]``, ``h = [z > hi]``, ``s = a xor h``::

       form s    : q = lo + s*Z + h*(hi - lo)             (a and h valid everywhere)
       form adom : q = lo + a*Z - a*h*Z + a*h*(hi - lo)    (h valid only where a = 1)
       form hdom : q = lo + a*Z - a*h*Z + h*(hi - lo)      (a valid only where h = 0)

   with ``Z = z - lo``; public constants replace decided bits (``a = 1`` when ``tlo >= lo*2^k``,
   ``h = 0`` when ``thi < (hi+1)*2^k``: those thresholds are skipped). The polynomial is evaluated
   by :mod:`privquant.protocols.bitpoly` with ONE final opening of the masked bits.
6. Lift (see below) if the selection ran in the small ring.

Mode ``rabbit`` (fallback when no MSB window fits, e.g. truncation of a full-range ``t`` without
clipping, or signed clips of wide ranges): ``w = [c < r]`` (the ring wrap),
``[u >= T] = [c >= T] xor w xor [c - T mod 2^L < r]`` (Makri et al.), and
``floor(u/2^k) = floor(c/2^k) - floor(r/2^k) - b + w*2^(L-k)`` so
``Z = floor(c/2^k) - 2^(L-1-k) - lo - R - b + 2^(L-k)*w`` with ``R = floor(r/2^k)``; form ``s``.
The comparisons then span ``L - k`` high bits and ``w`` is an extra job (skipped if no threshold
is secret and ``2^(L-k) mod 2^L' = 0``).

Modes ``const`` (bounds decide the output: shares ``(q, 0)``, no traffic) and ``local``
(``k = 0``, no clip, ``L' <= L``: reduce the shares mod ``2^L'``, no traffic).

Lift (step 6, when it costs fewer bits): the polynomial of step 5 is written for ``q - lo`` in
``[0, hi - lo]``, so it can be evaluated in the small ring ``Z_{2^m}``, ``m = bitlen(hi - lo) + 1``
(``2^width * x`` vanishes there when ``width >= m``, dropping the ``x`` job and items), and lifted
once to ``Z_{2^L'}`` by :mod:`privquant.protocols.lift` (known-MSB wrap: 2 online bits, one dealer
item in ``Z_{2^L'}``, 1 round); P0 adds ``lo``. The plan keeps whichever of the two (selection in
``Z_{2^L'}``, or in ``Z_{2^m}`` plus the lift) has fewer total bits, then fewer rounds.

Cost (``n`` elements, ``J`` jobs of width ``m`` (``L-1-k`` msb, ``L-k`` rabbit) sharing a low block
of ``k`` bits, ``U`` operand openings, ``G`` AND gates and ``M`` digit monomials of
:func:`compare.cost`, ``V`` opened bits and ``I`` dealer items of the selection polynomial in its
ring ``L_p`` (``L'``, or ``m`` when lifted), ``rbits`` mask bits shared as XOR)::

    online  = 2*n*L + 2*U + 2*n*V + [lift]*2*n              bits
    offline = n*rbits + G + M + n*L_p*I + [lift]*n*L'        bits   (r's shares are both seeded)
    rounds  = 1 + D + [V > 0] + [lift]
    D = max(ceil(log2 ceil(k/d)), ceil(log2 ceil(m/d))) + [k > 0 and m > 0]   (d: digit size)

Example: ``L = 20, k = 12, L' = 20``, ``t`` over the whole ring, ReLU and clip at 15: form
``adom`` (the upper test is only valid where ``a = 1``), ``J = 2, m = 7``, 3-bit digits, per
element ``U = 22, G = 14, M = 24``, ``V = 4`` (a, h, b, beta_ref), lifted from ``Z_{2^5}`` with
``I = 11``, ``rbits = 20``: 92 online bits, 133 offline bits, 6 rounds (bit leaves and the
selection in ``Z_{2^20}``: 184, 364, 7).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from privquant.errors import PrivQuantError
from privquant.protocols import compare
from privquant.protocols.base import Protocol
from privquant.protocols.basic import presum
from privquant.protocols.bitpoly import SELECTION, Poly, PolyPre, PolySpec
from privquant.protocols.lift import LIFT, LiftPre, LiftSig
from privquant.protocols.preprocessing.base import Need, Provider, need_cost
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.transport.channel import SERVER, Party


@dataclass(frozen=True)
class RequantSig:
    """Public signature of one fused requantization over ``n`` elements."""

    n: int
    ell: int
    shift: int
    lo: int
    hi: int
    tlo: int
    thi: int
    ell_out: int

    @cached_property
    def plan(self) -> RequantPlan:
        return plan_requant(self)


@dataclass(frozen=True)
class RequantPlan:
    kind: str  # const | local | msb | rabbit
    L: int
    k: int = 0
    const: int = 0
    a: int | None = 1
    h: int | None = 0
    form: str = "s"
    t_ref: int = 0
    jobs: tuple[tuple[str, int], ...] = ()
    width: int = 0
    need_x: bool = False
    kappa: int = 0
    rbits: int = 0
    group: compare.Group | None = None
    ell_out: int = 0
    lo: int = 0
    hi: int = 0
    n: int = 0
    ell_poly: int = 0  # ring of the selection polynomial: ell_out, or m when lifted
    lift: bool = False

    @property
    def H(self) -> int:
        return 1 << (self.L - 1)


def _msb_ok(T: int, x: int, y: int, H: int) -> bool:
    """Does ``u - T`` stay in ``[-H, H)`` for every ``u`` in ``[x, y]`` (empty range: yes)?"""
    return x > y or (x - T >= -H and y - T < H)


@functools.lru_cache(maxsize=65536)
def plan_requant(sig: RequantSig) -> RequantPlan:
    """Choose mode, form, thresholds and comparison jobs from public data only."""
    L = ring.check_ell(sig.ell)
    Lo = ring.check_ell(sig.ell_out)
    if sig.shift < 0:
        raise PrivQuantError(f"requant shift must be >= 0, got {sig.shift}")
    if sig.lo > sig.hi:
        raise PrivQuantError(f"requant clip range [{sig.lo}, {sig.hi}] is empty")
    H = 1 << (L - 1)
    if not (-H <= sig.tlo <= sig.thi <= H - 1):
        raise PrivQuantError(
            f"requant pre-sum bounds [{sig.tlo}, {sig.thi}] do not fit the {L}-bit ring"
        )
    k = min(sig.shift, L - 1)
    zlo, zhi = sig.tlo >> k, sig.thi >> k
    qlo, qhi = min(max(zlo, sig.lo), sig.hi), min(max(zhi, sig.lo), sig.hi)
    if signed_bits(qlo, qhi) > Lo:
        raise PrivQuantError(f"requant output range [{qlo}, {qhi}] does not fit the {Lo}-bit ring")
    base = dict(L=L, k=k, ell_out=Lo, lo=sig.lo, hi=sig.hi, n=sig.n)
    if qlo == qhi:
        return RequantPlan("const", const=qlo, **base)
    ulo, uhi = sig.tlo + H, sig.thi + H
    Ta, Th = sig.lo * (1 << k) + H, (sig.hi + 1) * (1 << k) + H
    a = 0 if uhi < Ta else 1 if ulo >= Ta else None
    h = 1 if ulo >= Th else 0 if uhi < Th else None
    if sig.shift == 0 and a == 1 and h == 0 and Lo <= L:
        return RequantPlan("local", **base)
    slo, shi = max(ulo, Ta), min(uhi, Th - 1)
    t_ref = (slo >> k) << k
    form = None
    if shi - t_ref < H:
        a_full = a is not None or _msb_ok(Ta, ulo, uhi, H)
        h_full = h is not None or _msb_ok(Th, ulo, uhi, H)
        a_part = a is not None or _msb_ok(Ta, ulo, min(uhi, Th - 1), H)
        h_part = h is not None or _msb_ok(Th, max(ulo, Ta), uhi, H)
        if a_full and h_full:
            form = "s"
        elif a_full and h_part:
            form = "adom"
        elif h_full and a_part:
            form = "hdom"

    def build(ell_poly: int) -> RequantPlan:
        if form is not None:
            kind, width = "msb", L - 1 - k
            need_x = width < ell_poly
            jobs = []
            if a is None or need_x:
                assert a is not None or t_ref == Ta
                jobs.append(("ref", t_ref))
            if h is None:
                jobs.append(("h", Th))
            rbits = L if (a is None or h is None) else L - 1 if jobs else k
        else:
            kind, width = "rabbit", L - k
            need_x = width < ell_poly
            jobs = []
            if a is None or h is None or need_x:
                jobs.append(("w", 0))
            if a is None:
                jobs.append(("a", Ta))
            if h is None:
                jobs.append(("h", Th))
            rbits = L if jobs else k
        group = (
            compare.Group(sig.n, k, (width,) * len(jobs), want_low=k > 0)
            if (jobs or k > 0)
            else None
        )
        return RequantPlan(
            kind,
            a=a,
            h=h,
            form=form or "s",
            t_ref=t_ref if kind == "msb" else 0,
            jobs=tuple(jobs),
            width=width,
            need_x=need_x,
            kappa=1 << width,
            rbits=rbits,
            group=group,
            **base,
            ell_poly=ell_poly,
            lift=ell_poly < Lo,
        )

    # The selection polynomial is evaluated in the output ring, or in the small ring of
    # q - lo (m bits) and lifted once (:mod:`privquant.protocols.lift`): whichever costs fewer
    # bits (then rounds).
    plans = [build(Lo)]
    m = (qhi - sig.lo).bit_length() + 1
    if m < Lo:
        plans.append(build(m))
    costs = [plan_cost(p) for p in plans]  # plans are the dealer protocol's: costed as such
    best = min(range(len(plans)), key=lambda i: (_total_bits(costs[i]), costs[i].rounds))
    return plans[best]


def _total_bits(c: Cost) -> int:
    return c.online_bits + c.offline_bits + c.setup_bits


def build_poly(plan: RequantPlan, P: torch.Tensor) -> Poly:
    """The selection polynomial of step 5 for ``q - lo``, in ``Z_{2^ell_poly}`` (``P`` public, per
    element); ``lo`` is added by P0 after the evaluation (and the lift, if any)."""
    Z = Poly.const(P) - Poly.arith("R")
    if plan.k > 0:
        Z = Z - Poly.var("b")
    if plan.need_x:
        Z = Z + plan.kappa * Poly.var("x")
    A = Poly.var("a") if plan.a is None else Poly.const(plan.a)
    Hh = Poly.var("h") if plan.h is None else Poly.const(plan.h)
    span = plan.hi - plan.lo
    if plan.form == "s":
        S = Poly.var("s") if (plan.a is None and plan.h is None) else A - Hh
        q = S * Z + Hh * span
    elif plan.form == "adom":
        q = A * Z - A * Hh * Z + A * Hh * span
    else:
        q = A * Z - A * Hh * Z + Hh * span
    return q.reduced(plan.ell_poly)


def poly_spec(plan: RequantPlan) -> PolySpec:
    # the polynomial's structure does not depend on n, the opening offset or the comparison jobs
    unit = _unit_poly_spec(replace(plan, n=1, t_ref=0, jobs=(), group=None, rbits=0))
    return replace(unit, n=plan.n)


@functools.lru_cache(maxsize=4096)
def _unit_poly_spec(plan: RequantPlan) -> PolySpec:
    return PolySpec.of(build_poly(plan, torch.zeros(1, dtype=torch.int64)), plan.ell_poly, 1)


def plan_cost(plan: RequantPlan, preprocessing: str = "dealer") -> Cost:
    """Closed-form cost of the fused requant for this plan (see the module docstring): ``n``
    times the per-element cost, memoized on the shape and the provider."""
    if plan.kind in ("const", "local"):
        return ZERO
    u = _unit_cost(_unit_plan(plan), preprocessing)
    n = plan.n
    return Cost(n * u.online_bits, n * u.offline_bits, n * u.setup_bits, u.rounds)


def _unit_plan(plan: RequantPlan) -> RequantPlan:
    group = replace(plan.group, n=1) if plan.group is not None else None
    return replace(plan, n=1, t_ref=0, group=group)


@functools.lru_cache(maxsize=16384)
def _unit_cost(plan: RequantPlan, preprocessing: str) -> Cost:
    online, needs = _unit_parts(plan)
    return online.then(need_cost(needs, preprocessing))


def plan_parts(plan: RequantPlan) -> tuple[Cost, list[Need]]:
    """(online cost, correlation needs) of this plan: ``n`` times a per-element count, memoized
    on the shape."""
    if plan.kind in ("const", "local"):
        return ZERO, []
    u, unit_needs = _unit_parts(_unit_plan(plan))
    n = plan.n
    online = Cost(online_bits=n * u.online_bits, rounds=u.rounds)
    return online, [replace(x, n=n * x.n) for x in unit_needs]


@functools.lru_cache(maxsize=16384)
def _unit_parts(plan: RequantPlan) -> tuple[Cost, tuple[Need, ...]]:
    online = Cost(online_bits=2 * plan.n * plan.L, rounds=1)
    needs = [Need("random", plan.n, plan.L), Need("mask_bits", plan.n, items=plan.rbits)]
    parts = []
    if plan.group is not None:
        parts.append((compare.CIRCUIT, compare.circuit([plan.group])))
    parts.append((SELECTION, poly_spec(plan)))
    if plan.lift:
        parts.append((LIFT, LiftSig(plan.n, plan.ell_poly, plan.ell_out)))
    for proto, sig in parts:
        online = online.then(proto.online_cost(sig))
        needs += proto.needs(sig)
    return online, tuple(needs)


@dataclass
class RequantPre:
    r: torch.Tensor | None = None
    rbits: torch.Tensor | None = None
    tri: compare.CmpPre | None = None
    spec: PolySpec | None = None
    poly: PolyPre | None = None
    lift: LiftPre | None = None
    extra: dict = field(default_factory=dict)


def _offline(corr: Provider, sig: RequantSig) -> RequantPre | None:
    """Correlations for one fused requant (runnable by the dealer without data)."""
    plan = sig.plan
    if plan.kind in ("const", "local"):
        return None
    n, L, k, H = plan.n, plan.L, plan.k, plan.H
    r = corr.random((n,), L)
    rbits = corr.mask_bits(r, plan.rbits) if plan.rbits else None
    tri = (
        compare.CIRCUIT.offline(corr, compare.circuit([plan.group]), masks=[r.value])
        if plan.group is not None
        else None
    )
    spec = poly_spec(plan)
    if plan.kind == "msb":

        def R():
            return (r.value & (H - 1)) >> k
    else:

        def R():
            return r.value >> k

    ppre = SELECTION.offline(corr, spec, arith={"R": R})
    lpre = LIFT.offline(corr, LiftSig(n, plan.ell_poly, plan.ell_out)) if plan.lift else None
    return RequantPre(r.share, rbits, tri, spec, ppre, lpre)


def _pub(party: Party, bits: torch.Tensor) -> torch.Tensor:
    """XOR share of a public bit vector (P0 holds it, P1 holds 0)."""
    return (
        bits.to(torch.uint8) if party.rank == SERVER else torch.zeros_like(bits, dtype=torch.uint8)
    )


def _online(
    party: Party, sig: RequantSig, pre: RequantPre | None, t: torch.Tensor, tag: str = "rq"
) -> torch.Tensor:
    """This party's share in ``Z_{2^L'}`` of ``clip(floor(t / 2^k), lo, hi)`` (shape of ``t``)."""
    plan = sig.plan
    shape = t.shape
    if t.numel() != plan.n:
        raise PrivQuantError(f"requant expects {plan.n} elements, got {t.numel()}")
    L, k, H, Lo = plan.L, plan.k, plan.H, plan.ell_out
    t = ring.reduce(t.reshape(-1), L)
    if plan.kind == "const":
        q = plan.const if party.rank == SERVER else 0
        return ring.reduce(torch.full(shape, q, dtype=torch.int64), Lo)
    if plan.kind == "local":
        return ring.reduce(t, Lo).reshape(shape)
    u = t + H if party.rank == SERVER else t
    cs = ring.reduce(u + pre.r, L)
    c = ring.reduce(cs + party.exchange(cs, L, f"{tag}.open"), L)

    msb = plan.kind == "msb"
    cvals = [ring.reduce(c - T + (H if msb else 0), L) for _name, T in plan.jobs]
    lts: dict[str, torch.Tensor] = {}
    b = None
    if plan.group is not None:
        res = compare.CIRCUIT.online(
            party, compare.circuit([plan.group]), pre.tri, [(pre.rbits, c, cvals)], f"{tag}.cmp"
        )[0]
        lts = {name: res[i] for i, (name, _T) in enumerate(plan.jobs)}
        if plan.group.want_low:
            b = res[-1]

    bits: dict[str, torch.Tensor] = {}
    if b is not None:
        bits["b"] = b
    if msb:
        top = pre.rbits[L - 1] if plan.rbits == L else None
        jobv = dict(zip([nm for nm, _ in plan.jobs], cvals))
        if plan.a is None:
            bits["a"] = _pub(party, (jobv["ref"] >> (L - 1)) & 1) ^ top ^ lts["ref"]
        if plan.h is None:
            bits["h"] = _pub(party, (jobv["h"] >> (L - 1)) & 1) ^ top ^ lts["h"]
        if plan.need_x:
            bits["x"] = lts["ref"]
        c_ref = ring.reduce(c - plan.t_ref + H, L)
        Ta = plan.lo * (1 << k) + H
        P = ((c_ref & (H - 1)) >> k) + (plan.t_ref - Ta) // (1 << k)
    else:
        w = lts.get("w")
        if plan.a is None:
            Ta = plan.lo * (1 << k) + H
            bits["a"] = _pub(party, (c >= Ta).to(torch.uint8)) ^ w ^ lts["a"]
        if plan.h is None:
            Th = (plan.hi + 1) * (1 << k) + H
            bits["h"] = _pub(party, (c >= Th).to(torch.uint8)) ^ w ^ lts["h"]
        if plan.need_x:
            bits["x"] = w
        P = (c >> k) - (1 << (L - 1 - k)) - plan.lo
    if plan.a is None and plan.h is None and plan.form == "s":
        bits["s"] = bits["a"] ^ bits["h"]
    poly = build_poly(plan, ring.reduce(P, plan.ell_poly))
    q = SELECTION.online(
        party, pre.spec, pre.poly, poly, {v: bits[v] for v in pre.spec.vars}, tag=f"{tag}.sel"
    )
    if plan.lift:
        q = LIFT.online(party, LiftSig(plan.n, plan.ell_poly, Lo), pre.lift, q, tag=f"{tag}.lift")
    if party.rank == SERVER:
        q = q + plan.lo
    return ring.reduce(q, Lo).reshape(shape)


class FusedRequant(Protocol):
    """The fused requantization core on a pre-sum ``t`` (see the module docstring): online cost
    and correlation needs of the plan its signature selects."""

    kind = "fused_requant"

    def online_cost(self, sig: RequantSig) -> Cost:
        return plan_parts(sig.plan)[0]

    def needs(self, sig: RequantSig) -> list[Need]:
        return plan_parts(sig.plan)[1]

    def cost(self, sig: RequantSig, preprocessing: str = "dealer") -> Cost:
        return plan_cost(sig.plan, preprocessing)  # == online_cost + the needs' cost, memoized

    def offline(self, corr: Provider, sig: RequantSig, state=None) -> RequantPre | None:
        return _offline(corr, sig)

    def online(self, party: Party, sig: RequantSig, pre, t: torch.Tensor, tag: str = "rq"):
        return _online(party, sig, pre, t, tag)


class UnfusedRequant(Protocol):
    """The ``--unfused`` ablation of :class:`FusedRequant`: truncation, ReLU/clip and extension
    as three separate fused-engine runs (:func:`unfused_steps`)."""

    kind = "unfused_requant"

    def online_cost(self, sig: RequantSig) -> Cost:
        return Cost.sequence(FUSED.online_cost(s) for s in unfused_steps(sig))

    def needs(self, sig: RequantSig) -> list[Need]:
        return [x for s in unfused_steps(sig) for x in FUSED.needs(s)]

    def offline(self, corr: Provider, sig: RequantSig, state=None) -> list:
        return [FUSED.offline(corr, s) for s in unfused_steps(sig)]

    def online(self, party: Party, sig: RequantSig, pre, t: torch.Tensor, tag: str = "rqu"):
        x = t
        for i, (s, p) in enumerate(zip(unfused_steps(sig), pre)):
            x = FUSED.online(party, s, p, x, tag=f"{tag}{i + 1}")
        return x


FUSED = FusedRequant()
UNFUSED = UnfusedRequant()


# ----------------------------------------------------------------------------- unfused ablation
def unfused_steps(sig: RequantSig) -> tuple[RequantSig, ...]:
    """The separate protocols of the unfused chain (the ``--unfused`` ablation):

    1. truncation ``z = floor(t / 2^k)`` in ``Z_{2^L}`` (its own opening and wrap/borrow circuit),
    2. ReLU/clip ``clip(z, lo, hi)`` in ``Z_{2^L}`` (its own opening and comparisons),
    3. extension of the result into ``Z_{2^L'}`` (its own opening and wrap test; local if
       ``L' <= L``).

    Each step is the fused engine with the other two functions switched off, so the difference in
    cost between :func:`cost` and :func:`unfused_cost` is exactly what fusion saves. (When the
    bounds alone decide the output, both are the same free constant.)
    """
    if sig.plan.kind == "const":
        return (sig,)
    L = sig.ell
    k = min(sig.shift, L - 1)
    zlo, zhi = sig.tlo >> k, sig.thi >> k
    s1 = RequantSig(sig.n, L, sig.shift, zlo, zhi, sig.tlo, sig.thi, L)
    s2 = RequantSig(sig.n, L, 0, sig.lo, sig.hi, zlo, zhi, L)
    qlo, qhi = min(max(zlo, sig.lo), sig.hi), min(max(zhi, sig.lo), sig.hi)
    s3 = RequantSig(sig.n, L, 0, qlo, qhi, qlo, qhi, sig.ell_out)
    return s1, s2, s3


# ----------------------------------------------------------------------------- the op protocol
@dataclass(frozen=True)
class RequantOpSig:
    """A program requant op: pre-sum (public multipliers/offset) + the fused core."""

    shape: tuple[int, ...]  # (N, C, ...) of every input and of the output
    mults: tuple[tuple[int, ...], ...]
    offset: tuple[int, ...]
    core: RequantSig


def op_presum(party, sig: RequantOpSig, xs) -> torch.Tensor:
    """The requant op's pre-sum ``sum_i m_i x_i + offset`` in the core's ring, after checking
    the shares' count and shapes against the signature (shared by the dealer and dealer-free
    requant ops)."""
    if len(xs) != len(sig.mults):
        raise PrivQuantError(f"requant expects {len(sig.mults)} inputs, got {len(xs)}")
    for x in xs:
        if tuple(x.shape) != tuple(sig.shape):
            raise PrivQuantError(
                f"requant: share has shape {tuple(x.shape)}, expected {tuple(sig.shape)}"
            )
    L = sig.core.ell
    return presum(party, [ring.reduce(x, L) for x in xs], sig.mults, sig.offset, L)


class RequantOp(Protocol):
    """Local pre-sum ``t = sum_i m_i x_i + offset`` then the fused requant (cost of the core)."""

    kind = "requant"
    core = FUSED

    def online_cost(self, sig: RequantOpSig) -> Cost:
        return self.core.online_cost(sig.core)

    def needs(self, sig: RequantOpSig) -> list[Need]:
        return self.core.needs(sig.core)

    def cost(self, sig: RequantOpSig, preprocessing: str = "dealer") -> Cost:
        return self.core.cost(sig.core, preprocessing)

    def offline(self, corr, sig: RequantOpSig, state=None):
        return self.core.offline(corr, sig.core)

    def online(self, party, sig: RequantOpSig, pre, *xs):
        return self.core.online(party, sig.core, pre, op_presum(party, sig, xs))


class RequantUnfusedOp(RequantOp):
    """The ``--unfused`` ablation: truncation, ReLU/clip and extension as separate protocols."""

    core = UNFUSED


REQUANT = RequantOp()
REQUANT_UNFUSED = RequantUnfusedOp()


__all__ = [
    "FUSED",
    "REQUANT",
    "REQUANT_UNFUSED",
    "UNFUSED",
    "FusedRequant",
    "RequantOp",
    "RequantOpSig",
    "RequantPlan",
    "RequantPre",
    "RequantSig",
    "UnfusedRequant",
    "build_poly",
    "plan_cost",
    "plan_parts",
    "plan_requant",
    "unfused_steps",
]
