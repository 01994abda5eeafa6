"""Secret lookup of a public table without a dealer: ``y = T[x - lo]`` by one 1-out-of-2^nb OT per
element; the same signature (:class:`~privquant.protocols.lut.LutSig`) and outputs as
:mod:`privquant.protocols.lut`.

Source: the table lookup of CrypTFlow2/SiRNN (Rathee et al., CCS 2020 / S&P 2021, SCI's
``lookup_table``): the party holding one share of the index builds the table rotated by its
share, masked by its output share, and the other party picks its entry by a 1-out-of-N OT with
its own share as the choice. The OT is a random 1-out-of-2^nb OT made offline and derandomized
online (Beaver 1995; :mod:`privquant.protocols.preprocessing.ot.lut`, ``kind="add"``).

Notation as in :mod:`privquant.protocols.lut`: ``n`` elements, ``nb`` index bits, ``N = 2^nb``,
``x`` shared in any ring of at least ``nb`` bits (the shares reduce mod ``N`` locally), index
``i = x - lo mod N = i0 + i1 mod N`` with ``i0 = x0 - lo`` (P0) and ``i1 = x1`` (P1), output ring
``ell``, table entries in ``[out_lo, out_hi]``.

Steps:

1. offline: ``n`` random 1-out-of-N OTs (:mod:`~privquant.protocols.preprocessing.ot.nofn`,
   ``nb`` random 1-out-of-2 OTs each, P0 the sender, P1 the random index ``r``); in the ``lift``
   plan also the random OTs of the lift's COT product; all in one batch (1 offline round);
2. P1 sends ``s = i1 xor r`` (``nb`` bits);
3. P0 draws its output share ``rho`` (``t`` bits, OS CSPRNG) and sends, for ``j < N``,
   ``T'[(i0 + (j xor s)) mod N] - rho + R_j mod 2^t``; P1 takes entry ``r`` and subtracts its
   key ``R_r``: ``T'[i] - rho``. ``s`` is ``i1`` masked by the uniform ``r``; every other entry is
   masked by a key P1 lacks, entry ``r`` by ``rho``.

Plans (from public data, the fewest total bits then rounds; ``m = bitlen(out_hi - out_lo) + 1``):

* ``direct``: ``T' = T``, ``t = ell``;
* ``lift``: ``T' = T - out_lo`` (in ``[0, 2^(m-1))``), ``t = m``, then the known-MSB lift to
  ``Z_2^ell`` (:mod:`.lift`, one COT) and P0 adds ``out_lo``; only when ``2 <= m < ell``;
* ``const``: ``nb = 0`` (one entry): shares ``(T[0], 0)``, no traffic.

Cost (``n`` elements, ``o = 128/k - 1`` bits per random OT)::

    direct: online = n*(nb + N*ell),                      offline = o*n*nb,        rounds 2
    lift:   online = n*(nb + N*m) + n*(ell - m + 1),      offline = o*n*(nb + 1),  rounds 3
    const:  0

(offline: 1 round; online steps P1 -> P0, P0 -> P1 [, the lift's exchange].)

Example: a 6-bit SiLU table (``N = 64``, 4-bit output with its dip, ``m = 5``) into a 16-bit ring,
``k = 4``: lift plan, ``6 + 320 + 12 = 338`` online and ``31*7 = 217`` offline bits per element
(direct: ``6 + 1024`` and 186). SCI's ``lookup_table`` with the same index and ring sends
``256 + 64*16 = 1280`` bits per element for the KKOT alone (:func:`privquant.baselines.sci.kkot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.lift import LiftSig
from privquant.protocols.lut import LutSig
from privquant.protocols.ot import cotprod
from privquant.protocols.ot import lift as otlift
from privquant.protocols.ot.common import (
    EXCHANGE,
    SEND01,
    SEND10,
    Batch,
    OtProtocol,
    lamport_depth,
    private_ring,
    rot_bits,
    session_of,
)
from privquant.protocols.preprocessing.ot import lut as otlut
from privquant.protocols.preprocessing.ot import nofn
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party

INDEX_HOLDER = CLIENT  # P1 chooses with its share; P0 (the OT sender) holds the rotated table


def _lift_sig(sig: LutSig, plan: tuple[str, int]) -> LiftSig | None:
    kind, t = plan
    return LiftSig(sig.n, t, sig.ell) if kind == "lift" and sig.n else None


def _cost(k: int, sig: LutSig, plan: tuple[str, int]) -> OtCost:
    kind, t = plan
    n, nb = sig.n, sig.nb
    if kind == "const" or n == 0:
        return OtCost()
    on = n * (nb + (1 << nb) * t)
    off = rot_bits(k) * n * nb
    steps = [SEND10, SEND01]
    ls = _lift_sig(sig, plan)
    if ls is not None:
        c = otlift.full_cost(k, ls)
        on, off = on + c.online_bits, off + c.offline_bits
        steps.append(EXCHANGE)
    return OtCost(
        online_bits=on, offline_bits=off, online_rounds=lamport_depth(steps), offline_rounds=1
    )


@cache
def plan(k: int, sig: LutSig) -> tuple[str, int]:
    """``(kind, t)``: ``const``, ``direct`` (``t = ell``) or ``lift`` (``t = m``), by total bits
    then rounds (the dealer signature's checks of the table and ranges run first)."""
    _ = sig.plan
    L = sig.ell
    if sig.nb == 0:
        return "const", L
    m = (sig.out_hi - sig.out_lo).bit_length() + 1
    best = ("direct", L)
    if 2 <= m < L:
        d, lf = _cost(k, sig, best), _cost(k, sig, ("lift", m))
        if (lf.total_bits, lf.online_rounds) < (d.total_bits, d.online_rounds):
            best = ("lift", m)
    return best


def _table_online(
    party: Party, pre: nofn.NofNSend, base: np.ndarray, i0: np.ndarray, t: int, tag: str
) -> np.ndarray:
    """P0's half of :func:`privquant.protocols.preprocessing.ot.lut.table_online` (``add``) for
    the rotated tables ``T_e(j) = T'[(i0_e + j) mod N]``, the rotation by ``i0`` and the index
    derandomization ``j xor s`` composed into one gather (no per-element table is built).
    Returns P0's share ``rho``; the messages match :func:`~privquant.protocols.preprocessing.ot.
    lut.index_online`."""
    n, size = len(pre), 1 << pre.m
    mask = np.uint64((1 << t) - 1)
    s = party.recv(party.peer, (n,), pre.m, f"{tag}.s", phase="online").numpy()
    idx = (i0[:, None] + (np.arange(size)[None, :] ^ s[:, None])) & (size - 1)
    rho = private_ring((n,), t).numpy().view(np.uint64)
    msg = (base.view(np.uint64)[idx] - rho[:, None] + pre.keys(t)) & mask
    party.send(party.peer, torch.from_numpy(msg.view(np.int64)), t, f"{tag}.T", phase="online")
    return rho.view(np.int64)


@dataclass
class OtLutPre:
    ot: nofn.NofNSend | nofn.NofNRecv
    lift: object  # this party's random OT of the lift's COT product (lift plan), else None


class OtLut(OtProtocol):
    """Table lookup by one 1-out-of-2^nb OT per element (see the module docstring)."""

    kind = "lut"

    def full_cost(self, sig: LutSig) -> OtCost:
        return _cost(self.k, sig, plan(self.k, sig))

    def online_steps(self, sig: LutSig) -> list[str]:
        kind, _t = plan(self.k, sig)
        if kind == "const" or sig.n == 0:
            return []
        return [SEND10, SEND01] + ([EXCHANGE] if kind == "lift" else [])

    def offline(self, corr, sig: LutSig, state=None) -> OtLutPre | None:
        p = plan(self.k, sig)
        if p[0] == "const" or sig.n == 0:
            return None
        b = Batch()
        s_ot = b.add([nofn.request(1 - INDEX_HOLDER, sig.n, sig.nb)])
        ls = _lift_sig(sig, p)
        s_lift = b.add(cotprod.requests([otlift.spec(ls)]) if ls is not None else [])
        res = b.run(session_of(corr, self.k), "ot.lut")
        pre = nofn.wrap(corr.role, 1 - INDEX_HOLDER, sig.nb, res[s_ot][0])
        # hash the 1-of-N keys now, not online
        if isinstance(pre, nofn.NofNSend):
            pre.keys(p[1])
        else:
            pre.key(p[1])
        return OtLutPre(pre, res[s_lift][0] if ls is not None else None)

    def online(self, party: Party, sig: LutSig, pre: OtLutPre | None, x: torch.Tensor, tag="lut"):
        kind, t = plan(self.k, sig)
        shape = x.shape
        if x.numel() != sig.n:
            raise PrivQuantError(f"lookup expects {sig.n} elements, got {x.numel()}")
        me = party.rank
        if kind == "const" or sig.n == 0:
            v = sig.table[0] if me == SERVER else 0
            return ring.reduce(torch.full(shape, v, dtype=torch.int64), sig.ell)
        nb = sig.nb
        if me == SERVER:
            i0 = ring.reduce(x.reshape(-1) - sig.lo, nb).numpy()
            base = np.asarray(sig.table, dtype=np.int64)
            if kind == "lift":
                base = base - sig.out_lo
            y = _table_online(party, pre.ot, base, i0, t, f"{tag}.ot")
        else:
            i1 = ring.reduce(x.reshape(-1), nb).numpy()
            y = otlut.index_online(party, pre.ot, i1, t, "add", tag=f"{tag}.ot")
        out = torch.from_numpy(np.ascontiguousarray(y))
        if kind == "lift":
            ls = LiftSig(sig.n, t, sig.ell)
            out = otlift.online(party, ls, pre.lift, out, tag=f"{tag}.lift")
            if me == SERVER:
                out = out + sig.out_lo
        return ring.reduce(out, sig.ell).reshape(shape)


OT_LUT = OtLut()

__all__ = ["OT_LUT", "OtLut", "OtLutPre", "plan"]
