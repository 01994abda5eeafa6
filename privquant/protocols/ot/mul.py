"""Elementwise product of two secrets without a dealer, ``z = x * y mod 2^L`` (with broadcasting);
the same signature (:class:`~privquant.protocols.mul.MulSig`) and outputs as
:mod:`privquant.protocols.mul`.

Source: Gilboa's product by oblivious transfer (CRYPTO 1999) in its correlated-OT form with
truncated messages (the message of bit ``t`` only influences bits ``t..L-1``) and one OT key
expanded to every product it serves (SiRNN's ``Alice_has_B`` matrix products, Rathee et al.,
S&P 2021; :mod:`privquant.protocols.preprocessing.ot.gilboa`), derandomized so that the OT
extension runs offline (Beaver 1995; the COT step of :mod:`.cotprod`).

Notation: ``x`` (shape ``X``, ``nx`` elements) and ``y`` (``Y``, ``ny``) shared mod ``2^L``,
``Z`` their broadcast shape (``nz`` elements). ``a`` is the factor with fewer elements (``x`` on
a tie; ``na``), ``b`` the other; broadcasting repeats every element of ``a`` exactly
``M = nz/na`` times (``M > 1``: e.g. a squeeze-and-excitation gate ``(C, 1, 1)`` times a
``(C, H, W)`` map). With ``a = a0 + a1`` and ``b = b0 + b1``::

    a * b = a0*b0 + a1*b1 + a0*b1 + a1*b0

The first two terms are local. A cross term ``a0*b1 = sum_{t<L} 2^t * a0_t * (b1 mod 2^(L-t))``
is one COT product per bit ``t`` of each element of ``a0`` (P0 the chooser), made in
``Z_2^(L-t)`` for all ``M`` elements of ``b1`` that element meets (P1 the value holder);
symmetrically ``a1*b0`` with P1 choosing. For each of the ``na`` random OTs of group
``(chooser, t)`` (value holder = OT sender, keys ``K0, K1``; chooser: random ``rho``,
``K_rho``) let ``X_beta`` be ``K_beta`` expanded to ``M`` values of ``L - t`` bits (its low
bits when ``M = 1``, else TCCR ``H(K_beta, (index, block))``). Online, simultaneously: the value
holder sends ``X0 + delta - X1`` (``M*(L-t)`` bits), the chooser ``d = c xor rho`` (1 bit; all
in one message); shares of ``c*delta`` follow as in :mod:`.cotprod`. All groups run in one round.

Square (``x * x``): ``x0^2 + x1^2 + 2*x0*x1``; the doubled cross term is made mod ``2^(L-1)``
(bits ``t < L-1`` of ``x0``, P0 choosing, widths ``L-1-t``) and shifted by one.

Cost (``o = 128/k - 1`` bits per random OT)::

    product: online = 2*na*L + nz*L*(L + 1),            offline = 2*o*na*L
    square:  online = nz*(L - 1) + nz*(L - 1)*L/2,       offline = o*nz*(L - 1)
    rounds: 1 online (0 if nothing to send), 1 offline

Why products made online rather than Beaver triples made offline by the same COT products: a
triple ``c = a*b`` (for random masks of ``x`` and ``y``) has the random OT choices as its bits,
so it saves the ``2*na*L`` choice bits but then opens ``x - a`` and ``y - b`` online
(``2*(nx + ny)*L`` bits); the direct form costs ``2*L*(nx + ny - na) = 2*L*max(nx, ny) > 0``
bits less in total (square: ``2*nx*L`` against ``nx*(L - 1)``), in the same single round. The
triple form would only move ``nz*L*(L+1)`` bits offline: at ``L = 16``, ``k = 4``, no
broadcasting, direct 304 online + 992 offline bits per element, triples 64 + 1264.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.mul import MulSig
from privquant.protocols.ot.common import EXCHANGE, Batch, OtProtocol, rot_bits, session_of
from privquant.protocols.preprocessing.ot.aes import DOMAIN_GILBOA
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.preprocessing.ot.extension import OtRequest
from privquant.protocols.preprocessing.ot.messages import expand_ring, key_ring
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


@dataclass(frozen=True)
class Plan:
    """Public layout: ``a_is_x`` (the bit factor), ``na``, ``nz``, ``m = nz/na`` and the groups
    ``(chooser, t, width, shift)``."""

    a_is_x: bool
    na: int
    nz: int
    groups: tuple[tuple[int, int, int, int], ...]

    @property
    def m(self) -> int:
        return self.nz // self.na if self.na else 0


def plan(sig: MulSig) -> Plan:
    L = ring.check_ell(sig.ell)
    if sig.square and sig.x_shape != sig.y_shape:
        raise PrivQuantError("a square needs one shape")
    nx, ny, nz = _numel(sig.x_shape), _numel(sig.y_shape), _numel(sig.z_shape)
    a_is_x = sig.square or nx <= ny
    na = nx if a_is_x else ny
    if nz == 0:
        return Plan(a_is_x, na, nz, ())
    if sig.square:
        groups = tuple((SERVER, t, L - 1 - t, t + 1) for t in range(L - 1))
    else:
        groups = tuple((c, t, L - t, t) for c in (SERVER, CLIENT) for t in range(L))
    return Plan(a_is_x, na, nz, groups)


def _bits(v: np.ndarray, t: int) -> np.ndarray:
    return ((v >> np.uint64(t)) & np.uint64(1)).astype(np.uint8)


def _values(keys: np.ndarray, idx: np.ndarray, m: int, width: int) -> np.ndarray:
    """(n, m) ``width``-bit uint64 values of the keys (low bits for ``m = 1``, else TCCR)."""
    if m == 1:
        return key_ring(keys, width).view(np.uint64).reshape(-1, 1)
    return expand_ring(keys, idx, m, width, DOMAIN_GILBOA).view(np.uint64)


class OtMul(OtProtocol):
    """Product of two shared tensors by COT (Gilboa) products (see the module docstring)."""

    kind = "mul"

    def full_cost(self, sig: MulSig) -> OtCost:
        p = plan(sig)
        if not p.groups:
            return OtCost()
        on = sum(p.na + p.nz * w for _c, _t, w, _s in p.groups)
        off = rot_bits(self.k) * p.na * len(p.groups)
        return OtCost(online_bits=on, offline_bits=off, online_rounds=1, offline_rounds=1)

    def online_steps(self, sig: MulSig) -> list[str]:
        return [EXCHANGE] if plan(sig).groups else []

    def offline(self, corr, sig: MulSig, state=None):
        p = plan(sig)
        b = Batch()
        b.add([OtRequest(1 - c, p.na) for c, _t, _w, _s in p.groups])
        return b.run(session_of(corr, self.k), "ot.mul")

    def online(self, party: Party, sig: MulSig, pre, x: torch.Tensor, y=None, tag="mul"):
        L, me = sig.ell, party.rank
        y = x if y is None else y
        if tuple(x.shape) != tuple(sig.x_shape) or tuple(y.shape) != tuple(sig.y_shape):
            raise PrivQuantError(
                f"product: shares have shapes {tuple(x.shape)}, {tuple(y.shape)}; expected "
                f"{sig.x_shape}, {sig.y_shape}"
            )
        p = plan(sig)
        z = sig.z_shape
        x, y = ring.reduce(x, L), ring.reduce(y, L)
        local = x * y  # this party's local term, broadcast to Z (mod 2^64)
        if not p.groups:
            return ring.reduce(local.reshape(z), L)
        a, b = (x, y) if p.a_is_x else (y, x)
        # z positions grouped by the element of `a` they use: (na, M)
        owner = torch.arange(p.na).reshape(a.shape).expand(z).reshape(-1)
        order = torch.argsort(owner, stable=True).numpy()
        av = a.reshape(-1).numpy().view(np.uint64)
        bv = b.expand(z).reshape(-1).numpy().view(np.uint64)[order].reshape(p.na, p.m)
        acc = np.zeros((p.na, p.m), dtype=np.uint64)
        # 1. everything this party sends: the value holder's z, then all choice bits d
        sent, ds = [], []
        for g, (c, t, w, _shift) in enumerate(p.groups):
            rot, mask = pre[g], np.uint64((1 << w) - 1)
            idx = rot.index0 + np.arange(p.na, dtype=np.uint64)
            if c == me:
                d = _bits(av, t) ^ rot.r
                ds.append(d)
                sent.append(d)
            else:
                delta = bv & mask
                x0 = _values(rot.m0, idx, p.m, w)
                x1 = _values(rot.m1, idx, p.m, w)
                zmsg = ((x0 + delta - x1) & mask).reshape(-1)
                party.send(party.peer, torch.from_numpy(zmsg.view(np.int64)), w, f"{tag}.z{g}")
                sent.append((delta, x0))
        if ds:
            party.send_bits(party.peer, torch.from_numpy(np.concatenate(ds)), f"{tag}.d{me}")
        # 2. receive and finish: chooser groups first (their z), then the peer's d bits
        for g, (c, _t, w, shift) in enumerate(p.groups):
            if c != me:
                continue
            rot, mask = pre[g], np.uint64((1 << w) - 1)
            idx = rot.index0 + np.arange(p.na, dtype=np.uint64)
            zr = party.recv(party.peer, (p.na * p.m,), w, f"{tag}.z{g}").numpy()
            zr = zr.view(np.uint64).reshape(p.na, p.m)
            kr = _values(rot.m, idx, p.m, w)
            yv = np.where(rot.r.astype(bool)[:, None], kr + zr, kr) & mask
            sh = np.where(sent[g].astype(bool)[:, None], np.uint64(0) - yv, yv)
            acc += (sh & mask) << np.uint64(shift)
        peer_groups = [g for g, grp in enumerate(p.groups) if grp[0] != me]
        if peer_groups:
            n_d = p.na * len(peer_groups)
            d_all = party.recv_bits(party.peer, (n_d,), f"{tag}.d{party.peer}").numpy()
            d_all = d_all.astype(bool).reshape(len(peer_groups), p.na)
            for d, g in zip(d_all, peer_groups):
                mask, shift = np.uint64((1 << p.groups[g][2]) - 1), p.groups[g][3]
                delta, x0 = sent[g]
                sh = np.where(d[:, None], delta + x0, np.uint64(0) - x0)
                acc += (sh & mask) << np.uint64(shift)
        out = np.empty(p.nz, dtype=np.uint64)
        out[order] = acc.reshape(-1)
        prod = torch.from_numpy(out.view(np.int64)).reshape(z) + local.reshape(z)
        return ring.reduce(prod, L)


OT_MUL = OtMul()

__all__ = ["OT_MUL", "OtMul", "Plan", "plan"]
