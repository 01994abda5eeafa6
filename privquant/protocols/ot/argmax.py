"""Secure argmax / top-k without a dealer: the client learns only the indices of the ``k``
largest logits; the same signature (:class:`~privquant.protocols.argmax.ArgmaxSig`), output
(shares in ``Z_2^Lo`` of the ``k`` indices, largest first, equal logits by lower index first)
and public comparator network as the dealer protocol's ``network`` plan
(:mod:`privquant.protocols.argmax`).

Source: the tournament / comparator-network argmax of secure inference (e.g. SecureML, Delphi,
CrypTFlow2's ArgMax), each comparator the dealer-free maximum of :mod:`.maxpool`: SCI's
millionaire (:mod:`.circuit`) and COT multiplexer (:mod:`.select`, Rathee et al., CCS 2020),
on index-packed values so that the winner carries its own index (no index selection, no tie
comparison).

1. **Index packing, local** (as the dealer protocol): with ``s = Lo`` and ``L = Ld + s``, each
   party forms ``p_i = x_i * 2^s + (C - 1 - i)`` in ``Z_2^L`` (P0 adds the public
   ``C - 1 - i``). The ``p_i`` are distinct, their order is the output order, every difference
   fits ``L`` bits signed, and ``p mod 2^s = C - 1 - index``.
2. **Network** (:func:`~privquant.protocols.argmax_plans.network`; for ``k = 1`` the tournament
   of ``C - 1`` comparators in ``ceil(log2 C)`` layers). Per layer, all its ``n_l`` comparators
   ``(hi, lo)`` over all ``n`` samples at once (``m = n * n_l`` pairs ``a = p_hi``,
   ``b = p_lo``, ``d = a - b != 0``):

   a. offline: P1 draws ``r`` uniform in ``Z_2^L`` (CSPRNG, its own); the leaf OTs (P1's digits
      of ``r`` chosen) and AND triples of one ``(L-1)``-bit comparison per pair, and the random
      OTs of the two COT products of the selection -- every layer's OTs in ONE offline batch;
   b. P1 sends ``d1 + r``; P0 learns ``c = d + r mod 2^L`` (1 message);
   c. ``t = [d > 0] = 1 xor msb(c) xor r_(L-1) xor [c mod 2^(L-1) < r mod 2^(L-1)]`` as XOR
      shares (P0 holds ``1 xor msb(c)``, P1 ``r_(L-1)``; the comparison: 1 + D rounds);
   d. ``u = t*(a - b) = t*c - t*r`` in the layer's ring ``Ls``: one COT product with P1
      choosing (P0's value ``c``) and one with P0 choosing (P1's value ``r``), 1 exchange;
   e. locally ``max = b + u`` on wire ``hi``, ``min = a - u`` on wire ``lo``.

   ``Ls = Lo`` when every used output of the layer is a network output (the low ``s`` bits of a
   packed value only need the identity modulo ``2^s``), else ``L``.
3. ``index = (C - 1) - (p mod 2^s)`` at the ``k`` output wires, locally, in ``Z_2^Lo``; the
   output op then opens these ``k`` values to the client alone.

Cost (``k_ot`` the SoftSpokenOT parameter; per layer ``l``: ``m_l = n * n_l`` pairs, ``cmp_l``
the :mod:`.circuit` cost of ``m_l`` one-job ``(L-1)``-bit comparisons, depth ``D``)::

    online  = sum_l [ m_l*L + cmp_l.online + m_l*(Ls_l + 1) * 2 ]
    offline = sum_l [ cmp_l.offline + 2*m_l*(128/k_ot - 1) ],  1 offline round (one batch)
    rounds  = lamport_depth of per layer [P1->P0, P0->P1 (leaves), D exchanges, 1 exchange]

(the P1 -> P0 opening of a layer follows the previous layer's exchange at once, so consecutive
layers overlap by the Lamport model of :func:`.common.lamport_depth`). ``C = 1``: nothing.

Security (semi-honest, as SCI): P0 sees ``c = d + r`` with ``r`` uniform and P1's; the leaf
tables reach P1 masked by OT keys it lacks and P0's random output shares; the triples' openings
and the COT messages are masked by random OT keys and choice bits. The client's online view is
thus uniform apart from the final opening of the ``k`` indices (tested with the client's
randomness fixed: ``tests/protocols/otmode/test_ot_argmax.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.argmax import ArgmaxSig
from privquant.protocols.bitpoly import Poly
from privquant.protocols.ot import circuit, cotprod, select
from privquant.protocols.ot.common import (
    EXCHANGE,
    SEND01,
    SEND10,
    Batch,
    OtProtocol,
    lamport_depth,
    private_ring,
    session_of,
)
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


def _poly(c) -> Poly:
    return Poly.var("m") * (Poly.const(c) - Poly.arith("R"))


def _group(k: int, m: int, L: int) -> circuit.OtGroup:
    return circuit.OtGroup(m, 0, (L - 1,), k=k)


def _spec(m: int, ls: int) -> select.SelSpec:
    return select.SelSpec.of(_poly(torch.zeros(1, dtype=torch.int64)).reduced(ls), ls, m)


def _check(sig: ArgmaxSig) -> int:
    """``L`` (the dealer signature's checks: ranges, rings, classes); only the network plan."""
    L = sig.ell
    if sig.force not in (None, "network"):
        raise PrivQuantError(f"dealer-free argmax runs the network plan, not {sig.force!r}")
    if sig.n < 0:
        raise PrivQuantError(f"argmax: {sig.n} samples")
    return L


def _layers(sig: ArgmaxSig) -> list[tuple[int, int]]:
    """Per layer: ``(pairs m_l over all samples, ring Ls)``."""
    _check(sig)
    if sig.n == 0:
        return []
    return [(sig.n * len(layer), sig.layer_ring(lv)) for lv, layer in enumerate(sig.net.layers)]


@dataclass
class LayerPre:
    r: torch.Tensor | None  # P1's mask (m,) in Z_2^L; None at P0
    cmp: list
    sel: list


class OtArgmax(OtProtocol):
    """Secure argmax / top-k without a dealer (see the module docstring)."""

    kind = "argmax"

    def full_cost(self, sig: ArgmaxSig) -> OtCost:
        L, on, off = sig.ell, 0, 0
        for m, ls in _layers(sig):
            c = _group(self.k, m, L).cost().then(_spec(m, ls).cost(self.k))
            on += m * L + c.online_bits
            off += c.offline_bits
        return OtCost(
            online_bits=on,
            offline_bits=off,
            online_rounds=lamport_depth(self.online_steps(sig)),
            offline_rounds=int(off > 0),
        )

    def online_steps(self, sig: ArgmaxSig) -> list[str]:
        steps = []
        for m, _ls in _layers(sig):
            depth = _group(self.k, m, sig.ell).layout.depth
            steps += [SEND10, SEND01] + [EXCHANGE] * depth + [EXCHANGE]
        return steps

    def offline(self, corr, sig: ArgmaxSig, state=None):
        L, rank = sig.ell, corr.role
        b = Batch()
        layers = []
        for m, ls in _layers(sig):
            r = private_ring((m,), L) if rank == CLIENT else None
            g = _group(self.k, m, L)
            s_cmp = b.add(circuit.requests([g], rank, [r.numpy()] if r is not None else None))
            s_sel = b.add(cotprod.requests(_spec(m, ls).cots))
            layers.append((r, g, s_cmp, s_sel))
        if not layers:
            return []
        res = b.run(session_of(corr, self.k), "ot.am")
        return [
            LayerPre(r, circuit.build([g], rank, res[s_cmp]), res[s_sel])
            for r, g, s_cmp, s_sel in layers
        ]

    def online(self, party: Party, sig: ArgmaxSig, pre, x: torch.Tensor) -> torch.Tensor:
        C, L, s, me = sig.classes, _check(sig), sig.shift, party.rank
        if tuple(x.shape) != (sig.n, C):
            raise PrivQuantError(f"argmax: share has shape {tuple(x.shape)}, expected {(sig.n, C)}")
        layers = _layers(sig)
        if len(pre) != len(layers):
            raise PrivQuantError("argmax: preprocessing does not match the signature")
        w = ring.reduce(ring.reduce(x, sig.ell_diff) << s, L)
        if me == SERVER:
            w = ring.reduce(w + torch.arange(C - 1, -1, -1, dtype=torch.int64), L)
        for lv, (layer, (m, ls), p) in enumerate(zip(sig.net.layers, layers, pre)):
            tag = f"am{lv}"
            hi = torch.tensor([cp[0] for cp in layer], dtype=torch.long)
            lo = torch.tensor([cp[1] for cp in layer], dtype=torch.long)
            a, b = w[:, hi], w[:, lo]
            d = ring.reduce(a - b, L).reshape(-1)
            if me == CLIENT:
                party.send(SERVER, ring.reduce(d + p.r, L), L, f"{tag}.open")
                res = circuit.online(party, p.cmp, [None], f"{tag}.cmp")[0]
                rv = p.r.numpy()
                t = ((rv >> (L - 1)) & 1).astype(np.uint8) ^ res[0]
                poly = _poly(torch.zeros(m, dtype=torch.int64)).reduced(ls)
                r_val = rv
            else:
                c = ring.reduce(d + party.recv(CLIENT, (m,), L, f"{tag}.open"), L).numpy()
                res = circuit.online(party, p.cmp, [(c, [c])], f"{tag}.cmp")[0]
                t = (1 ^ ((c >> (L - 1)) & 1)).astype(np.uint8) ^ res[0]
                poly = _poly(torch.from_numpy(c)).reduced(ls)
                r_val = None
            u = select.online(party, _spec(m, ls), p.sel, poly, {"m": t}, r_val, f"{tag}.sel")
            u = torch.from_numpy(u).reshape(a.shape)
            w = w.clone()
            w[:, hi] = ring.reduce(b + u, ls)
            w[:, lo] = ring.reduce(a - u, ls)
        idx = -ring.reduce(w[:, list(sig.net.outputs)], s)
        if me == SERVER:
            idx = idx + (C - 1)
        return ring.reduce(idx, sig.ell_out)


OT_ARGMAX = OtArgmax()

__all__ = ["OT_ARGMAX", "OtArgmax"]
