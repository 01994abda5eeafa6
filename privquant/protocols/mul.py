"""Elementwise product of two secrets, ``z = x * y`` in ``Z_{2^L}`` (with broadcasting).

Source: Beaver's multiplication triples (Beaver, CRYPTO 1991) with a dealer, as in CrypTen's TTP
provider and SPDZ-style preprocessing; a square ``x * x`` uses a square pair ``(a, a^2)`` and one
opening.

Notation: ``x`` (shape ``X``) and ``y`` (shape ``Y``) shared in ``Z_{2^L}`` (``L`` = the product's
ring; each input's ring is at least ``L``, its shares are reduced mod ``2^L``), ``Z`` the
broadcast shape of ``X`` and ``Y``, ``nx, ny, nz`` their element counts.

Steps:

1. Dealer: masks ``a`` (shape ``X``) and ``b`` (shape ``Y``), both arithmetic shares seeded
   (free), and shares of ``c = a * b`` (broadcast, shape ``Z``; P0's seeded, P1's by correction:
   ``nz*L`` offline bits, kind ``beaver``). A square uses ``b = a``.
2. Both open ``d = x - a`` and ``e = y - b`` in one exchange (``2*(nx + ny)*L`` online bits,
   1 round; a square opens ``d`` only: ``2*nx*L``). ``d``, ``e`` are uniform: they reveal nothing.
3. Locally: ``z_j = c_j + d * b_j + a_j * e + [P0] d * e`` (a square: ``c_j + 2 d a_j +
   [P0] d^2``); ``z0 + z1 = (d + a) * (e + b) = x * y``.

Cost::

    online  = 2*(nx + ny)*L bits  (square: 2*nx*L),  rounds = 1
    offline = nz*L bits
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.base import Protocol
from privquant.protocols.preprocessing.base import Need, Provider
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.transport.channel import SERVER, Party


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


@dataclass(frozen=True)
class MulSig:
    """Shapes of the two factors (batch first) and the product ring ``ell``; ``square``: both
    factors are the same tensor."""

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    ell: int
    square: bool = False

    @cached_property
    def z_shape(self) -> tuple[int, ...]:
        try:
            return tuple(torch.broadcast_shapes(self.x_shape, self.y_shape))
        except RuntimeError:
            raise PrivQuantError(
                f"product of shapes {self.x_shape} and {self.y_shape} does not broadcast"
            ) from None

    @property
    def opened(self) -> int:
        """Elements opened online (``d``, and ``e`` unless a square)."""
        nx = _numel(self.x_shape)
        return nx if self.square else nx + _numel(self.y_shape)


@dataclass
class MulPre:
    a: torch.Tensor | None
    b: torch.Tensor | None
    c: torch.Tensor | None


class Mul(Protocol):
    """Beaver product of two shared tensors (see the module docstring)."""

    kind = "mul"

    def online_cost(self, sig: MulSig) -> Cost:
        ring.check_ell(sig.ell)
        return Cost(online_bits=2 * sig.opened * sig.ell, rounds=1 if sig.opened else 0)

    def needs(self, sig: MulSig) -> list[Need]:
        nz = _numel(sig.z_shape)
        return [
            Need("random", _numel(sig.x_shape), sig.ell),
            *([] if sig.square else [Need("random", _numel(sig.y_shape), sig.ell)]),
            Need("beaver", nz, sig.ell),
        ]

    def offline(self, corr: Provider, sig: MulSig, state=None) -> MulPre:
        if sig.square and sig.x_shape != sig.y_shape:
            raise PrivQuantError("a square needs one shape")
        a = corr.random(sig.x_shape, sig.ell)
        b = a if sig.square else corr.random(sig.y_shape, sig.ell)
        c = corr.beaver(a, b, sig.z_shape, sig.ell)
        return MulPre(a.share, b.share, c)

    def online(self, party: Party, sig: MulSig, pre: MulPre, x: torch.Tensor, y=None, tag="mul"):
        L = sig.ell
        y = x if y is None else y
        if tuple(x.shape) != tuple(sig.x_shape) or tuple(y.shape) != tuple(sig.y_shape):
            raise PrivQuantError(
                f"product: shares have shapes {tuple(x.shape)}, {tuple(y.shape)}; expected "
                f"{sig.x_shape}, {sig.y_shape}"
            )
        mine = party.rank == SERVER
        dx = ring.reduce(x - pre.a, L)
        if sig.square:
            d = ring.reduce(dx + party.exchange(dx, L, f"{tag}.open"), L)
            z = pre.c + 2 * d * pre.a + (d * d if mine else 0)
            return ring.reduce(z, L)
        ey = ring.reduce(y - pre.b, L)
        mine_open = torch.cat([dx.reshape(-1), ey.reshape(-1)])
        both = ring.reduce(mine_open + party.exchange(mine_open, L, f"{tag}.open"), L)
        d = both[: dx.numel()].reshape(dx.shape)
        e = both[dx.numel() :].reshape(ey.shape)
        z = pre.c + d * pre.b + pre.a * e + (d * e if mine else 0)
        return ring.reduce(z, L)


MUL = Mul()

__all__ = ["MUL", "Mul", "MulPre", "MulSig"]
