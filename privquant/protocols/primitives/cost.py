"""The one cost model of the project: closed-form communication of every protocol.

A :class:`Cost` is a total over all parties of one protocol run:

* ``online_bits``  -- bits sent by P0 and P1 to each other during inference (logical ``n*ell``),
* ``offline_bits`` -- bits sent by the dealer (corrections) for one inference,
* ``setup_bits``   -- bits sent once per model load (seeds, masked weights),
* ``rounds``       -- online Lamport depth: the number of sequential message hops on the longest
  causal chain (a simultaneous exchange is 1, P1->P0 then P0->P1 is 2).

``a.then(b)`` composes sequentially (bits add, rounds add); ``a.alongside(b)`` runs in parallel
(bits add, rounds take the max). Wire bytes are ``ceil(bits/8)`` per message plus a 16-byte header
(:mod:`privquant.protocols.transport.channel`) and are reported by the channel, not by ``Cost``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Cost:
    online_bits: int = 0
    offline_bits: int = 0
    setup_bits: int = 0
    rounds: int = 0

    def then(self, other: Cost) -> Cost:
        """Sequential composition: everything adds."""
        return Cost(
            self.online_bits + other.online_bits,
            self.offline_bits + other.offline_bits,
            self.setup_bits + other.setup_bits,
            self.rounds + other.rounds,
        )

    def alongside(self, other: Cost) -> Cost:
        """Parallel composition (messages batched together): bits add, rounds take the max."""
        return Cost(
            self.online_bits + other.online_bits,
            self.offline_bits + other.offline_bits,
            self.setup_bits + other.setup_bits,
            max(self.rounds, other.rounds),
        )

    def __add__(self, other: Cost) -> Cost:
        return self.then(other)

    def scaled(self, k: int) -> Cost:
        """``k`` sequential repetitions."""
        return Cost(
            self.online_bits * k, self.offline_bits * k, self.setup_bits * k, self.rounds * k
        )

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def sequence(costs) -> Cost:
        out = ZERO
        for c in costs:
            out = out.then(c)
        return out


ZERO = Cost()
