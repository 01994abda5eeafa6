"""Secret-vs-public comparison ``[x >= T_j]`` (several public thresholds at once) without a
dealer; the same signature and XOR-shared outputs as :mod:`privquant.protocols.compare`.

Source: SCI's millionaire-based comparison and MSB (Rathee et al., CCS 2020) arranged on one
masked opening as in the dealer protocol (MSB-of-shifted-value tests; Rabbit, Makri et al. 2021,
when no MSB window fits), with P1's own mask (:mod:`.requant` explains the opening to P0).

Steps: offline, P1 draws ``r`` (uniform in ``Z_2^ell``) and the OT batch of the comparison circuit
(leaf OTs with P1's digits of ``r`` chosen, AND triples; :mod:`.circuit`). Online, P1 sends
``x1 + r`` and P0 learns ``c = x + 2^(ell-1) + r`` (1 round); then, as in the dealer protocol with
``T' = T + 2^(ell-1)``:

* ``msb`` (every ``x - T`` fits the ring signed): ``C = c - T' + 2^(ell-1)``,
  ``[x >= T] = msb(C) xor r_(ell-1) xor [C mod 2^(ell-1) < r mod 2^(ell-1)]`` (one
  ``ell-1``-bit job per threshold; P0 holds ``msb(C)``, P1 ``r_(ell-1)``);
* ``rabbit``: ``[x >= T] = [c >= T'] xor [c < r] xor [c - T' < r]`` (``ell``-bit jobs, one extra
  for the wrap ``[c < r]``).

Thresholds decided by the bounds cost nothing. The MSB is ``1 xor [x >= 0]``.

Cost (``J`` secret thresholds, :mod:`.circuit` cost of the group with ``J`` jobs of ``ell - 1``
bits, or ``J + 1`` of ``ell`` bits)::

    online = n*ell + circuit.online,  offline = circuit.offline,  rounds = 1 + 1 + D
"""

from __future__ import annotations

import numpy as np
import torch

from privquant.protocols.compare import CompareSig
from privquant.protocols.ot import circuit
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


def group(sig: CompareSig, k: int) -> circuit.OtGroup | None:
    mode, const, _dealer_group = sig.plan
    if mode == "const" or sig.n == 0:
        return None
    j = sum(1 for c in const if c is None)
    if mode == "msb":
        return circuit.OtGroup(sig.n, 0, (sig.ell - 1,) * j, k=k)
    return circuit.OtGroup(sig.n, 0, (sig.ell,) * (j + 1), k=k)


class OtCompare(OtProtocol):
    """``[x >= T_j]`` without a dealer (see the module docstring)."""

    kind = "compare"

    def full_cost(self, sig: CompareSig) -> OtCost:
        g = group(sig, self.k)
        if g is None:
            return OtCost()
        c = g.cost()
        return OtCost(
            online_bits=sig.n * sig.ell + c.online_bits,
            offline_bits=c.offline_bits,
            online_rounds=lamport_depth(self.online_steps(sig)),
            offline_rounds=1,
        )

    def online_steps(self, sig: CompareSig) -> list[str]:
        g = group(sig, self.k)
        return [] if g is None else [SEND10, SEND01] + [EXCHANGE] * g.layout.depth

    def offline(self, corr, sig: CompareSig, state=None):
        g = group(sig, self.k)
        if g is None:
            return None
        r = private_ring((sig.n,), sig.ell) if corr.role == CLIENT else None
        b = Batch()
        b.add(circuit.requests([g], corr.role, [r.numpy()] if r is not None else None))
        res = b.run(session_of(corr, self.k), "ot.cmp")
        return r, circuit.build([g], corr.role, res)

    def online(self, party: Party, sig: CompareSig, pre, x: torch.Tensor) -> list[torch.Tensor]:
        mode, const, _ = sig.plan
        L, H, n, me = sig.ell, 1 << (sig.ell - 1), sig.n, party.rank
        if x.numel() != n:
            raise ValueError(f"compare expects {n} elements, got {x.numel()}")

        def pub(bits) -> np.ndarray:
            b = np.asarray(bits, dtype=np.uint8)
            return b if me == SERVER else np.zeros(n, dtype=np.uint8)

        out = [pub(np.full(n, c)) if c is not None else None for c in const]
        if pre is None:
            return [torch.from_numpy(o) for o in out]
        r, cpre = pre
        msk = (1 << L) - 1
        secret = [i for i, v in enumerate(const) if v is None]
        tp = [sig.thresholds[i] + H for i in secret]
        xs = ring.reduce(x.reshape(-1), L)
        if me == CLIENT:
            party.send(SERVER, ring.reduce(xs + r, L), L, "cmp.open")
            lts = circuit.online(party, cpre, [None], "cmp")[0]
            top = ((r.numpy() >> (L - 1)) & 1).astype(np.uint8)
            if mode == "msb":
                for i, lt in zip(secret, lts):
                    out[i] = top ^ lt
            else:
                for i, lt in zip(secret, lts[1:]):
                    out[i] = lts[0] ^ lt
        else:
            c = ((xs + H + party.recv(CLIENT, (n,), L, "cmp.open")) & msk).numpy()
            if mode == "msb":
                cj = [(c - t + H) & msk for t in tp]
                lts = circuit.online(party, cpre, [(c, cj)], "cmp")[0]
                for i, C, lt in zip(secret, cj, lts):
                    out[i] = ((C >> (L - 1)) & 1).astype(np.uint8) ^ lt
            else:
                cj = [c] + [(c - t) & msk for t in tp]
                lts = circuit.online(party, cpre, [(c, cj)], "cmp")[0]
                for i, t, lt in zip(secret, tp, lts[1:]):
                    out[i] = (c >= t).astype(np.uint8) ^ lts[0] ^ lt
        return [torch.from_numpy(np.ascontiguousarray(o)) for o in out]


OT_COMPARE = OtCompare()

__all__ = ["OT_COMPARE", "OtCompare", "group"]
