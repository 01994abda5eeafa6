"""Two-party runtime (threads): bit-exact vs the plaintext integer program, measured == declared.

Every role runs the real protocol code and the real dealer role; only the transport is in-process.
Real OS processes are covered in test_processes.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runtime_helpers import run_threads, shipped, with_other_weights
from scipy import stats

import privquant
from privquant import ops
from privquant.cli import _randomize_bn
from privquant.errors import PrivQuantError
from privquant.models import build_model, input_shape
from privquant.models.data import load_sample
from privquant.program import Program, ring_bits, run_plain
from privquant.protocols.primitives import packing
from privquant.protocols.primitives.ring import reduce
from privquant.protocols.transport.thread import simulate
from privquant.runtime import OFFLINE_WINDOW_BITS, run_role, windows


@pytest.fixture(scope="module")
def sample():
    return load_sample(6)


@pytest.mark.parametrize(
    "artifact,n", [("lenet5-w8a8.pq", 4), ("resnet8-w4a4.pq", 3)], ids=["lenet5", "resnet8"]
)
def test_shipped_models_exact_and_counted(artifact, n, sample):
    art = shipped(artifact)
    x = sample[0][:n]
    logits, report, _ = run_threads(art.program, x)
    assert torch.equal(logits, run_plain(art.program, x))
    assert report.all_match, [x.name for x in report.layers if not x.matches]
    assert report.preprocessing == "dealer"
    assert report.total["online_bits"] > 0 and report.total["offline_bits"] > 0


@pytest.mark.parametrize("schedule", ["offline-first", "interleaved", "auto"])
def test_schedules_same_result_and_traffic(schedule, sample):
    """Every layer's preprocessing before the online phase, or each just before its online
    step: the same logits, and measured == declared per layer under both."""
    art = shipped("resnet8-w4a4.pq")
    x = sample[0][:2]
    logits, report, _ = run_threads(art.program, x, schedule=schedule)
    assert torch.equal(logits, run_plain(art.program, x))
    assert report.all_match, [x.name for x in report.layers if not x.matches]


def test_schedule_windows():
    """Windows cover every op once, in order; auto packs consecutive ops up to the budget."""
    w = OFFLINE_WINDOW_BITS
    bits = [0, w // 2, w // 2, 1, 2 * w, 0, w // 4, w]
    assert windows("offline-first", bits) == [range(0, 8)]
    assert windows("interleaved", bits) == [range(i, i + 1) for i in range(8)]
    auto = [range(0, 3), range(3, 4), range(4, 5), range(5, 7), range(7, 8)]
    assert windows("auto", bits) == auto  # the op over the budget alone
    assert windows("auto", []) == [] and windows("offline-first", []) == []
    with pytest.raises(PrivQuantError, match="unknown schedule"):
        windows("eager", bits)
    # a resnet8 w4a4 inference's declared preprocessing: one window at batch 1
    prog = shipped("resnet8-w4a4.pq").program
    rings = ring_bits(prog)
    per_op = [ops.op_cost(op, prog, rings, 1).offline_bits for op in prog.ops]
    assert windows("auto", per_op) == [range(0, len(prog.ops))]


def test_unfused_backend_exact(sample):
    art = shipped("lenet5-w8a8.pq")
    x = sample[0][:2]
    logits, report, _ = run_threads(art.program, x, backend="privquant-unfused")
    assert torch.equal(logits, run_plain(art.program, x))
    assert report.all_match
    _, fused, _ = run_threads(art.program, x)
    assert fused.total["online_bits"] < report.total["online_bits"]


@pytest.mark.parametrize("name", ["resnet18-cifar", "mobilenetv2-cifar"])
def test_cifar_models_w4a4_random_weights_exact(name):
    torch.manual_seed(0)
    model = build_model(name)
    _randomize_bn(model, 0)
    shp = input_shape(name)
    gen = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (16, *shp), dtype=torch.uint8, generator=gen)
    art = privquant.quantize(model, calib, "w4a4", name=name, progress=False)
    x = torch.randint(0, 256, (1, *shp), dtype=torch.uint8, generator=gen)
    x[0, :, :4, :4] = 255  # edge values
    x[0, :, -4:, -4:] = 0
    logits, report, _ = run_threads(art.program, x, timeout=600)
    assert torch.equal(logits, run_plain(art.program, x))
    assert report.all_match


def test_client_input_rejected_before_anything_is_shared():
    art = shipped("lenet5-w8a8.pq")
    pub = Program.from_public_dict(art.program.public_dict())
    bad = torch.zeros((1, 1, 27, 28), dtype=torch.uint8)
    with pytest.raises(PrivQuantError, match="shape"):
        simulate(
            lambda p: run_role(p, art.program, batch=1),
            lambda p: run_role(p, pub, batch=1, x=bad),
            lambda p: run_role(p, pub, batch=1),
            timeout=10,
        )
    with pytest.raises(PrivQuantError, match="dtype"):
        run_role(None_party(1), pub, batch=1, x=torch.zeros((1, 1, 28, 28)))


class None_party:  # a stand-in that fails loudly if anything is sent
    def __init__(self, rank):
        self.rank = rank

    def __getattr__(self, name):
        raise AssertionError(f"party.{name} used before the input was validated")


def _uniform_pvalue(blob: bytes) -> float:
    counts = np.bincount(np.frombuffer(blob, dtype=np.uint8), minlength=256)
    return stats.chisquare(counts).pvalue


def test_client_transcript_same_size_uniform_and_free_of_raw_secrets(sample):
    """What the client receives: same sizes for two weight sets, uniform bytes, no raw weights;
    what the server receives contains no raw input."""
    art = shipped("lenet5-w8a8.pq")
    x = sample[0][:2]
    transcripts = []
    for seed in (1, 2):
        prog = with_other_weights(art, seed)
        logits, _, recs = run_threads(prog, x, record=True)
        assert torch.equal(logits, run_plain(prog, x))
        transcripts.append((prog, recs))
    sizes = [[len(m) for m in recs[1].payloads] for _, recs in transcripts]
    assert sizes[0] == sizes[1]
    rings = ring_bits(art.program)
    for prog, recs in transcripts:
        client_blob = b"".join(recs[1].payloads)
        assert _uniform_pvalue(client_blob) > 1e-4
        # no raw weights: neither their int8 storage nor their packed ring form
        for op in prog.ops:
            if "weight" in op.arrays:
                w = op.arrays["weight"]
                raw = w.astype(np.int8).tobytes()[:48]
                ell = rings[op.output]
                packed = packing.pack(reduce(torch.as_tensor(w.astype(np.int64)), ell), ell)
                packed = bytes(packed.numpy().tobytes())[:48]
                assert raw not in client_blob and packed not in client_blob
        server_blob = b"".join(recs[0].payloads)
        raw_x = x.numpy().tobytes()
        for i in range(0, len(raw_x) - 64, 97):
            assert raw_x[i : i + 64] not in server_blob
        px = packing.pack(x.to(torch.int64), rings["input"]).numpy().tobytes()
        assert px[:64] not in server_blob
    # the two weight sets give statistically indistinguishable client transcripts
    h = [
        np.bincount(np.frombuffer(b"".join(r[1].payloads), np.uint8), minlength=256)
        for _, r in transcripts
    ]
    assert stats.chi2_contingency(np.stack(h)).pvalue > 1e-4


def test_ot_preprocessing_is_wired_and_refuses_ops_without_a_dealer_free_protocol():
    """`--preprocessing ot` reaches the op table: kinds without a dealer-free protocol say so by
    name (no silent dealer emulation); dealer-free-by-nature protocols are accepted."""
    from privquant import ops
    from privquant.costs import provider_setup_cost
    from privquant.protocols.preprocessing.base import Unavailable
    from privquant.protocols.preprocessing.ot.extension import setup_cost

    for kind in ("input", "flatten", "sumpool", "neg", "output"):
        assert ops.protocol(kind, "privquant", "ot").dealer_free
    for kind, p in ops.KINDS.items():
        if not p.ot_protocols and not getattr(p.protocols["privquant"], "dealer_free", False):
            with pytest.raises(Unavailable, match=kind):
                ops.protocol(kind, "privquant", "ot")
    k4 = setup_cost(4).to_cost()
    assert provider_setup_cost("ot", 4).setup_bits == 128 + k4.setup_bits
    assert provider_setup_cost("dealer").setup_bits == 384
