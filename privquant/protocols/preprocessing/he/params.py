"""BFV parameters for the HE linear layer: security table, noise budget, flooding, compression.

Symbols (all public): ``n`` ring degree (the ``N`` of the papers), ``t = 2^ell`` plaintext modulus,
``q_1 .. q_L`` the data primes (``q_1`` first: the one the response is switched down to), ``p`` the
special prime SEAL keeps last (key level only), ``Q = q_1 * ... * q_L``, ``sigma`` the statistical
security parameter of the noise flooding, ``l1`` an upper bound on ``||K||_1`` summed over the
weight polynomials that meet in one response (``M_w * K * 2^(b_w - 1)``, see ``layout``),
``n_used`` the number of coefficients the client receives in one layer (``|y|``).

Security (128-bit, HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1 for
uniform ternary secrets and error sigma = 3.2 -- SEAL's key and error distributions): the whole
modulus ``Q * p`` has at most :data:`MAX_LOG_Q` bits, ``109`` at ``n = 4096``, ``218`` at ``8192``,
``438`` at ``16384``. SEAL checks the same table (``sec_level_type.tc128``) when the context is
made, so a parameter set that breaks it cannot even be instantiated.

Noise (worst case, so decryption is exact, not just likely):

* SEAL's error sampler is a centred binomial over 21 bit pairs (or, in Gaussian builds, a normal
  clipped at ``6 * 3.2``): every error coefficient has ``|e| <= B_e = 21`` (:data:`NOISE_MAX`).
  SEAL 4 BFV encodes ``m`` as ``round(Q m / t)``, so a fresh symmetric ciphertext satisfies
  ``c0 + c1 s = (Q/t) m + v`` over the rationals mod ``Q`` with ``|v| <= 21 + 1/2``.
* Plaintext product with a weight polynomial ``w`` (SEAL lifts plaintext coefficients to the
  centred range, so a b_w-bit signed weight stays small): ``(Q/t) m w = (Q/t) [m w]_t + Q k``, the
  ``Q k`` vanishes mod ``Q``, the noise becomes ``v w`` with ``||v w|| <= 21.5 ||w||_1``. Summed
  over the channel blocks of one response: ``<= 21.5 * l1``.
* ``sub_plain(S)`` rounds ``Q S / t``: ``+ 1/2``.
* Re-randomisation by a public-key encryption of zero (SEAL encrypts at the key level ``Q p``
  and divides by ``p`` with rounding): ``|e u + e_1 + e_2 s| / p + (1 + ||s||_1)/2
  <= (42 n + 21)/p + (n + 1)/2`` (``u``, ``s`` ternary, so ``||.||_1 <= n``).
  Total before flooding: ``V = 21.5 l1 + 1/2 + (42 n + 21)/p + (n + 1)/2``; ``V_int = ceil(V) + 1``
  bounds the integer noise.
* Flooding: the server adds ``f`` uniform on ``[-2^beta, 2^beta)`` to ``c0`` (every coefficient,
  independent) with ``2^(beta + 1) >= 2^sigma * n_used * V_int``. For one coefficient the
  statistical distance between ``f + e`` and ``f`` is ``|e| / 2^(beta + 1)``; over the ``n_used``
  coefficients the client decrypts it is at most ``n_used * V_int / 2^(beta+1) <= 2^-sigma``.
* Modulus switching ``Q -> q_1`` (SEAL divides and rounds, once per dropped prime): the noise
  becomes ``(V + 2^beta) q_1 / Q + (n + 1)/2`` (the second term covers every rounding step).
* Compression of the response: the low ``d0`` bits of ``c0`` and ``d1`` bits of ``c1`` are dropped
  and the client puts back the midpoint: errors ``<= 2^(d0-1)`` and ``<= 2^(d1-1) * ||s||_1 <=
  2^(d1-1) n``.

The client decrypts correctly when the final noise is ``< q_1 / (2t)`` (SEAL's invariant noise
``< 1/2``). The budget is split as ``q_1/(16t)`` for the switched noise (half for
``(V + 2^beta) q_1/Q``, i.e. ``Q >= 32 t (V_int + 2^beta)``, half for the rounding, i.e.
``q_1 >= 32 t (n + 1)``), ``q_1/(4t)`` for the ``c0`` truncation and ``q_1/(8t)`` for ``c1``:
total ``<= 7 q_1 / (16 t)``, an eighth of the bound left as slack for SEAL's RNS decryption.
Hence (``t = 2^ell``)::

    d0 = floor(log2(q_1 / t)) - 1           b0 = bitlen(q_1) - d0 = ell + 2 bits per c0 coeff
    d1 = floor(log2(q_1 / (n t))) - 2       b1 = bitlen(q_1) - d1 = ell + 3 + log2 n per c1 coeff

Everything here is exact integer/rational arithmetic on public values; only the prime values come
from SEAL (``CoeffModulus.Create``, deterministic: the largest primes ``= 1 mod 2n`` below each
bit size), cached, no HE is executed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, cached_property

from privquant.errors import PrivQuantError

RING_DEGREES = (4096, 8192, 16384)
MAX_LOG_Q = {4096: 109, 8192: 218, 16384: 438}  # HE standard, 128-bit classical, ternary secret
NOISE_MAX = 21  # |e| of SEAL's error sampler (CBD over 21 bit pairs; Gaussian builds clip at 19.2)
SIGMA = 40  # statistical security parameter of the flooding (per layer)
MAX_PRIME_BITS = 60  # SEAL's limit on one coefficient prime
MIN_ELL, MAX_ELL = 2, 41


@cache
def seal_primes(n: int, bits: tuple[int, ...]) -> tuple[int, ...]:
    """The primes SEAL's ``CoeffModulus.Create(n, bits)`` picks (``= 1 mod 2n``, in order)."""
    import seal

    return tuple(int(m.value()) for m in seal.CoeffModulus.Create(n, list(bits)))


@cache
def special_prime_bits(n: int) -> int:
    """Smallest bit size holding a prime ``= 1 mod 2n`` (SEAL's special prime: only the public
    key lives there, so it is kept minimal to leave the security budget to the data primes)."""
    b = (2 * n).bit_length() + 1
    while True:
        try:
            seal_primes(n, (b,))
            return b
        except Exception:  # SEAL: no prime of this size
            b += 1


def noise_before_flood(n: int, l1: int, special: int) -> Fraction:
    """``V``: bound on the noise of one response before flooding (module docstring)."""
    h = Fraction(1, 2)
    return (NOISE_MAX + h) * l1 + h + Fraction(2 * NOISE_MAX * n + NOISE_MAX, special) + (n + 1) * h


def flood_bits(n_used: int, v_int: int, sigma: int = SIGMA) -> int:
    """``beta`` with ``2^(beta+1) >= 2^sigma * n_used * v_int``: flood uniform on
    ``[-2^beta, 2^beta)`` gives statistical distance ``<= 2^-sigma`` over ``n_used`` coeffs."""
    need = (n_used * v_int) << sigma
    return max(0, (need - 1).bit_length() - 1)


@dataclass(frozen=True)
class HeParams:
    """One BFV parameter set: ring degree, plaintext modulus ``2^ell``, prime bit sizes (data
    primes with the response prime first, then the special prime), flood width ``beta``."""

    n: int
    ell: int
    bits: tuple[int, ...]
    beta: int

    @cached_property
    def primes(self) -> tuple[int, ...]:
        return seal_primes(self.n, self.bits)

    @property
    def data_primes(self) -> tuple[int, ...]:
        return self.primes[:-1]

    @property
    def special(self) -> int:
        return self.primes[-1]

    @property
    def q1(self) -> int:
        return self.primes[0]

    @property
    def t(self) -> int:
        return 1 << self.ell

    @property
    def log_n(self) -> int:
        return self.n.bit_length() - 1

    @property
    def data_widths(self) -> tuple[int, ...]:
        """Wire width of a residue mod each data prime: ``bitlen(q_i)``."""
        return tuple(q.bit_length() for q in self.data_primes)

    @property
    def key_widths(self) -> tuple[int, ...]:
        return tuple(q.bit_length() for q in self.primes)

    @property
    def d0(self) -> int:
        """Low bits of ``c0`` dropped in the response: ``2^(d0-1) <= q_1/(4t)``."""
        return max(0, (self.q1 // self.t).bit_length() - 2)

    @property
    def d1(self) -> int:
        """Low bits of ``c1`` dropped: ``2^(d1-1) * n <= q_1/(8t)``."""
        return max(0, (self.q1 // (self.t * self.n)).bit_length() - 3)

    @property
    def b0(self) -> int:
        return self.q1.bit_length() - self.d0

    @property
    def b1(self) -> int:
        return self.q1.bit_length() - self.d1

    @property
    def query_ct_bits(self) -> int:
        """One fresh ciphertext on the wire: ``c0`` only, ``n sum_i bitlen(q_i)`` (its uniform
        ``c1`` is expanded from the query's seed)."""
        return self.n * sum(self.data_widths)

    @property
    def pk_bits(self) -> int:
        """The public key (key level, both polynomials): ``2 n sum bitlen(primes)``."""
        return 2 * self.n * sum(self.key_widths)

    @property
    def response_c1_bits(self) -> int:
        return self.n * self.b1

    def check(self, l1: int, n_used: int, sigma: int = SIGMA) -> None:
        """Re-verify every inequality of the module docstring with the actual primes."""
        n, t, q1 = self.n, self.t, self.q1
        if sum(self.bits) > MAX_LOG_Q[n] or sum(q.bit_length() for q in self.primes) > MAX_LOG_Q[n]:
            raise AssertionError("modulus exceeds the 128-bit security bound")
        v_int = math.ceil(noise_before_flood(n, l1, self.special)) + 1
        if (1 << (self.beta + 1)) < ((n_used * v_int) << sigma):
            raise AssertionError("flood too narrow")
        q = math.prod(self.data_primes)
        if q < 32 * t * (v_int + (1 << self.beta)):
            raise AssertionError("data modulus too small for the flood")
        if q1 < 32 * t * (n + 1):
            raise AssertionError("response prime too small for the switching noise")
        if self.d0 and (1 << (self.d0 + 1)) * t > q1:
            raise AssertionError("c0 truncation too coarse")
        if self.d1 and (1 << (self.d1 + 2)) * t * n > q1:
            raise AssertionError("c1 truncation too coarse")

    def noise_bound(self, l1: int) -> Fraction:
        """Bound on the client's final decryption noise (must be ``< q_1 / (2t)``)."""
        v = noise_before_flood(self.n, l1, self.special)
        sw = (v + (1 << self.beta)) * Fraction(self.q1, math.prod(self.data_primes)) + self.n + 1
        c0 = Fraction(1 << self.d0, 2) if self.d0 else 0
        c1 = Fraction(1 << self.d1, 2) * self.n if self.d1 else 0
        return sw + c0 + c1


def _split(total: int, first_min: int) -> list[int] | None:
    """Bit sizes of the data primes: ``total`` bits in primes of <= 60 bits, first >= first_min."""
    if first_min > MAX_PRIME_BITS or total < first_min:
        return None
    k = -(-total // MAX_PRIME_BITS)
    sizes = [total // k + (1 if i < total % k else 0) for i in range(k)]
    if sizes[0] >= first_min:
        return sizes
    rest = total - first_min
    if rest == 0:
        return [first_min]
    k = -(-rest // MAX_PRIME_BITS)
    return [first_min] + [rest // k + (1 if i < rest % k else 0) for i in range(k)]


@cache
def choose_params(n: int, ell: int, l1: int, n_used: int, sigma: int = SIGMA) -> HeParams | None:
    """The smallest data modulus (fewest bits) at ring degree ``n`` meeting every bound of the
    module docstring, or ``None`` when ``n`` is too small to be secure with it."""
    if not MIN_ELL <= ell <= MAX_ELL:
        raise PrivQuantError(
            f"HE linear layers support rings of {MIN_ELL}..{MAX_ELL} bits, not {ell}"
        )
    t = 1 << ell
    sp_bits = special_prime_bits(n)
    special = seal_primes(n, (sp_bits,))[0]
    v_int = math.ceil(noise_before_flood(n, l1, special)) + 1
    beta = flood_bits(n_used, v_int, sigma)
    q_req = 32 * t * (v_int + (1 << beta))
    q1_min = (32 * t * (n + 1)).bit_length()
    total = max(q_req.bit_length(), q1_min)
    while total + sp_bits <= MAX_LOG_Q[n]:
        sizes = _split(total, q1_min)
        if sizes is None:
            return None
        try:
            primes = seal_primes(n, (*sizes, sp_bits))
        except Exception:  # SEAL found no distinct primes of these sizes
            total += 1
            continue
        if (
            math.prod(primes[:-1]) >= q_req
            and primes[0] >= 32 * t * (n + 1)
            and len(set(primes)) == len(primes)
        ):
            p = HeParams(n, ell, (*sizes, sp_bits), beta)
            p.check(l1, n_used, sigma)
            return p
        total += 1
    return None
