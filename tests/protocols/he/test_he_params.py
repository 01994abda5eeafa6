"""BFV parameters: 128-bit security bound, noise budget inequalities, flood sampling."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.errors import PrivQuantError
from privquant.protocols.preprocessing.he import sealio
from privquant.protocols.preprocessing.he.params import (
    MAX_LOG_Q,
    NOISE_MAX,
    RING_DEGREES,
    choose_params,
    flood_bits,
    noise_before_flood,
    seal_primes,
    special_prime_bits,
)


def test_security_table_is_seals_tc128():
    import seal

    for n in RING_DEGREES:
        assert seal.CoeffModulus.MaxBitCount(n, seal.sec_level_type.tc128) == MAX_LOG_Q[n]


def test_special_prime_is_the_smallest_ntt_prime():
    for n in RING_DEGREES:
        b = special_prime_bits(n)
        (p,) = seal_primes(n, (b,))
        assert p % (2 * n) == 1 and p.bit_length() == b
        # no prime = 1 mod 2n below 2^(b-1)
        assert all(
            not all(k % d for d in range(2, math.isqrt(k) + 1))
            for k in range(2 * n + 1, 1 << (b - 1), 2 * n)
        )


@settings(deadline=None, max_examples=60)
@given(
    ell=st.integers(2, 41),
    fan_in=st.integers(1, 5000),
    mw=st.integers(1, 64),
    w_bits=st.integers(1, 8),
    n_used=st.integers(1, 1 << 22),
)
def test_chosen_parameters_meet_every_bound(ell, fan_in, mw, w_bits, n_used):
    l1 = mw * fan_in * (1 << (w_bits - 1))
    found = [choose_params(n, ell, l1, n_used) for n in RING_DEGREES]
    assert any(p is not None for p in found)
    for p in found:
        if p is None:
            continue
        assert sum(q.bit_length() for q in p.primes) <= MAX_LOG_Q[p.n]
        assert all(q % (2 * p.n) == 1 for q in p.primes) and len(set(p.primes)) == len(p.primes)
        p.check(l1, n_used)
        # the final decryption noise is below q1/(2t) with an eighth to spare
        assert p.noise_bound(l1) <= Fraction(7, 16) * Fraction(p.q1, p.t)
        assert p.b0 == ell + 2 and p.b1 == ell + 3 + p.log_n
        # the data modulus is (nearly) minimal: at most one bit above what the flood needs
        v_int = math.ceil(noise_before_flood(p.n, l1, p.special)) + 1
        q_req = 32 * p.t * (v_int + (1 << p.beta))
        q1_min = (32 * p.t * (p.n + 1)).bit_length()
        assert sum(p.bits[:-1]) <= max(q_req.bit_length(), q1_min) + 1


def test_flood_statistical_distance():
    v_int, n_used = 1000, 5000
    beta = flood_bits(n_used, v_int, 40)
    assert n_used * Fraction(v_int, 1 << (beta + 1)) <= Fraction(1, 1 << 40)
    assert n_used * Fraction(v_int, 1 << beta) > Fraction(1, 1 << 40)  # and it is the smallest


def test_out_of_range_ring_is_refused():
    with pytest.raises(PrivQuantError):
        choose_params(4096, 42, 8, 10)
    with pytest.raises(PrivQuantError):
        choose_params(4096, 1, 8, 10)


def test_noise_bound_terms():
    n, special = 4096, 40961
    v = noise_before_flood(n, 10, special)
    h = Fraction(1, 2)
    assert v == (NOISE_MAX + h) * 10 + h + Fraction(42 * n + 21, special) + (n + 1) * h


@settings(deadline=None, max_examples=30)
@given(beta=st.integers(0, 120), seed=st.integers(0, 2**31))
def test_flood_residues_are_one_integer_in_range(beta, seed):
    primes = seal_primes(4096, (60, 50, 40))
    q = np.array(primes, dtype=np.uint64)
    pw = np.array([pow(2, beta, p) for p in primes], dtype=np.uint64)
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    r = sealio.flood_residues(8, beta, q, pw, rand=lambda k: stream[:k])
    # the same integer from the same random digits, in Python integers
    k = sealio.digit_bits(q)
    assert k == 4  # a 60-bit prime leaves 4 bits of headroom
    ndig = -(-(beta + 1) // k)
    digits = np.frombuffer(stream[: 16 * ndig], dtype="<u2").reshape(ndig, 8) & ((1 << k) - 1)
    for j in range(8):
        u = 0
        for d in range(ndig):
            u = (u << k) | int(digits[d, j])
        u &= (1 << (beta + 1)) - 1
        f = u - (1 << beta)
        assert -(1 << beta) <= f < (1 << beta)
        assert [int(r[i, j]) for i in range(3)] == [f % p for p in primes]
    assert sealio.digit_bits(np.array(seal_primes(4096, (52, 50)), dtype=np.uint64)) == 12


def test_context_flood_uses_the_requested_width():
    """The flood's width comes from the layer's plan (contexts are shared across widths)."""
    prm = choose_params(4096, 16, 1000, 100)
    ctx = sealio.Context(prm)
    q1, q2 = prm.data_primes
    inv = pow(q1, -1, q2)
    for beta in (5, 40, prm.beta):
        d = ctx.ct_data(ctx.flood(beta))
        assert not d[1].any()
        xs = []
        for r1, r2 in zip(d[0, 0].tolist(), d[0, 1].tolist()):
            x = r1 + q1 * (((r2 - r1) * inv) % q2)  # CRT
            xs.append(x - q1 * q2 if x >= (q1 * q2) // 2 else x)
        assert min(xs) >= -(1 << beta) and max(xs) < (1 << beta)
        assert max(abs(x) for x in xs) >= 1 << (beta - 3)
