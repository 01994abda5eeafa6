"""Per-phase cost of the OT layer: bits and rounds for ``online``, ``offline`` and ``setup``.

The project's :class:`~privquant.protocols.primitives.cost.Cost` carries only online rounds; OT
protocols also have offline and setup round trips, so their closed forms are :class:`OtCost`
(bits *and* Lamport depth per phase, summed over both parties) and convert with
:meth:`OtCost.to_cost`. Phase labels: base OTs and anything done once per session are ``setup``;
OT-extension traffic made ahead of the inputs is ``offline``; messages that depend on the inputs
are ``online``.

:func:`measured` reads the same quantities from the parties' :class:`CommStats` (bits sent by both,
depth = max over both), so a test states ``measured(stats) == declared``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from privquant.errors import PrivQuantError
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.transport.channel import CommStats, combine


class OtError(PrivQuantError, ValueError):
    """Bad arguments to an OT protocol (counts, widths, shapes, ranges): one clear line."""


@dataclass(frozen=True)
class OtCost:
    online_bits: int = 0
    offline_bits: int = 0
    setup_bits: int = 0
    online_rounds: int = 0
    offline_rounds: int = 0
    setup_rounds: int = 0

    def then(self, other: OtCost) -> OtCost:
        """Sequential composition (each phase: bits add, rounds add)."""
        return OtCost(*(a + b for a, b in zip(self._t(), other._t())))

    def alongside(self, other: OtCost) -> OtCost:
        """Parallel composition (bits add, rounds take the max per phase)."""
        a, b = self._t(), other._t()
        return OtCost(*(a[i] + b[i] for i in range(3)), *(max(a[i], b[i]) for i in range(3, 6)))

    def __add__(self, other: OtCost) -> OtCost:
        return self.then(other)

    def _t(self) -> tuple[int, ...]:
        return (
            self.online_bits,
            self.offline_bits,
            self.setup_bits,
            self.online_rounds,
            self.offline_rounds,
            self.setup_rounds,
        )

    @property
    def total_bits(self) -> int:
        return self.online_bits + self.offline_bits + self.setup_bits

    def to_cost(self) -> Cost:
        """The project's :class:`Cost` (rounds = online rounds)."""
        return Cost(self.online_bits, self.offline_bits, self.setup_bits, self.online_rounds)

    def as_dict(self) -> dict:
        return asdict(self)


ZERO = OtCost()


def measured(stats: list[CommStats]) -> OtCost:
    """What both parties actually sent (bits) and the joint Lamport depth, per phase."""
    s = combine(stats)
    return OtCost(
        s.bits_sent["online"],
        s.bits_sent["offline"],
        s.bits_sent["setup"],
        s.depth["online"],
        s.depth["offline"],
        s.depth["setup"],
    )
