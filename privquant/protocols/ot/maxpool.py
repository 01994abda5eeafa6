"""Max pooling without a dealer: a tree of pairwise maxima of differences, all windows and pairs
of a level batched; the same signature and semantics as :mod:`privquant.protocols.maxpool`.

Source: the ReLU/maximum of SecureML/CrypTFlow2 (``max(a, b) = b + [a - b >= 0] * (a - b)``) with
SCI's dealer-free millionaire and multiplexer (Rathee et al. 2020); the masked opening to P0 with
P1's own mask follows :mod:`.requant`.

One level, ``n`` pairs ``(a, b)`` (shares in ``Z_2^L``, ``d = a - b`` fits the ring signed):

1. offline: P1 draws ``r`` (uniform in ``Z_2^L``); the leaf OTs (P1's digits of ``r`` chosen) and
   triples of one ``(L-1)``-bit comparison per pair (:mod:`.circuit`), the random OTs of two COT
   products (:mod:`.select`);
2. P1 sends ``d1 + r``; P0 learns ``c = d + r mod 2^L`` (1 round);
3. ``m = [d >= 0] = 1 xor msb(c) xor r_(L-1) xor [c mod 2^(L-1) < r mod 2^(L-1)]`` (P0 holds
   ``1 xor msb(c)``, P1 ``r_(L-1)``; the comparison: 1 + D rounds);
4. ``max = b + m*c - m*r mod 2^L``: one COT product with P1 choosing (P0's value ``c``), one with
   P0 choosing (P1's value ``r``), 1 round.

Padding uses ``lo`` (P0 holds it). If ``L' > L`` the result ``max - lo`` (in ``[0, hi - lo]``,
below ``2^(L-1)``) is lifted once (:mod:`.lift`, 1 COT, 1 round); otherwise reduced mod ``2^L'``.
A 1x1 window with ``L' > L`` is the lift alone.

Cost per level (``n`` pairs, ``cmp`` = :mod:`.circuit` cost of one ``L-1``-bit job)::

    online  = n*L + cmp.online + 2*n*(L + 1),  offline = cmp.offline + 2*n*(128/k - 1)
    rounds  = 1 + (1 + D) + 1, less the overlaps of :func:`.common.lamport_depth`
    lift    : online n_out*(L' - L + 1), offline n_out*(128/k - 1), 1 round

levels add up (``ceil(log2(kh*kw))`` of them); all offline OTs of the layer in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from privquant.errors import PrivQuantError
from privquant.protocols.bitpoly import Poly
from privquant.protocols.lift import LiftSig
from privquant.protocols.maxpool import MaxpoolSig
from privquant.protocols.ot import circuit, cotprod, select
from privquant.protocols.ot import lift as otlift
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


def _levels(sig: MaxpoolSig) -> list[int]:
    """Pairs per window at each level."""
    _ = sig.levels  # the dealer signature's checks (ranges, rings)
    m = sig.kernel[0] * sig.kernel[1]
    out = []
    while m > 1:
        out.append(m // 2)
        m -= m // 2
    return out


def _lift_sig(sig: MaxpoolSig) -> LiftSig | None:
    n = int(np.prod(sig.out_shape))
    return LiftSig(n, sig.ell, sig.ell_out) if sig.ell_out > sig.ell else None


def _group(k: int, n: int, L: int) -> circuit.OtGroup:
    return circuit.OtGroup(n, 0, (L - 1,), k=k)


def _spec(n: int, L: int) -> select.SelSpec:
    return select.SelSpec.of(_poly(torch.zeros(1, dtype=torch.int64)).reduced(L), L, n)


@dataclass
class LevelPre:
    r: torch.Tensor | None
    cmp: list
    sel: list


class OtMaxpool(OtProtocol):
    """Max pooling without a dealer (see the module docstring)."""

    kind = "maxpool"

    def full_cost(self, sig: MaxpoolSig) -> OtCost:
        L, on, off = sig.ell, 0, 0
        if sig.windows == 0:
            return OtCost()
        for pairs in _levels(sig):
            n = sig.windows * pairs
            c = _group(self.k, n, L).cost().then(_spec(n, L).cost(self.k))
            on += n * L + c.online_bits
            off += c.offline_bits
        ls = _lift_sig(sig)
        if ls is not None:
            c = otlift.full_cost(self.k, ls)
            on, off = on + c.online_bits, off + c.offline_bits
        return OtCost(
            online_bits=on,
            offline_bits=off,
            online_rounds=lamport_depth(self.online_steps(sig)),
            offline_rounds=int(off > 0),
        )

    def online_steps(self, sig: MaxpoolSig) -> list[str]:
        if sig.windows == 0:
            return []
        steps = []
        for pairs in _levels(sig):
            depth = _group(self.k, sig.windows * pairs, sig.ell).layout.depth
            steps += [SEND10, SEND01] + [EXCHANGE] * depth + [EXCHANGE]
        if _lift_sig(sig) is not None:
            steps.append(EXCHANGE)
        return steps

    def offline(self, corr, sig: MaxpoolSig, state=None):
        L, rank = sig.ell, corr.role
        b = Batch()
        levels = []
        for pairs in _levels(sig):
            n = sig.windows * pairs
            r = private_ring((n,), L) if rank == CLIENT else None
            g = _group(self.k, n, L)
            s_cmp = b.add(circuit.requests([g], rank, [r.numpy()] if r is not None else None))
            s_sel = b.add(cotprod.requests(_spec(n, L).cots))
            levels.append((r, g, s_cmp, s_sel))
        ls = _lift_sig(sig)
        s_lift = b.add(cotprod.requests([otlift.spec(ls)]) if ls is not None else [])
        res = b.run(session_of(corr, self.k), "ot.mp")
        pres = [
            LevelPre(r, circuit.build([g], rank, res[s_cmp]), res[s_sel])
            for r, g, s_cmp, s_sel in levels
        ]
        return pres, (res[s_lift][0] if ls is not None else None)

    def online(self, party: Party, sig: MaxpoolSig, pre, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(sig.x_shape):
            raise PrivQuantError(
                f"maxpool: share has shape {tuple(x.shape)}, expected {sig.x_shape}"
            )
        levels, lift_rot = pre
        L, Lo, me = sig.ell, sig.ell_out, party.rank
        (kh, kw), (sh, sw), (ph, pw) = sig.kernel, sig.stride, sig.padding
        pad_value = ring.reduce(torch.tensor(sig.lo), L).item() if me == SERVER else 0
        xp = F.pad(ring.reduce(x, L), (pw, pw, ph, ph), value=pad_value)
        win = xp.unfold(2, kh, sh).unfold(3, kw, sw).reshape(sig.windows, kh * kw)
        for lv, (pairs, p) in enumerate(zip(_levels(sig), levels)):
            tag = f"mp{lv}"
            n = sig.windows * pairs
            a = win[:, 0 : 2 * pairs : 2].reshape(-1)
            b = win[:, 1 : 2 * pairs : 2].reshape(-1)
            rest = win[:, 2 * pairs :]
            d = ring.reduce(a - b, L)
            if me == CLIENT:
                party.send(SERVER, ring.reduce(d + p.r, L), L, f"{tag}.open")
                res = circuit.online(party, p.cmp, [None], f"{tag}.cmp")[0]
                rv = p.r.numpy()
                mbit = ((rv >> (L - 1)) & 1).astype(np.uint8) ^ res[0]
                poly = _poly(torch.zeros(n, dtype=torch.int64)).reduced(L)
                r_val = rv
            else:
                c = ring.reduce(d + party.recv(CLIENT, (n,), L, f"{tag}.open"), L).numpy()
                res = circuit.online(party, p.cmp, [(c, [c])], f"{tag}.cmp")[0]
                mbit = (1 ^ ((c >> (L - 1)) & 1)).astype(np.uint8) ^ res[0]
                poly = _poly(torch.from_numpy(c)).reduced(L)
                r_val = None
            sel = select.online(party, _spec(n, L), p.sel, poly, {"m": mbit}, r_val, f"{tag}.sel")
            out = ring.reduce(b + torch.from_numpy(sel), L)
            win = torch.cat([out.reshape(sig.windows, -1), rest], dim=1)
        y = win.reshape(sig.out_shape)
        ls = _lift_sig(sig)
        if ls is None:
            return ring.reduce(y, Lo)
        lo = sig.lo if me == SERVER else 0
        q = otlift.online(party, ls, lift_rot, ring.reduce(y - lo, L), "mp.lift")
        return ring.reduce(q + lo, Lo)


OT_MAXPOOL = OtMaxpool()

__all__ = ["OT_MAXPOOL", "OtMaxpool"]
