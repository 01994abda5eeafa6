"""Fused requantization (truncation + ReLU/clip + ring change, residual pre-sum) without a dealer,
bit-exact with the integer program for every plan of the dealer protocol (const, local, msb,
rabbit; lifted or not).

Input: shares in ``Z_2^L`` of the pre-sum ``t`` (public bounds ``tlo <= t <= thi``); output: shares
in ``Z_2^L'`` of ``q = clip(floor(t / 2^k), lo, hi)`` -- the same signature
(:class:`~privquant.protocols.requant.RequantSig`) and plaintext semantics as
:mod:`privquant.protocols.requant`, whose notation this module keeps (``H = 2^(L-1)``,
``u = t + H``, thresholds ``T_a = lo*2^k + H``, ``T_h = (hi+1)*2^k + H``, forms ``s``/``adom``/
``hdom``).

Sources: masked opening with exact borrow/wrap correction (SecureML's truncation made exact as
in CrypTFlow2/SiRNN); threshold tests from one opening (Rabbit, Makri et al. 2021) and the
MSB-of-shifted-value test; SCI's millionaire leaves and COT multiplexer/B2A for the dealer-free
parts (Rathee et al. 2020, 2021); the fusion into one opening, one shared comparison circuit, one
selection round and one lift is PrivQuant's (Xu et al. 2024) as built in the dealer protocol.

What changes without a dealer. P1 draws its mask ``r`` itself (uniform in ``Z_2^L``, from the OS
CSPRNG, offline) and sends ``t1 + r`` (the only opening, ``n*L`` bits, P1 -> P0), so P0 alone
learns ``c = u + r mod 2^L``. Every "public ``c``" comparison of the dealer protocol becomes a
comparison of P0's value with P1's ``r``; since P1 knows ``r`` offline, the 1-out-of-2^m OTs of
the millionaire leaves are made offline with P1's digits as *chosen* indices (no online index
message) and one OT per digit serves every threshold (:mod:`.circuit`). The selection's
"public" coefficients are P0's, ``R = floor(r / 2^k)`` is P1's, and the polynomial is evaluated by
COT products in one round (:mod:`.select`); the lift is one COT (:mod:`.lift`).

Steps (msb mode):

1. offline (one OT batch, 1 round): P1 draws ``r``; leaf OTs (P1's digits of ``r`` chosen), AND
   triples of the comparison tree, the random OTs of the selection and lift products;
2. P1 sends ``t1 + r``; P0 forms ``c = t0 + H + (t1 + r)`` (1 round);
3. per needed threshold ``T``: ``C_T = c - T + H mod 2^L``; the circuit gives XOR shares of
   ``beta_T = [C_T mod 2^(L-1) < r mod 2^(L-1)]`` and of the low borrow
   ``b = [c mod 2^k < r mod 2^k]`` (low block shared by all jobs); ``[u >= T] = msb(C_T) xor
   r_(L-1) xor beta_T`` (P0 holds ``msb(C_T)``, P1 ``r_(L-1)``) (1 + D rounds);
4. ``z - lo = P - R - b + 2^(L-k) * C_top * beta_ref`` (mod ``2^L_p``) with P0's
   ``P = floor(C_ref / 2^k) + 2^(L-k) * (1 - C_top) - 2^(L-1-k) + (T_ref - T_a) / 2^k`` and
   ``C_top = msb(C_ref)``, P1's ``R = floor(r / 2^k)``. (On the selected region ``x_ref = u - T_ref
   + H`` has MSB 1, so its full-width wrap is ``1 - C_top + C_top * beta_ref``.) The ``beta_ref``
   term vanishes when ``L_p <= L - k``: one bit fewer than the dealer protocol's ``L - 1 - k``
   (no ``x`` for ReLU in its own ring, nor for truncate-and-reduce);
5. the selection polynomial of the dealer protocol (form ``s``/``adom``/``hdom``) in
   ``Z_2^L_p`` by COT products (1 round); if lifted (``L_p = m < L'``), the known-MSB lift
   (1 round); P0 adds ``lo``.

Rabbit mode: ``w = [c < r]`` is one more job; ``[u >= T] = [c >= T] xor w xor [c - T < r]``;
``Z = floor(c/2^k) - 2^(L-1-k) - lo - R - b + 2^(L-k) * w``. Const and local plans as in the
dealer protocol. Extension-only plans (``k = 0``, no clip, ``L' > L``, ``thi - tlo < 2^(L-1)``): the
known-MSB lift of ``t - tlo`` alone (kind ``extend``).

The planner chooses the polynomial's ring (``L'`` or the small ``m`` plus a lift) by this
protocol's own cost (total bits, then rounds).

Cost (``n`` elements; circuit, selection and lift costs of :mod:`.circuit`, :mod:`.select`,
:mod:`.lift`)::

    online  = n*L + circuit.online + select.online + lift.online
    offline = circuit.offline + select.offline + lift.offline     (one batch, 1 round)
    rounds  = 1 + (1 + D if circuit) + [select has products] + [lift]
    extend:   online n*(L' - L + 1), offline n*(128/k - 1), 1 round

(``rounds`` is the exact Lamport depth of this message pattern, :func:`.common.lamport_depth`.)
Example, ``k = 4``: ``L = 20``, shift 12, ReLU and clip at 15 over the whole ring, ``L' = 20``:
form ``adom``, jobs ``ref`` and ``h`` of 7 bits over a 12-bit low block, 4-bit digits, selection
in ``Z_2^5`` and a lift: per element 298 online and 1259 offline bits (194.6 bytes), 7 rounds.
ReLU at ``L = 32``: 230.75 bytes per element (EzPC SCI: 531.5).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.bitpoly import Poly
from privquant.protocols.lift import LiftSig
from privquant.protocols.ot import circuit, cotprod, select
from privquant.protocols.ot import lift as otlift
from privquant.protocols.ot.common import (
    DEFAULT_K,
    EXCHANGE,
    SEND01,
    SEND10,
    Batch,
    OtProtocol,
    batch_step,
    lamport_depth,
    private_ring,
    session_of,
)
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.requant import (
    RequantOpSig,
    RequantSig,
    _msb_ok,
    op_presum,
    unfused_steps,
)
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


@dataclass(frozen=True)
class OtRequantPlan:
    kind: str  # const | local | extend | msb | rabbit
    L: int
    n: int = 0
    k: int = 0
    ell_out: int = 0
    lo: int = 0
    hi: int = 0
    const: int = 0  # the constant output (const), the lifted offset tlo (extend)
    a: int | None = 1
    h: int | None = 0
    form: str = "s"
    t_ref: int = 0
    jobs: tuple[tuple[str, int], ...] = ()
    width: int = 0
    need_x: bool = False
    ell_poly: int = 0
    lift: bool = False
    group: circuit.OtGroup | None = None
    K: int = DEFAULT_K  # the SoftSpokenOT parameter

    @property
    def H(self) -> int:
        return 1 << (self.L - 1)


@functools.lru_cache(maxsize=65536)
def plan_ot(sig: RequantSig, K: int = DEFAULT_K) -> OtRequantPlan:
    """Mode, form, thresholds, comparison jobs and polynomial ring, from public data only."""
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
    base = dict(L=L, n=sig.n, k=k, ell_out=Lo, lo=sig.lo, hi=sig.hi, K=K)
    if qlo == qhi:
        return OtRequantPlan("const", const=qlo, **base)
    ulo, uhi = sig.tlo + H, sig.thi + H
    Ta, Th = sig.lo * (1 << k) + H, (sig.hi + 1) * (1 << k) + H
    a = 0 if uhi < Ta else 1 if ulo >= Ta else None
    h = 1 if ulo >= Th else 0 if uhi < Th else None
    if sig.shift == 0 and a == 1 and h == 0:
        if Lo <= L:
            return OtRequantPlan("local", **base)
        if sig.thi - sig.tlo < H:
            return OtRequantPlan("extend", const=sig.tlo, **base)
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

    def build(ell_poly: int) -> OtRequantPlan:
        need_x = ell_poly > L - k
        jobs: list[tuple[str, int]] = []
        if form is not None:
            kind, width = "msb", L - 1 - k
            if a is None or need_x:
                assert a is not None or t_ref == Ta
                jobs.append(("ref", t_ref))
            if h is None:
                jobs.append(("h", Th))
        else:
            kind, width = "rabbit", L - k
            if a is None or h is None or need_x:
                jobs.append(("w", 0))
            if a is None:
                jobs.append(("a", Ta))
            if h is None:
                jobs.append(("h", Th))
        group = None
        if jobs or k > 0:
            group = circuit.OtGroup(sig.n, k, (width,) * len(jobs), want_low=k > 0, k=K)
        return OtRequantPlan(
            kind,
            a=a,
            h=h,
            form=form or "s",
            t_ref=t_ref if kind == "msb" else 0,
            jobs=tuple(jobs),
            width=width,
            need_x=need_x,
            ell_poly=ell_poly,
            lift=ell_poly < Lo,
            group=group,
            **base,
        )

    plans = [build(Lo)]
    m = (qhi - sig.lo).bit_length() + 1
    if m < Lo:
        plans.append(build(max(m, 2)))
    costs = [plan_cost(p) for p in plans]
    best = min(range(len(plans)), key=lambda i: (costs[i].total_bits, costs[i].online_rounds))
    return plans[best]


# ------------------------------------------------------------------------------ polynomial
def build_poly(plan: OtRequantPlan, P, XC) -> Poly:
    """The selection polynomial for ``q - lo`` in ``Z_2^ell_poly`` (step 4-5 of the module
    docstring). ``P`` and ``XC`` are P0's tensors (placeholders at P1); ``R`` is P1's."""
    Z = Poly.const(P) - Poly.arith("R")
    if plan.k > 0:
        Z = Z - Poly.var("b")
    if plan.need_x:
        Z = Z + Poly.var("x") * (XC if plan.kind == "msb" else Poly.const(1 << (plan.L - plan.k)))
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


def _placeholder_poly(plan: OtRequantPlan, n: int) -> Poly:
    z = torch.zeros(n, dtype=torch.int64)
    return build_poly(plan, z, Poly.const(z))


def sel_spec(plan: OtRequantPlan) -> select.SelSpec:
    unit = _unit_sel_spec(replace(plan, n=1, t_ref=0, jobs=(), group=None))
    return replace(unit, n=plan.n)


@functools.lru_cache(maxsize=4096)
def _unit_sel_spec(plan: OtRequantPlan) -> select.SelSpec:
    return select.SelSpec.of(_placeholder_poly(plan, 1), plan.ell_poly, 1)


def _lift_sig(plan: OtRequantPlan) -> LiftSig:
    return LiftSig(plan.n, plan.ell_poly if plan.kind != "extend" else plan.L, plan.ell_out)


def plan_cost(plan: OtRequantPlan) -> OtCost:
    """Closed-form cost of this plan (see the module docstring)."""
    n, K = plan.n, plan.K
    if plan.kind in ("const", "local") or n == 0:
        return OtCost()
    if plan.kind == "extend":
        return otlift.full_cost(K, _lift_sig(plan))
    parts = []
    if plan.group is not None:
        parts.append(plan.group.cost())
    parts.append(sel_spec(plan).cost(K))
    if plan.lift:
        parts.append(otlift.full_cost(K, _lift_sig(plan)))
    on_bits = n * plan.L + sum(c.online_bits for c in parts)
    off_bits = sum(c.offline_bits for c in parts)
    rounds = lamport_depth(_steps(plan))
    return OtCost(
        online_bits=on_bits,
        offline_bits=off_bits,
        online_rounds=rounds,
        offline_rounds=1 if off_bits else 0,
    )


def _steps(plan: OtRequantPlan) -> list[str]:
    """The online message pattern of a plan (for :func:`.common.lamport_depth`)."""
    if plan.kind in ("const", "local") or plan.n == 0:
        return []
    if plan.kind == "extend":
        return [EXCHANGE]
    steps = [SEND10]
    if plan.group is not None:
        steps += [SEND01] + [EXCHANGE] * plan.group.layout.depth
    if sel_spec(plan).cots:
        steps.append(EXCHANGE)
    if plan.lift:
        steps.append(EXCHANGE)
    return steps


# ------------------------------------------------------------------------------ offline
@dataclass
class OtRequantPre:
    r: torch.Tensor | None = None  # P1's mask (n,)
    cmp: list | None = None
    sel_rots: list | None = None
    lift_rot: object = None


def _requests(plan: OtRequantPlan, rank: int, r: torch.Tensor | None):
    """The offline OT requests of a plan and the slices of its parts (comparison, selection,
    lift); P1 passes its mask ``r``."""
    b = Batch()
    groups = [plan.group] if plan.group is not None else []
    if plan.kind == "extend":
        return b, slice(0, 0), slice(0, 0), b.add(cotprod.requests([otlift.spec(_lift_sig(plan))]))
    s_cmp = b.add(circuit.requests(groups, rank, [r.numpy()] if r is not None else None))
    s_sel = b.add(cotprod.requests(sel_spec(plan).cots))
    s_lift = b.add(cotprod.requests([otlift.spec(_lift_sig(plan))]) if plan.lift else [])
    return b, s_cmp, s_sel, s_lift


def _offline(corr, plan: OtRequantPlan) -> OtRequantPre | None:
    if plan.kind in ("const", "local") or plan.n == 0:
        return None
    session = session_of(corr, plan.K)
    rank = corr.role
    r = private_ring((plan.n,), plan.L) if rank == CLIENT and plan.kind != "extend" else None
    b, s_cmp, s_sel, s_lift = _requests(plan, rank, r)
    res = b.run(session, "ot.rq")
    groups = [plan.group] if plan.group is not None else []
    pres = circuit.build(groups, rank, res[s_cmp])
    lift_rot = res[s_lift][0] if plan.lift or plan.kind == "extend" else None
    return OtRequantPre(r, pres, res[s_sel], lift_rot)


def offline_step(plan: OtRequantPlan) -> str | None:
    """The offline message pattern of a plan (one batch)."""
    if plan.kind in ("const", "local") or plan.n == 0:
        return None
    return batch_step(_requests(plan, SERVER, None)[0].requests)


# ------------------------------------------------------------------------------ online
def _pub(party: Party, bits: np.ndarray) -> np.ndarray:
    """XOR share of a bit P0 knows (P1 holds 0)."""
    b = np.asarray(bits, dtype=np.uint8)
    return b if party.rank == SERVER else np.zeros_like(b)


def _online(party: Party, plan: OtRequantPlan, pre: OtRequantPre | None, t: torch.Tensor, tag):
    shape = t.shape
    if t.numel() != plan.n:
        raise PrivQuantError(f"requant expects {plan.n} elements, got {t.numel()}")
    L, k, H, Lo, n = plan.L, plan.k, plan.H, plan.ell_out, plan.n
    me = party.rank
    t = ring.reduce(t.reshape(-1), L)
    if plan.kind == "const":
        q = plan.const if me == SERVER else 0
        return ring.reduce(torch.full(shape, q, dtype=torch.int64), Lo)
    if plan.kind == "local":
        return ring.reduce(t, Lo).reshape(shape)
    if n == 0:
        return torch.zeros(shape, dtype=torch.int64)
    if plan.kind == "extend":
        x = t - plan.const if me == SERVER else t
        q = otlift.online(party, _lift_sig(plan), pre.lift_rot, ring.reduce(x, L), f"{tag}.lift")
        return ring.reduce(q + (plan.const if me == SERVER else 0), Lo).reshape(shape)

    # 1. the opening: P1 sends t1 + r, P0 learns c = u + r
    if me == CLIENT:
        party.send(SERVER, ring.reduce(t + pre.r, L), L, f"{tag}.open")
        c = None
        rv = pre.r.numpy()
    else:
        c1 = party.recv(CLIENT, (n,), L, f"{tag}.open")
        c = ring.reduce(t + H + c1, L).numpy()
        rv = None
    msk = (1 << L) - 1
    msb = plan.kind == "msb"
    cvals = None
    if me == SERVER:
        cvals = {nm: (c - T + (H if msb else 0)) & msk for nm, T in plan.jobs}
    # 2. comparisons
    lts: dict[str, np.ndarray] = {}
    bits: dict[str, np.ndarray] = {}
    if plan.group is not None:
        data = [(c, [cvals[nm] for nm, _ in plan.jobs])] if me == SERVER else [None]
        res = circuit.online(party, pre.cmp, data, f"{tag}.cmp")[0]
        lts = {nm: res[i] for i, (nm, _T) in enumerate(plan.jobs)}
        if k > 0:
            bits["b"] = res[-1]
    top = ((rv >> (L - 1)) & 1).astype(np.uint8) if me == CLIENT else None

    def pub_or_top(pub_bits_fn):
        return _pub(party, pub_bits_fn()) if me == SERVER else top

    XC = Poly.const(torch.zeros(n, dtype=torch.int64))
    if msb:
        if plan.a is None:
            bits["a"] = pub_or_top(lambda: (cvals["ref"] >> (L - 1)) & 1) ^ lts["ref"]
        if plan.h is None:
            bits["h"] = pub_or_top(lambda: (cvals["h"] >> (L - 1)) & 1) ^ lts["h"]
        if plan.need_x:
            bits["x"] = lts["ref"]
        if me == SERVER:
            Ta = plan.lo * (1 << k) + H
            c_ref = (c - plan.t_ref + H) & msk
            c_top = (c_ref >> (L - 1)) & 1
            P = (c_ref >> k) + ((1 - c_top) << (L - k)) - (1 << (L - 1 - k))
            P = P + (plan.t_ref - Ta) // (1 << k)
            XC = Poly.const(torch.from_numpy(c_top << (L - k)))
    else:
        w = lts.get("w")
        if plan.a is None:
            Ta = plan.lo * (1 << k) + H
            bits["a"] = (_pub(party, c >= Ta) if me == SERVER else np.zeros(n, np.uint8)) ^ w
            bits["a"] ^= lts["a"]
        if plan.h is None:
            Th = (plan.hi + 1) * (1 << k) + H
            bits["h"] = (_pub(party, c >= Th) if me == SERVER else np.zeros(n, np.uint8)) ^ w
            bits["h"] ^= lts["h"]
        if plan.need_x:
            bits["x"] = w
        if me == SERVER:
            P = (c >> k) - (1 << (L - 1 - k)) - plan.lo
    if plan.a is None and plan.h is None and plan.form == "s":
        bits["s"] = bits["a"] ^ bits["h"]
    Lp = plan.ell_poly
    if me == SERVER:
        poly = build_poly(plan, torch.from_numpy(P & ((1 << Lp) - 1)), XC)
        r_val = None
    else:
        poly = _placeholder_poly(plan, n)
        r_val = (rv >> k) & ((1 << Lp) - 1)
    spec = sel_spec(plan)
    q = select.online(
        party, spec, pre.sel_rots, poly, {v: bits[v] for v in spec.vars}, r_val, f"{tag}.sel"
    )
    q = torch.from_numpy(q)
    if plan.lift:
        q = otlift.online(party, _lift_sig(plan), pre.lift_rot, q, f"{tag}.lift")
    if me == SERVER:
        q = q + plan.lo
    return ring.reduce(q, Lo).reshape(shape)


class OtFusedRequant(OtProtocol):
    """The fused requantization core on a pre-sum ``t`` without a dealer (module docstring)."""

    kind = "fused_requant"

    def plan(self, sig: RequantSig) -> OtRequantPlan:
        return plan_ot(sig, self.k)

    def full_cost(self, sig: RequantSig) -> OtCost:
        return plan_cost(self.plan(sig))

    def online_steps(self, sig: RequantSig) -> list[str]:
        return _steps(self.plan(sig))

    def offline(self, corr, sig: RequantSig, state=None):
        return _offline(corr, self.plan(sig))

    def online(self, party: Party, sig: RequantSig, pre, t: torch.Tensor, tag: str = "rq"):
        return _online(party, self.plan(sig), pre, t, tag)


class OtRequantOp(OtProtocol):
    """Local pre-sum ``t = sum_i m_i x_i + offset`` then :class:`OtFusedRequant`."""

    kind = "requant"

    def __init__(self, k: int = DEFAULT_K, core: OtFusedRequant | None = None):
        super().__init__(k)
        self.core = core if core is not None else OtFusedRequant(k)
        if self.core.k != self.k:
            raise ValueError("the requant op and its core must use the same k")

    def full_cost(self, sig: RequantOpSig) -> OtCost:
        return self.core.full_cost(sig.core)

    def online_steps(self, sig: RequantOpSig) -> list[str]:
        return self.core.online_steps(sig.core)

    def offline(self, corr, sig: RequantOpSig, state=None):
        return self.core.offline(corr, sig.core)

    def online(self, party, sig: RequantOpSig, pre, *xs):
        return self.core.online(party, sig.core, pre, op_presum(party, sig, xs))


class OtUnfusedRequant(OtFusedRequant):
    """The ``--unfused`` ablation without a dealer: truncation, ReLU/clip and extension as three
    separate runs of :class:`OtFusedRequant` (:func:`privquant.protocols.requant.unfused_steps`),
    each with its own opening and comparisons. Rounds: the sum of the steps' rounds, less the
    overlap when a step starts with P1's opening right after a round P0 finished."""

    kind = "unfused_requant"

    def full_cost(self, sig: RequantSig) -> OtCost:
        on = off = 0
        for s in unfused_steps(sig):
            c = plan_cost(self.plan(s))
            on, off = on + c.online_bits, off + c.offline_bits
        return OtCost(
            online_bits=on,
            offline_bits=off,
            online_rounds=lamport_depth(self.online_steps(sig)),
            offline_rounds=lamport_depth(
                [st for s in unfused_steps(sig) if (st := offline_step(self.plan(s)))]
            ),
        )

    def online_steps(self, sig: RequantSig) -> list[str]:
        return [st for s in unfused_steps(sig) for st in _steps(self.plan(s))]

    def offline(self, corr, sig: RequantSig, state=None):
        return [_offline(corr, self.plan(s)) for s in unfused_steps(sig)]

    def online(self, party: Party, sig: RequantSig, pre, t: torch.Tensor, tag: str = "rqu"):
        x = t
        for i, (s, p) in enumerate(zip(unfused_steps(sig), pre)):
            x = _online(party, self.plan(s), p, x, f"{tag}{i + 1}")
        return x


OT_FUSED = OtFusedRequant()
OT_UNFUSED = OtUnfusedRequant()
OT_REQUANT = OtRequantOp()
OT_REQUANT_UNFUSED = OtRequantOp(core=OT_UNFUSED)

__all__ = [
    "OT_FUSED",
    "OT_REQUANT",
    "OT_REQUANT_UNFUSED",
    "OT_UNFUSED",
    "OtFusedRequant",
    "OtRequantOp",
    "OtRequantPlan",
    "build_poly",
    "plan_cost",
    "plan_ot",
    "sel_spec",
]
