"""The ``simulated`` provider: an in-process dealer for unit tests (INSECURE, flagged).

Both parties hold every seed, so P1 computes the dealer's corrections itself; the traffic the
dealer would send is still accounted (received by P1, sent by a virtual dealer's stats book) and
every :class:`~privquant.protocols.transport.channel.CommStats` made this way carries
``insecure_simulated=True``. Never use it outside tests.
"""

from __future__ import annotations

import numpy as np
import torch

from privquant.protocols.preprocessing.dealer import DealerProvider, Seeds
from privquant.protocols.primitives.packing import packed_nbytes
from privquant.protocols.transport.channel import CLIENT, DEALER, HEADER_BYTES, Party, StatsBook


class SimulatedProvider(DealerProvider):
    """In-process dealer for tests: every party holds every seed (INSECURE).

    P1 computes its corrections itself; the bits are booked as received by P1 and as sent by a
    virtual dealer (``dealer_book``, see :func:`simulated_dealer_book`), with
    ``insecure_simulated=True``. Build with ``make_provider(..., simulated=True)``.
    """

    simulated = True

    def __init__(
        self,
        party: Party,
        seeds: Seeds,
        dealer_book: StatsBook | None = None,
        stream: str = "offline",
    ):
        if party.rank == DEALER:
            raise ValueError("a simulated dealer has no dealer process")
        party.book.insecure_simulated = True
        party.book.total.insecure_simulated = True
        self.dealer_book = dealer_book
        super().__init__(party, seeds, stream)

    def _deliver(self, correction, shape, ell, tag):
        if self.role != CLIENT:
            return None
        c = correction()
        n = int(np.prod(shape)) if len(shape) else 1
        wire = HEADER_BYTES + packed_nbytes(n, ell)
        scope = self.party.book.current_scope
        self.party.book.record_recv("offline", n * ell, wire, 1, 1 if scope else 0, scope=scope)
        if self.dealer_book is not None:
            if scope is not None:
                self.dealer_book.scope_stats(scope)
            self.dealer_book.record_send("offline", n * ell, wire, scope=scope)
        return c.to(torch.uint8) if ell == 1 else c


def simulated_dealer_book() -> StatsBook:
    """A stats book standing in for the dealer of a simulated run (flagged insecure)."""
    return StatsBook(insecure_simulated=True)
