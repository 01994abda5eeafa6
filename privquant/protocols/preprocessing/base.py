"""Correlated randomness by kind: what protocols ask for, and the provider interface.

A protocol's ``offline`` phase never asks "for whatever the dealer can compute": it asks a
:class:`Provider` for named correlation *kinds*, and its ``cost(sig, preprocessing)`` adds, to
its own online cost, what the chosen provider charges for those kinds (:meth:`Provider.cost` of
each :class:`Need`). One signature can therefore be costed under any provider, and a provider
that cannot make a kind says so (:class:`Unavailable`) instead of silently pretending.

Kinds (``n`` elements; "seeded" = derived from PRG seeds, no traffic):

==================  ===============================================================  ==========
kind                what each party gets                                             dealer cost
==================  ===============================================================  ==========
``random``          additive shares of a random ``r`` in Z_2^ell nobody learns       0 (seeded)
``random_bits``     XOR shares of random bits nobody learns                           0 (seeded)
``private_bits``    bits known to one party each (``rho0`` at P0, ``rho1`` at P1)     0 (seeded)
``common``          randomness shared by P0 and P1 (the client's input mask)          0 (seeded)
``mask_bits``       XOR shares of the low ``bits`` bits of a ``random`` mask          n*bits
``gates``           XOR shares of ``a_i & a_j`` for AND gates on opening masks        n*gates
``monomials``       XOR shares of the digit monomials of a ``random`` mask's bits     n*monomials
``products``        additive shares (Z_2^ell) of products of ``random_bits`` and a    n*ell*items
                    value derived from a ``random`` mask (a selection polynomial's
                    dealer items)
``bit_product``     additive shares (Z_2^ell) of ``rho0 * rho1`` (``private_bits``)   n*ell
``one_hot``         additive shares (Z_2^ell) of the one-hot vector ``e_r`` (``items``  n*ell*items
                    = N entries) of a ``random`` index ``r`` in Z_N (a lookup table's
                    dealer material, :mod:`privquant.protocols.lut`)
``beaver``          additive shares (Z_2^ell) of ``c = a * b`` for two ``random``      n*ell
                    masks ``a``, ``b`` (``n`` = elements of the (broadcast) product;
                    :mod:`privquant.protocols.mul`)
``linear``          per model load a weight mask ``B`` (P0) with ``F = W - B`` sent   setup
                    to P1; per inference shares of ``lin(A, B)`` for the              |W|*ell,
                    ``random`` input mask ``A``                                       offline
                                                                                      |y|*ell
==================  ===============================================================  ==========

Providers: ``dealer`` (:mod:`.dealer`: a non-colluding third party in CrypTen's TTP slot),
``simulated`` (:mod:`.simulated`: an in-process dealer for tests, flagged insecure) and, for the
dealer-free mode, ``ot`` (:mod:`.ot`), which makes the kinds it offers with oblivious transfer and
costs the others as :class:`Unavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from privquant.errors import PrivQuantError
from privquant.protocols.primitives.cost import ZERO, Cost

KINDS = (
    "random",
    "random_bits",
    "private_bits",
    "common",
    "mask_bits",
    "gates",
    "monomials",
    "products",
    "bit_product",
    "linear",
    "one_hot",
    "beaver",
)


class Unavailable(PrivQuantError):
    """A provider cannot make a correlation kind (e.g. a dealer-only kind in ``ot`` mode)."""


@dataclass(frozen=True)
class Need:
    """One correlation a protocol needs: its ``kind`` and size (public).

    ``n`` elements of ``items`` items each, ``ell``-bit ring items (1 = XOR bits); for
    ``linear``, ``n = |y|`` and ``setup = |W|`` (the weight mask, once per model load).
    """

    kind: str
    n: int
    ell: int = 1
    items: int = 1
    setup: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown correlation kind {self.kind!r}")


@dataclass
class Rand:
    """A random correlation: this role's ``share`` (None at the dealer) and the ``value``
    (known where the provider knows it: the dealer, a simulated dealer; else None)."""

    share: torch.Tensor | None
    value: torch.Tensor | None


@dataclass
class Triples:
    """XOR shares of AND triples ``c = a & b`` (flat uint8 tensors); ``None`` at the dealer."""

    a: torch.Tensor | None
    b: torch.Tensor | None
    c: torch.Tensor | None

    def slice(self, start: int, stop: int) -> Triples:
        if self.a is None:
            return self
        return Triples(self.a[start:stop], self.b[start:stop], self.c[start:stop])


FREE = ("random", "random_bits", "private_bits", "common")


def dealer_cost(need: Need) -> Cost:
    """What a dealer charges for ``need`` (see the table in the module docstring)."""
    if need.kind in FREE:
        return ZERO
    if need.kind == "linear":
        return Cost(offline_bits=need.n * need.ell, setup_bits=need.setup * need.ell)
    return Cost(offline_bits=need.n * need.items * need.ell)


def ot_cost(need: Need) -> Cost:
    """What the two parties pay to make ``need`` themselves (``ot`` mode): the free kinds are
    local, the others are made by dedicated dealer-free protocols (``protocols.ot``), not by
    emulating a dealer, so they are :class:`Unavailable` here."""
    if need.kind in FREE:
        return ZERO
    raise Unavailable(f"correlation kind {need.kind!r} has no dealer-free construction")


COSTS = {"dealer": dealer_cost, "simulated": dealer_cost, "ot": ot_cost}
MODES = tuple(COSTS)


def check_mode(mode: str) -> str:
    if mode not in COSTS:
        raise PrivQuantError(f"unknown preprocessing {mode!r}; choose from {', '.join(MODES)}")
    return mode


def need_cost(needs, mode: str = "dealer") -> Cost:
    """Total preprocessing cost of ``needs`` under provider ``mode`` (all in one offline phase:
    bits add, no online rounds)."""
    f = COSTS[check_mode(mode)]
    out = ZERO
    for need in needs:
        out = out.then(f(need))
    return out


class Provider:
    """Makes the correlation kinds for one role (the interface every provider implements).

    ``party`` is the role's :class:`~privquant.protocols.transport.channel.Party`, ``role`` its
    rank, ``mode`` the provider's name. ``knows_values``: True where the values behind random
    correlations are known (a dealer; a simulated dealer) -- protocols pass such values back
    (``r.value``) to the kinds derived from them, so only a provider that knows them uses them.
    """

    mode = ""
    role: int
    party = None
    knows_values = False

    # -- free kinds
    def random(self, shape, ell: int) -> Rand:
        raise NotImplementedError

    def random_bits(self, shape) -> Rand:
        raise NotImplementedError

    def private_bits(self, shape) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def common(self, shape, ell: int) -> torch.Tensor | None:
        raise NotImplementedError

    # -- correlations
    def mask_bits(self, r: Rand, nbits: int) -> torch.Tensor | None:
        """XOR shares (nbits, n) of bits ``0..nbits-1`` of the random mask ``r`` ((n,))."""
        raise Unavailable(f"{self.mode} provider cannot make 'mask_bits'")

    def gates_and_monomials(
        self, pairs, n_gates: int, monomials, n_monomials: int
    ) -> torch.Tensor | None:
        """XOR shares, in one flat vector, of the ``n_gates`` AND-gate products of ``pairs`` (a
        list of ``(masks: Rand (nops, n), gate index pairs)``) followed by ``n_monomials`` digit
        monomials (``monomials()`` returns the dealer's plaintext (M, n) rows). Kinds ``gates``
        and ``monomials``, made together (one dealer message)."""
        raise Unavailable(f"{self.mode} provider cannot make 'gates'")

    def products(self, values, shape, ell: int) -> torch.Tensor | None:
        """Additive shares in Z_2^ell of dealer-known products (``values()``, shape ``shape``):
        the items of a selection polynomial (kind ``products``)."""
        raise Unavailable(f"{self.mode} provider cannot make 'products'")

    def bit_product(self, rho0, rho1, shape, ell: int) -> torch.Tensor | None:
        """Additive shares in Z_2^ell of ``rho0 * rho1`` (``private_bits``; kind
        ``bit_product``)."""
        raise Unavailable(f"{self.mode} provider cannot make 'bit_product'")

    def one_hot(self, r: Rand, size: int, ell: int) -> torch.Tensor | None:
        """Additive shares in Z_2^ell, shape ``(n, size)``, of the one-hot vectors ``e_r``
        (``e_r[j] = [j == r]``) of the random indices ``r`` ((n,), ``random`` in Z_size, size a
        power of two) (kind ``one_hot``)."""
        raise Unavailable(f"{self.mode} provider cannot make 'one_hot'")

    def beaver(self, a: Rand, b: Rand, shape, ell: int) -> torch.Tensor | None:
        """Additive shares in Z_2^ell of ``c = a * b`` (broadcast to ``shape``) for the random
        masks ``a`` and ``b`` (kind ``beaver``; ``b`` may be ``a`` itself: a square pair)."""
        raise Unavailable(f"{self.mode} provider cannot make 'beaver'")

    def linear_setup(self, key: str, w_shape, ell: int) -> torch.Tensor | None:
        """The weight mask ``B`` of layer ``key`` (known to P0 and the provider; None at P1)."""
        raise Unavailable(f"{self.mode} provider cannot make 'linear'")

    def linear(self, fn, a: Rand, y_shape, ell: int) -> torch.Tensor | None:
        """Additive shares of ``fn(A, B)`` = ``lin(A, B)`` for the input mask ``a`` (kind
        ``linear``, per inference)."""
        raise Unavailable(f"{self.mode} provider cannot make 'linear'")
