"""Linear layers (conv2d incl. strided/padded/grouped/depthwise, and matmul) with server-known
weights, computed modulo ``2^ell`` of the output ring.

Source: the dealer-assisted variant of the "masked weights" linear protocol (a Beaver triple for
a bilinear map whose weight mask is reused across inferences, as in Delphi/Gazelle-style
preprocessing, Mishra et al. 2020, here with a dealer instead of HE); DESIGN.md "Linear with
server-known weights". ``lin`` is the layer's bilinear map, ``W`` the weights (P0), ``x`` the
shared input, shares ``x = x0 + x1``.

Setup, once per model load:
  1. P0 and D derive ``B`` (weight-shaped, uniform in ``Z_{2^ell}``) from their seed and the
     layer key.
  2. P0 sends ``F = W - B`` to P1.                              setup bits = |W| * ell
Offline, per inference:
  3. ``A = A0 + A1`` with both shares seeded (P0 / P1); ``C0`` seeded (P0).
  4. D sends P1 ``C1 = lin(A, B) - C0``.                        offline bits = |y| * ell
  5. P0 precomputes ``Z0 = lin(F, A0) + C0 + bias``; P1 precomputes ``Z1 = lin(F, A1) + C1``.
Online:
  6. P1 sends ``M = x1 - A1`` to P0.                            online bits = |x| * ell, 1 round
  7. P0: ``E = x0 + M - A0 = x - A``, ``y0 = lin(W, E) + Z0``; P1: ``y1 = Z1``.
  Correctness: ``y0 + y1 = lin(W, x - A) + lin(W - B, A) + lin(A, B) + bias = lin(W, x) + bias``.
  Privacy: P0 sees ``x`` masked by the uniform ``A1``; P1 sees ``W`` masked by the uniform ``B``.

Exact ring arithmetic (:func:`ring_lin`): float64 BLAS is exact while every partial sum stays
below ``2^53``, so the input is split into ``s``-bit limbs with ``K * max|W| * (2^s - 1) < 2^53``
(weights centered in ``[-2^(ell-1), 2^(ell-1))``), each limb convolved in float64 and recombined
mod ``2^ell``. Measured on this machine (1 thread, conv 8x32x16x16 * 64x32x3x3, ``ring_lin``):
int64 conv 4.7-4.9 ms; float64 1.7 ms with one limb (ell = 20, or 4-bit weights at ell = 32) and
5.4 ms with three limbs (full-ring operands at ell = 32). So float64 is used up to
:data:`MAX_FLOAT_LIMBS` = 2 limbs and int64 (which wraps mod ``2^64``, harmless since ``2^ell``
divides ``2^64``) beyond.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from privquant.errors import PrivQuantError
from privquant.protocols.base import Protocol
from privquant.protocols.preprocessing.base import Need
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.primitives.geometry import conv_out_hw
from privquant.protocols.transport.channel import CLIENT, DEALER, SERVER, Party

MAX_FLOAT_LIMBS = 2
EXACT = 1 << 53


@dataclass(frozen=True)
class LinearSig:
    """``kind`` is ``"conv2d"`` (x (N, C, H, W), weight (O, C/groups, kh, kw)) or ``"linear"``
    (x (N, K), weight (O, K)); ``ell`` is the output ring; ``key`` names the layer's setup mask;
    ``w_bits`` is the public weight width (signed), used by the dealer-free protocols (the
    weight-bit OTs, the HE parameters)."""

    kind: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    ell: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    key: str = ""
    w_bits: int = 8

    @cached_property
    def y_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.x_shape[0], self.w_shape[0])
        oh, ow = conv_out_hw(
            self.x_shape[2], self.x_shape[3], self.w_shape[2:], self.stride, self.padding
        )
        return (self.x_shape[0], self.w_shape[0], oh, ow)

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.w_shape[1:]))

    def apply(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The bilinear map itself (same dtype in and out)."""
        if self.kind == "linear":
            return x @ w.T
        return F.conv2d(x, w, stride=self.stride, padding=self.padding, groups=self.groups)


def ring_lin(
    sig: LinearSig, w: torch.Tensor, x: torch.Tensor, ell: int | None = None
) -> torch.Tensor:
    """``lin(w, x) mod 2^ell`` exactly (int64 in and out): float64 limbs or int64 (see module)."""
    ell = sig.ell if ell is None else ell
    wc = ring.to_signed(w, ell)
    xu = ring.reduce(x, ell)
    wmax = int(wc.abs().max()) if wc.numel() else 0
    bound = sig.fan_in * wmax
    s = min(ell, 62)
    while s > 0 and bound * ((1 << s) - 1) >= EXACT:
        s -= 1
    limbs = -(-ell // s) if s > 0 else None
    if limbs is None or limbs > MAX_FLOAT_LIMBS:
        return ring.reduce(sig.apply(wc, xu), ell)
    wf = wc.to(torch.float64)
    acc = None
    for j in range(limbs):
        xj = ((xu >> (s * j)) & ((1 << s) - 1)).to(torch.float64)
        yj = sig.apply(wf, xj).round().to(torch.int64)
        if j:
            yj = yj << (s * j)
        acc = yj if acc is None else acc + yj
    return ring.reduce(acc, ell)


@dataclass
class LinearState:
    """Per model load: P0 (W, bias, F), P1 (F), dealer (B)."""

    w: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    f: torch.Tensor | None = None
    b: torch.Tensor | None = None


@dataclass
class LinearPre:
    a: torch.Tensor  # A0 (P0) or A1 (P1)
    z: torch.Tensor  # Z0 or Z1
    state: LinearState


class Linear(Protocol):
    """Conv2d / linear with server-known weights (see the module docstring for steps and cost).

    cost: setup = |W|*ell, offline = |y|*ell, online = |x|*ell, rounds = 1.
    """

    kind = "linear"

    def online_cost(self, sig: LinearSig) -> Cost:
        return Cost(online_bits=int(np.prod(sig.x_shape)) * sig.ell, rounds=1)

    def needs(self, sig: LinearSig) -> list[Need]:
        ny, nw = int(np.prod(sig.y_shape)), int(np.prod(sig.w_shape))
        return [
            Need("random", int(np.prod(sig.x_shape)), sig.ell),
            Need("linear", ny, sig.ell, setup=nw),
        ]

    def end_clocks(self, sig: LinearSig) -> tuple[int, int]:
        return 1, 0  # one message, client -> server

    def setup(self, corr, sig: LinearSig, params=None) -> LinearState:
        ell = ring.check_ell(sig.ell)
        party = corr.party
        b = corr.linear_setup(sig.key, sig.w_shape, ell)
        if corr.role == SERVER:
            if params is None or "weight" not in params:
                raise PrivQuantError(f"layer {sig.key!r}: the server has no weights")
            w = torch.as_tensor(np.asarray(params["weight"]).astype(np.int64))
            if tuple(w.shape) != tuple(sig.w_shape):
                raise PrivQuantError(
                    f"layer {sig.key!r}: weight shape {tuple(w.shape)} != {tuple(sig.w_shape)}"
                )
            bias = params.get("bias")
            bias = (
                torch.as_tensor(np.asarray(bias).astype(np.int64))
                if bias is not None
                else torch.zeros(sig.w_shape[0], dtype=torch.int64)
            )
            f = ring.reduce(w - b, ell)
            party.send(CLIENT, f, ell, f"linear.setup:{sig.key}", phase="setup")
            return LinearState(w=w, bias=bias, f=f)
        if corr.role == CLIENT:
            f = party.recv(SERVER, sig.w_shape, ell, f"linear.setup:{sig.key}", phase="setup")
            return LinearState(f=f, b=b if corr.knows_values else None)
        return LinearState(b=b)

    def offline(self, corr, sig: LinearSig, state: LinearState = None) -> LinearPre | None:
        ell = sig.ell
        a = corr.random(sig.x_shape, ell)
        c = corr.linear(lambda av: ring_lin(sig, state.b, av), a, sig.y_shape, ell)
        if corr.role == DEALER:
            return None
        z = ring_lin(sig, state.f, a.share) + c
        if corr.role == SERVER:
            z = z + _bias(state.bias, len(sig.y_shape))
        return LinearPre(a.share, ring.reduce(z, ell), state)

    def online(self, party: Party, sig: LinearSig, pre: LinearPre, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(sig.x_shape):
            raise PrivQuantError(
                f"layer {sig.key!r}: input share has shape {tuple(x.shape)}, expected {sig.x_shape}"
            )
        ell = sig.ell
        x = ring.reduce(x, ell)
        if party.rank == CLIENT:
            party.send(SERVER, ring.reduce(x - pre.a, ell), ell, "linear.in")
            return pre.z
        m = party.recv(CLIENT, sig.x_shape, ell, "linear.in")
        e = ring.reduce(x + m - pre.a, ell)
        return ring.reduce(ring_lin(sig, pre.state.w, e) + pre.z, ell)


def _bias(bias: torch.Tensor, ndim: int) -> torch.Tensor:
    return bias.reshape((1, -1) + (1,) * (ndim - 2))


LINEAR = Linear()
