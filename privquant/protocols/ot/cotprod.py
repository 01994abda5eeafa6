"""Bit-times-value products by correlated OT, many groups of different widths in ONE round.

Source: Gilboa's product by OT (CRYPTO 1999) in its correlated-OT form (ALSZ13), derandomized as
in Beaver (CRYPTO 1995) so the OT extension itself runs offline; this is the COT step of SCI's
multiplexer and B2A (Rathee et al., CCS 2020 / S&P 2021).

A :class:`CotSpec` is one group of ``n`` products ``c * delta mod 2^ell``: the *chooser* (the OT
receiver) holds the bits ``c``, the other party (the OT sender, "value holder") the ``ell``-bit
values ``delta``. Offline: ``n`` random OTs with the value holder as sender (keys ``K0, K1``; the
chooser gets a random choice ``rho`` and ``K_rho``). With ``X_b`` the low ``ell`` bits of ``K_b``,
online, simultaneously:

* the value holder sends ``z = X0 + delta - X1 mod 2^ell`` (``n*ell`` bits);
* the chooser sends ``d = c xor rho`` (``n`` bits; all groups' ``d`` in one message).

The chooser's ``y = X_rho + rho*z = X0 + rho*delta``; shares of ``rho*delta`` are ``(-X0, y)``, and
``c*delta`` is ``rho*delta`` if ``d = 0`` or ``delta - rho*delta`` if ``d = 1``: value holder
``-X0`` or ``delta + X0``, chooser ``y`` or ``-y``. ``z`` is masked by the key the chooser lacks,
``d`` by the uniform ``rho``.

Cost of the groups ``specs`` (:func:`cost`)::

    offline = (128/k - 1) * sum n          bits (random OTs, 1 round, batched by the caller)
    online  = sum n*(ell + 1)               bits, 1 round
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.ot.common import rot_bits
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.preprocessing.ot.extension import OtRequest, RotRecv, RotSend
from privquant.protocols.preprocessing.ot.messages import key_ring
from privquant.protocols.transport.channel import Party


@dataclass(frozen=True)
class CotSpec:
    """``n`` products of the ``chooser``'s bits with the other party's ``ell``-bit values."""

    chooser: int
    n: int
    ell: int

    def __post_init__(self):
        if self.chooser not in (0, 1):
            raise ValueError("the chooser is P0 or P1")
        if not 1 <= self.ell <= 62:
            raise ValueError(f"product width must be 1..62 bits, got {self.ell}")


def requests(specs) -> list[OtRequest]:
    """The random OTs of ``specs`` (the value holder is the OT sender)."""
    return [OtRequest(1 - s.chooser, s.n) for s in specs]


def offline_cost(k: int, specs) -> OtCost:
    bits = rot_bits(k) * sum(s.n for s in specs)
    return OtCost(offline_bits=bits, offline_rounds=1 if bits else 0)


def online_cost(specs) -> OtCost:
    bits = sum(s.n * (s.ell + 1) for s in specs)
    return OtCost(online_bits=bits, online_rounds=1 if bits else 0)


def cost(k: int, specs) -> OtCost:
    return offline_cost(k, specs).then(online_cost(specs))


def _u(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64).view(np.uint64)


def online(party: Party, specs, rots, inputs, tag: str = "cot") -> list[np.ndarray]:
    """This party's shares (int64 (n,) in ``[0, 2^ell)``) of every group's products.

    ``rots[i]``: this party's random-OT result of group ``i`` (:func:`requests` order);
    ``inputs[i]``: its bits (uint8 (n,)) where it is the chooser, its values (int64 (n,), taken
    mod ``2^ell``) where it holds the values."""
    me = party.rank
    if not (len(specs) == len(rots) == len(inputs)):
        raise PrivQuantError("COT products: specs, OTs and inputs differ in number")
    sent = []
    ds = []
    for i, (s, rot, x) in enumerate(zip(specs, rots, inputs)):
        if s.n == 0:
            sent.append(None)
            continue
        mask = np.uint64((1 << s.ell) - 1)
        if s.chooser == me:
            assert isinstance(rot, RotRecv)
            c = np.asarray(x, dtype=np.uint8).reshape(-1)
            if c.size != s.n:
                raise PrivQuantError(f"COT products: group {i} expects {s.n} bits")
            d = c ^ rot.r
            ds.append(d)
            sent.append(d)
        else:
            assert isinstance(rot, RotSend)
            delta = _u(np.asarray(x, dtype=np.int64).reshape(-1)) & mask
            if delta.size != s.n:
                raise PrivQuantError(f"COT products: group {i} expects {s.n} values")
            x0 = _u(key_ring(rot.m0, s.ell))
            x1 = _u(key_ring(rot.m1, s.ell))
            z = (x0 + delta - x1) & mask
            party.send(party.peer, torch.from_numpy(z.view(np.int64)), s.ell, f"{tag}.z{i}")
            sent.append((delta, x0))
    n_d = sum(d.size for d in ds)
    if n_d:
        party.send_bits(party.peer, torch.from_numpy(np.concatenate(ds)), f"{tag}.d{me}")
    out: list[np.ndarray] = [None] * len(specs)  # type: ignore[list-item]
    for i, (s, rot) in enumerate(zip(specs, rots)):
        if s.n and s.chooser == me:
            mask = np.uint64((1 << s.ell) - 1)
            z = _u(party.recv(party.peer, (s.n,), s.ell, f"{tag}.z{i}").numpy())
            k = _u(key_ring(rot.m, s.ell))
            r = rot.r.astype(bool)
            y = np.where(r, k + z, k) & mask
            out[i] = np.where(sent[i].astype(bool), (np.uint64(0) - y) & mask, y).view(np.int64)
    peer_n = sum(s.n for s in specs if s.chooser != me)
    if peer_n:
        d_all = party.recv_bits(party.peer, (peer_n,), f"{tag}.d{party.peer}").numpy().astype(bool)
        pos = 0
        for i, s in enumerate(specs):
            if s.n and s.chooser != me:
                mask = np.uint64((1 << s.ell) - 1)
                delta, x0 = sent[i]
                d = d_all[pos : pos + s.n]
                pos += s.n
                out[i] = (np.where(d, delta + x0, np.uint64(0) - x0) & mask).view(np.int64)
    for i, s in enumerate(specs):
        if s.n == 0:
            out[i] = np.zeros(0, dtype=np.int64)
    return out
