"""Dealer-free linear layers (OT or HE correlation, chosen by cost), maxpool and comparison:
bit-exact against the plaintext, measured == declared per phase, hostile shapes rejected."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from otmode_lib import run_pair, run_protocol, share

from privquant.errors import PrivQuantError
from privquant.protocols.compare import CompareSig
from privquant.protocols.linear import LinearSig, ring_lin
from privquant.protocols.maxpool import MaxpoolSig
from privquant.protocols.ot import linear as otlinear
from privquant.protocols.ot.compare import OT_COMPARE
from privquant.protocols.ot.linear import OtLinear
from privquant.protocols.ot.maxpool import OT_MAXPOOL
from privquant.protocols.preprocessing.ot.cost import measured
from privquant.protocols.primitives import ring


def _weights(g, shape, b):
    lo, hi = -(1 << (b - 1)), (1 << (b - 1)) - 1
    w = torch.randint(lo, hi + 1, shape, generator=g)
    w.view(-1)[: min(2, w.numel())] = torch.tensor([lo, hi][: min(2, w.numel())])
    return w


def _expected(sig, w, bias, x):
    return ring.reduce(
        ring_lin(sig, w, x) + bias.reshape((1, -1) + (1,) * (len(sig.y_shape) - 2)), sig.ell
    )


@st.composite
def linear_sigs(draw):
    b = draw(st.sampled_from([2, 3, 4, 8]))
    ell = draw(st.integers(max(b + 2, 8), 30))
    n = draw(st.integers(1, 2))
    if draw(st.booleans()):
        k, o = draw(st.integers(1, 24)), draw(st.integers(1, 6))
        return LinearSig("linear", (n, k), (o, k), ell, key="fc", w_bits=b)
    c = draw(st.sampled_from([1, 2, 4]))
    depthwise = draw(st.booleans())
    groups = c if depthwise else 1
    o = c * draw(st.integers(1, 2)) if depthwise else draw(st.integers(1, 4))
    ks = draw(st.sampled_from([1, 3]))
    hw = draw(st.integers(ks, 6))
    st_ = draw(st.integers(1, 2))
    pad = draw(st.integers(0, ks // 2))
    return LinearSig(
        "conv2d",
        (n, c, hw, hw),
        (o, c // groups, ks, ks),
        ell,
        (st_, st_),
        (pad, pad),
        groups,
        key="conv",
        w_bits=b,
    )


@settings(deadline=None, max_examples=14)
@given(sig=linear_sigs(), forced=st.sampled_from(["ot", "he"]), seed=st.integers(0, 2**31))
def test_linear_exact_and_cost(sig, forced, seed):
    g = torch.Generator().manual_seed(seed)
    w = _weights(g, sig.w_shape, sig.w_bits)
    bias = torch.randint(-1000, 1000, (sig.w_shape[0],), generator=g)
    x = ring.uniform(g, sig.x_shape, sig.ell)
    x0, x1 = share(x, sig.ell, seed)
    proto = OtLinear()
    proto.forced = forced
    params = {"weight": w.numpy(), "bias": bias.numpy()}
    y0, y1, cost, _ = run_protocol(proto, sig, (x0,), (x1,), params)
    assert torch.equal(ring.reduce(y0 + y1, sig.ell), _expected(sig, w, bias, x))
    assert cost == proto.full_cost(sig)


def test_linear_choice_by_cost():
    """Big-M convolutions go to HE, a small FC layer (setup OTs amortized) to OT; the choice is
    made on one sample, so a batch does not change it."""
    conv = LinearSig("conv2d", (1, 64, 16, 16), (64, 64, 3, 3), 20, (1, 1), (1, 1), w_bits=4)
    fc = LinearSig("linear", (1, 64), (10, 64), 20, w_bits=4)
    assert otlinear.method(conv) == "he"
    assert otlinear.method(fc) == "ot"
    fc8 = LinearSig("linear", (8, 64), (10, 64), 20, w_bits=4)
    assert otlinear.method(fc8) == "ot"
    c = OtLinear().full_cost(fc)
    ot, he = otlinear.ot_cost(4, fc), otlinear.he_cost(fc)
    assert ot.offline_bits + ot.setup_bits < he.offline_bits
    assert c.online_bits == 64 * 20 and c.online_rounds == 1
    one_bit = LinearSig("linear", (1, 16), (4, 16), 12, w_bits=1)
    assert otlinear.method(one_bit) == "he"  # no weight-bit OTs for 1-bit weights


@pytest.mark.parametrize("forced", ["ot", "he"])
def test_linear_batch_differs_from_setup(forced):
    """Setup on the batch-1 signature (as the runtime does), then two inferences of batch 2
    and 1: the setup's OTs / prepared weights serve them; fresh OT expansions per use."""
    sig1 = LinearSig("conv2d", (1, 2, 5, 5), (3, 2, 3, 3), 16, (1, 1), (1, 1), key="c", w_bits=4)
    sig2 = LinearSig("conv2d", (2, 2, 5, 5), (3, 2, 3, 3), 16, (1, 1), (1, 1), key="c", w_bits=4)
    g = torch.Generator().manual_seed(3)
    w = _weights(g, sig1.w_shape, 4)
    bias = torch.randint(-9, 9, (3,), generator=g)
    xs = [ring.uniform(g, s.x_shape, 16) for s in (sig2, sig1)]
    shares = [share(x, 16, i) for i, x in enumerate(xs)]
    proto = OtLinear()
    proto.forced = forced

    def body(corr):
        st_ = proto.setup(corr, sig1, {"weight": w.numpy(), "bias": bias.numpy()})
        outs = []
        for s, (x0, x1) in zip((sig2, sig1), shares):
            pre = proto.offline(corr, s, st_)
            outs.append(proto.online(corr.party, s, pre, x0 if corr.role == 0 else x1))
        return outs

    res, _cost, _ = run_pair(body, body)
    for i, (s, x) in enumerate(zip((sig2, sig1), xs)):
        y = ring.reduce(res[0][i] + res[1][i], 16)
        assert torch.equal(y, _expected(s, w, bias, x))


def test_linear_rejects_hostile_inputs():
    sig = LinearSig("linear", (1, 8), (2, 8), 16, key="fc", w_bits=4)
    w = torch.zeros(2, 8, dtype=torch.int64)
    with pytest.raises(PrivQuantError, match="exceed"):
        run_protocol(
            OtLinear(), sig, (torch.zeros(1, 8),), (torch.zeros(1, 8),), {"weight": (w + 9).numpy()}
        )
    with pytest.raises(PrivQuantError, match="shape"):
        run_protocol(
            OtLinear(), sig, (torch.zeros(1, 7),), (torch.zeros(1, 7),), {"weight": w.numpy()}
        )


MAXPOOL_CASES = [
    MaxpoolSig((1, 3, 6, 6), (2, 2), (2, 2), (0, 0), 0, 15, 6, 6),
    MaxpoolSig((2, 2, 5, 5), (3, 3), (2, 2), (1, 1), -8, 7, 5, 16),
    MaxpoolSig((1, 2, 4, 4), (1, 1), (1, 1), (0, 0), 0, 15, 6, 20),  # the lift alone
    MaxpoolSig((1, 2, 7, 7), (3, 3), (1, 1), (1, 1), 0, 255, 10, 9),
    MaxpoolSig((1, 1, 4, 4), (2, 2), (1, 1), (0, 0), -100, 100, 9, 4 + 5),
]


@pytest.mark.parametrize("sig", MAXPOOL_CASES)
def test_maxpool_exact_and_cost(sig):
    g = torch.Generator().manual_seed(sig.x_shape[1])
    x = torch.randint(sig.lo, sig.hi + 1, sig.x_shape, generator=g)
    x.view(-1)[:2] = torch.tensor([sig.lo, sig.hi])
    x0, x1 = share(x, sig.ell)
    y0, y1, cost, _ = run_protocol(OT_MAXPOOL, sig, (x0,), (x1,))
    (kh, kw), (sh, sw), (ph, pw) = sig.kernel, sig.stride, sig.padding
    exp = F.pad(x, (pw, pw, ph, ph), value=sig.lo).unfold(2, kh, sh).unfold(3, kw, sw)
    assert torch.equal(ring.reconstruct(y0, y1, sig.ell_out), exp.amax((-1, -2)))
    assert cost == OT_MAXPOOL.full_cost(sig)


COMPARE_CASES = [
    CompareSig(300, 8, (0,)),  # MSB
    CompareSig(300, 16, (0,)),
    CompareSig(300, 32, (0,)),
    CompareSig(300, 16, (0, 100, -3)),  # rabbit (full range)
    CompareSig(300, 12, (0, 1000), -2048, 2047),
    CompareSig(300, 10, (5,), 0, 100),
    CompareSig(300, 10, (600, -600), -511, 511),  # decided by the bounds: no traffic
]


@pytest.mark.parametrize("sig", COMPARE_CASES)
def test_compare_exact_and_cost(sig):
    H = 1 << (sig.ell - 1)
    lo = -H if sig.lo is None else sig.lo
    hi = H - 1 if sig.hi is None else sig.hi
    g = torch.Generator().manual_seed(sig.ell)
    x = torch.randint(lo, hi + 1, (sig.n,), generator=g)
    x[:6] = torch.tensor([lo, hi, 0, -1, 1, 5]).clamp(lo, hi)
    x0, x1 = share(x, sig.ell)
    o0, o1, cost, _ = run_protocol(OT_COMPARE, sig, (x0,), (x1,))
    for a, b, t in zip(o0, o1, sig.thresholds):
        assert torch.equal((a ^ b).long(), (x >= t).long())
    assert cost == OT_COMPARE.full_cost(sig)


def test_msb_costs_vs_sci():
    """MSB at 8/16/32 bits: at most half of SCI's measured bytes per element."""
    for ell, sci in ((8, 90.5), (16, 218.0), (32, 491.5)):
        c = OT_COMPARE.full_cost(CompareSig(1000, ell, (0,)))
        assert (c.online_bits + c.offline_bits) / 8 / 1000 <= 0.5 * sci


def test_scope_measures_match_ot_cost_helper():
    """The runner's per-phase measurement is the OT layer's :func:`measured` of both parties."""
    sig = CompareSig(10, 8, (0,))
    x0, x1 = share(torch.zeros(10, dtype=torch.int64), 8)
    _, _, cost, sim = run_protocol(OT_COMPARE, sig, (x0,), (x1,))
    assert cost == measured([sim.parties[0].scopes["proto"], sim.parties[1].scopes["proto"]])
