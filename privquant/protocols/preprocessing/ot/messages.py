"""From random OT keys to messages: truncation/expansion, chosen-message OT, correlated OT on rings
and the derandomized bit-times-value product.

Sources: D. Beaver, "Precomputing Oblivious Transfer", CRYPTO 1995 (derandomizing random OTs);
ALSZ13 (correlated OT: the sender fixes ``x1 = x0 + delta`` with one correction per OT);
Gilboa, "Two Party RSA Key Generation", CRYPTO 1999 (products from correlated OT).

All functions take the result of :meth:`OtSession.rot` made ahead (offline, random choice bits
``r``), so only the messages below are online. Ring values are int64 numpy arrays in
``[0, 2^ell)``, ``1 <= ell <= 64`` (``ell = 64`` wraps in uint64).

* :func:`key_ring` / :func:`expand_ring`: ``ell``-bit values from a 128-bit key: the key's low 64
  bits (one value), or ``L`` values from ``H(key, (index, block))`` (TCCR, domain ``domain``,
  ``ceil(L/2)`` AES-pairs per OT).
* :func:`chosen_send` / :func:`chosen_recv` (Beaver): R sends ``d = b xor r`` (n bits), S sends
  ``y_beta = m_beta xor K_{beta xor d}`` for beta = 0, 1 (``2*n*L*ell`` bits); R outputs
  ``y_b xor K_r``. Cost online ``n + 2*n*L*ell`` bits, 2 rounds (:func:`chosen_cost`).
* :func:`product_send` / :func:`product_recv`: shares of ``c*delta`` mod ``2^ell`` for the
  receiver's private bit ``c`` and the sender's private vector ``delta`` (n, L), in ONE
  simultaneous round: S sends ``z = K0 + delta - K1`` (correlated OT, ``n*L*ell`` bits) while R
  sends ``d = c xor r`` (``n`` bits). R's ``y = K_r + r*z = K0 + r*delta``; shares of ``r*delta``
  are ``(-K0, y)``; then ``c*delta = r*delta`` if ``d = 0`` and ``delta - r*delta`` if ``d = 1``,
  which both fix locally. Cost online ``n*L*ell + n`` bits, 1 round (:func:`product_cost`).
  Security: ``z`` is masked by the key R does not hold, ``d`` by the random ``r``.
"""

from __future__ import annotations

import numpy as np
import torch

from privquant.protocols.preprocessing.ot.aes import DOMAIN_ROT, FixedKeyAes, tccr
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import RotRecv, RotSend
from privquant.protocols.transport.channel import Party


def _mask(ell: int) -> np.uint64:
    return np.uint64((1 << ell) - 1) if ell < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)


def _check_ell(ell: int) -> int:
    if not 1 <= int(ell) <= 64:
        raise OtError(f"message width must be 1..64 bits, got {ell}")
    return int(ell)


def key_ring(keys: np.ndarray, ell: int) -> np.ndarray:
    """(n, 16) keys -> (n,) ``ell``-bit values (the key's low 64 bits, masked); as int64."""
    ell = _check_ell(ell)
    v = np.ascontiguousarray(keys[:, :8]).view("<u8").reshape(-1) & _mask(ell)
    return v.view(np.int64)


def expand_ring(
    keys: np.ndarray, index0, length: int, ell: int, domain: int = DOMAIN_ROT, sub0: int = 0
) -> np.ndarray:
    """(n, 16) keys -> (n, length) ``ell``-bit values ``H(key_i, (index_i, sub0 + block))``.

    ``index0`` is an int (OT ``i`` has index ``index0 + i``) or an (n,) array of indices."""
    ell = _check_ell(ell)
    n = keys.shape[0]
    nblk = (length + 1) // 2
    if n == 0 or length == 0:
        return np.zeros((n, length), dtype=np.int64)
    idx = np.asarray(index0, dtype=np.uint64)
    idx = idx + np.arange(n, dtype=np.uint64) if idx.ndim == 0 else idx.reshape(n)
    x = np.repeat(np.ascontiguousarray(keys, dtype=np.uint8), nblk, axis=0)
    tw = np.empty((n * nblk, 2), dtype="<u8")
    tw[:, 0] = np.repeat(idx, nblk)
    tw[:, 1] = (np.uint64(domain) << np.uint64(32)) | (
        np.tile(np.arange(nblk, dtype=np.uint64), n) + np.uint64(sub0)
    )
    h = tccr(FixedKeyAes(), x, tw.view(np.uint8).reshape(-1, 16))
    v = h.view("<u8").reshape(n, 2 * nblk)[:, :length] & _mask(ell)
    return np.ascontiguousarray(v).view(np.int64)


def _keys_values(keys: np.ndarray, index0: int, length: int | None, ell: int) -> np.ndarray:
    """(n,) values if ``length`` is None, else (n, length)."""
    if length is None:
        return key_ring(keys, ell)
    return expand_ring(keys, index0, length, ell)


def _wire_ring(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64).reshape(-1))


def _add(a, b, ell):
    return ((a.view(np.uint64) + b.view(np.uint64)) & _mask(ell)).view(np.int64)


def _sub(a, b, ell):
    return ((a.view(np.uint64) - b.view(np.uint64)) & _mask(ell)).view(np.int64)


def _send_values(party: Party, x: np.ndarray, ell: int, tag: str, phase: str) -> None:
    if x.size == 0:
        return
    if ell == 64:
        party.send_raw(party.peer, x.astype("<i8").view(np.uint8).reshape(-1), tag, phase=phase)
    else:
        party.send(party.peer, _wire_ring(x), ell, tag, phase=phase)


def _recv_values(party: Party, shape, ell: int, tag: str, phase: str) -> np.ndarray:
    n = int(np.prod(shape))
    if n == 0:
        return np.zeros(shape, dtype=np.int64)
    if ell == 64:
        raw = party.recv_raw(party.peer, 8 * n, tag, phase=phase)
        return raw.view("<i8").reshape(shape).copy()
    return party.recv(party.peer, (n,), ell, tag, phase=phase).numpy().reshape(shape)


def _send_bits(party: Party, b: np.ndarray, tag: str, phase: str) -> None:
    if b.size:
        party.send_bits(party.peer, torch.from_numpy(np.ascontiguousarray(b, np.uint8)), tag, phase)


def _recv_bits(party: Party, n: int, tag: str, phase: str) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    return party.recv_bits(party.peer, (n,), tag, phase).numpy().astype(np.uint8)


# ------------------------------------------------------------------------------ chosen OT
def chosen_cost(n: int, ell: int, length: int | None = None, phase: str = "online") -> OtCost:
    """Online cost of :func:`chosen_send`/:func:`chosen_recv` for ``n`` OTs."""
    lv = 1 if length is None else length
    bits = n + 2 * n * lv * ell
    rounds = (1 if n else 0) + (1 if n * lv else 0)
    return _ph(phase, bits, rounds)


def _ph(phase: str, bits: int, rounds: int) -> OtCost:
    return OtCost(
        **{f"{phase}_bits": bits, f"{phase}_rounds": rounds if bits else 0}  # type: ignore[arg-type]
    )


def chosen_send(
    party: Party,
    rot: RotSend,
    m0: np.ndarray,
    m1: np.ndarray,
    ell: int,
    tag: str = "ot.chosen",
    phase: str = "online",
) -> None:
    """Sender of ``n`` chosen-message OTs: ``m0``, ``m1`` (n,) or (n, L) ``ell``-bit values."""
    n = len(rot)
    m0, m1 = np.asarray(m0, dtype=np.int64), np.asarray(m1, dtype=np.int64)
    if m0.shape != m1.shape or m0.shape[0] != n:
        raise OtError(f"chosen OT: messages must have {n} rows and equal shapes")
    length = None if m0.ndim == 1 else m0.shape[1]
    d = _recv_bits(party, n, f"{tag}.d", phase).astype(bool)
    k0 = _keys_values(rot.m0, rot.index0, length, ell)
    k1 = _keys_values(rot.m1, rot.index0, length, ell)
    if length is not None:
        d = d[:, None]
    y0 = m0 ^ np.where(d, k1, k0)
    y1 = m1 ^ np.where(d, k0, k1)
    _send_values(party, np.stack([y0, y1]), ell, f"{tag}.y", phase)


def chosen_recv(
    party: Party,
    rot: RotRecv,
    b: np.ndarray,
    ell: int,
    length: int | None = None,
    tag: str = "ot.chosen",
    phase: str = "online",
) -> np.ndarray:
    """Receiver with choice bits ``b`` (n,): returns ``m_b`` ((n,) or (n, length))."""
    n = len(rot)
    b = np.asarray(b, dtype=np.uint8).reshape(-1)
    if b.size != n:
        raise OtError(f"chosen OT: expected {n} choice bits")
    _send_bits(party, b ^ rot.r, f"{tag}.d", phase)
    shape = (2, n) if length is None else (2, n, length)
    y = _recv_values(party, shape, ell, f"{tag}.y", phase)
    k = _keys_values(rot.m, rot.index0, length, ell)
    sel = b.astype(bool) if length is None else b.astype(bool)[:, None]
    return np.where(sel, y[1], y[0]) ^ k


# ------------------------------------------------------------------------------ c * delta
def product_cost(n: int, ell: int, length: int | None = None, phase: str = "online") -> OtCost:
    """Online cost of :func:`product_send`/:func:`product_recv`: ``n*L*ell + n`` bits, 1 round."""
    lv = 1 if length is None else length
    return _ph(phase, n * lv * ell + n, 1)


def products(
    party: Party,
    sends: list[tuple[RotSend, np.ndarray]],
    recvs: list[tuple[RotRecv, np.ndarray, int | None]],
    ell: int,
    tag: str = "ot.prod",
    phase: str = "online",
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Several bit-times-value products in ONE round, this party being the value holder (sender)
    of ``sends`` = ``[(rot, delta)]`` and the bit holder (receiver) of ``recvs`` =
    ``[(rot, c, length)]`` (``length`` None for (n,) values). Every message goes out before any is
    awaited. Returns this party's shares ``(for sends, for recvs)``; cost: the sum of
    :func:`product_cost`, 1 round."""
    # tags name the value holder's rank and the product's position in its list
    me, peer = party.rank, party.peer
    # 1. everything this party sends
    sent = []
    for j, (rot, delta) in enumerate(sends):
        n = len(rot)
        delta = np.asarray(delta, dtype=np.int64)
        if delta.shape[0] != n:
            raise OtError(f"product: delta must have {n} rows")
        length = None if delta.ndim == 1 else delta.shape[1]
        k0 = _keys_values(rot.m0, rot.index0, length, ell)
        k1 = _keys_values(rot.m1, rot.index0, length, ell)
        _send_values(party, _sub(_add(k0, delta, ell), k1, ell), ell, f"{tag}.{me}.{j}.z", phase)
        sent.append((delta, k0, length))
    ds = []
    for j, (rot, c, _length) in enumerate(recvs):
        c = np.asarray(c, dtype=np.uint8).reshape(-1)
        if c.size != len(rot):
            raise OtError(f"product: expected {len(rot)} bits")
        d = c ^ rot.r
        _send_bits(party, d, f"{tag}.{peer}.{j}.d", phase)
        ds.append(d)
    # 2. everything this party receives
    # (the peer sent its z messages first, then its d messages: receive in that order)
    out_r = []
    for j, ((rot, _c, length), d) in enumerate(zip(recvs, ds)):
        n = len(rot)
        shape = (n,) if length is None else (n, length)
        z = _recv_values(party, shape, ell, f"{tag}.{peer}.{j}.z", phase)
        k = _keys_values(rot.m, rot.index0, length, ell)
        r = rot.r.astype(bool) if length is None else rot.r.astype(bool)[:, None]
        y = np.where(r, _add(k, z, ell), k)  # share of r*delta
        dd = d.astype(bool) if length is None else d.astype(bool)[:, None]
        out_r.append(np.where(dd, _sub(np.zeros_like(y), y, ell), y))
    out_s = []
    for j, ((rot, _), (delta, k0, length)) in enumerate(zip(sends, sent)):
        d = _recv_bits(party, len(rot), f"{tag}.{me}.{j}.d", phase).astype(bool)
        if length is not None:
            d = d[:, None]
        s0 = _sub(np.zeros_like(k0), k0, ell)  # share of r*delta
        out_s.append(np.where(d, _sub(delta, s0, ell), s0))
    return out_s, out_r


def product_send(
    party: Party, rot: RotSend, delta: np.ndarray, ell: int, tag: str = "ot.prod", phase="online"
) -> np.ndarray:
    """Sender's share of ``c*delta`` (``delta`` (n,) or (n, L) ``ell``-bit values)."""
    return products(party, [(rot, delta)], [], ell, tag, phase)[0][0]


def product_recv(
    party: Party,
    rot: RotRecv,
    c: np.ndarray,
    ell: int,
    length: int | None = None,
    tag: str = "ot.prod",
    phase="online",
) -> np.ndarray:
    """Receiver's share of ``c*delta`` for its private bits ``c`` (n,)."""
    return products(party, [], [(rot, c, length)], ell, tag, phase)[1][0]
