"""Microsoft SEAL (through the ``seal-python`` wheel) for the HE linear layer: contexts, keys,
numpy views of plaintexts and ciphertexts, residue packing, flooding noise.

``seal-python`` binds SEAL's objects but gives no array access to coefficients. It does bind
SEAL's own serialisation (``to_bytes``/``to_string`` and ``load_bytes``/``from_*_str``) with
``compr_mode_type.none``, whose layout is fixed by SEAL (a 16-byte ``SEALHeader`` -- magic
``0xA15E``, header size, version, compression mode, total size -- the object's metadata, then a
nested ``DynArray`` with its own header, an element count and the raw ``uint64`` data: RNS
residues, polynomial-major then prime-major then coefficient). So:

* reading: serialise with ``compr_mode none``, check magic / compression / total size / element
  count, view the trailing ``count * 8`` bytes as ``uint64``;
* writing: take a *template* serialised by SEAL itself for an object of the same kind and level
  (same metadata, same sizes), replace only the trailing data, and let SEAL load it -- SEAL then
  validates it (``is_valid_for``: sizes, ``parms_id``, every residue ``< q_i``) and rejects
  anything malformed, which this module turns into :class:`PeerError` for peer data.

Seeded query ciphertexts (:func:`reseed`, :func:`expand_uniform`): SEAL makes a symmetric
encryption ``(c0, a') = (round(Q m / t) + e - a' s, a')`` with its own random ``a'``, which the
binding can only serialise in full. The client replaces ``a'`` by ``a = SHAKE-256(seed, i)``
(uniform mod each ``q_i`` by rejection sampling) and ``c0`` by ``c0 + (a' - a) s``; the product
is computed by SEAL (NTT, dyadic product with the secret key's NTT form, inverse NTT), only the
final addition mod ``q_i`` in numpy. The result ``(round(Q m/t) + e - a s, a)`` is exactly a
symmetric encryption with uniform part ``a`` and SEAL's fresh error ``e``; sending the seed
instead of ``a`` is SEAL's and Cheetah's own seeded-ciphertext compression.

Besides that addition, the only arithmetic outside SEAL is sampling the flooding polynomial,
which is loaded into SEAL as a ciphertext ``(f, 0)`` and added by SEAL.
"""

from __future__ import annotations

import secrets
import struct

import numpy as np

from privquant.errors import PeerError, PrivQuantError
from privquant.protocols.preprocessing.he.params import HeParams
from privquant.protocols.primitives import packing
from privquant.protocols.primitives.prg import Prg

SEAL_MAGIC = 0xA15E
_HDR = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr_mode, reserved, size


def _seal():
    try:
        import seal
    except ImportError as e:  # pragma: no cover - the dependency is pinned
        raise PrivQuantError(
            "HE linear layers need the 'seal-python' package (pip install seal-python==4.4.0)"
        ) from e
    return seal


def _data_view(buf: bytes, count: int, what: str) -> np.ndarray:
    """The trailing ``count`` uint64 of a SEAL serialisation, after checking its headers."""
    if len(buf) < 16 + 24 + 8 * count:
        raise PrivQuantError(f"SEAL {what}: serialisation too short")
    magic, hsize, _, _, compr, _, size = _HDR.unpack_from(buf, 0)
    if magic != SEAL_MAGIC or hsize != 16 or compr != 0 or size != len(buf):
        raise PrivQuantError(f"SEAL {what}: unexpected serialisation header")
    off = len(buf) - 8 * count
    magic2, _, _, _, compr2, _, _ = _HDR.unpack_from(buf, off - 24)
    (n_elems,) = struct.unpack_from("<Q", buf, off - 8)
    if magic2 != SEAL_MAGIC or compr2 != 0 or n_elems != count:
        raise PrivQuantError(f"SEAL {what}: unexpected data layout")
    return np.frombuffer(buf, dtype=np.uint64, count=count, offset=off)


class Template:
    """A SEAL serialisation of a fixed-size object whose data part is replaced."""

    def __init__(self, buf: bytes, count: int, what: str):
        _data_view(buf, count, what)
        self.prefix = bytes(buf[: len(buf) - 8 * count])
        self.count = count
        self.what = what

    def fill(self, data: np.ndarray) -> bytes:
        a = np.ascontiguousarray(data, dtype=np.uint64).reshape(-1)
        if a.size != self.count:
            raise ValueError(f"{self.what}: {a.size} values, expected {self.count}")
        return self.prefix + a.tobytes()


class Context:
    """One SEAL BFV context (each party makes its own). It depends on ``params``' ring degree,
    plaintext modulus and primes only (:func:`context_key`), never on its flood width."""

    def __init__(self, params: HeParams):
        seal = _seal()
        self.params = params
        p = seal.EncryptionParameters(seal.scheme_type.bfv)
        p.set_poly_modulus_degree(params.n)
        p.set_coeff_modulus(seal.CoeffModulus.Create(params.n, list(params.bits)))
        p.set_plain_modulus(params.t)
        self.ctx = seal.SEALContext(p, True, seal.sec_level_type.tc128)
        if not self.ctx.parameters_set():
            raise PrivQuantError(f"SEAL rejects {params}: {self.ctx.parameter_error_message()}")
        got = tuple(int(m.value()) for m in p.coeff_modulus())
        if got != params.primes:
            raise PrivQuantError("SEAL picked other primes than the cost model assumed")
        self.evaluator = seal.Evaluator(self.ctx)
        self.none = seal.compr_mode_type.none
        n, L = params.n, len(params.data_primes)
        self.first = self.ctx.first_parms_id()
        self.last = self.ctx.last_parms_id()
        self.q = np.array(params.data_primes, dtype=np.uint64)
        # templates from throwaway keys: only the metadata of these serialisations is used
        kg = seal.KeyGenerator(self.ctx)
        enc = seal.Encryptor(self.ctx, kg.secret_key())
        ct = enc.encrypt_symmetric(seal.Plaintext(n))
        self.ct_first = Template(ct.to_string(self.none), 2 * L * n, "ciphertext")
        self.evaluator.mod_switch_to_inplace(ct, self.last)
        self.ct_last = Template(ct.to_string(self.none), 2 * n, "ciphertext")
        self.pk = Template(kg.create_public_key().to_string(), 2 * (L + 1) * n, "public key")
        self.plain = Template(seal.Plaintext(n).to_bytes(self.none), n, "plaintext")
        ptn = self.evaluator.transform_to_ntt(seal.Plaintext(n), self.first)
        self.plain_ntt = Template(ptn.to_bytes(self.none), L * n, "NTT plaintext")

    # -- plaintexts
    def plaintext(self, coeffs: np.ndarray):
        """A plaintext with the given coefficients (already reduced to ``[0, t)``)."""
        return self.ctx.from_plain_str(self.plain.fill(coeffs))

    def coeffs(self, pt) -> np.ndarray:
        """All ``n`` coefficients of a plaintext (SEAL trims high zero coefficients)."""
        k = pt.coeff_count()
        out = np.zeros(self.params.n, dtype=np.uint64)
        out[:k] = _data_view(pt.to_bytes(self.none), k, "plaintext")
        return out

    # -- ciphertexts
    def ct_data(self, ct) -> np.ndarray:
        """(2, L', n) residues of a ciphertext at its level (read-only view)."""
        L = ct.coeff_modulus_size()
        return _data_view(ct.to_string(self.none), 2 * L * self.params.n, "ciphertext").reshape(
            2, L, self.params.n
        )

    def load(self, template: Template, data: np.ndarray, what: str):
        try:
            return self.ctx.from_cipher_str(template.fill(data))
        except (RuntimeError, ValueError) as e:
            raise PeerError(f"invalid {what} from the peer: {e}") from None

    def flood(self, beta: int):
        """A ciphertext ``(f, 0)``, ``f`` uniform on ``[-2^beta, 2^beta)`` per coefficient
        (``beta`` from the layer's plan: parameter sets sharing a context may differ in it)."""
        pow_beta = np.array([pow(2, beta, int(q)) for q in self.q], dtype=np.uint64)
        f = flood_residues(self.params.n, beta, self.q, pow_beta)
        data = np.zeros((2, self.q.size, self.params.n), dtype=np.uint64)
        data[0] = f
        return self.ctx.from_cipher_str(self.ct_first.fill(data))


SEED_BYTES = 32


def expand_uniform(seed: bytes, index: int, primes: tuple[int, ...], n: int) -> np.ndarray:
    """(L, n) residues, uniform mod each prime, from SHAKE-256(seed || index || prime index):
    64-bit words cut to ``bitlen(q)`` bits, kept when ``< q`` (rejection sampling)."""
    out = np.empty((len(primes), n), dtype=np.uint64)
    for j, q in enumerate(primes):
        g = Prg(bytes(seed) + index.to_bytes(8, "little") + j.to_bytes(2, "little"))
        mask, qq = np.uint64((1 << q.bit_length()) - 1), np.uint64(q)
        got, have = [], 0
        while have < n:
            w = np.frombuffer(g.bytes(8 * (n - have) + 64), dtype="<u8") & mask
            w = w[w < qq]
            got.append(w)
            have += w.size
        out[j] = np.concatenate(got)[:n]
    return out


def reseed(ctx: Context, ct, s_ntt, a: np.ndarray) -> np.ndarray:
    """``c0 + (a' - a) s mod q_i`` for a fresh symmetric ciphertext ``ct = (c0, a')``: the
    ``c0`` of the same encryption with uniform part ``a`` (module docstring)."""
    d = ctx.ct_data(ct)
    q = ctx.q.reshape(-1, 1)
    z = np.zeros_like(d)
    z[1] = (d[1] + (q - a)) % q
    x = ctx.ctx.from_cipher_str(ctx.ct_first.fill(z))  # (0, a' - a): not transparent
    ev = ctx.evaluator
    ev.transform_to_ntt_inplace(x)
    ev.multiply_plain_inplace(x, s_ntt)
    ev.transform_from_ntt_inplace(x)
    return (d[0] + ctx.ct_data(x)[1]) % q


def digit_bits(q: np.ndarray) -> int:
    """Horner digit width for reducing mod primes ``q``: ``r * 2^k + digit < 2^64`` while
    ``r < q``, i.e. ``k = 64 - max bitlen(q)`` (at most 16: digits are drawn as uint16)."""
    return min(16, 64 - max(int(x).bit_length() for x in q))


def flood_residues(
    n: int, beta: int, q: np.ndarray, pow_beta: np.ndarray, rand=secrets.token_bytes
) -> np.ndarray:
    """Residues mod each ``q_i`` of ``n`` integers ``u - 2^beta``, ``u`` uniform ``beta+1`` bits
    from the OS CSPRNG: ``u``'s ``k``-bit digits (:func:`digit_bits`, most significant first)
    are folded in by Horner's rule, ``r = (r * 2^k + digit) mod q_i``, all in uint64."""
    k = digit_bits(q)
    bits = beta + 1
    ndig = -(-bits // k)
    digits = np.frombuffer(rand(2 * n * ndig), dtype="<u2").reshape(ndig, n).astype(np.uint64)
    digits &= np.uint64((1 << k) - 1)
    digits[0] &= np.uint64((1 << (bits - k * (ndig - 1))) - 1)
    qq = q.reshape(-1, 1)
    r = np.zeros((q.size, n), dtype=np.uint64)
    shift = np.uint64(k)
    for d in digits:
        r <<= shift
        r |= d
        r %= qq
    r += qq - pow_beta.reshape(-1, 1)
    r %= qq
    return r


def pack_residues(data: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """Pack (..., L, n) residues: for each prime ``i`` all its residues at ``widths[i]`` bits
    (a flat uint8 array)."""
    parts = [
        packing.pack(np.ascontiguousarray(data[..., i, :]).reshape(-1).view(np.int64), w).numpy()
        for i, w in enumerate(widths)
    ]
    return np.concatenate(parts)


def unpack_residues(
    buf: np.ndarray, lead: tuple[int, ...], n: int, primes: tuple[int, ...], what: str
) -> np.ndarray:
    """Inverse of :func:`pack_residues`, shape (*lead, L, n); every residue must be ``< q_i``."""
    cnt = int(np.prod(lead)) * n
    out = np.empty((*lead, len(primes), n), dtype=np.uint64)
    pos = 0
    for i, q in enumerate(primes):
        w = q.bit_length()
        nb = packing.packed_nbytes(cnt, w)
        vals = packing.unpack(buf[pos : pos + nb], cnt, w).numpy().view(np.uint64)
        pos += nb
        if cnt and int(vals.max()) >= q:
            raise PeerError(f"{what}: a residue is not reduced mod its prime")
        out[..., i, :] = vals.reshape(*lead, n)
    if pos != len(buf):
        raise PeerError(f"{what}: {len(buf)} bytes, expected {pos}")
    return out


def residue_bytes(count: int, widths: tuple[int, ...]) -> int:
    return sum(packing.packed_nbytes(count, w) for w in widths)


class ClientKeys:
    """The client's secret keys, one per SEAL context; they never leave this object."""

    def __init__(self):
        self._by_ctx: dict[tuple, tuple] = {}

    def add(self, params: HeParams) -> np.ndarray:
        """Make a key for ``params``'s context; returns its public key's residues, packed."""
        seal = _seal()
        ctx = Context(params)
        kg = seal.KeyGenerator(ctx.ctx)
        sk = kg.secret_key()
        pk = kg.create_public_key()
        enc = seal.Encryptor(ctx.ctx, sk)
        dec = seal.Decryptor(ctx.ctx, sk)
        L = len(params.data_primes)
        s_all = _data_view(sk.to_string(), (L + 1) * params.n, "secret key")
        s_ntt = ctx.ctx.from_plain_str(ctx.plain_ntt.fill(s_all[: L * params.n]))
        self._by_ctx[context_key(params)] = (ctx, enc, dec, sk, s_ntt)
        data = _data_view(pk.to_string(), ctx.pk.count, "public key").reshape(2, -1, params.n)
        return pack_residues(data, params.key_widths)

    def get(self, params: HeParams):
        try:
            ctx, enc, dec, _, s_ntt = self._by_ctx[context_key(params)]
        except KeyError:
            raise PrivQuantError(f"no HE key for {params} (run the HE setup first)") from None
        return ctx, _Encryptor(ctx, enc, s_ntt), dec

    def secret_key_bytes(self, params: HeParams) -> bytes:
        """The serialised secret key, for tests that check it never goes on the wire."""
        return self._by_ctx[context_key(params)][3].to_string()


class _Encryptor:
    """Seeded symmetric encryption: ``encrypt(coeffs, seed, i) -> c0`` (residues (L, n)); the
    uniform part is :func:`expand_uniform` ``(seed, i)``."""

    def __init__(self, ctx: Context, enc, s_ntt):
        self._ctx, self._enc, self._s = ctx, enc, s_ntt

    def encrypt(self, coeffs: np.ndarray, seed: bytes, index: int) -> np.ndarray:
        ctx, prm = self._ctx, self._ctx.params
        ct = self._enc.encrypt_symmetric(ctx.plaintext(coeffs))
        return reseed(ctx, ct, self._s, expand_uniform(seed, index, prm.data_primes, prm.n))


class ServerKeys:
    """The client's public keys as received by the server, one per SEAL context."""

    def __init__(self):
        self._by_ctx: dict[tuple, tuple] = {}

    def add(self, params: HeParams, buf: np.ndarray) -> None:
        seal = _seal()
        ctx = Context(params)
        data = unpack_residues(buf, (2,), params.n, params.primes, "public key")
        try:
            pk = ctx.ctx.from_public_str(ctx.pk.fill(data))
        except (RuntimeError, ValueError) as e:
            raise PeerError(f"invalid public key from the client: {e}") from None
        self._by_ctx[context_key(params)] = (ctx, seal.Encryptor(ctx.ctx, pk))

    def get(self, params: HeParams):
        try:
            return self._by_ctx[context_key(params)]
        except KeyError:
            raise PrivQuantError(
                f"no client public key for {params} (run the HE setup first)"
            ) from None


def context_key(params: HeParams) -> tuple:
    """What fixes a SEAL context (and so a key): the flood width ``beta`` does not."""
    return (params.n, params.ell, params.bits)
