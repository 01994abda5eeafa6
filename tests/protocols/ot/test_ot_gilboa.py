"""Dealer-free linear-layer correlation by Gilboa multiplication (weights as OT choice bits):
shares of lin(W, A) mod 2^ell, bit for bit against ring_lin, with measured == declared cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from otlib import run_pair, total_cost

from privquant.protocols.linear import LinearSig, ring_lin
from privquant.protocols.preprocessing.ot import gilboa
from privquant.protocols.preprocessing.ot.extension import KS, setup_cost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import SERVER


def _weights(g, shape, bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64)
    flat = w.reshape(-1)
    flat[: min(2, flat.numel())] = torch.tensor([lo, hi][: min(2, flat.numel())])
    return w


def _run(k, sig, bits, w, a_list, phase="offline"):
    def f(p, s):
        with p.scope("setup"):
            st_ = gilboa.setup(s, sig, bits, w if p.rank == SERVER else None)
        outs = []
        for i, a in enumerate(a_list):
            with p.scope(f"use{i}"):
                outs.append(
                    gilboa.linear_correlation(s, st_, None if p.rank == SERVER else a, phase=phase)
                )
        return outs

    return run_pair(k, f, f, scope="all")


def _check(r, k, sig, bits, w, a_list):
    from otlib import scope_cost

    for i, a in enumerate(a_list):
        y = ring.reduce(r.results[0][i] + r.results[1][i], sig.ell)
        assert tuple(y.shape) == tuple(sig.y_shape)
        assert torch.equal(y, ring_lin(sig, w, a))
        assert scope_cost(r, f"use{i}") == gilboa.use_cost(sig, bits)
    assert scope_cost(r, "setup") == gilboa.setup_cost(k, sig, bits)
    assert (
        total_cost(r).setup_bits
        == setup_cost(k).setup_bits + gilboa.setup_cost(k, sig, bits).setup_bits
    )


@settings(max_examples=10, deadline=None)
@given(
    k=st.sampled_from(KS),
    n=st.integers(1, 2),
    c=st.sampled_from([1, 2, 4]),
    hw=st.integers(3, 6),
    o_mult=st.integers(1, 2),
    ks=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    depthwise=st.booleans(),
    bits=st.sampled_from([2, 4, 8]),
    ell=st.sampled_from([12, 24, 37, 62]),
    seed=st.integers(0, 1000),
)
def test_conv2d(k, n, c, hw, o_mult, ks, stride, pad, depthwise, bits, ell, seed):
    groups = c if depthwise else 1
    o = c * o_mult if depthwise else 2 * o_mult
    sig = LinearSig(
        "conv2d",
        (n, c, hw, hw),
        (o, c // groups, ks, ks),
        ell,
        (stride, stride),
        (pad, pad),
        groups,
    )
    g = torch.Generator().manual_seed(seed)
    w = _weights(g, sig.w_shape, bits)
    a_list = [ring.uniform(g, sig.x_shape, ell) for _ in range(2)]
    a_list[1].reshape(-1)[:2] = torch.tensor([0, (1 << ell) - 1])
    r, _ = _run(k, sig, bits, w, a_list)
    _check(r, k, sig, bits, w, a_list)


@pytest.mark.parametrize("k", [1, 8])
def test_linear_and_reuse(k):
    sig = LinearSig("linear", (3, 10), (5, 10), 20)
    g = torch.Generator().manual_seed(3)
    w = _weights(g, sig.w_shape, 4)
    a_list = [ring.uniform(g, sig.x_shape, 20) for _ in range(3)]
    r, _ = _run(k, sig, 4, w, a_list)
    _check(r, k, sig, 4, w, a_list)
    # shares of different uses are fresh: P1's shares for equal inputs differ
    r2, _ = _run(k, sig, 4, w, [a_list[0], a_list[0]])
    assert not torch.equal(r2.results[1][0], r2.results[1][1])


def test_elementwise_products():
    e, m, ell, bits = 6, 5, 16, 8
    sig = gilboa.elementwise_sig(e, m, ell)
    g = torch.Generator().manual_seed(9)
    w = _weights(g, (e,), bits)
    a = ring.uniform(g, (e, m), ell)
    r, _ = _run(2, sig, bits, w.reshape(e, 1, 1, 1), [a.reshape(1, e, m, 1)])
    y = ring.reduce(r.results[0][0] + r.results[1][0], ell).reshape(e, m)
    assert torch.equal(y, ring.reduce(w[:, None] * a, ell))
    assert gilboa.use_cost(sig, bits).offline_bits == e * m * (bits * ell - bits * (bits - 1) // 2)


def test_cost_formula_value():
    sig = LinearSig("conv2d", (1, 2, 4, 4), (3, 2, 3, 3), 16, (1, 1), (1, 1))
    e, m = 3 * 2 * 9, 16
    assert gilboa.use_cost(sig, 4).offline_bits == e * m * (16 + 15 + 14 + 13)
    assert gilboa.setup_cost(2, sig, 4).setup_bits == 64 * e * 4


def test_weights_out_of_range_rejected():
    with pytest.raises(ValueError, match="signed 4-bit"):
        gilboa.weight_bits(torch.tensor([8]), 4)
    np.testing.assert_array_equal(
        gilboa.weight_bits(torch.tensor([-8, 7, -1]), 4), [[0, 0, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]]
    )
