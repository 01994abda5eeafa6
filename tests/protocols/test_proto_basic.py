"""Openings, input/output, and the local ops (which must not communicate at all)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, share

from privquant.program import Op, Program, TensorInfo, apply_op
from privquant.protocols.basic import (
    FLATTEN,
    INPUT,
    OPEN,
    OPEN_TO,
    OUTPUT,
    SUMPOOL,
    FlattenSig,
    InputSig,
    OpenSig,
    OpenToSig,
    SumpoolSig,
    add_public,
    presum,
)
from privquant.protocols.harness import run_protocol
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import ZERO
from privquant.protocols.transport.channel import CLIENT, SERVER
from privquant.protocols.transport.thread import simulate

ELL = st.one_of(st.integers(2, 16), st.integers(17, 62))


@settings(deadline=None, max_examples=30)
@given(ell=ELL, n=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_open_and_open_to(ell, n, seed):
    g = torch.Generator().manual_seed(seed)
    half = 1 << (ell - 1)
    x = torch.randint(-half, half, (n,), generator=g)
    x[0] = -half
    x0, x1 = share(x, ell, seed)
    run = run_protocol(OPEN, OpenSig((n,), ell), (x0,), (x1,), dealer="thread")
    assert torch.equal(run.out0, x) and torch.equal(run.out1, x)
    assert_cost(run, OPEN.cost(OpenSig((n,), ell)))
    assert OPEN.cost(OpenSig((n,), ell)).online_bits == 2 * n * ell
    for to in (SERVER, CLIENT):
        sig = OpenToSig((n,), ell, to)
        run = run_protocol(OPEN_TO, sig, (x0,), (x1,), dealer="simulated")
        got = (run.out0, run.out1)
        assert torch.equal(got[to], x) and got[1 - to] is None
        assert_cost(run, OPEN_TO.cost(sig))
        assert OPEN_TO.cost(sig).online_bits == n * ell and OPEN_TO.cost(sig).rounds == 1


def test_output_goes_to_the_client_only():
    x = torch.tensor([[3, -7, 100, -128]])
    x0, x1 = share(x, 8)
    sig = OpenToSig((1, 4), 8, CLIENT)
    run = run_protocol(OUTPUT, sig, (x0,), (x1,))
    assert run.out0 is None and torch.equal(run.out1, x)
    assert run.parties[1].bits_sent["online"] == 0 and run.parties[0].bits_sent["online"] == 32
    assert_cost(run, OUTPUT.cost(sig))


def test_input_sharing_is_free():
    x = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    sig = InputSig((2, 1, 5, 5), 14)
    run = run_protocol(INPUT, sig, (), (x,), dealer="thread")
    assert torch.equal(ring.reconstruct(run.out0, run.out1, 14), x.long())
    assert run.stats.messages == 0 and INPUT.cost(sig) == ZERO


def _local(fn0, fn1):
    res = simulate(fn0, fn1)
    assert res.stats[0].messages == res.stats[1].messages == 0
    return res.results[:2]


@settings(deadline=None, max_examples=20)
@given(
    ell=st.integers(2, 40),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    seed=st.integers(0, 2**31),
)
def test_sumpool_flatten_local(ell, k, s, p, seed):
    p = min(p, k // 2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-50, 50, (2, 3, 5, 6), generator=g)
    x0, x1 = share(x, ell + 2, seed)  # the input ring may be wider than the output's
    sig = SumpoolSig((2, 3, 5, 6), (k, k), (s, s), (p, p), ell)
    y0, y1 = _local(
        lambda pt: SUMPOOL.online(pt, sig, None, x0), lambda pt: SUMPOOL.online(pt, sig, None, x1)
    )
    op = Op("sumpool", "sp", ["x"], "y", {"kernel": k, "stride": s, "padding": p})
    assert torch.equal(
        ring.reconstruct(y0, y1, ell, signed=False), ring.reduce(apply_op(op, [x], None), ell)
    )
    assert SUMPOOL.cost(sig) == ZERO
    fsig = FlattenSig(tuple(y0.shape), ell)
    f0, f1 = _local(
        lambda pt: FLATTEN.online(pt, fsig, None, y0), lambda pt: FLATTEN.online(pt, fsig, None, y1)
    )
    assert torch.equal(ring.reduce(f0 + f1, ell), ring.reduce(y0 + y1, ell).reshape(2, -1))
    assert FLATTEN.cost(fsig) == ZERO


def test_presum_and_bias_add_local():
    ell = 20
    a = torch.randint(-100, 100, (2, 3, 4, 4))
    b = torch.randint(0, 15, (2, 3, 4, 4))
    mults, offset = [np.array([2, -3, 5]), np.array([7, 1, 0])], np.array([10, -20, 30])
    (a0, a1), (b0, b1) = share(a, ell, 1), share(b, ell, 2)
    t0, t1 = _local(
        lambda p: presum(p, [a0, b0], mults, offset, ell),
        lambda p: presum(p, [a1, b1], mults, offset, ell),
    )
    info = {n: TensorInfo(n, (3, 4, 4), -100, 100) for n in ("a", "b", "y")}
    op = Op(
        "requant",
        "r",
        ["a", "b"],
        "y",
        {"shift": 0, "lo": -(1 << 40), "hi": 1 << 40},
        {"mult0": mults[0], "mult1": mults[1], "offset": offset},
    )
    assert torch.equal(ring.reconstruct(t0, t1, ell), apply_op(op, [a, b], Program("t", [], info)))
    c0, c1 = _local(lambda p: add_public(p, t0, 5, ell), lambda p: add_public(p, t1, 5, ell))
    assert torch.equal(ring.reconstruct(c0, c1, ell), ring.reconstruct(t0, t1, ell) + 5)


@pytest.mark.parametrize("proto", [INPUT, SUMPOOL, FLATTEN])
def test_local_protocols_declare_zero_cost(proto):
    assert proto.cost(None) == ZERO


def test_catalogue_docstring_is_rendered_from_the_code():
    """The package docstring's protocol table is exactly what the protocols' cost() give."""
    import re

    import privquant.protocols as P
    from privquant.protocols.catalogue import render

    m = re.search(r"\.\. catalogue-begin\n\n(.*?)\n\n\.\. catalogue-end", P.__doc__, re.S)
    assert m is not None and m.group(1) == render()
    # the headline figures of the fused requant (ReLU + 4-bit clip at 20 bits), per element
    assert "requant ReLU + 4-bit clip  n=1000, L=20, k=12, L'=20  92000   133000   0      6" in (
        m.group(1)
    )
    # and the docs show the same table
    from pathlib import Path

    md = (Path(__file__).resolve().parents[2] / "docs" / "protocols.md").read_text()
    m2 = re.search(r"<!-- catalogue-begin -->\n```\n(.*?)\n```\n<!-- catalogue-end -->", md, re.S)
    assert m2 is not None and m2.group(1) == render()
