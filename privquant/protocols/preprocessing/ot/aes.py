"""Fixed-key AES hashing and keyed AES-CTR streams: the symmetric crypto of the OT layer.

All AES comes from the ``cryptography`` package (OpenSSL, AES-NI); nothing here implements a cipher.

* :class:`FixedKeyAes` -- the public random permutation ``pi = AES_K`` with ``K`` a fixed,
  nothing-up-my-sleeve key (``SHA-256("PrivQuant/ot/fixed-key-aes/v1")[:16]``), applied to many
  16-byte blocks in one call (ECB over a numpy buffer, no Python loop per block).
* :func:`tccr` -- the tweakable circular correlation-robust hash of Guo, Katz, Wang and Yu
  ("Efficient and secure multiparty computation from fixed-key block ciphers", IEEE S&P 2020,
  section 7.4): ``H(x, i) = pi(pi(x) xor i) xor pi(x)``. It turns the IKNP/SoftSpokenOT
  correlation ``q = t xor r*Delta`` into random OT messages: ``H(q, i)`` and ``H(q xor Delta, i)``
  look independent and random to anyone not holding ``Delta``, as long as every tweak ``i`` is used
  once per session and direction. :func:`tweaks` builds tweaks
  ``le64(index) || le32(sub) || le32(domain)``: ``index`` is the OT's number in its session and
  direction, ``sub`` numbers the 128-bit blocks of a long message, ``domain`` separates uses.
* :class:`CtrStreams` -- one AES-128-CTR key stream per seed (the PRG ``G`` of the OT extension):
  key = the 16-byte seed, initial counter block = ``le32(domain) || 0^12``. The streams keep their
  position, so a session expands a seed once per batch and never reuses a key-stream byte.

Speed (one core of the 2-core EPYC this project is developed on): AES-ECB about 5 GB/s and AES-CTR
about 8 GB/s through ``update_into`` into preallocated buffers; allocating the output per call is
10x slower, which is why every function here takes or reuses buffers.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
FIXED_KEY = hashlib.sha256(b"PrivQuant/ot/fixed-key-aes/v1").digest()[:16]

# tweak domains (the high 32 bits of a TCCR tweak); every use of tccr in the package has its own
DOMAIN_ROT = 1  # random OT messages from the extension (sub = 128-bit block index of the message)
DOMAIN_NOFN = 2  # 1-out-of-N keys combined from m random OTs
DOMAIN_GILBOA = 3  # per-use expansion of fixed-choice OTs (linear_correlation)


def _slack(nbytes: int) -> np.ndarray:
    """A uint8 buffer of ``nbytes`` plus the 15 bytes of slack ``update_into`` asks for."""
    return np.empty(nbytes + BLOCK, dtype=np.uint8)


class FixedKeyAes:
    """``pi``: AES-128 under the public fixed key, applied blockwise to (n, 16) uint8 arrays.

    One instance per thread (the underlying OpenSSL context is not shared between threads).
    """

    def __init__(self, key: bytes = FIXED_KEY):
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        self._buf = _slack(0)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``pi`` of every row of ``x`` ((n, 16) uint8, C-contiguous); returns (n, 16) uint8."""
        x = np.ascontiguousarray(x, dtype=np.uint8)
        nbytes = x.size
        if out is None:
            out = np.empty(x.shape, dtype=np.uint8)
        if nbytes == 0:
            return out
        if self._buf.size < nbytes + BLOCK:
            self._buf = _slack(nbytes)
        self._enc.update_into(x.reshape(-1), self._buf[: nbytes + BLOCK - 1])
        np.copyto(out.reshape(-1), self._buf[:nbytes])
        return out

    def into_slack(self, x: np.ndarray, buf: np.ndarray) -> np.ndarray:
        """``pi(x)`` written into ``buf`` (a :func:`_slack` buffer); returns the (n, 16) view."""
        nbytes = x.size
        if nbytes:
            self._enc.update_into(x.reshape(-1), buf[: nbytes + BLOCK - 1])
        return buf[:nbytes].reshape(x.shape)


def tweaks(index0: int, n: int, sub: int = 0, domain: int = DOMAIN_ROT) -> np.ndarray:
    """Tweaks for OTs ``index0 .. index0+n-1``: (n, 16) uint8, see the module docstring."""
    t = np.empty((n, 2), dtype="<u8")
    t[:, 0] = np.arange(index0, index0 + n, dtype=np.uint64)
    t[:, 1] = np.uint64((int(domain) << 32) | int(sub))
    return t.view(np.uint8).reshape(n, BLOCK)


def tccr(pi: FixedKeyAes, x: np.ndarray, tw: np.ndarray, out: np.ndarray | None = None):
    """``H(x, tw) = pi(pi(x) xor tw) xor pi(x)`` row by row ((n, 16) uint8 each)."""
    n = x.shape[0]
    a = pi(x)  # pi(x)
    b = np.bitwise_xor(a, tw)
    c = pi(b, out=b)
    if out is None:
        out = c
    np.bitwise_xor(c, a, out=out)
    return out.reshape(n, BLOCK)


class TccrHasher:
    """:func:`tccr` with reusable buffers, for the hot path of the extension (chunks of rows)."""

    def __init__(self):
        self.pi = FixedKeyAes()
        self._a = _slack(0)
        self._b = _slack(0)
        self._c = _slack(0)

    def _ensure(self, nbytes: int) -> None:
        if self._a.size < nbytes + BLOCK:
            self._a, self._b, self._c = _slack(nbytes), _slack(nbytes), _slack(nbytes)

    def hash_pair(
        self, x: np.ndarray, delta: np.ndarray | None, tw: np.ndarray, out0, out1=None
    ) -> None:
        """``out0 = H(x, tw)`` and, if ``delta`` is given, ``out1 = H(x xor delta, tw)``."""
        nbytes = x.size
        self._ensure(nbytes)
        pi = self.pi
        a = pi.into_slack(x, self._a)
        b = self._b[:nbytes].reshape(x.shape)
        np.bitwise_xor(a, tw, out=b)
        c = pi.into_slack(b, self._c)
        np.bitwise_xor(c, a, out=out0)
        if delta is None:
            return
        np.bitwise_xor(x, delta, out=b)
        a = pi.into_slack(b, self._a)
        np.bitwise_xor(a, tw, out=b)
        c = pi.into_slack(b, self._c)
        np.bitwise_xor(c, a, out=out1)


class CtrStreams:
    """AES-128-CTR key streams, one per 16-byte seed, that remember their position."""

    def __init__(self, seeds: np.ndarray, domain: int = 0):
        seeds = np.ascontiguousarray(seeds, dtype=np.uint8).reshape(-1, BLOCK)
        iv = int(domain).to_bytes(4, "little") + bytes(12)
        self._enc = [Cipher(algorithms.AES(bytes(s)), modes.CTR(iv)).encryptor() for s in seeds]
        self._zeros = np.zeros(0, dtype=np.uint8)
        self._flat = np.empty(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._enc)

    def next(self, nbytes: int, rows=None) -> np.ndarray:
        """The next ``nbytes`` bytes of each stream in ``rows`` (default: all, in order), as a
        (len(rows), nbytes) uint8 array written in place by OpenSSL (no copy).

        The array is a view of a buffer reused by the next call: consume it first."""
        rows = range(len(self._enc)) if rows is None else rows
        nrows = len(rows)
        need = nrows * nbytes + BLOCK
        if self._flat.size < need:
            self._flat = np.empty(need, dtype=np.uint8)
        flat = self._flat
        if self._zeros.size < nbytes:
            self._zeros = np.zeros(nbytes, dtype=np.uint8)
        z = self._zeros[:nbytes]
        if nbytes:
            for i, r in enumerate(rows):
                # CTR writes exactly nbytes; the 15 bytes of slack update_into demands overlap
                # the next row (written afterwards) or the buffer's tail
                self._enc[r].update_into(z, flat[i * nbytes : (i + 1) * nbytes + BLOCK - 1])
        return flat[: nrows * nbytes].reshape(nrows, nbytes)


def ctr_expand(seed: bytes, nbytes: int, domain: int = 0) -> bytes:
    """``nbytes`` of AES-128-CTR key stream of a single ``seed`` (one-off expansions)."""
    iv = int(domain).to_bytes(4, "little") + bytes(12)
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(iv)).encryptor().update(bytes(nbytes))
