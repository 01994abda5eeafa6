"""The ``dealer`` provider: correlated randomness from a non-colluding third party.

It implements the correlation kinds of :mod:`.base` (the table there lists them with their
costs) in three roles sharing one code path.

Seeds. The dealer shares a PRG seed with each party (pairs ``"d0"`` = {P0, D} and ``"d1"`` =
{P1, D}); P0 and P1 share a seed for common randomness (pair ``"01"``, unknown to the dealer).
:func:`establish_seeds` distributes them in the setup phase (D->P0, D->P1, P0->P1, 128 bits each).
Each pair seed expands into named SHAKE-256 streams (``Seeds.generator(pair, label)``: key =
SHA-256(seed / label), see :mod:`privquant.protocols.primitives.prg`).

Mechanism. Every correlation is produced by a function run *identically* by P0, P1 and D on a
:class:`DealerProvider` for their role; the kinds are built from these primitives:

* ``random``/``random_bits``: a random value whose two shares are both seeded -- P0 draws its
  share from ``d0``, P1 from ``d1``; the dealer draws both and knows the value. Cost 0.
* ``share_ring``/``share_bits``: shares of a value only the dealer can compute (``fn()``, e.g. the
  bits of ``r`` or a triple's ``a*b``). P0's share is seeded (``d0``); the dealer computes
  ``fn() - s0`` (or ``fn() xor s0``) and sends it to P1: ``n*ell`` offline bits, one message.
* ``and_triples(G)``: ``a, b`` random bits (both seeded), ``c = a & b`` via ``share_bits``:
  G offline bits (a building block for tests and other protocols).
* ``common``: randomness known to P0 and P1 only (pair ``"01"``).
* ``keyed_ring(pair, key)``: a value re-derivable at any time from the pair seed and a key (used for
  the per-model linear-layer masks ``B`` of the setup phase).

``fn`` is only called where the value is known (the dealer, or both parties of a simulated
dealer); elsewhere the values are ``None``. Because the dealer has to issue exactly the same
sequence of correlations as the parties, every protocol exposes ``offline(corr, sig)``, which uses
only these calls and public signatures; the dealer process walks the same public sequence of
signatures and runs only ``offline``.

:class:`~.simulated.SimulatedProvider` is the in-process dealer for unit tests: both parties
hold every seed and P1 computes its corrections itself; the offline traffic is still accounted
and every ``CommStats`` made this way carries ``insecure_simulated=True``.

Seeds come from :mod:`secrets` (the OS CSPRNG) unless a test passes a master value.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from privquant.protocols.preprocessing.base import Provider, Rand, Triples
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.primitives.prg import Prg
from privquant.protocols.transport.channel import (
    CLIENT,
    DEALER,
    SERVER,
    Party,
)

PAIRS = ("d0", "d1", "01")
SEED_BYTES = 16
_KNOWS = {SERVER: ("d0", "01"), CLIENT: ("d1", "01"), DEALER: ("d0", "d1")}
SEED_SETUP_COST = Cost(setup_bits=3 * 8 * SEED_BYTES)


@dataclass
class Seeds:
    """The pair seeds a role knows (``pair -> 16 bytes``)."""

    seeds: dict[str, bytes]

    def knows(self, pair: str) -> bool:
        return pair in self.seeds

    def generator(self, pair: str, label: str) -> Prg:
        """A SHAKE-256 stream for ``(pair, label)``; identical at both holders of ``pair``."""
        return Prg(hashlib.sha256(self.seeds[pair] + b"/" + label.encode()).digest())

    @staticmethod
    def derived(master: int | bytes, role: int | None = None) -> Seeds:
        """Deterministic seeds from a master value (tests). ``role=None``: all pairs."""
        m = master if isinstance(master, bytes) else int(master).to_bytes(16, "little", signed=True)
        allp = {p: hashlib.sha256(m + p.encode()).digest()[:SEED_BYTES] for p in PAIRS}
        keep = PAIRS if role is None else _KNOWS[role]
        return Seeds({p: allp[p] for p in keep})


def _seed_tensor(b: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(b, dtype=np.uint8).astype(np.int64))


def establish_seeds(party: Party, master: int | bytes | None = None) -> Seeds:
    """Setup-phase seed distribution, run by all three roles.

    D -> P0: seed d0; D -> P1: seed d1; P0 -> P1: seed 01 (each 128 bits, setup phase; total
    :data:`SEED_SETUP_COST`). Seeds come from ``secrets`` unless ``master`` is given (tests).
    """
    det = Seeds.derived(master) if master is not None else None

    def fresh(pair: str) -> bytes:
        return det.seeds[pair] if det is not None else secrets.token_bytes(SEED_BYTES)

    def recv(src: int, tag: str) -> bytes:
        t = party.recv(src, (SEED_BYTES,), 8, tag, phase="setup")
        return bytes(t.to(torch.uint8).numpy().tobytes())

    if party.rank == DEALER:
        s0, s1 = fresh("d0"), fresh("d1")
        party.send(SERVER, _seed_tensor(s0), 8, "seed.d0", phase="setup")
        party.send(CLIENT, _seed_tensor(s1), 8, "seed.d1", phase="setup")
        return Seeds({"d0": s0, "d1": s1})
    if party.rank == SERVER:
        c = fresh("01")
        party.send(CLIENT, _seed_tensor(c), 8, "seed.01", phase="setup")
        s0 = recv(DEALER, "seed.d0")
        return Seeds({"d0": s0, "01": c})
    s1 = recv(DEALER, "seed.d1")
    c = recv(SERVER, "seed.01")
    return Seeds({"d1": s1, "01": c})


class DealerProvider(Provider):
    """The dealer provider for one role (see the module docstring).

    ``party`` is the role's :class:`Party` (it carries the dealer -> P1 corrections);
    ``seeds`` the pair seeds this role knows.
    """

    mode = "dealer"
    simulated = False

    def __init__(self, party: Party, seeds: Seeds, stream: str = "offline"):
        self.party = party
        self.role = party.rank
        self.seeds = seeds
        for p in _KNOWS[self.role]:
            if not seeds.knows(p):
                raise ValueError(f"{party.name} needs the seed of pair {p!r}")
        self._gens = {p: seeds.generator(p, stream) for p in PAIRS if seeds.knows(p)}
        self._count = 0

    # -- what this role holds
    def _draws(self, pair: str) -> bool:
        return pair in self._gens and (self.simulated or pair in _KNOWS[self.role])

    @property
    def knows_values(self) -> bool:
        """True where dealer-only values (``Rand.value``, ``fn()``) are available."""
        return self.role == DEALER or self.simulated

    def _mine(self, v0, v1):
        return v0 if self.role == SERVER else v1 if self.role == CLIENT else None

    # -- seeded randomness
    def random(self, shape, ell: int) -> Rand:
        """Random ``r`` in Z_2^ell with both arithmetic shares seeded (0 offline bits)."""
        r0 = ring.uniform(self._gens["d0"], shape, ell) if self._draws("d0") else None
        r1 = ring.uniform(self._gens["d1"], shape, ell) if self._draws("d1") else None
        value = ring.reduce(r0 + r1, ell) if self.knows_values else None
        return Rand(self._mine(r0, r1), value)

    def random_bits(self, shape) -> Rand:
        """Random bits with both XOR shares seeded (0 offline bits)."""
        b0 = ring.random_bits(self._gens["d0"], shape) if self._draws("d0") else None
        b1 = ring.random_bits(self._gens["d1"], shape) if self._draws("d1") else None
        value = b0 ^ b1 if self.knows_values else None
        return Rand(self._mine(b0, b1), value)

    def private_bits(self, shape) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Random bits ``rho0`` known to P0 and the dealer and ``rho1`` known to P1 and the dealer
        (both seeded, 0 offline bits). Returns ``(rho0, rho1)``, None where this role lacks one."""
        b0 = ring.random_bits(self._gens["d0"], shape) if self._draws("d0") else None
        b1 = ring.random_bits(self._gens["d1"], shape) if self._draws("d1") else None
        return b0, b1

    def common(self, shape, ell: int) -> torch.Tensor | None:
        """Randomness shared by P0 and P1 only (None at the dealer)."""
        return ring.uniform(self._gens["01"], shape, ell) if self.role != DEALER else None

    def keyed_ring(self, pair: str, key: str, shape, ell: int) -> torch.Tensor | None:
        """A value derived from ``pair``'s seed and ``key`` (None if this role lacks the seed)."""
        if not self._draws(pair):
            return None
        return ring.uniform(self.seeds.generator(pair, "keyed/" + key), shape, ell)

    # -- dealer corrections
    def _tag(self) -> str:
        self._count += 1
        return f"corr#{self._count}"

    def _deliver(
        self, correction: Callable[[], torch.Tensor] | None, shape, ell: int, tag: str
    ) -> torch.Tensor | None:
        """Dealer: compute and send to P1. P1: receive. P0: None."""
        if self.role == DEALER:
            c = correction()
            if ell == 1:
                self.party.send_bits(CLIENT, c, tag, phase="offline")
            else:
                self.party.send(CLIENT, c, ell, tag, phase="offline")
            return None
        if self.role == CLIENT:
            if ell == 1:
                return self.party.recv_bits(DEALER, shape, tag, phase="offline")
            return self.party.recv(DEALER, shape, ell, tag, phase="offline")
        return None

    def share_ring(self, fn: Callable[[], torch.Tensor], shape, ell: int) -> torch.Tensor | None:
        """Arithmetic shares of the dealer-known ``fn()``: P0 seeded, P1 gets ``fn() - s0``."""
        shape = tuple(shape)
        tag = self._tag()
        s0 = ring.uniform(self._gens["d0"], shape, ell) if self._draws("d0") else None
        s1 = self._deliver(lambda: ring.reduce(fn().reshape(shape) - s0, ell), shape, ell, tag)
        return self._mine(s0, s1)

    def share_bits(self, fn: Callable[[], torch.Tensor], shape) -> torch.Tensor | None:
        """XOR shares of dealer-known bits ``fn()``: P0 seeded, P1 gets ``fn() xor s0``."""
        shape = tuple(shape)
        tag = self._tag()
        s0 = ring.random_bits(self._gens["d0"], shape) if self._draws("d0") else None
        s1 = self._deliver(lambda: fn().reshape(shape).to(torch.uint8) ^ s0, shape, 1, tag)
        return self._mine(s0, s1)

    def and_triples(self, count: int) -> Triples:
        """``count`` AND triples (XOR shares): ``count`` offline bits (P1's ``c`` correction)."""
        if count == 0:
            e = torch.empty(0, dtype=torch.uint8)
            return Triples(e, e, e) if self.role != DEALER else Triples(None, None, None)
        a = self.random_bits((count,))
        b = self.random_bits((count,))
        c = self.share_bits(lambda: a.value & b.value, (count,))
        if self.role == DEALER:
            return Triples(None, None, None)
        return Triples(a.share, b.share, c)

    # -- the correlation kinds (:mod:`.base`)
    def mask_bits(self, r: Rand, nbits: int) -> torch.Tensor | None:
        n = _numel(r.share.shape if r.share is not None else r.value.shape)
        return self.share_bits(lambda: ring.bits(r.value.reshape(-1), nbits), (nbits, n))

    def gates_and_monomials(
        self, pairs, n_gates: int, monomials, n_monomials: int
    ) -> torch.Tensor | None:
        def products() -> torch.Tensor:
            out = []
            for m, gs in pairs:
                if gs:
                    ii = torch.tensor([i for i, _ in gs])
                    jj = torch.tensor([j for _, j in gs])
                    out.append((m.value[ii] & m.value[jj]).reshape(-1))
            if n_monomials:
                out.append(monomials().reshape(-1))
            return torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)

        size = n_gates + n_monomials
        return self.share_bits(products, (size,)) if size else None

    def products(self, values, shape, ell: int) -> torch.Tensor | None:
        return self.share_ring(values, shape, ell)

    def bit_product(self, rho0, rho1, shape, ell: int) -> torch.Tensor | None:
        return self.share_ring(lambda: (rho0 & rho1).long(), shape, ell)

    def one_hot(self, r: Rand, size: int, ell: int) -> torch.Tensor | None:
        n = _numel(r.share.shape if r.share is not None else r.value.shape)

        def onehot() -> torch.Tensor:
            idx = r.value.reshape(-1, 1)
            return (torch.arange(size, dtype=torch.int64).reshape(1, -1) == idx).long()

        return self.share_ring(onehot, (n, size), ell)

    def beaver(self, a: Rand, b: Rand, shape, ell: int) -> torch.Tensor | None:
        return self.share_ring(lambda: a.value * b.value, shape, ell)

    def linear_setup(self, key: str, w_shape, ell: int) -> torch.Tensor | None:
        # P0 and the dealer (and a simulated P1, which plays the dealer too) know B
        return self.keyed_ring("d0", f"linear/{key}", w_shape, ell)

    def linear(self, fn, a: Rand, y_shape, ell: int) -> torch.Tensor | None:
        return self.share_ring(lambda: fn(a.value), y_shape, ell)


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def make_provider(
    party: Party, seeds: Seeds, *, simulated: bool = False, dealer_book=None
) -> DealerProvider:
    """The dealer provider for ``party``'s role (simulated: in-process dealer, tests only)."""
    if simulated:
        from privquant.protocols.preprocessing.simulated import SimulatedProvider

        return SimulatedProvider(party, seeds, dealer_book)
    return DealerProvider(party, seeds)
