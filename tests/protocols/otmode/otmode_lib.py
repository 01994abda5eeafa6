"""Helpers for the dealer-free protocol tests (not a test module): a minimal ``ot`` provider
(an :class:`OtSession` plus the P0/P1 common randomness) and a runner that measures one protocol
end to end inside one scope, per phase."""

from __future__ import annotations

import torch

from privquant.protocols.preprocessing.ot.cost import OtCost, measured
from privquant.protocols.preprocessing.ot.extension import OtSession
from privquant.protocols.primitives import ring
from privquant.protocols.transport.thread import simulate

SCOPE = "proto"


class MiniOtProvider:
    """What the dealer-free protocols use of the ``ot`` provider: ``party``, ``role``,
    ``session`` (set up here) and the free kind ``common``."""

    mode = "ot"
    knows_values = False

    def __init__(self, party, k: int = 4, seed: int = 1234):
        self.party = party
        self.role = party.rank
        self.session = OtSession(party, k, sid=b"otmode-test")
        self.session.setup()
        self._gen = torch.Generator().manual_seed(seed)

    def common(self, shape, ell):
        return ring.uniform(self._gen, shape, ell)


def run_pair(fn0, fn1, k: int = 4, timeout: float = 300.0):
    """``fn(corr)`` on both parties inside scope ``proto`` (after the OT session setup);
    returns ``(results, measured OtCost of the scope, SimResult)``."""

    def wrap(fn):
        def run(p):
            corr = MiniOtProvider(p, k)
            with p.scope(SCOPE):
                return fn(corr)

        return run

    r = simulate(wrap(fn0), wrap(fn1), timeout=timeout)
    cost = measured([r.parties[0].scopes[SCOPE], r.parties[1].scopes[SCOPE]])
    return r.results, cost, r


def run_protocol(proto, sig, inputs0=(), inputs1=(), params=None, k: int = 4, timeout=300.0):
    """setup + offline + online of ``proto`` (both parties); returns ``(out0, out1, cost, sim)``."""

    def body(inputs):
        def fn(corr):
            state = proto.setup(corr, sig, params if corr.role == 0 else None)
            pre = proto.offline(corr, sig, state)
            return proto.online(corr.party, sig, pre, *inputs)

        return fn

    res, cost, sim = run_pair(body(inputs0), body(inputs1), k, timeout)
    return res[0], res[1], cost, sim


def share(x: torch.Tensor, ell: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = ring.uniform(g, x.shape, ell)
    return x0, ring.reduce(x - x0, ell)


__all__ = ["SCOPE", "MiniOtProvider", "OtCost", "run_pair", "run_protocol", "share"]


# ----------------------------------------------------------------------------- requant inputs
def requant_inputs(sig, g, limit=160):
    """All of [tlo, thi] when small, else edges, thresholds +-1, and random values."""
    lo, hi = sig.tlo, sig.thi
    if hi - lo + 1 <= limit:
        return torch.arange(lo, hi + 1)
    k = min(sig.shift, sig.ell - 1)
    cand = [lo, lo + 1, hi, hi - 1, 0, -1, 1]
    for z in (sig.lo, sig.hi + 1):
        for d in (-2, -1, 0, 1):
            cand.append(z * (1 << k) + d)
    cand = [v for v in cand if lo <= v <= hi]
    span = hi - lo + 1
    rnd = (torch.randint(0, 1 << 62, (limit - len(cand),), generator=g) % span) + lo
    return torch.cat([torch.tensor(cand, dtype=torch.int64), rnd])


def requant_reference(sig, t):
    k = min(sig.shift, sig.ell - 1)
    return (t >> k).clamp(sig.lo, sig.hi)
