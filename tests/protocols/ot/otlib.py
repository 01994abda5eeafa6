"""Helpers for the OT tests (not a test module)."""

from __future__ import annotations

import numpy as np

from privquant.protocols.preprocessing.ot.cost import OtCost, measured
from privquant.protocols.preprocessing.ot.extension import OtSession
from privquant.protocols.transport.thread import SimResult, simulate


def run_pair(k: int, fn0, fn1, *, scope: str = "proto", timeout: float = 120.0):
    """Set up an :class:`OtSession` on both sides, then run ``fn(party, session)`` inside
    ``party.scope(scope)``. Returns ``(SimResult, OtCost measured inside the scope)``."""

    def wrap(fn):
        def run(p):
            s = OtSession(p, k, sid=b"test")
            s.setup()
            with p.scope(scope):
                return fn(p, s)

        return run

    r = simulate(wrap(fn0), wrap(fn1), timeout=timeout)
    return r, scope_cost(r, scope)


def scope_cost(r: SimResult, scope: str) -> OtCost:
    return measured([r.parties[0].scopes[scope], r.parties[1].scopes[scope]])


def total_cost(r: SimResult) -> OtCost:
    return measured([r.parties[0].stats, r.parties[1].stats])


def rot_pairs(snd, rcv):
    """(expected m_r, m_{1-r}) from a sender and receiver result."""
    r = rcv.r[:, None].astype(bool)
    return np.where(r, snd.m1, snd.m0), np.where(r, snd.m0, snd.m1)
