"""The integer program: signed widths, the plaintext executor against an independent reference,
input checks, validation, ring widths and the architecture hash."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.errors import PrivQuantError
from privquant.program import (
    Op,
    Program,
    TensorInfo,
    apply_op,
    check_input,
    output_logits,
    requant_presum_bounds,
    ring_bits,
    run_plain,
    signed_bits,
)


# ---------------------------------------------------------------------- signed_bits
def _ref_signed_bits(lo: int, hi: int) -> int:
    """Independent: bits of the two's complement representation of each end, at least 2."""

    def need(v: int) -> int:
        return (v.bit_length() if v >= 0 else (-v - 1).bit_length()) + 1

    return max(2, need(lo), need(hi))


@settings(deadline=None, max_examples=200)
@given(a=st.integers(-(2**70), 2**70), b=st.integers(-(2**70), 2**70))
def test_signed_bits_matches_reference(a, b):
    lo, hi = min(a, b), max(a, b)
    ell = signed_bits(lo, hi)
    assert ell == _ref_signed_bits(lo, hi)
    assert -(2 ** (ell - 1)) <= lo and hi <= 2 ** (ell - 1) - 1
    if ell > 2:
        assert lo < -(2 ** (ell - 2)) or hi > 2 ** (ell - 2) - 1


@settings(deadline=None, max_examples=100)
@given(ell=st.integers(2, 80))
def test_signed_bits_boundaries(ell):
    top, bottom = 2 ** (ell - 1) - 1, -(2 ** (ell - 1))
    assert signed_bits(bottom, top) == ell
    assert signed_bits(0, top) == ell
    assert signed_bits(bottom, 0) == ell
    assert signed_bits(0, top + 1) == ell + 1
    assert signed_bits(bottom - 1, 0) == ell + 1
    assert signed_bits(bottom - 1, top + 1) == ell + 1


def test_signed_bits_small():
    assert signed_bits(0, 0) == 2
    assert signed_bits(-2, 1) == 2
    assert signed_bits(0, 2) == 3
    assert signed_bits(-3, 0) == 3
    assert signed_bits(0, 255) == 9
    assert signed_bits(-128, 127) == 8
    assert TensorInfo("t", (1,), -129, 0).bits == 9


# ---------------------------------------------------------------------- a tiny program
IN_SHAPE = (2, 6, 6)
W_BITS = 4
WMAX = 2 ** (W_BITS - 1) - 1


def _tiny_program(seed: int) -> Program:
    """input -> {grouped conv c1, 1x1 conv c2} -> requant r1 (2 inputs, ReLU, 4 bit)
    -> sumpool p1 (2x2/2, pad 1) -> requant r2 (signed 4 bit, some negative multipliers)
    -> maxpool m1 (3x3/2, pad 1) -> flatten -> linear fc -> output."""
    rng = np.random.default_rng(seed)

    def weights(shape):
        return rng.integers(-WMAX, WMAX + 1, size=shape).astype(np.int8)

    ops, tensors = [], {}

    def tensor(name, shape, lo, hi, scale=None):
        tensors[name] = TensorInfo(name, shape, lo, hi, scale)

    ops.append(Op("input", "input", [], "input", {"bits": 8}))
    tensor("input", IN_SHAPE, 0, 255, 1 / 255)

    # c1: groups=2, 2 in channels -> 4 out channels (each output channel sees one input channel)
    w1 = weights((4, 1, 3, 3))
    bmax1 = 9 * WMAX * 255
    ops.append(
        Op(
            "conv2d",
            "c1",
            ["input"],
            "c1:acc",
            {
                "w_bits": W_BITS,
                "weight_shape": [4, 1, 3, 3],
                "stride": [1, 1],
                "padding": [1, 1],
                "groups": 2,
            },
            {"weight": w1, "bias": rng.integers(-bmax1, bmax1 + 1, size=4).astype(np.int64)},
        )
    )
    tensor("c1:acc", (4, 6, 6), -2 * bmax1, 2 * bmax1)
    w2 = weights((4, 2, 1, 1))
    bmax2 = 2 * WMAX * 255
    ops.append(
        Op(
            "conv2d",
            "c2",
            ["input"],
            "c2:acc",
            {
                "w_bits": W_BITS,
                "weight_shape": [4, 2, 1, 1],
                "stride": 1,
                "padding": 0,
                "groups": 1,
            },
            {"weight": w2, "bias": rng.integers(-bmax2, bmax2 + 1, size=4).astype(np.int64)},
        )
    )
    tensor("c2:acc", (4, 6, 6), -2 * bmax2, 2 * bmax2)

    k1 = int(rng.integers(9, 14))
    r1 = Op(
        "requant",
        "r1",
        ["c1:acc", "c2:acc"],
        "r1",
        {"shift": k1, "lo": 0, "hi": 15, "bits": 4, "signed": False},
        {
            "mult0": rng.integers(1, 40, size=4).astype(np.int64),
            "mult1": rng.integers(-40, 40, size=4).astype(np.int64),
            "offset": np.full(4, 1 << (k1 - 1), dtype=np.int64),
        },
    )
    ops.append(r1)
    tensor("r1", (4, 6, 6), 0, 15, 0.1)

    ops.append(
        Op("sumpool", "p1", ["r1"], "p1:sum", {"kernel": [2, 2], "stride": 2, "padding": [1, 1]})
    )
    tensor("p1:sum", (4, 4, 4), 0, 4 * 15)

    k2 = int(rng.integers(3, 8))
    ops.append(
        Op(
            "requant",
            "r2",
            ["p1:sum"],
            "r2",
            {"shift": k2, "lo": -8, "hi": 7, "bits": 4, "signed": True},
            {
                "mult0": np.array([5, -7, 3, -20], dtype=np.int64) * int(rng.integers(1, 4)),
                "offset": np.full(4, 1 << (k2 - 1), dtype=np.int64),
            },
        )
    )
    tensor("r2", (4, 4, 4), -8, 7, 0.05)
    ops.append(
        Op("maxpool", "m1", ["r2"], "m1", {"kernel": [3, 3], "stride": [2, 2], "padding": 1})
    )
    tensor("m1", (4, 2, 2), -8, 7, 0.05)
    ops.append(Op("flatten", "f", ["m1"], "f"))
    tensor("f", (16,), -8, 7, 0.05)
    bmax3 = 16 * WMAX * 8
    ops.append(
        Op(
            "linear",
            "fc",
            ["f"],
            "fc:acc",
            {"w_bits": W_BITS, "weight_shape": [3, 16]},
            {
                "weight": weights((3, 16)),
                "bias": rng.integers(-bmax3, bmax3 + 1, size=3).astype(np.int64),
            },
        )
    )
    tensor("fc:acc", (3,), -2 * bmax3, 2 * bmax3, 0.01)
    ops.append(Op("output", "output", ["fc:acc"], "logits"))
    tensor("logits", (3,), -2 * bmax3, 2 * bmax3, 0.01)
    prog = Program("tiny", ops, tensors, {})
    prog.validate()
    return prog


# ---------------------------------------------------------------------- independent reference
def _ref_conv(x, w, b, stride, pad, groups):
    """Direct-loop convolution in float64 (x: (N, C, H, W))."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad : pad + h, pad : pad + wd] = x
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg : (g + 1) * cg, i * stride : i * stride + kh, j * stride :]
                patch = patch[..., :kw]
                out[:, oc, i, j] = (patch * w[oc]).sum((1, 2, 3)) + b[oc]
    return out


def _ref_requant(xs, mults, offset, shift, lo, hi):
    t = offset.astype(np.float64).reshape(1, -1, *([1] * (xs[0].ndim - 2)))
    for x, m in zip(xs, mults):
        t = t + x * m.astype(np.float64).reshape(1, -1, *([1] * (x.ndim - 2)))
    return np.clip(np.floor(t / 2.0**shift), lo, hi)


def _ref_pool(x, k, stride, pad, fill, reduce):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * pad, w + 2 * pad), fill, dtype=np.float64)
    xp[:, :, pad : pad + h, pad : pad + w] = x
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, :, i, j] = reduce(win, axis=(2, 3))
    return out


def _reference(prog: Program, x: np.ndarray) -> dict[str, np.ndarray]:
    """The tiny program, recomputed in float64 from its arrays with numpy only."""
    ops = {op.name: op for op in prog.ops}
    a = lambda name, key: ops[name].arrays[key].astype(np.float64)  # noqa: E731
    env = {"input": x.astype(np.float64)}
    env["c1:acc"] = _ref_conv(env["input"], a("c1", "weight"), a("c1", "bias"), 1, 1, 2)
    env["c2:acc"] = _ref_conv(env["input"], a("c2", "weight"), a("c2", "bias"), 1, 0, 1)
    r1 = ops["r1"]
    env["r1"] = _ref_requant(
        [env["c1:acc"], env["c2:acc"]],
        [r1.arrays["mult0"], r1.arrays["mult1"]],
        r1.arrays["offset"],
        r1.attrs["shift"],
        0,
        15,
    )
    env["p1:sum"] = _ref_pool(env["r1"], 2, 2, 1, 0.0, np.sum)
    r2 = ops["r2"]
    env["r2"] = _ref_requant(
        [env["p1:sum"]], [r2.arrays["mult0"]], r2.arrays["offset"], r2.attrs["shift"], -8, 7
    )
    env["m1"] = _ref_pool(env["r2"], 3, 2, 1, -np.inf, np.max)
    env["f"] = env["m1"].reshape(len(x), -1)
    env["fc:acc"] = env["f"] @ a("fc", "weight").T + a("fc", "bias")
    env["logits"] = env["fc:acc"]
    return env


def _images(seed: int, n: int, shape=IN_SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = seed % 4
    if kind == 0:
        return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    if kind == 1:
        return np.full((n, *shape), 255, dtype=np.uint8)
    if kind == 2:  # checkerboard
        board = (np.indices(shape).sum(0) % 2 * 255).astype(np.uint8)
        return np.broadcast_to(board, (n, *shape)).copy()
    return rng.choice(np.array([0, 255], dtype=np.uint8), size=(n, *shape))


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3))
def test_run_plain_matches_reference(seed, n):
    prog = _tiny_program(seed)
    x = _images(seed, n)
    out, env = run_plain(prog, x, keep=True)
    ref = _reference(prog, x)
    assert out.dtype == torch.int64 and tuple(out.shape) == (n, 3)
    assert set(env) == set(prog.tensors)
    for name, want in ref.items():
        got = env[name].numpy()
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got.astype(np.float64), want, err_msg=name)
    # the reference exercised the interesting paths at least sometimes; bounds always hold
    for name, info in prog.tensors.items():
        v = env[name]
        assert info.lo <= int(v.min()) and int(v.max()) <= info.hi, name
    np.testing.assert_allclose(output_logits(prog, out).numpy(), ref["logits"] * 0.01)


def test_reference_exercises_negative_and_clipped_values():
    """Guard against a vacuous reference test: negatives, clips and padding all occur."""
    seen = {"r2_neg": False, "r2_clip_lo": False, "r1_clip_hi": False, "m1_all_neg": False}
    for seed in range(12):
        prog = _tiny_program(seed)
        _, env = run_plain(prog, _images(seed, 3), keep=True)
        seen["r2_neg"] |= bool((env["r2"] < 0).any())
        seen["r2_clip_lo"] |= bool((env["r2"] == -8).any())
        seen["r1_clip_hi"] |= bool((env["r1"] == 15).any())
        seen["m1_all_neg"] |= bool((env["m1"] < 0).any())
    assert all(seen.values()), seen


def test_maxpool_pads_with_lower_bound_not_zero():
    prog = _tiny_program(0)
    m1 = next(op for op in prog.ops if op.kind == "maxpool")
    x = torch.full((1, 4, 4, 4), -5, dtype=torch.int64)
    x[0, 0, 0, 0] = -3
    y = apply_op(m1, [x], prog)
    want = np.full((1, 4, 2, 2), -5)
    want[0, 0, 0, 0] = -3
    np.testing.assert_array_equal(y.numpy(), want)


# ---------------------------------------------------------------------- input checks
def test_check_input_accepts():
    prog = _tiny_program(1)
    one = np.zeros(IN_SHAPE, dtype=np.uint8)
    assert tuple(check_input(prog, one).shape) == (1, *IN_SHAPE)
    batch = np.full((3, *IN_SHAPE), 255, dtype=np.uint8)
    t = check_input(prog, batch)
    assert t.dtype == torch.int64 and tuple(t.shape) == (3, *IN_SHAPE)
    ints = torch.randint(0, 256, (2, *IN_SHAPE), dtype=torch.int32)
    assert torch.equal(check_input(prog, ints), ints.to(torch.int64))
    np.testing.assert_array_equal(run_plain(prog, one).numpy(), run_plain(prog, one[None]).numpy())


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((1, 6, 6), dtype=np.uint8),  # one channel short
        np.zeros((1, 3, 6, 6), dtype=np.uint8),
        np.zeros((1, 2, 6, 5), dtype=np.uint8),
        np.zeros((1, 1, 2, 6, 6), dtype=np.uint8),
        np.zeros((6, 6), dtype=np.uint8),
        np.zeros((1, 2, 6, 6), dtype=np.float32),
        np.zeros((1, 2, 6, 6), dtype=np.float64),
        np.zeros((1, 2, 6, 6), dtype=bool),
        np.full((1, 2, 6, 6), 256, dtype=np.int32),
        np.full((1, 2, 6, 6), -1, dtype=np.int64),
        np.full((1, 2, 6, 6), -1, dtype=np.int8),
        np.full((2, 6, 6), 1000, dtype=np.int16),
    ],
    ids=lambda x: f"{x.dtype}{x.shape}",
)
def test_check_input_rejects(x):
    prog = _tiny_program(2)
    with pytest.raises(PrivQuantError):
        check_input(prog, x)
    with pytest.raises(PrivQuantError):
        run_plain(prog, x)


# ---------------------------------------------------------------------- validation
def test_validate_rejects_broken_programs():
    good = _tiny_program(3)
    good.validate()

    p = copy.deepcopy(good)
    p.ops[3].inputs = ["r2", "c2:acc"]  # r1 reads r2 before it is computed
    with pytest.raises(PrivQuantError, match="before"):
        p.validate()

    p = copy.deepcopy(good)
    p.ops[1].kind = "softmax"
    with pytest.raises(PrivQuantError, match="unknown op kind"):
        p.validate()

    p = copy.deepcopy(good)
    p.ops[1].arrays["weight"] = p.ops[1].arrays["weight"].astype(np.float32)
    with pytest.raises(PrivQuantError, match="not integer"):
        p.validate()

    p = copy.deepcopy(good)
    p.ops[1].attrs["weight_shape"] = [4, 2, 3, 3]
    with pytest.raises(PrivQuantError, match="shape"):
        p.validate()

    p = copy.deepcopy(good)
    p.ops[1].output = "nowhere"
    with pytest.raises(PrivQuantError, match="unknown tensor"):
        p.validate()

    p = copy.deepcopy(good)
    p.ops = [op for op in p.ops if op.kind != "output"]
    with pytest.raises(PrivQuantError, match="exactly one"):
        p.validate()


# ---------------------------------------------------------------------- rings
@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**32 - 1))
def test_ring_bits_contract(seed):
    prog = _tiny_program(seed)
    rings = ring_bits(prog)
    assert set(rings) == set(prog.tensors)
    for t, info in prog.tensors.items():
        assert rings[t] >= info.bits
    for op in prog.ops:
        if op.kind in ("conv2d", "linear", "sumpool", "flatten"):
            assert rings[op.inputs[0]] >= rings[op.output], op.name
        if op.kind == "requant":
            lo, hi = requant_presum_bounds(op, [prog.tensors[i] for i in op.inputs])
            for i in op.inputs:
                assert rings[i] >= signed_bits(lo, hi)
        if op.kind == "maxpool":
            info = prog.tensors[op.inputs[0]]
            assert rings[op.inputs[0]] >= signed_bits(info.lo - info.hi, info.hi - info.lo)
    # the pre-sums actually computed fit the ring of every requant input
    x = _images(seed, 2)
    _, env = run_plain(prog, x, keep=True)
    for op in prog.ops:
        if op.kind != "requant":
            continue
        t = torch.as_tensor(op.arrays["offset"]).reshape(1, -1, 1, 1)
        for i, name in enumerate(op.inputs):
            t = t + env[name] * torch.as_tensor(op.arrays[f"mult{i}"]).reshape(1, -1, 1, 1)
        lo, hi = requant_presum_bounds(op, [prog.tensors[i] for i in op.inputs])
        assert lo <= int(t.min()) and int(t.max()) <= hi
        for name in op.inputs:
            assert -(2 ** (rings[name] - 1)) <= int(t.min())
            assert int(t.max()) <= 2 ** (rings[name] - 1) - 1


def test_requant_presum_bounds_signs():
    op = Op(
        "requant",
        "r",
        ["a", "b"],
        "r",
        {"shift": 2},
        {
            "mult0": np.array([3, -2]),
            "mult1": np.array([1, 1]),
            "offset": np.array([2, 2]),
        },
    )
    a, b = TensorInfo("a", (2,), -10, 5), TensorInfo("b", (2,), 0, 7)
    # channel extremes: 3*[-10,5] -> [-30, 15]; -2*[-10,5] -> [-10, 20]; b -> [0, 7]
    assert requant_presum_bounds(op, [a, b]) == (-30 + 0 + 2, 20 + 7 + 2)


# ---------------------------------------------------------------------- architecture hash
def test_architecture_hash_ignores_secret_values():
    prog = _tiny_program(4)
    h = prog.architecture_hash()
    assert h == _tiny_program(4).architecture_hash()
    other = copy.deepcopy(prog)
    rng = np.random.default_rng(99)
    for op in other.ops:
        for k in op.secret_arrays:
            a = op.arrays[k]
            op.arrays[k] = rng.integers(-WMAX, WMAX + 1, size=a.shape).astype(a.dtype)
    assert any(
        not np.array_equal(a.arrays.get("weight", 0), b.arrays.get("weight", 0))
        for a, b in zip(prog.ops, other.ops)
    )
    assert other.architecture_hash() == h
    public = other.public_dict()
    for o, op in zip(public["ops"], other.ops):
        assert not set(op.secret_arrays) & set(o["arrays"]), op.name
        if op.kind in ("conv2d", "linear"):
            assert o["attrs"]["weight_shape"] == list(op.arrays["weight"].shape)


def test_public_program_round_trip():
    prog = _tiny_program(6)
    pub = Program.from_public_dict(prog.public_dict())
    assert prog.has_weights and not pub.has_weights
    assert pub.architecture_hash() == prog.architecture_hash()
    assert ring_bits(pub) == ring_bits(prog)
    for a, b in zip(prog.ops, pub.ops):
        for k in a.arrays:
            if k not in a.secret_arrays:
                np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    with pytest.raises(PrivQuantError):
        Program.from_public_dict({"model": "x", "ops": [{"kind": "input"}], "tensors": {}})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.ops[1].attrs.__setitem__("stride", [2, 2]),
        lambda p: p.ops[1].attrs.__setitem__("w_bits", 5),
        lambda p: p.ops[3].attrs.__setitem__("shift", p.ops[3].attrs["shift"] + 1),
        lambda p: p.ops[3].attrs.__setitem__("hi", 14),
        lambda p: p.ops[3].arrays["mult0"].__setitem__(0, p.ops[3].arrays["mult0"][0] + 1),
        lambda p: p.ops[3].arrays["offset"].__setitem__(1, 0),
        lambda p: setattr(p.tensors["r1"], "hi", 16),
        lambda p: setattr(p.tensors["r1"], "scale", 0.2),
        lambda p: setattr(p.ops[5], "name", "r2b"),
        lambda p: setattr(p, "model", "tiny2"),
        lambda p: p.ops[1].attrs.__setitem__("weight_shape", [4, 1, 3, 2]),
        lambda p: p.ops[2].attrs.__setitem__("groups", 2),
        lambda p: p.ops[4].attrs.__setitem__("padding", [0, 0]),
        lambda p: p.ops[3].inputs.reverse(),
    ],
)
def test_architecture_hash_covers_public_facts(mutate):
    prog = _tiny_program(5)
    h = prog.architecture_hash()
    mutate(prog)
    assert prog.architecture_hash() != h
