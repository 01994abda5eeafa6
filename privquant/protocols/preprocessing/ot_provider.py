"""The ``ot`` provider: two parties and nobody else (no dealer), like SiRNN, Cheetah and PrivQuant.

Setup, once per session (phase ``setup``, scope ``(seeds)``):

1. P0 sends P1 a fresh 128-bit seed for their common randomness (pair ``"01"``: the client's
   input mask); each party also draws a private seed for its own shares of random masks;
2. an :class:`~privquant.protocols.preprocessing.ot.extension.OtSession`: 128 base OTs in each
   direction (libsodium edwards25519) and, for SoftSpokenOT ``k > 1``, the GGM corrections.

Cost: ``128 + setup_cost(k)`` setup bits (:func:`setup_cost`). Afterwards the provider makes the
free kinds locally (a ``random`` mask is the sum of the parties' private draws, so nobody knows
it; ``private_bits`` are each party's own) and hands its ``session`` to the dealer-free protocols
(``privquant.protocols.ot``), which extend OTs in the offline phase. Kinds that only a dealer can
make cheaply (``mask_bits``, ``gates``, ``products``, ``linear`` ...) are :class:`Unavailable`
here by design: the dealer-free protocols use OT gadgets instead of emulating a dealer.
"""

from __future__ import annotations

import hashlib
import secrets

import torch

from privquant.protocols.preprocessing.base import Provider, Rand
from privquant.protocols.preprocessing.ot.extension import OtSession
from privquant.protocols.preprocessing.ot.extension import setup_cost as ot_setup_cost
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.primitives.prg import Prg
from privquant.protocols.transport.channel import CLIENT, SERVER, Party

SEED_BYTES = 16
DEFAULT_K = 4  # SoftSpokenOT parameter: 32 bits per random OT (IKNP: 128)


def setup_cost(k: int = DEFAULT_K) -> Cost:
    """Setup traffic of the ``ot`` provider: the common seed plus the OT session."""
    return Cost(setup_bits=8 * SEED_BYTES).then(ot_setup_cost(k).to_cost())


class OtProvider(Provider):
    """Dealer-free provider for P0 or P1 (see the module docstring)."""

    mode = "ot"
    knows_values = False

    def __init__(self, party: Party, k: int = DEFAULT_K, master: bytes | None = None):
        if party.rank not in (SERVER, CLIENT):
            raise ValueError("the ot provider runs on the server and the client only")
        self.party = party
        self.role = party.rank
        self.k = k
        self.session = OtSession(party, k)
        self._master = master
        self._common: Prg | None = None
        self._own = Prg(_derive(master, f"own{self.role}") if master else secrets.token_bytes(32))

    def setup(self) -> None:
        """Common seed and OT session (both parties, phase ``setup``)."""
        party = self.party
        if self.role == SERVER:
            seed = _derive(self._master, "01")[:SEED_BYTES] if self._master else None
            seed = seed or secrets.token_bytes(SEED_BYTES)
            party.send_raw(CLIENT, seed, "seed.01", phase="setup")
        else:
            seed = bytes(party.recv_raw(SERVER, SEED_BYTES, "seed.01", phase="setup"))
        self._common = Prg(hashlib.sha256(seed + b"/offline").digest())
        self.session.setup()

    # -- free kinds
    def random(self, shape, ell: int) -> Rand:
        return Rand(ring.uniform(self._own, shape, ell), None)

    def random_bits(self, shape) -> Rand:
        return Rand(ring.random_bits(self._own, shape), None)

    def private_bits(self, shape):
        mine = ring.random_bits(self._own, shape)
        return (mine, None) if self.role == SERVER else (None, mine)

    def common(self, shape, ell: int) -> torch.Tensor:
        if self._common is None:
            raise ValueError("OtProvider.setup() must run first")
        return ring.uniform(self._common, shape, ell)


def _derive(master: bytes | int, label: str) -> bytes:
    m = master if isinstance(master, bytes) else int(master).to_bytes(16, "little", signed=True)
    return hashlib.sha256(m + b"/ot/" + label.encode()).digest()


__all__ = ["DEFAULT_K", "OtProvider", "setup_cost"]
