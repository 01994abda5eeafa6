"""Openings, input sharing, output, and the local (communication-free) operations.

* ``open`` -- both parties learn ``x``: each sends its share. Cost ``2*n*ell`` online bits, 1 round.
* ``open_to(party)`` -- only ``party`` learns ``x``: the other sends its share. ``n*ell``, 1 round.
* ``input`` -- the client shares its image with common randomness: P0's share is ``s`` drawn from
  the P0/P1 seed, P1's is ``x - s``. Cost 0.
* ``output`` -- the logits opened to the client only (``open_to(CLIENT)``): ``n*ell``, 1 round.
* ``sumpool``, ``flatten``, bias add, the requant pre-sum with public multipliers: linear maps
  computed on each share mod ``2^ell``. Cost 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from privquant.errors import PrivQuantError
from privquant.protocols.base import LocalProtocol, Protocol
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _check_shape(x: torch.Tensor, shape, what: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise PrivQuantError(f"{what}: share has shape {tuple(x.shape)}, expected {tuple(shape)}")


# ------------------------------------------------------------------------------ open
@dataclass(frozen=True)
class OpenSig:
    shape: tuple[int, ...]
    ell: int
    signed: bool = True


class Open(Protocol):
    """Both parties learn the value (each sends its share). Cost: 2*n*ell bits, 1 round."""

    kind = "open"
    dealer_free = True

    def online_cost(self, sig: OpenSig) -> Cost:
        return Cost(online_bits=2 * _numel(sig.shape) * sig.ell, rounds=1)

    def online(self, party: Party, sig: OpenSig, pre, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, sig.shape, "open")
        x = ring.reduce(x, sig.ell)
        v = ring.reduce(x + party.exchange(x, sig.ell, "open"), sig.ell)
        return ring.to_signed(v, sig.ell) if sig.signed else v


@dataclass(frozen=True)
class OpenToSig:
    shape: tuple[int, ...]
    ell: int
    to: int = CLIENT
    signed: bool = True


class OpenTo(Protocol):
    """Only ``sig.to`` learns the value (the other party sends its share): n*ell bits, 1 round.

    Returns the value at ``sig.to`` and ``None`` at the other party.
    """

    kind = "open_to"
    dealer_free = True

    def end_clocks(self, sig: OpenToSig) -> tuple[int, int]:
        return (0, 1) if sig.to == CLIENT else (1, 0)

    def online_cost(self, sig: OpenToSig) -> Cost:
        return Cost(online_bits=_numel(sig.shape) * sig.ell, rounds=1)

    def online(self, party: Party, sig: OpenToSig, pre, x: torch.Tensor):
        _check_shape(x, sig.shape, "open_to")
        if party.rank == sig.to:
            other = party.recv(1 - sig.to, sig.shape, sig.ell, "open_to")
            v = ring.reduce(x + other, sig.ell)
            return ring.to_signed(v, sig.ell) if sig.signed else v
        party.send(sig.to, ring.reduce(x, sig.ell), sig.ell, "open_to")
        return None


class Output(OpenTo):
    """The logits opened to the client only (P0 sends its share): n*ell bits, 1 round."""

    kind = "output"


# ------------------------------------------------------------------------------ input
@dataclass(frozen=True)
class InputSig:
    shape: tuple[int, ...]
    ell: int


class Input(LocalProtocol):
    """Client input sharing from common randomness: P0 gets ``s``, P1 gets ``x - s``. Cost 0.

    ``offline`` draws ``s`` from the P0/P1 seed (the dealer draws nothing); ``online`` at P1 takes
    the integer input ``x``; at P0 it takes no argument.
    """

    kind = "input"

    def offline(self, corr, sig: InputSig, state=None):
        return corr.common(sig.shape, sig.ell)

    def online(self, party: Party, sig: InputSig, pre, x: torch.Tensor | None = None):
        if party.rank == SERVER:
            return pre
        if x is None:
            raise PrivQuantError("the client must provide the input")
        _check_shape(x, sig.shape, "input")
        return ring.reduce(x.to(torch.int64) - pre, sig.ell)


# ------------------------------------------------------------------------------ local ops
def add_public(party: Party, x: torch.Tensor, c, ell: int) -> torch.Tensor:
    """Shares of ``x + c`` for a public ``c`` (P0 adds it). No communication."""
    if party.rank == SERVER:
        x = x + torch.as_tensor(c, dtype=torch.int64)
    return ring.reduce(x, ell)


def channel_vector(a, ndim: int) -> torch.Tensor:
    """Per-channel vector (C,) broadcastable against (N, C, ...) with ``ndim`` sample dims."""
    t = torch.as_tensor(np.asarray(a, dtype=np.int64))
    return t.reshape((1, -1) + (1,) * (ndim - 1))


def presum(party: Party, xs, mults, offset, ell: int) -> torch.Tensor:
    """Shares of ``t = sum_i m_i[c] * x_i + offset[c]`` mod ``2^ell`` (public per-channel
    multipliers and offset; P0 adds the offset). No communication."""
    t = None
    for x, m in zip(xs, mults):
        term = x.to(torch.int64) * channel_vector(m, x.dim() - 1)
        t = term if t is None else t + term
    return add_public(party, t, channel_vector(offset, xs[0].dim() - 1), ell)


@dataclass(frozen=True)
class SumpoolSig:
    x_shape: tuple[int, ...]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ell: int  # output ring (<= the input's ring)


class Sumpool(LocalProtocol):
    """Window sums (zero padding) on each share mod 2^ell. Cost 0."""

    kind = "sumpool"

    def online(self, party: Party, sig: SumpoolSig, pre, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, sig.x_shape, "sumpool")
        (kh, kw), (sh, sw), (ph, pw) = sig.kernel, sig.stride, sig.padding
        x = F.pad(ring.reduce(x, sig.ell), (pw, pw, ph, ph))
        return ring.reduce(x.unfold(2, kh, sh).unfold(3, kw, sw).sum((-1, -2)), sig.ell)


@dataclass(frozen=True)
class FlattenSig:
    x_shape: tuple[int, ...]
    ell: int


class Flatten(LocalProtocol):
    """(N, C, H, W) -> (N, C*H*W) on each share. Cost 0."""

    kind = "flatten"

    def online(self, party: Party, sig: FlattenSig, pre, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, sig.x_shape, "flatten")
        return ring.reduce(x.reshape(x.shape[0], -1), sig.ell)


OPEN = Open()
OPEN_TO = OpenTo()
OUTPUT = Output()
INPUT = Input()
SUMPOOL = Sumpool()
FLATTEN = Flatten()
