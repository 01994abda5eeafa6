"""Products of P0's private b-bit integers and P1's private ring vectors by correlated OT (Gilboa
multiplication), and the dealer-free linear-layer correlation built from it.

Sources: N. Gilboa, "Two Party RSA Key Generation", CRYPTO 1999 (product by one OT per bit of
one operand); SiRNN (Rathee et al., S&P 2021, section 4.1 and the ``Alice_has_B`` orientation of
EzPC SCI's matrix multiplication): the weight bits are the OT choice bits, the message of bit
``t`` is ``2^t * a``, and because it only influences bits ``t .. ell-1`` it is sent truncated to
``ell - t`` bits.

Geometry. ``sig`` is a :class:`privquant.protocols.linear.LinearSig` (conv2d with stride,
padding, groups incl. depthwise, or linear). P0 holds the weights ``W`` (``sig.w_shape``, signed
``b``-bit two's complement), P1 the ring tensor ``A`` (``sig.x_shape``); the output is additive
shares of ``lin(W, A) mod 2^ell`` (``ell = sig.ell``), exactly :func:`~privquant.protocols.linear.
ring_lin`. Weight element ``e = (o, c', i, j)`` of group ``g`` multiplies the im2col row
``R_e = A[:, g*C/groups + c', i + stride*oh - pad, j + stride*ow - pad]`` over the ``M = N*OH*OW``
output positions (``M = N`` for linear: the row is ``A[:, c]``).

Setup, once per session and layer (:func:`setup`, phase ``setup``): ``E*b`` random OTs with P1 as
sender and P0's weight bits as chosen choices (``E = |W|``): keys ``K0, K1`` at P1, ``K_w`` at P0.
This is the lambda-part of every later use and depends only on the fixed weights.

Per use ``u`` (:func:`linear_correlation`, default phase ``offline``: ``A`` is a random mask):
with ``X_beta[e, t] = H(K_beta[e, t], (index, use u, block))`` expanded to ``M`` values of
``ell - t`` bits (TCCR, domain :data:`DOMAIN_GILBOA`, the use counter in the domain word),
``delta[e, t] = s_t * R_e`` (``s_t = -1`` for the sign bit ``t = b-1``, else ``+1``), P1 sends
``z[e, t] = X_0 + delta - X_1 mod 2^(ell-t)``; P0's value is ``Y = X_w + w*z = X_0 + w*delta``.
Shares: P0 ``y0[o] = sum_{e in o, t} 2^t * Y[e, t]``, P1
``y1[o] = -sum_{e in o, t} 2^t * X_0[e, t]``, so
``y0 + y1 = sum_e (sum_t s_t w_t 2^t) R_e = lin(W, A) mod 2^ell``.

Elementwise products ``w_e * a_e`` (``w`` (E,) at P0, ``a`` (E, M) at P1) are the depthwise 1x1
convolution :func:`elementwise_sig` (``groups = E``), so the same code and cost apply.

Cost (:func:`setup_cost`, :func:`use_cost`): setup ``(128/k)*E*b`` bits, 1 round; per use
``E*M*sum_{t<b} (ell - t) = E*M*(b*ell - b*(b-1)/2)`` bits, P1 -> P0, 1 round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privquant.protocols.linear import LinearSig
from privquant.protocols.preprocessing.ot.aes import DOMAIN_GILBOA
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import (
    OtSession,
    RotRecv,
    RotSend,
    extend_cost,
)
from privquant.protocols.preprocessing.ot.messages import expand_ring
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER

MAX_USES = (1 << 24) - 1
_CHUNK = 1 << 21  # expanded values per chunk of weight elements


def _n_weights(sig: LinearSig) -> int:
    return int(np.prod(sig.w_shape))


def _positions(sig: LinearSig) -> int:
    """``M``: output positions each weight element contributes to."""
    if sig.kind == "linear":
        return int(sig.x_shape[0])
    y = sig.y_shape
    return int(y[0] * y[2] * y[3])


def _check(sig: LinearSig, bits: int) -> None:
    if sig.kind not in ("linear", "conv2d"):
        raise OtError(f"linear_correlation: unknown layer kind {sig.kind!r}")
    if not 2 <= bits <= 16:
        raise OtError(f"weight width must be 2..16 bits, got {bits}")
    ring.check_ell(sig.ell)
    if sig.ell <= bits - 1:
        raise OtError(f"ring of {sig.ell} bits cannot hold {bits}-bit weight products")


def elementwise_sig(e: int, m: int, ell: int) -> LinearSig:
    """The geometry of ``y[e, :] = w[e] * a[e, :]``: pass ``w.reshape(E, 1, 1, 1)`` and
    ``a.reshape(1, E, M, 1)``; the output has shape (1, E, M, 1)."""
    return LinearSig("conv2d", (1, e, m, 1), (e, 1, 1, 1), ell, (1, 1), (0, 0), e)


def setup_cost(k: int, sig: LinearSig, bits: int) -> OtCost:
    """The fixed-choice random OTs of one layer (phase ``setup``)."""
    return extend_cost(k, _n_weights(sig) * bits, chosen=True, phase="setup")


def use_cost(sig: LinearSig, bits: int, phase: str = "offline") -> OtCost:
    """One use: ``E*M*(b*ell - b*(b-1)/2)`` bits, 1 round, in ``phase``."""
    e, m, ell = _n_weights(sig), _positions(sig), sig.ell
    total = e * m * (bits * ell - bits * (bits - 1) // 2)
    return OtCost(**{f"{phase}_bits": total, f"{phase}_rounds": 1 if total else 0})


@dataclass
class LinearOtState:
    """Per session and layer: the fixed-choice OTs and the use counter (both parties)."""

    sig: LinearSig
    bits: int
    rot: RotSend | RotRecv
    w: torch.Tensor | None = None  # P0 only
    uses: int = 0


def weight_bits(w: torch.Tensor, bits: int) -> np.ndarray:
    """(E, b) two's-complement bits of signed ``bits``-bit weights (row-major over ``w``)."""
    v = w.reshape(-1).to(torch.int64)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.numel() and (int(v.min()) < lo or int(v.max()) > hi):
        raise OtError(f"weights must be signed {bits}-bit integers in [{lo}, {hi}]")
    u = (v & ((1 << bits) - 1)).numpy()
    return ((u[:, None] >> np.arange(bits)[None, :]) & 1).astype(np.uint8)


def setup(session: OtSession, sig: LinearSig, bits: int, w: torch.Tensor | None = None):
    """Both parties call it once per layer; P0 passes its weights ``w`` (``sig.w_shape``)."""
    _check(sig, bits)
    e = _n_weights(sig)
    rank = session.party.rank
    choices = None
    if rank == SERVER:
        if w is None or tuple(w.shape) != tuple(sig.w_shape):
            raise OtError(f"linear_correlation: P0 must pass weights of shape {sig.w_shape}")
        choices = weight_bits(w, bits).reshape(-1)
    rot = session.rot(CLIENT, e * bits, choices, chosen=True, phase="setup", tag="ot.gilboa")
    return LinearOtState(sig, bits, rot, w if rank == SERVER else None)


def im2col_rows(sig: LinearSig, a: np.ndarray) -> np.ndarray:
    """(C*kh*kw, M) rows of ``a`` for conv2d (row (c, i, j), columns (n, oh, ow)); (K, N) for
    linear."""
    if sig.kind == "linear":
        return np.ascontiguousarray(a.T)
    n, c = sig.x_shape[:2]
    kh, kw = sig.w_shape[2:]
    ph, pw = sig.padding
    sh, sw = sig.stride
    _, _, oh, ow = sig.y_shape
    p = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(p, (kh, kw), axis=(2, 3))
    win = win[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]  # (N, C, OH, OW, kh, kw)
    return np.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(c * kh * kw, n * oh * ow)


def _row_of_weight(sig: LinearSig) -> np.ndarray:
    """(E,) index into :func:`im2col_rows` of the row each weight element multiplies."""
    if sig.kind == "linear":
        o, kk = sig.w_shape
        return np.tile(np.arange(kk), o)
    o, cg, kh, kw = sig.w_shape
    og = o // sig.groups
    g = np.arange(o) // og
    c = g[:, None] * cg + np.arange(cg)[None, :]  # (O, Cg)
    base = (c * kh * kw)[:, :, None, None]
    ij = (np.arange(kh)[:, None] * kw + np.arange(kw)[None, :])[None, None]
    return (base + ij).reshape(-1)


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _out_shape(sig: LinearSig, acc: np.ndarray) -> torch.Tensor:
    """(O, M) accumulator -> the layer's output layout."""
    if sig.kind == "linear":
        return torch.from_numpy(np.ascontiguousarray(acc.T.view(np.int64)))
    n, o, oh, ow = sig.y_shape
    y = acc.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
    return torch.from_numpy(np.ascontiguousarray(y).view(np.int64))


def linear_correlation(
    session: OtSession,
    state: LinearOtState,
    a: torch.Tensor | None = None,
    *,
    phase: str = "offline",
    tag: str = "ot.gilboa",
) -> torch.Tensor:
    """This party's share (``sig.y_shape``, int64 in ``[0, 2^ell)``) of ``lin(W, A)``.

    P1 passes ``a`` (``sig.x_shape``); P0 passes nothing (its weights are in ``state``)."""
    sig, b, party = state.sig, state.bits, session.party
    if state.uses >= MAX_USES:
        raise OtError("linear_correlation: too many uses of one setup")
    use = state.uses
    state.uses += 1
    ell = sig.ell
    e_n, m = _n_weights(sig), _positions(sig)
    o = sig.w_shape[0]
    per_o = e_n // o
    acc = np.zeros((o, m), dtype=np.uint64)
    domain = DOMAIN_GILBOA | (use << 8)
    rot = state.rot
    # weight elements in chunks of whole output channels, bits t = 0 .. b-1 inside
    oc = max(1, _CHUNK // max(1, per_o * m))
    if party.rank == CLIENT:
        if a is None or tuple(a.shape) != tuple(sig.x_shape):
            raise OtError(f"linear_correlation: P1 must pass A of shape {sig.x_shape}")
        rows = im2col_rows(sig, ring.reduce(a, ell).numpy().view(np.uint64))
        widx = _row_of_weight(sig)
        for o0 in range(0, o, oc):
            o1 = min(o, o0 + oc)
            es = slice(o0 * per_o, o1 * per_o)
            r_e = rows[widx[es]]  # (E_c, M)
            for t in range(b):
                lt = ell - t
                ks = np.arange(es.start, es.stop) * b + t  # OT numbers of (e, t)
                idx = rot.index0 + ks
                x0 = expand_ring(rot.m0[ks], idx, m, lt, domain).view(np.uint64)
                x1 = expand_ring(rot.m1[ks], idx, m, lt, domain).view(np.uint64)
                delta = (np.uint64(0) - r_e) if t == b - 1 else r_e
                z = (x0 + delta - x1) & _mask(lt)
                party.send(
                    party.peer,
                    torch.from_numpy(z.view(np.int64).reshape(-1)),
                    lt,
                    f"{tag}.{o0}.{t}",
                    phase=phase,
                )
                acc[o0:o1] -= (x0 << np.uint64(t)).reshape(o1 - o0, per_o, m).sum(1)
    else:
        wb = weight_bits(state.w, b)  # (E, b)
        for o0 in range(0, o, oc):
            o1 = min(o, o0 + oc)
            es = slice(o0 * per_o, o1 * per_o)
            for t in range(b):
                lt = ell - t
                ks = np.arange(es.start, es.stop) * b + t
                idx = rot.index0 + ks
                kw_ = expand_ring(rot.m[ks], idx, m, lt, domain).view(np.uint64)
                z = party.recv(
                    party.peer, ((o1 - o0) * per_o * m,), lt, f"{tag}.{o0}.{t}", phase=phase
                )
                z = z.numpy().view(np.uint64).reshape(-1, m)
                y = (kw_ + wb[es, t].astype(np.uint64)[:, None] * z) & _mask(lt)
                acc[o0:o1] += (y << np.uint64(t)).reshape(o1 - o0, per_o, m).sum(1)
    acc &= _mask(ell)
    return _out_shape(sig, acc)
