"""Linear layers with server-known weights: exact mod 2^ell, cost, setup uniformity."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, share

from privquant.errors import PrivQuantError
from privquant.program import Op, apply_op
from privquant.protocols.harness import run_protocol
from privquant.protocols.linear import LINEAR, MAX_FLOAT_LIMBS, LinearSig, ring_lin
from privquant.protocols.preprocessing.dealer import Seeds, make_provider
from privquant.protocols.primitives import ring
from privquant.protocols.transport.thread import simulate

ELLS = st.one_of(st.integers(2, 16), st.sampled_from([20, 24, 31, 40, 53, 62]))


@st.composite
def conv_cases(draw):
    n = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 1, 2, "dw"]))
    cin = draw(st.integers(1, 3)) * (2 if groups == 2 else 1)
    if groups == "dw":
        groups = cin
        cout = cin * draw(st.integers(1, 2))
    else:
        cout = draw(st.integers(1, 3)) * groups
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    h = draw(st.integers(max(1, kh - 2 * padding[0]), 6))
    w = draw(st.integers(max(1, kw - 2 * padding[1]), 6))
    return n, cin, cout, groups, (kh, kw), stride, padding, h, w


def _weights(g, shape, wbits):
    m = (1 << (wbits - 1)) - 1
    return torch.randint(-m, m + 1, shape, generator=g)


@settings(deadline=None, max_examples=150)
@given(
    case=conv_cases(),
    ell=ELLS,
    wbits=st.integers(2, 8),
    seed=st.integers(0, 2**31),
    dealer=st.sampled_from(["simulated", "thread"]),
)
def test_conv2d_exact_and_cost(case, ell, wbits, seed, dealer):
    n, cin, cout, groups, k, stride, padding, h, w = case
    g = torch.Generator().manual_seed(seed)
    wt = _weights(g, (cout, cin // groups, *k), wbits)
    bias = torch.randint(-1000, 1000, (cout,), generator=g)
    x = ring.uniform(g, (n, cin, h, w), ell)  # any ring element; the result is mod 2^ell
    op = Op(
        "conv2d",
        "conv",
        ["x"],
        "y",
        {"stride": list(stride), "padding": list(padding), "groups": groups},
        {"weight": wt.numpy(), "bias": bias.numpy()},
    )
    sig = LinearSig("conv2d", tuple(x.shape), tuple(wt.shape), ell, stride, padding, groups, "conv")
    x0, x1 = share(x, ell, seed)
    run = run_protocol(
        LINEAR,
        sig,
        (x0,),
        (x1,),
        {"weight": wt.numpy(), "bias": bias.numpy()},
        dealer=dealer,
        master=seed,
    )
    y = ring.reconstruct(run.out0, run.out1, ell, signed=False)
    assert tuple(y.shape) == sig.y_shape
    assert torch.equal(y, ring.reduce(apply_op(op, [ring.to_signed(x, ell)], None), ell))
    assert_cost(run, LINEAR.cost(sig))


@settings(deadline=None, max_examples=100)
@given(
    n=st.integers(1, 3),
    k=st.integers(1, 40),
    o=st.integers(1, 12),
    ell=ELLS,
    wbits=st.integers(2, 8),
    seed=st.integers(0, 2**31),
    dealer=st.sampled_from(["simulated", "thread"]),
)
def test_linear_exact_and_cost(n, k, o, ell, wbits, seed, dealer):
    g = torch.Generator().manual_seed(seed)
    wt = _weights(g, (o, k), wbits)
    bias = torch.randint(-1000, 1000, (o,), generator=g)
    half = 1 << (ell - 1)
    x = torch.randint(-half, half, (n, k), generator=g)
    x[0, 0] = -half  # ring boundary
    op = Op("linear", "fc", ["x"], "y", {}, {"weight": wt.numpy(), "bias": bias.numpy()})
    sig = LinearSig("linear", (n, k), (o, k), ell, key="fc")
    x0, x1 = share(x, ell, seed)
    run = run_protocol(
        LINEAR,
        sig,
        (x0,),
        (x1,),
        {"weight": wt.numpy(), "bias": bias.numpy()},
        dealer=dealer,
        master=seed,
    )
    y = ring.reconstruct(run.out0, run.out1, ell)
    assert torch.equal(y, ring.to_signed(apply_op(op, [x], None), ell))
    assert_cost(run, LINEAR.cost(sig))
    c = LINEAR.cost(sig)
    assert (c.online_bits, c.offline_bits, c.setup_bits, c.rounds) == (
        n * k * ell,
        n * o * ell,
        o * k * ell,
        1,
    )


@pytest.mark.parametrize("ell", [8, 20, 32, 40, 62])
def test_ring_lin_float_limbs_match_int64(ell):
    g = torch.Generator().manual_seed(ell)
    sig = LinearSig("conv2d", (2, 8, 6, 6), (5, 8, 3, 3), ell, (1, 1), (1, 1), 1, "c")
    w = ring.uniform(g, sig.w_shape, ell)  # full-ring weights: the dealer's lin(A, B)
    x = ring.uniform(g, sig.x_shape, ell)
    ref = ring.reduce(sig.apply(ring.to_signed(w, ell), x), ell)  # int64 (wraps mod 2^64)
    assert torch.equal(ring_lin(sig, w, x), ref)
    assert torch.equal(ring_lin(sig, torch.zeros_like(w), x), torch.zeros_like(ref))
    assert MAX_FLOAT_LIMBS >= 1


def test_setup_mask_is_uniform_and_weight_independent():
    """What P1 receives at setup (F = W - B) has the same size for any weights and looks
    uniform: per-bit frequencies pass a chi-square test for two very different weight sets."""
    ell, shape = 16, (64, 32, 3, 3)
    sig = LinearSig("conv2d", (1, 32, 8, 8), shape, ell, (1, 1), (1, 1), 1, "layer")
    seeds = {r: Seeds.derived(11, r) for r in range(3)}

    def setup_f(weight):
        def body(p):
            corr = make_provider(p, seeds[p.rank])
            st = LINEAR.setup(corr, sig, {"weight": weight} if p.rank == 0 else None)
            return st.f if p.rank == 1 else None

        res = simulate(body, body, body)
        return res.results[1], res.stats[0]

    w_zero = np.zeros(shape, dtype=np.int64)
    w_rand = np.random.default_rng(0).integers(-7, 8, shape)
    fs = []
    for w in (w_zero, w_rand):
        f, s0 = setup_f(w)
        fs.append(f)
        assert s0.bits_sent["setup"] == int(np.prod(shape)) * ell
        assert s0.wire_sent["setup"] == 16 + int(np.prod(shape)) * ell // 8
        bits = ring.bits(f.reshape(-1), ell).float()  # (ell, n)
        n = bits.shape[1]
        ones = bits.sum(1)
        chi2 = float((((ones - n / 2) ** 2) / (n / 4)).sum())  # ell degrees of freedom
        assert chi2 < 39.3, chi2  # p = 0.001 for 16 d.o.f.
    assert fs[0].shape == fs[1].shape
    assert not torch.equal(fs[0], fs[1])


def test_linear_rejects_wrong_weight_shape():
    sig = LinearSig("linear", (1, 4), (2, 4), 12, key="fc")
    with pytest.raises(PrivQuantError, match="weight shape"):
        run_protocol(
            LINEAR,
            sig,
            (torch.zeros(1, 4, dtype=torch.int64),),
            (torch.zeros(1, 4, dtype=torch.int64),),
            {"weight": np.zeros((3, 4))},
            dealer="simulated",
        )
