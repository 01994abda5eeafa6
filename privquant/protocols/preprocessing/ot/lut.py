"""Secret table lookup: 1-out-of-2^m OT with a private index and a private table.

Source: the lookup leaves of CrypTFlow2/SCI's millionaire protocol (Rathee et al., CCS 2020,
section 3) and of SiRNN's lookup-table activations (S&P 2021), with the index derandomization of
Beaver (1995) so that the OT itself is made offline.

P_a (index holder) has ``v`` in [0, 2^m) per element; P_b (table holder) has a table
``T: [0, 2^m) -> {0,1}^t`` (``kind="xor"``) or ``Z_2^t`` (``kind="add"``) per element, ``t <= 62``.
They end with XOR (or additive) shares of ``T(v)``.

* offline (:func:`offline`): one random 1-of-2^m OT per element (:mod:`.nofn`) with random index
  ``i`` at P_a and all keys ``R_j`` at P_b;
* online (:func:`index_online` / :func:`table_online`): P_a sends ``s = v xor i`` (``m`` bits);
  P_b draws its output share ``rho`` and sends ``T'_j = T(j xor s) xor R_j xor rho``
  (``add``: ``T(j xor s) - rho + R_j``), ``2^m*t`` bits; P_a outputs ``T'_i xor R_i``
  (``T'_i - R_i``) ``= T(v) xor rho``. Cost ``n*(m + 2^m*t)`` bits, 2 rounds (:func:`cost`).
* index known offline (``known_index=True``): the OT uses P_a's real index as chosen choices
  (one more OT row each, :func:`.nofn.cost` with ``chosen``), so ``s = 0`` is not sent: online
  ``n*2^m*t`` bits, 1 round.

Security: ``s`` is ``v`` masked by the uniform ``i``; every ``T'_j`` except ``j = i`` is masked by
a key P_a lacks, and ``T'_i`` by ``rho``.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from privquant.protocols.preprocessing.ot import nofn
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import OtSession
from privquant.protocols.transport.channel import Party

MAX_T = 62
KINDS = ("xor", "add")


def check_t(t: int) -> int:
    if not 1 <= int(t) <= MAX_T:
        raise OtError(f"table entries must have 1..{MAX_T} bits, got {t}")
    return int(t)


def online_cost(n: int, m: int, t: int, known_index: bool = False) -> OtCost:
    bits = n * ((0 if known_index else m) + (1 << m) * t)
    rounds = 0 if n == 0 else (1 if known_index else 2)
    return OtCost(online_bits=bits, online_rounds=rounds)


def cost(k: int, n: int, m: int, t: int, known_index: bool = False) -> OtCost:
    """Offline (random 1-of-2^m OTs) then online cost of ``n`` lookups."""
    return nofn.cost(k, n, m, chosen=known_index).then(online_cost(n, m, t, known_index))


def offline(
    session: OtSession,
    index_holder: int,
    n: int,
    m: int,
    index: np.ndarray | None = None,
    *,
    known_index: bool = False,
    t: int | None = None,
    phase: str = "offline",
) -> nofn.NofNSend | nofn.NofNRecv:
    """The 1-of-2^m OTs of ``n`` lookups (both parties call it). With ``known_index`` (both
    parties say so) the index holder passes its real ``index`` now. With the entry width ``t``
    the keys are hashed now rather than online."""
    if known_index and session.party.rank == index_holder and index is None:
        raise OtError("lookup with a known index: the index holder must pass it offline")
    pre = nofn.offline(
        session,
        1 - index_holder,
        n,
        m,
        index if known_index else None,
        chosen=known_index,
        phase=phase,
    )
    if t is not None and isinstance(pre, nofn.NofNSend):
        pre.keys(check_t(t))
    elif t is not None:
        pre.key(check_t(t))
    return pre


def _rand(n: int, width: int) -> np.ndarray:
    v = np.frombuffer(secrets.token_bytes(8 * n), dtype="<u8").copy()
    return v & np.uint64((1 << width) - 1)


def _mask(width: int) -> np.uint64:
    return np.uint64((1 << width) - 1)


def index_send(
    party: Party,
    pre: nofn.NofNRecv,
    v: np.ndarray | torch.Tensor,
    known_index: bool = False,
    tag: str = "ot.lut",
) -> None:
    """Index holder, first half: send ``s = v xor i`` (nothing if the index was known offline).
    Split from :func:`index_recv` so that several lookups share their rounds."""
    m, n = pre.m, len(pre)
    v = np.asarray(v, dtype=np.int64).reshape(-1)
    if v.size != n or (n and (v.min() < 0 or v.max() >= 1 << m)):
        raise OtError(f"lookup: expected {n} indices in [0, {1 << m})")
    i = pre.index
    if known_index:
        if not np.array_equal(i, v):
            raise OtError("lookup: the index differs from the one fixed offline")
    elif n:
        party.send(party.peer, torch.from_numpy(v ^ i), m, f"{tag}.s", phase="online")


def index_recv(
    party: Party, pre: nofn.NofNRecv, t: int, kind: str = "xor", tag: str = "ot.lut"
) -> np.ndarray:
    """Index holder, second half: receive the masked table, return its share (n,) int64."""
    t = check_t(t)
    m, n = pre.m, len(pre)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    tp = party.recv(party.peer, (n, 1 << m), t, f"{tag}.T", phase="online").numpy()
    ti = tp[np.arange(n), pre.index].astype(np.uint64)
    ri = pre.key(t)
    out = ti ^ ri if kind == "xor" else (ti - ri) & _mask(t)
    return out.view(np.int64)


def index_online(
    party: Party,
    pre: nofn.NofNRecv,
    v: np.ndarray | torch.Tensor,
    t: int,
    kind: str = "xor",
    known_index: bool = False,
    tag: str = "ot.lut",
) -> np.ndarray:
    """Index holder: returns its share (n,) int64 of ``T(v)``."""
    index_send(party, pre, v, known_index, tag)
    return index_recv(party, pre, t, kind, tag)


def table_online(
    party: Party,
    pre: nofn.NofNSend,
    table: np.ndarray | torch.Tensor,
    t: int,
    kind: str = "xor",
    known_index: bool = False,
    tag: str = "ot.lut",
) -> np.ndarray:
    """Table holder with ``table`` (n, 2^m) of ``t``-bit values: returns its share ``rho``."""
    t = check_t(t)
    if kind not in KINDS:
        raise OtError(f"lookup kind must be one of {KINDS}")
    m, n = pre.m, len(pre)
    big_n = 1 << m
    table = np.asarray(table, dtype=np.int64)
    if table.shape != (n, big_n):
        raise OtError(f"lookup: table must have shape {(n, big_n)}, got {table.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    tab = table.view(np.uint64) & _mask(t)
    if known_index:
        s = np.zeros(n, dtype=np.int64)
    else:
        s = party.recv(party.peer, (n,), m, f"{tag}.s", phase="online").numpy()
    rot = tab[np.arange(n)[:, None], np.arange(big_n)[None, :] ^ s[:, None]]
    rho = _rand(n, t)
    r = pre.keys(t)
    if kind == "xor":
        tp = rot ^ r ^ rho[:, None]
    else:
        tp = (rot - rho[:, None] + r) & _mask(t)
    party.send(party.peer, torch.from_numpy(tp.view(np.int64)), t, f"{tag}.T", phase="online")
    return rho.view(np.int64)
