"""OT extension in both directions: SoftSpokenOT with parameter k (k = 1 is IKNP), lambda = 128.

Sources: Y. Ishai, J. Kilian, K. Nissim, E. Petrank, "Extending Oblivious Transfers Efficiently",
CRYPTO 2003 (IKNP); G. Asharov, Y. Lindell, T. Schneider, M. Zohner, "More Efficient Oblivious
Transfer and Extensions for Faster Secure Computation", CCS 2013 (ALSZ13: random OT without
ciphertexts, PRG-expanded base seeds, correlated OT); L. Roy, "SoftSpokenOT: Quieter OT Extension
from Small-Field Silent VOLE in the Minicrypt Model", CRYPTO 2022 (semi-honest variant: no
consistency check). Hash: TCCR of Guo-Katz-Wang-Yu (S&P 2020), see :mod:`.aes`.

Roles per direction: the *sender* S (holds ``Delta`` in {0,1}^128) and the *receiver* R (gets the
choice bits). ``B = 128/k`` blocks; block ``b`` owns bits ``b*k .. b*k+k-1`` of ``Delta``, read as
``alpha_b`` in [0, 2^k).

Setup (once per session and direction, phase ``setup``; :meth:`OtSession.setup` does both
directions at once):

1. 128 random base OTs with R as base sender (:mod:`.baseot`); S chooses ``not alpha_{b,d}``;
2. ``k > 1``: R sends the GGM corrections (:mod:`.ggm`), after which R knows every leaf seed
   ``s_{b,x}`` (x in [0, 2^k)) and S every leaf but ``s_{b,alpha_b}``. ``k = 1``: the base-OT
   keys are the leaves.
3. Each known leaf keys an AES-128-CTR stream ``G(s_{b,x})`` (:class:`.aes.CtrStreams`) that
   continues across batches.

Extension of ``n`` OTs (one batch; any number of batches per session), with ``G_{b,x}`` the next
``ceil(n/8)`` bytes of stream ``(b, x)``:

* R: ``u_b = XOR_x G_{b,x}`` (n bits) and ``v_b = XOR_x x*G_{b,x}`` (k rows of n bits: row ``p``
  XORs the ``G_{b,x}`` whose ``x`` has bit ``p`` set), computed by pairwise folding (2^k row XORs);
* S: ``w_b = XOR_{x != alpha_b} (x xor alpha_b)*G_{b,x} = v_b xor alpha_b*u_b`` (small-field VOLE);
* subspace VOLE with the repetition code: the choice vector is ``r = u_0`` (random choices) or the
  receiver's chosen bits; R sends ``c_b = u_b xor r`` for ``b = 1..B-1`` (random) or ``b = 0..B-1``
  (chosen), S sets ``q_b = w_b xor alpha_b*c_b`` (``c_0 = 0`` for random choices);
* stacking the blocks: ``q = t xor r*Delta`` with ``t = (v_0, ..., v_{B-1})``; both transpose
  (:mod:`.bitmatrix`) to one 128-bit row per OT.

Outputs per OT ``i`` (global index ``j`` = OTs of this direction so far + i): correlated OT
(:meth:`OtSession.cot`): S gets ``q_i``, R gets ``r_i, t_i = q_i xor r_i*Delta``; random OT
(:meth:`OtSession.rot`): S gets ``m0_i = H(q_i, j)``, ``m1_i = H(q_i xor Delta, j)``, R gets
``r_i, m_{r_i} = H(t_i, j)``, ``H`` the TCCR hash.

Cost of one batch (:func:`extend_cost`): ``(B - 1 + chosen) * n`` bits, R to S, one message,
1 round, in the caller's phase (default ``offline``). Setup of both directions
(:func:`setup_cost`): the base OTs (2 rounds, ``2*(256 + 128*256)`` bits) plus, for ``k > 1``, one
simultaneous GGM exchange of ``2*B*(k-1)*256`` bits (1 more round). Computation per OT: R expands
``B*2^k`` streams (``2^k/k`` times IKNP's 2 per block), S ``B*(2^k-1)``;
k = 2 costs IKNP's AES and half its bits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from privquant.protocols.preprocessing.ot import baseot, ggm
from privquant.protocols.preprocessing.ot.aes import DOMAIN_ROT, CtrStreams, TccrHasher, tweaks
from privquant.protocols.preprocessing.ot.bitmatrix import transpose
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.transport.channel import Party

LAMBDA = 128
KS = (1, 2, 4, 8)
DOMAIN_EXT = 5  # CTR-stream domain of the extension PRG
HASH_CHUNK = 16384  # rows per hashing chunk (256 KiB per operand)


def check_k(k: int) -> int:
    if k not in KS:
        raise OtError(f"SoftSpokenOT parameter k must be one of {KS}, got {k!r}")
    return int(k)


def blocks(k: int) -> int:
    return LAMBDA // check_k(k)


def extend_cost(k: int, n: int, chosen: bool = False, phase: str = "offline") -> OtCost:
    """One batch of ``n`` OTs in one direction: ``(128/k - 1 + chosen) * n`` bits, 1 round."""
    bits = (blocks(k) - 1 + int(bool(chosen))) * int(n)
    return _phase_cost(phase, bits, 1 if bits else 0)


def setup_cost(k: int) -> OtCost:
    """Setup of both directions of a session: base OTs (+ GGM corrections for k > 1)."""
    c = baseot.cost(LAMBDA, LAMBDA)
    if check_k(k) > 1:
        c = c.then(OtCost(setup_bits=2 * ggm.correction_bits(blocks(k), k), setup_rounds=1))
    return c


def _phase_cost(phase: str, bits: int, rounds: int) -> OtCost:
    if phase == "online":
        return OtCost(online_bits=bits, online_rounds=rounds)
    if phase == "offline":
        return OtCost(offline_bits=bits, offline_rounds=rounds)
    if phase == "setup":
        return OtCost(setup_bits=bits, setup_rounds=rounds)
    raise OtError(f"unknown phase {phase!r}")


# ------------------------------------------------------------------------------ results
@dataclass
class CotSend:
    """Sender's side of ``n`` correlated OTs: ``q`` (n, 16) uint8, ``delta`` (16,) uint8."""

    q: np.ndarray
    delta: np.ndarray
    index0: int


@dataclass
class CotRecv:
    """Receiver's side: choice bits ``r`` (n,) uint8 and ``t = q xor r*delta`` (n, 16)."""

    r: np.ndarray
    t: np.ndarray
    index0: int


@dataclass
class RotSend:
    """Sender's random-OT keys ``m0``, ``m1`` (n, 16) uint8; ``index0`` numbers the first OT."""

    m0: np.ndarray
    m1: np.ndarray
    index0: int

    def __len__(self) -> int:
        return self.m0.shape[0]


@dataclass
class RotRecv:
    """Receiver's random-OT result: choice bits ``r`` (n,) uint8 and keys ``m = m_r`` (n, 16)."""

    r: np.ndarray
    m: np.ndarray
    index0: int

    def __len__(self) -> int:
        return self.m.shape[0]


# ------------------------------------------------------------------------------ one direction
class _SenderDir:
    def __init__(self, k: int, delta: np.ndarray, leaves: np.ndarray):
        self.k = k
        self.delta = delta  # (16,) uint8
        bits = np.unpackbits(delta, bitorder="little")  # bit j of Delta
        self.delta_bits = bits
        bt = blocks(k)
        self.alpha = (bits.reshape(bt, k).astype(np.int64) << np.arange(k)).sum(1)
        # stream order inside block b: leaves x = y xor alpha_b for y = 1 .. 2^k - 1
        y = np.arange(1, 1 << k)
        order = leaves[np.arange(bt)[:, None], y[None, :] ^ self.alpha[:, None]]
        self.streams = CtrStreams(order.reshape(-1, 16), domain=DOMAIN_EXT)
        self.count = 0


class _ReceiverDir:
    def __init__(self, k: int, leaves: np.ndarray):
        self.k = k
        self.leaves = leaves  # (B, 2^k, 16): part of the receiver's view (security tests)
        self.streams = CtrStreams(leaves.reshape(-1, 16), domain=DOMAIN_EXT)
        self.count = 0


def _chunk_bytes(k: int) -> int:
    """Column bytes per expansion chunk (keeps a group's rows near 2 MiB, calls amortized)."""
    return 32768 if k >= 8 else 65536


def _fold(h: np.ndarray, k: int, v_out: np.ndarray, want_u: bool):
    """``h`` (G, 2^k, cb): rows indexed by x. Writes ``v_out[:, p] = XOR_{x: bit p} h[:, x]``
    ((G, k, cb)) and returns ``XOR_x h[:, x]`` if ``want_u``."""
    a = h
    for p in range(k):
        g, w, cb = a.shape
        a2 = a.reshape(g, w // 2, 2, cb)
        odd = a2[:, :, 1]
        if w == 2:
            v_out[:, p] = odd[:, 0]
        else:
            np.bitwise_xor.reduce(odd, axis=1, out=v_out[:, p])
        if p < k - 1 or want_u:
            a = np.bitwise_xor(a2[:, :, 0], odd)
    return a[:, 0] if want_u else None


def _expand_receiver(d: _ReceiverDir, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """R's ``t`` (128, nb) and ``u`` (B, nb) for the next ``nb`` column bytes."""
    k = d.k
    bt = blocks(k)
    t = np.empty((bt, k, nb), dtype=np.uint8)
    u = np.empty((bt, nb), dtype=np.uint8)
    cbmax = _chunk_bytes(k)
    group = max(1, (1 << 21) // ((1 << k) * cbmax))  # blocks per group
    for c0 in range(0, nb, cbmax):
        c1 = min(nb, c0 + cbmax)
        cb = c1 - c0
        for g0 in range(0, bt, group):
            g1 = min(bt, g0 + group)
            rows = range(g0 << k, g1 << k)
            h = d.streams.next(cb, rows).reshape(g1 - g0, 1 << k, cb)
            v = np.empty((g1 - g0, k, cb), dtype=np.uint8)
            u[g0:g1, c0:c1] = _fold(h, k, v, True)
            t[g0:g1, :, c0:c1] = v
    return t.reshape(LAMBDA, nb), u


def _expand_sender(d: _SenderDir, nb: int) -> np.ndarray:
    """S's ``w`` (128, nb) for the next ``nb`` column bytes (before the subspace correction)."""
    k = d.k
    bt = blocks(k)
    w = np.empty((bt, k, nb), dtype=np.uint8)
    cbmax = _chunk_bytes(k)
    group = max(1, (1 << 21) // ((1 << k) * cbmax))
    per = (1 << k) - 1
    for c0 in range(0, nb, cbmax):
        c1 = min(nb, c0 + cbmax)
        cb = c1 - c0
        for g0 in range(0, bt, group):
            g1 = min(bt, g0 + group)
            h = np.empty((g1 - g0, 1 << k, cb), dtype=np.uint8)
            h[:, 0] = 0  # the punctured leaf: coefficient 0 in every row of w
            h[:, 1:] = d.streams.next(cb, range(g0 * per, g1 * per)).reshape(g1 - g0, per, cb)
            v = np.empty((g1 - g0, k, cb), dtype=np.uint8)
            _fold(h, k, v, False)
            w[g0:g1, :, c0:c1] = v
    return w.reshape(LAMBDA, nb)


def _send_rows(party: Party, rows: np.ndarray, n: int, tag: str, phase: str) -> None:
    """Send the first ``n`` bits of each row: exactly ``rows * n`` logical bits."""
    if rows.shape[0] == 0 or n == 0:
        return
    if n % 8 == 0:
        party.send_raw(party.peer, np.ascontiguousarray(rows), tag, phase=phase)
    else:
        bits = np.unpackbits(rows, axis=1, count=n, bitorder="little")
        party.send_bits(party.peer, torch.from_numpy(bits.reshape(-1)), tag, phase=phase)


def _recv_rows(party: Party, nrows: int, n: int, tag: str, phase: str) -> np.ndarray:
    nb = (n + 7) // 8
    if nrows == 0 or n == 0:
        return np.zeros((nrows, nb), dtype=np.uint8)
    if n % 8 == 0:
        return party.recv_raw(party.peer, nrows * nb, tag, phase=phase).reshape(nrows, nb)
    bits = party.recv_bits(party.peer, (nrows, n), tag, phase=phase).numpy()
    return np.packbits(bits, axis=1, bitorder="little")


# ------------------------------------------------------------------------------ the session
class OtSession:
    """OT extension between P0 and P1 in both directions for one session.

    ``session = OtSession(party, k)``; ``session.setup()`` once (both parties); then any number of
    ``session.cot/rot(sender, n, ...)`` calls, made by both parties in the same order with the same
    ``sender`` rank and ``n``. Not thread-safe: one session per party and thread.
    """

    def __init__(self, party: Party, k: int = 2, sid: bytes = b""):
        if party.rank not in (0, 1):
            raise OtError("OT sessions run between P0 and P1")
        self.party = party
        self.k = check_k(k)
        self.sid = bytes(sid)
        self._send: _SenderDir | None = None  # this party as OT sender
        self._recv: _ReceiverDir | None = None  # this party as OT receiver
        self._hasher = TccrHasher()
        self._base_pairs: np.ndarray | None = None
        self._base_keys: np.ndarray | None = None

    # -- setup
    def setup(self, tag: str = "ot.setup") -> None:
        """Base OTs and seed trees for both directions (phase ``setup``; :func:`setup_cost`)."""
        k, bt, party = self.k, blocks(self.k), self.party
        delta = np.frombuffer(secrets.token_bytes(16), dtype=np.uint8).copy()
        dbits = np.unpackbits(delta, bitorder="little").reshape(bt, k)
        # base-OT choice at tree b, depth d (1..k): not alpha_{b,d} = not (Delta bit b*k + k - d)
        choices = 1 - dbits[:, ::-1]
        sid = self.sid + b"|k=" + bytes([k])
        pairs, keys = baseot.base_ots(party, LAMBDA, choices.reshape(-1), sid, tag=f"{tag}.base")
        pairs = pairs.reshape(bt, k, 2, 16)
        keys = keys.reshape(bt, k, 16)
        leaves_r, corr = ggm.holder(pairs, k)
        if k > 1:
            party.send_raw(party.peer, corr.reshape(-1), f"{tag}.ggm", phase="setup")
            peer_corr = party.recv_raw(party.peer, corr.size, f"{tag}.ggm", phase="setup")
            peer_corr = peer_corr.reshape(bt, k - 1, 2, 16)
        else:
            peer_corr = np.zeros((bt, 0, 2, 16), dtype=np.uint8)
        # kept for the security tests (the view of each party); never sent anywhere
        self._base_pairs, self._base_keys = pairs, keys
        alpha = (dbits.astype(np.int64) << np.arange(k)).sum(1)
        leaves_s = ggm.puncturer(keys, alpha, peer_corr, k)
        self._recv = _ReceiverDir(k, leaves_r)
        self._send = _SenderDir(k, delta, leaves_s)

    def _dirs(self):
        if self._send is None or self._recv is None:
            raise OtError("OtSession.setup() must run before extending OTs")
        return self._send, self._recv

    # -- correlated OT (the raw Delta-correlation)
    def cot(
        self,
        sender: int,
        n: int,
        choices: np.ndarray | None = None,
        *,
        chosen: bool = False,
        phase: str = "offline",
        tag: str = "ot.ext",
    ) -> CotSend | CotRecv:
        """``n`` correlated OTs with ``sender`` as OT sender (both parties call it).

        ``chosen``: the receiver passes its ``choices`` (uint8 0/1, length n) and sends one more
        row (:func:`extend_cost`); otherwise the choices are random and returned to it.
        """
        sd, rd = self._dirs()
        n = int(n)
        if n < 0:
            raise OtError("the number of OTs must be >= 0")
        nb = (n + 7) // 8
        bt = blocks(self.k)
        first = 0 if chosen else 1
        if self.party.rank == sender:
            w = _expand_sender(sd, nb)
            c = _recv_rows(self.party, bt - first, n, tag, phase)
            wb = w.reshape(bt, self.k, nb)
            for b in range(first, bt):
                for p in range(self.k):
                    if sd.delta_bits[b * self.k + p]:
                        np.bitwise_xor(wb[b, p], c[b - first], out=wb[b, p])
            q = transpose(w)[:n]
            out = CotSend(q, sd.delta, sd.count)
            sd.count += n
            return out
        t, u = _expand_receiver(rd, nb)
        if chosen:
            if choices is None:
                raise OtError("chosen-choice OT needs the receiver's choice bits")
            r = np.asarray(choices, dtype=np.uint8).reshape(-1)
            if r.size != n or (n and int(r.max()) > 1):
                raise OtError(f"expected {n} choice bits (0/1)")
            rbytes = np.packbits(r, bitorder="little")
        else:
            rbytes = u[0].copy()
            if n % 8:
                rbytes[-1] &= (1 << (n % 8)) - 1
            r = np.unpackbits(rbytes, count=n, bitorder="little")
        c = np.bitwise_xor(u[first:], rbytes[None, :])
        _send_rows(self.party, c, n, tag, phase)
        tt = transpose(t)[:n]
        out = CotRecv(r, tt, rd.count)
        rd.count += n
        return out

    # -- random OT
    def rot(
        self,
        sender: int,
        n: int,
        choices: np.ndarray | None = None,
        *,
        chosen: bool = False,
        phase: str = "offline",
        tag: str = "ot.ext",
    ) -> RotSend | RotRecv:
        """``n`` random OTs (128-bit keys); same calling rules and cost as :meth:`cot`."""
        res = self.cot(sender, n, choices, chosen=chosen, phase=phase, tag=tag)
        h = self._hasher
        if isinstance(res, CotSend):
            m0 = np.empty_like(res.q)
            m1 = np.empty_like(res.q)
            for s in range(0, n, HASH_CHUNK):
                e = min(n, s + HASH_CHUNK)
                tw = tweaks(res.index0 + s, e - s, 0, DOMAIN_ROT)
                h.hash_pair(res.q[s:e], res.delta, tw, m0[s:e], m1[s:e])
            return RotSend(m0, m1, res.index0)
        m = np.empty_like(res.t)
        for s in range(0, n, HASH_CHUNK):
            e = min(n, s + HASH_CHUNK)
            tw = tweaks(res.index0 + s, e - s, 0, DOMAIN_ROT)
            h.hash_pair(res.t[s:e], None, tw, m[s:e])
        return RotRecv(res.r, m, res.index0)

    def batch(self, requests: list[OtRequest], phase: str = "offline", tag: str = "ot.b") -> list:
        """Several extensions in one round (both parties pass the same list of
        :class:`OtRequest`, the receiver's choices filled in at the receiver only).

        This party first runs every request in which it is the receiver (it only sends), then
        those in which it is the sender (it only receives), so requests of both directions share
        one round. Results come back in request order. Cost: the sum of :func:`extend_cost`,
        1 round."""
        me = self.party.rank
        order = [i for i, r in enumerate(requests) if r.sender != me]
        order += [i for i, r in enumerate(requests) if r.sender == me]
        out: list = [None] * len(requests)
        for i in order:
            r = requests[i]
            fn = self.cot if r.kind == "cot" else self.rot
            out[i] = fn(r.sender, r.n, r.choices, chosen=r.chosen, phase=phase, tag=f"{tag}.{i}")
        return out


@dataclass
class OtRequest:
    """One extension request for :meth:`OtSession.batch`: ``kind`` ``"rot"`` or ``"cot"``."""

    sender: int
    n: int
    chosen: bool = False
    choices: np.ndarray | None = None
    kind: str = "rot"

    def cost(self, k: int, phase: str = "offline") -> OtCost:
        return extend_cost(k, self.n, self.chosen, phase)


__all__ = [
    "KS",
    "LAMBDA",
    "CotRecv",
    "CotSend",
    "OtRequest",
    "OtSession",
    "RotRecv",
    "RotSend",
    "blocks",
    "extend_cost",
    "setup_cost",
]
