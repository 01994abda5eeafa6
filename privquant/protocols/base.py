"""The protocol interface shared by the whole catalogue.

Every protocol -- the per-op protocols and the building blocks they are made of (comparison
circuit, selection polynomial, lift, fused requantization) -- is a stateless object of this one
shape, driven by a public signature ``sig`` (a frozen dataclass of shapes, rings and public
parameters -- never secret values):

``online_cost(sig) -> Cost``
    closed-form traffic the two parties send each other (online bits, rounds; setup bits they
    send themselves).
``needs(sig) -> list[Need]``
    the correlations its offline phase asks the provider for, by kind and size
    (:mod:`privquant.protocols.preprocessing.base`).
``cost(sig, preprocessing) -> Cost``
    ``online_cost`` plus what the named provider charges for ``needs`` (no execution); tests
    check it equals the measured traffic.
``setup(corr, sig, params=None) -> state``
    once per model load, run by P0, P1 and the dealer (``params`` = the server's secret arrays,
    given at P0 only). Default: nothing.
``offline(corr, sig, state=None) -> pre``
    correlated randomness for one inference from the provider ``corr``, by kind, run identically
    by P0, P1 and the dealer (the dealer runs only this, walking the same public sequence of
    signatures). Default: nothing.
``online(party, sig, pre, *shares) -> share``
    the inference itself, run by P0 and P1 on their shares (int64 tensors mod ``2^ell``).
"""

from __future__ import annotations

from typing import Any

from privquant.protocols.preprocessing.base import Need, need_cost
from privquant.protocols.primitives.cost import ZERO, Cost


class Protocol:
    """Base class; see the module docstring."""

    kind: str = ""
    #: runs unchanged without a dealer (local ops, openings, common randomness)
    dealer_free: bool = False

    def online_cost(self, sig) -> Cost:
        raise NotImplementedError

    def needs(self, sig) -> list[Need]:
        return []

    def cost(self, sig, preprocessing: str = "dealer") -> Cost:
        return self.online_cost(sig).then(need_cost(self.needs(sig), preprocessing))

    def end_clocks(self, sig) -> tuple[int, int]:
        """``(P0, P1)`` Lamport clocks at the end of the online phase from synchronized clocks
        (the largest stamp each party received). Default: simultaneous exchanges only, so both
        end at ``rounds``; a protocol with one-way messages overrides it. A layer scope holding
        several ops measures, per party, the sum of these, and the max over parties."""
        r = self.online_cost(sig).rounds
        return r, r

    def setup(self, corr, sig, params=None) -> Any:
        return None

    def offline(self, corr, sig, state=None) -> Any:
        return None

    def online(self, party, sig, pre, *shares):
        raise NotImplementedError


class LocalProtocol(Protocol):
    """A protocol without communication (``cost`` is zero)."""

    dealer_free = True

    def online_cost(self, sig) -> Cost:
        return ZERO
