"""Run one protocol end to end in this process (threads), for tests and micro-benchmarks.

``run_protocol`` does setup, offline and online for P0, P1 and the dealer over the thread
transport (``dealer="thread"``: the real dealer role as a third thread; ``dealer="simulated"``:
the in-process :class:`~privquant.protocols.preprocessing.simulated.SimulatedProvider`, flagged
insecure) and returns both outputs plus the joint accounting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from privquant.protocols.base import Protocol
from privquant.protocols.preprocessing.dealer import Seeds, make_provider
from privquant.protocols.preprocessing.simulated import simulated_dealer_book
from privquant.protocols.transport.channel import DEALER, CommStats, combine
from privquant.protocols.transport.thread import simulate


@dataclass
class ProtocolRun:
    out0: Any
    out1: Any
    stats: CommStats  # joint (sum of what P0, P1 and D sent; joint Lamport depth)
    parties: list[CommStats]  # P0, P1, D (the virtual dealer when simulated)


def run_roles(
    offline: Callable[[Any], Any],
    online: Callable[..., Any],
    inputs0: tuple = (),
    inputs1: tuple = (),
    *,
    dealer: str = "thread",
    master: int = 0,
    timeout: float = 60.0,
) -> ProtocolRun:
    """Run ``pre = offline(corr)`` in all three roles, then ``online(party, pre, *inputs)`` in P0
    (``inputs0``) and P1 (``inputs1``); return both outputs and the joint accounting."""
    if dealer not in ("thread", "simulated"):
        raise ValueError("dealer must be 'thread' or 'simulated'")
    sim = dealer == "simulated"
    dbook = simulated_dealer_book() if sim else None

    def body(party, inputs):
        seeds = Seeds.derived(master) if sim else Seeds.derived(master, party.rank)
        corr = make_provider(party, seeds, simulated=sim, dealer_book=dbook)
        pre = offline(corr)
        if party.rank == DEALER:
            return None
        return online(party, pre, *inputs)

    res = simulate(
        lambda p: body(p, inputs0),
        lambda p: body(p, inputs1),
        None if sim else (lambda p: body(p, ())),
        timeout=timeout,
        insecure_simulated=sim,
    )
    stats = [
        res.parties[0].stats,
        res.parties[1].stats,
        dbook.total if sim else res.parties[2].stats,
    ]
    return ProtocolRun(res.results[0], res.results[1], combine(stats), stats)


def run_protocol(
    proto: Protocol,
    sig,
    inputs0: tuple = (),
    inputs1: tuple = (),
    params=None,
    *,
    dealer: str = "thread",
    master: int = 0,
    timeout: float = 60.0,
) -> ProtocolRun:
    """Setup + offline + online of ``proto`` on ``sig``; ``inputs0/1`` are each party's shares,
    ``params`` the server's secret arrays (e.g. ``{"weight": ..., "bias": ...}``)."""

    def offline(corr):
        state = proto.setup(corr, sig, params if corr.role == 0 else None)
        return proto.offline(corr, sig, state)

    def online(party, pre, *inputs):
        return proto.online(party, sig, pre, *inputs)

    return run_roles(
        offline, online, inputs0, inputs1, dealer=dealer, master=master, timeout=timeout
    )
