"""Shared pieces of the dealer-free protocols: the OT parameter, one-batch offline phases,
private randomness and the conversion of :class:`OtCost` to the project's :class:`Cost`.

* :data:`DEFAULT_K` -- the SoftSpokenOT parameter the registered protocols are costed with, the
  ``ot`` provider's default (``k = 4``: ``128/k - 1 = 31`` bits per random OT, ``32`` per
  chosen-choice OT; about twice IKNP's AES work and a quarter of its bits, see
  ``bench/ot_throughput.md``). A protocol object is built for one ``k`` and refuses a provider
  whose session uses another (its ``cost`` would lie).
* :class:`Batch` -- every protocol collects the OT requests of its offline phase and runs them
  as ONE :meth:`OtSession.batch` (one offline round, both directions), then hands each
  component its slice of the results.
* :func:`private_ring` -- uniform ring elements from the OS CSPRNG (``secrets``), for the masks
  only one party knows (P1's ``r``, its linear-layer mask ``A1``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.base import Protocol
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.preprocessing.ot.extension import OtRequest, OtSession, check_k
from privquant.protocols.preprocessing.ot_provider import DEFAULT_K
from privquant.protocols.primitives.cost import Cost


def rot_bits(k: int) -> int:
    """Offline bits of one random OT (receiver's random choice): ``128/k - 1``."""
    return 128 // check_k(k) - 1


def chosen_bits(k: int) -> int:
    """Offline bits of one OT with the receiver's choice fixed ahead: ``128/k``."""
    return 128 // check_k(k)


def to_cost(c: OtCost) -> Cost:
    """The project's :class:`Cost`: online/offline/setup bits and the online rounds."""
    return c.to_cost()


def session_of(corr, k: int) -> OtSession:
    """The provider's OT session (``corr.session``), checked to use SoftSpokenOT parameter ``k``."""
    s = getattr(corr, "session", None)
    if not isinstance(s, OtSession):
        raise PrivQuantError(
            "this protocol runs without a dealer: it needs the 'ot' preprocessing provider"
        )
    if s.k != k:
        raise PrivQuantError(
            f"OT session uses k={s.k} but the protocol was costed with k={k}; build the protocol "
            f"for the provider's k"
        )
    return s


def private_ring(shape, ell: int) -> torch.Tensor:
    """Uniform elements of ``Z_2^ell`` (int64) from the OS CSPRNG, known to the caller only."""
    n = int(np.prod(shape)) if len(shape) else 1
    v = np.frombuffer(secrets.token_bytes(8 * n), dtype="<u8").copy()
    v &= np.uint64((1 << ell) - 1)
    return torch.from_numpy(v.view(np.int64)).reshape(tuple(shape))


@dataclass
class Batch:
    """Collects OT requests from several components and runs them as one batch."""

    requests: list[OtRequest] = field(default_factory=list)

    def add(self, reqs: list[OtRequest]) -> slice:
        start = len(self.requests)
        self.requests.extend(reqs)
        return slice(start, len(self.requests))

    def run(self, session: OtSession, tag: str, phase: str = "offline") -> list:
        if not self.requests:
            return []
        return session.batch(self.requests, phase=phase, tag=tag)


def batch_cost(k: int, reqs: list[OtRequest], phase: str = "offline") -> OtCost:
    """Cost of :meth:`Batch.run` for these requests: the sum of the extensions, 1 round."""
    bits = sum((rot_bits(k) + int(bool(r.chosen))) * r.n for r in reqs)
    if not bits:
        return OtCost()
    return OtCost(**{f"{phase}_bits": bits, f"{phase}_rounds": 1})  # type: ignore[arg-type]


class OtProtocol(Protocol):
    """Base of the dealer-free protocols: built for one SoftSpokenOT parameter ``k``; the exact
    per-phase cost is :meth:`full_cost` (an :class:`OtCost`, offline and setup rounds included);
    :meth:`cost` is its :class:`Cost` view and is only defined for ``preprocessing="ot"``."""

    def __init__(self, k: int = DEFAULT_K):
        self.k = check_k(k)

    def full_cost(self, sig) -> OtCost:
        raise NotImplementedError

    def online_steps(self, sig) -> list[str]:
        """The online message pattern (``"01"``, ``"10"``, ``"x"`` steps; :func:`lamport_depth`
        of it is ``full_cost(sig).online_rounds``)."""
        raise NotImplementedError

    def end_clocks(self, sig) -> tuple[int, int]:
        """``(P0, P1)`` Lamport clocks at the end of the online phase, from synchronized clocks
        (:func:`lamport_clocks` of :meth:`online_steps`)."""
        return lamport_clocks(self.online_steps(sig))

    def online_cost(self, sig) -> Cost:
        c = self.full_cost(sig)
        return Cost(online_bits=c.online_bits, rounds=c.online_rounds)

    def needs(self, sig) -> list:
        return []  # every correlation is made by the protocol itself over the OT session

    def cost(self, sig, preprocessing: str = "ot") -> Cost:
        if preprocessing != "ot":
            raise PrivQuantError(
                f"{type(self).__name__} is a dealer-free protocol: cost it with "
                f"preprocessing='ot', not {preprocessing!r}"
            )
        return to_cost(self.full_cost(sig))


SEND01, SEND10, EXCHANGE = "01", "10", "x"


def lamport_depth(steps) -> int:
    """Online rounds (joint Lamport depth, as the channel measures them from synchronized clocks)
    of a sequence of steps: ``"01"`` P0 sends to P1, ``"10"`` P1 to P0, ``"x"`` a simultaneous
    exchange. A one-way message from the party that is behind overlaps the previous step (e.g. P1
    opening the next level right after a product round whose last message came from P0)."""
    return max(lamport_clocks(steps))


def lamport_clocks(steps) -> tuple[int, int]:
    """Each party's clock ``(P0, P1)`` after the steps (see :func:`lamport_depth`). A scope the
    runtime enters once per op (conv then requant under one layer name) measures, per party, the
    sum of these; e.g. a linear layer ends at ``(1, 0)`` and a requant that starts with P1's
    opening overlaps it."""
    c0 = c1 = 0
    for s in steps:
        if s == SEND01:
            c1 = max(c1, c0 + 1)
        elif s == SEND10:
            c0 = max(c0, c1 + 1)
        elif s == EXCHANGE:
            c0, c1 = max(c0, c1 + 1), max(c1, c0 + 1)
        else:
            raise ValueError(f"unknown step {s!r}")
    return c0, c1


def batch_step(reqs) -> str | None:
    """The message pattern of one :meth:`Batch.run`: every OT receiver sends, so requests of both
    directions make an exchange, one direction a one-way message (None if nothing is sent)."""
    senders = {r.sender for r in reqs if r.n}
    if not senders:
        return None
    if len(senders) == 2:
        return EXCHANGE
    return SEND10 if senders == {0} else SEND01
