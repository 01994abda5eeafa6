"""A small integer program run end to end through the op table (setup, offline, online) by a
minimal walker written against the public API: bit-exact with ``run_plain`` and, per op (scope),
measured == ``op_cost`` in every phase, rounds included."""

import numpy as np
import pytest
import torch

from privquant.ops import op_cost, protocol, signature
from privquant.program import Op, Program, TensorInfo, ring_bits, run_plain
from privquant.protocols import (
    DEALER,
    SEED_SETUP_COST,
    Cost,
    combine,
    establish_seeds,
    make_provider,
    simulate,
)


def _conv_bound(fan_in, wbits, xmax):
    return fan_in * ((1 << (wbits - 1)) - 1) * xmax


def toy_program(seed=0) -> Program:
    rng = np.random.default_rng(seed)
    t, ops = {}, []
    t["x"] = TensorInfo("x", (1, 6, 6), 0, 255)
    ops.append(Op("input", "input", [], "x"))
    b1 = _conv_bound(9, 3, 255)
    w1 = rng.integers(-3, 4, (2, 1, 3, 3))
    ops.append(
        Op(
            "conv2d",
            "conv1",
            ["x"],
            "c1",
            {"stride": 1, "padding": 1, "w_bits": 3, "weight_shape": [2, 1, 3, 3]},
            {"weight": w1, "bias": rng.integers(-b1, b1 + 1, 2)},
        )
    )
    t["c1"] = TensorInfo("c1", (2, 6, 6), -2 * b1, 2 * b1)
    ops.append(
        Op(
            "requant",
            "act1",
            ["c1"],
            "a1",
            {"shift": 8, "lo": 0, "hi": 15},
            {"mult0": np.array([3, 5]), "offset": np.array([128, 128])},
        )
    )
    t["a1"] = TensorInfo("a1", (2, 6, 6), 0, 15)
    b2 = _conv_bound(18, 4, 15)
    w2 = rng.integers(-7, 8, (2, 2, 3, 3))
    ops.append(
        Op(
            "conv2d",
            "conv2",
            ["a1"],
            "c2",
            {"stride": 1, "padding": 1, "w_bits": 4, "weight_shape": [2, 2, 3, 3]},
            {"weight": w2, "bias": rng.integers(-b2, b2 + 1, 2)},
        )
    )
    t["c2"] = TensorInfo("c2", (2, 6, 6), -2 * b2, 2 * b2)
    ops.append(
        Op(
            "requant",
            "res",
            ["c2", "a1"],
            "a2",
            {"shift": 6, "lo": 0, "hi": 15},
            {"mult0": np.array([5, 3]), "mult1": np.array([40, 64]), "offset": np.array([32, 32])},
        )
    )
    t["a2"] = TensorInfo("a2", (2, 6, 6), 0, 15)
    ops.append(Op("maxpool", "pool", ["a2"], "p", {"kernel": 2, "stride": 2, "padding": 0}))
    t["p"] = TensorInfo("p", (2, 3, 3), 0, 15)
    ops.append(Op("sumpool", "gap", ["p"], "s", {"kernel": 3, "stride": 3, "padding": 0}))
    t["s"] = TensorInfo("s", (2, 1, 1), 0, 135)
    ops.append(Op("flatten", "flat", ["s"], "f"))
    t["f"] = TensorInfo("f", (2,), 0, 135)
    b3 = _conv_bound(2, 4, 135)
    ops.append(
        Op(
            "linear",
            "fc",
            ["f"],
            "y",
            {"w_bits": 4, "weight_shape": [4, 2]},
            {"weight": rng.integers(-7, 8, (4, 2)), "bias": rng.integers(-b3, b3 + 1, 4)},
        )
    )
    t["y"] = TensorInfo("y", (4,), -2 * b3, 2 * b3)
    ops.append(Op("output", "output", ["y"], "out"))
    t["out"] = TensorInfo("out", (4,), -2 * b3, 2 * b3)
    prog = Program("toy", ops, t)
    prog.validate()
    return prog


def walk(party, program, rings, batch, x, backend, master, prefix=("setup/", "offline/")):
    """What a runtime walker does, in every role."""
    with party.scope("seeds"):
        seeds = establish_seeds(party, master=master)
    corr = make_provider(party, seeds)
    plan = [
        (op, protocol(op.kind, backend), signature(op, program, rings, batch)) for op in program.ops
    ]
    states, pres = {}, {}
    for op, proto, sig in plan:
        with party.scope(prefix[0] + op.name):
            states[op.name] = proto.setup(corr, sig, op.arrays if party.rank == 0 else None)
    for op, proto, sig in plan:
        with party.scope(prefix[1] + op.name):
            pres[op.name] = proto.offline(corr, sig, states[op.name])
    if party.rank == DEALER:
        return None
    env = {}
    for op, proto, sig in plan:
        with party.scope(op.name):
            if op.kind == "input":
                args = (x,) if party.rank == 1 else ()
            else:
                args = tuple(env[i] for i in op.inputs)
            env[op.output] = proto.online(party, sig, pres[op.name], *args)
    return env[program.output_op.output]


@pytest.mark.parametrize("prefix", [("setup/", "offline/"), ("", "")])
@pytest.mark.parametrize("backend", ["privquant", "privquant-unfused"])
def test_toy_program_end_to_end(backend, prefix):
    prog = toy_program()
    rings = ring_bits(prog)
    batch = 2
    x = torch.randint(0, 256, (batch, 1, 6, 6), generator=torch.Generator().manual_seed(3))
    res = simulate(*(lambda p: walk(p, prog, rings, batch, x, backend, 9, prefix),) * 3, timeout=60)
    assert res.results[0] is None
    assert torch.equal(res.results[1], run_plain(prog, x))

    total = Cost()
    for op in prog.ops:
        declared = op_cost(op, prog, rings, batch, backend)
        parts = {
            ph: combine([p.scopes[ph + op.name] for p in res.parties if ph + op.name in p.scopes])
            for ph in (*prefix, "")
        }
        got = Cost(
            parts[""].bits_sent["online"],
            parts[prefix[1]].bits_sent["offline"],
            parts[prefix[0]].bits_sent["setup"],
            parts[""].rounds,
        )
        assert got == declared, (op.name, got, declared)
        if prefix[1]:
            assert parts[""].bits_sent["offline"] == parts[prefix[1]].bits_sent["online"] == 0
        total = total.then(declared)
    joint = combine([p.stats for p in res.parties])
    # the session depth is at most the sum of the per-op rounds: ops whose first message does not
    # wait for the previous op's last one overlap (one party can run a round ahead of the other
    # after a one-way message, e.g. a linear layer's P1 -> P0 followed by an exchange)
    assert total.rounds - len(prog.ops) <= joint.rounds <= total.rounds
    assert joint.bits_sent["online"] == total.online_bits
    assert joint.bits_sent["offline"] == total.offline_bits
    assert joint.bits_sent["setup"] == total.setup_bits + SEED_SETUP_COST.setup_bits
