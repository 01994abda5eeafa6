"""Max pooling: exact against the plaintext program (incl. padding, strides, ring change)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, share

from privquant.errors import PrivQuantError
from privquant.program import Op, Program, TensorInfo, apply_op
from privquant.protocols import compare
from privquant.protocols.harness import run_protocol
from privquant.protocols.maxpool import MAXPOOL, MaxpoolSig
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.ring import signed_bits


def _reference(x, lo, hi, kernel, stride, padding):
    info = TensorInfo("x", tuple(x.shape[1:]), lo, hi)
    prog = Program("t", [], {"x": info})
    op = Op(
        "maxpool",
        "mp",
        ["x"],
        "y",
        {"kernel": list(kernel), "stride": list(stride), "padding": list(padding)},
    )
    return apply_op(op, [x], prog)


@st.composite
def cases(draw):
    scale = draw(st.sampled_from([1, 1, 1, 1000, 1 << 20, 1 << 37]))  # rings up to ~40 bits
    lo = draw(st.integers(-40, 20)) * scale
    hi = lo + draw(st.integers(0, 60)) * scale + draw(st.integers(0, 3))
    ell = min(62, signed_bits(lo - hi, hi - lo) + draw(st.integers(0, 3)))
    ell_out = min(62, signed_bits(lo, hi) + draw(st.sampled_from([0, 0, 1, 5, 14])))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    shape = (
        draw(st.integers(1, 2)),
        draw(st.integers(1, 2)),
        draw(st.integers(kernel[0], 5)),
        draw(st.integers(kernel[1], 5)),
    )
    return lo, hi, ell, ell_out, kernel, stride, padding, shape


@settings(deadline=None, max_examples=120)
@given(case=cases(), seed=st.integers(0, 2**31), dealer=st.sampled_from(["simulated", "thread"]))
def test_maxpool_exact_and_cost(case, seed, dealer):
    lo, hi, ell, ell_out, kernel, stride, padding, shape = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(lo, hi + 1, shape, generator=g)
    x.view(-1)[0] = lo
    x.view(-1)[-1] = hi
    sig = MaxpoolSig(shape, kernel, stride, padding, lo, hi, ell, ell_out)
    x0, x1 = share(x, ell, seed)
    run = run_protocol(MAXPOOL, sig, (x0,), (x1,), dealer=dealer, master=seed)
    y = ring.reconstruct(run.out0, run.out1, ell_out)
    assert torch.equal(y, _reference(x, lo, hi, kernel, stride, padding))
    assert_cost(run, MAXPOOL.cost(sig))


@pytest.mark.parametrize("ell_out", [5, 6, 20])
def test_maxpool_levels_and_ring_change(ell_out):
    # 3x3 window: 4 levels; with ell_out > ell the last selection emits Z_2^ell_out directly
    sig = MaxpoolSig((1, 2, 6, 6), (3, 3), (3, 3), (0, 0), 0, 15, 5, ell_out)
    kinds = [k for _p, k in sig.levels]
    assert len(kinds) == 4 and kinds[-1] == ("ext" if ell_out > 5 else "normal")
    x = torch.randint(0, 16, (1, 2, 6, 6), generator=torch.Generator().manual_seed(ell_out))
    x0, x1 = share(x, 5)
    run = run_protocol(MAXPOOL, sig, (x0,), (x1,), dealer="thread")
    assert torch.equal(
        ring.reconstruct(run.out0, run.out1, ell_out), _reference(x, 0, 15, (3, 3), (3, 3), (0, 0))
    )
    assert_cost(run, MAXPOOL.cost(sig))
    # per level: open, the 4-bit comparison's tree levels (2 with bit leaves, fewer with digit
    # leaves), select
    tree = compare.Group(1, 0, (4,)).depth
    assert tree < 2 and run.stats.rounds == 4 * (2 + tree)


def test_maxpool_rejects_too_small_ring():
    with pytest.raises(PrivQuantError, match="differences"):
        _ = MaxpoolSig((1, 1, 2, 2), (2, 2), (2, 2), (0, 0), 0, 15, 5 - 1, 8).levels
