"""The protocol interface shared by the whole catalogue.

Every protocol is a stateless object with four entry points, all driven by a public signature
``sig`` (a frozen dataclass of shapes, rings and public parameters -- never secret values):

``cost(sig) -> Cost``
    closed-form communication (no execution); tests check it equals the measured traffic.
``setup(corr, sig, params=None) -> state``
    once per model load, run by P0, P1 and the dealer (``params`` = the server's secret arrays,
    given at P0 only). Default: nothing.
``offline(corr, sig, state=None) -> pre``
    correlated randomness for one inference, run identically by P0, P1 and the dealer (the
    dealer runs only this, walking the same public sequence of signatures). Default: nothing.
``online(party, sig, pre, *shares) -> share``
    the inference itself, run by P0 and P1 on their shares (int64 tensors mod ``2^ell``).
"""

from __future__ import annotations

from typing import Any

from privquant.protocols.primitives.cost import ZERO, Cost


class Protocol:
    """Base class; see the module docstring."""

    kind: str = ""

    def cost(self, sig) -> Cost:
        raise NotImplementedError

    def setup(self, corr, sig, params=None) -> Any:
        return None

    def offline(self, corr, sig, state=None) -> Any:
        return None

    def online(self, party, sig, pre, *shares):
        raise NotImplementedError


class LocalProtocol(Protocol):
    """A protocol without communication (``cost`` is zero)."""

    def cost(self, sig) -> Cost:
        return ZERO
