"""Base OTs: Chou-Orlandi "simplest OT" on the prime-order subgroup of edwards25519 (libsodium).

Source: T. Chou and C. Orlandi, "The Simplest Protocol for Oblivious Transfer", LATINCRYPT 2015
(semi-honest use; the known issues of its UC proof concern malicious receivers only).

Library choice. All curve arithmetic is libsodium's, reached through PyNaCl's ``nacl.bindings``
(``crypto_scalarmult_ed25519_base_noclamp``, ``crypto_scalarmult_ed25519_noclamp``,
``crypto_core_ed25519_add/sub/is_valid_point/scalar_reduce``): libsodium is audited, constant-time
and widely deployed, and these bindings give exactly the group operations CO15 needs (addition,
subtraction, unclamped scalar multiplication) on a group of prime order
``L = 2^252 + 27742317777372353535851937790883648493``. PyNaCl 1.6.2 exposes no Ristretto255
functions, so the protocol works in edwards25519's prime-order subgroup instead: every point
received is checked with ``crypto_core_ed25519_is_valid_point`` (canonical encoding, on the curve,
in the main subgroup, not of small order), which removes the cofactor issues Ristretto would hide.
coincurve (secp256k1) was the alternative; it lacks point subtraction and subgroup-free
encodings would have to be handled by hand. No curve math is written here.

Protocol (random OT, ``n`` instances, sender S, receiver R; ``G`` the base point):

1. S: ``a <- Z_L``, sends ``A = a*G`` (one point for all instances).
2. R: for each ``i``, ``b_i <- Z_L``, sends ``B_i = b_i*G`` if ``c_i = 0`` else ``A + b_i*G``.
3. S: ``k_i^0 = H(i, A, B_i, a*B_i)``, ``k_i^1 = H(i, A, B_i, a*(B_i - A))``;
   R: ``k_i^{c_i} = H(i, A, B_i, b_i*A)``.

``H`` = SHA-256 truncated to 128 bits of ``"PrivQuant/ot/base-co15/v1" || len(sid) || sid ||
sender rank || le32(i) || A || B_i || point``: domain-separated, bound to the session id, the
direction, the instance index and the whole transcript of that instance. The outputs are random
OT keys (no ciphertexts are sent): the OT extension uses them as PRG seeds.

:func:`base_ots` runs both directions at once (each party is the sender of ``n_send`` instances and
the receiver of ``len(choices)`` instances of the other's), as simultaneous exchanges:

* round 1: each sends its ``A`` (256 bits), if it sends any instance;
* round 2: each sends its ``B_i`` (256 bits each).

Cost (phase ``setup``): ``bits = 256*[n_01 > 0] + 256*[n_10 > 0] + 256*(n_01 + n_10)`` and
2 rounds (:func:`cost`), ``n_01`` the instances with P0 as sender, ``n_10`` with P1 as sender.
"""

from __future__ import annotations

import hashlib
import secrets

import nacl.bindings as sodium
import nacl.exceptions
import numpy as np

from privquant.errors import PeerError
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.transport.channel import Party

POINT = 32  # bytes of an edwards25519 point
KEY = 16  # bytes of an OT key
_DOMAIN = b"PrivQuant/ot/base-co15/v1"


def _scalar() -> bytes:
    while True:
        s = sodium.crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))
        if any(s):
            return s


def _check_point(p: bytes, what: str) -> bytes:
    if not sodium.crypto_core_ed25519_is_valid_point(p):
        raise PeerError(f"base OT: the peer sent an invalid curve point ({what})")
    return p


def _mul(s: bytes, p: bytes, what: str) -> bytes:
    try:
        return sodium.crypto_scalarmult_ed25519_noclamp(s, p)
    except nacl.exceptions.CryptoError:
        raise PeerError(f"base OT: degenerate point from the peer ({what})") from None


def _kdf(sid: bytes, sender: int, i: int, a: bytes, b: bytes, point: bytes) -> bytes:
    h = hashlib.sha256(_DOMAIN)
    h.update(len(sid).to_bytes(4, "little") + sid)
    h.update(bytes([sender]) + i.to_bytes(4, "little") + a + b + point)
    return h.digest()[:KEY]


def cost(n_01: int, n_10: int) -> OtCost:
    """Setup cost of :func:`base_ots` with ``n_01`` instances P0->P1 and ``n_10`` P1->P0."""
    bits = POINT * 8 * ((n_01 > 0) + (n_10 > 0) + n_01 + n_10)
    rounds = 2 if (n_01 or n_10) else 0
    return OtCost(setup_bits=bits, setup_rounds=rounds)


def base_ots(
    party: Party, n_send: int, choices: np.ndarray, sid: bytes = b"", tag: str = "ot.base"
) -> tuple[np.ndarray, np.ndarray]:
    """Random base OTs in both directions; both parties call it (see the module docstring).

    ``n_send`` instances with this party as sender, ``choices`` (uint8 0/1) the choice bits of the
    instances with the peer as sender (their number must equal the peer's ``n_send``).
    Returns ``(pairs, keys)``: ``pairs`` (n_send, 2, 16) uint8, the sender's keys ``k_i^0, k_i^1``;
    ``keys`` (len(choices), 16) uint8, the receiver's ``k_i^{c_i}``.
    """
    me, peer = party.rank, party.peer
    choices = np.asarray(choices, dtype=np.uint8).reshape(-1)
    if choices.size and int(choices.max()) > 1:
        raise OtError("base OT choice bits must be 0 or 1")
    n_recv = int(choices.size)
    n_send = int(n_send)
    # round 1: A
    a = _scalar() if n_send else b""
    big_a = sodium.crypto_scalarmult_ed25519_base_noclamp(a) if n_send else b""
    if n_send:
        party.send_raw(peer, np.frombuffer(big_a, dtype=np.uint8).copy(), f"{tag}.A", phase="setup")
    peer_a = b""
    if n_recv:
        peer_a = _check_point(bytes(party.recv_raw(peer, POINT, f"{tag}.A", phase="setup")), "A")
    # round 2: B_i
    bs = [_scalar() for _ in range(n_recv)]
    out_b = bytearray()
    for i in range(n_recv):
        pb = sodium.crypto_scalarmult_ed25519_base_noclamp(bs[i])
        if choices[i]:
            pb = sodium.crypto_core_ed25519_add(peer_a, pb)
        out_b += pb
    if n_recv:
        payload = np.frombuffer(bytes(out_b), dtype=np.uint8).copy()
        party.send_raw(peer, payload, f"{tag}.B", phase="setup")
    pairs = np.zeros((n_send, 2, KEY), dtype=np.uint8)
    if n_send:
        raw = bytes(party.recv_raw(peer, POINT * n_send, f"{tag}.B", phase="setup"))
        for i in range(n_send):
            pb = _check_point(raw[POINT * i : POINT * (i + 1)], f"B[{i}]")
            diff = sodium.crypto_core_ed25519_sub(pb, big_a)
            k0 = _kdf(sid, me, i, big_a, pb, _mul(a, pb, "a*B"))
            k1 = _kdf(sid, me, i, big_a, pb, _mul(a, diff, "a*(B-A)"))
            pairs[i, 0] = np.frombuffer(k0, dtype=np.uint8)
            pairs[i, 1] = np.frombuffer(k1, dtype=np.uint8)
    keys = np.zeros((n_recv, KEY), dtype=np.uint8)
    for i in range(n_recv):
        pb = bytes(out_b[POINT * i : POINT * (i + 1)])
        k = _kdf(sid, peer, i, peer_a, pb, _mul(bs[i], peer_a, "b*A"))
        keys[i] = np.frombuffer(k, dtype=np.uint8)
    return pairs, keys
