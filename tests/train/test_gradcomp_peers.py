"""Hostile or broken peers, in-process: a fake communicator hands the hook's decoder the
payloads 'the other rank' sent. Honest payloads decode to the mean; malformed ones (indices out
of range, codes outside the format, truncated or oversized streams, non-finite scales) raise one
PeerError instead of corrupting the model."""

from __future__ import annotations

import pytest
import torch

from privquant.errors import PeerError
from privquant.train.gradcomp import make
from privquant.train.gradcomp.bits import Segments
from privquant.train.gradcomp.comm import Ledger


class FakeComm:
    """Rank 0 of W = 2; ``peer(payload)`` is what rank 1 sends in reply to ours."""

    def __init__(self, peer):
        self.world, self.rank = 2, 0
        self.ledger = Ledger(2, 0)
        self.peer = peer

    def allgather(self, t):
        outs = [t.clone(), self.peer(t.clone()) if t.dtype == torch.uint8 else t.clone()]
        fut = torch.futures.Future()
        fut.set_result(outs)
        return fut, outs

    def allgather_now(self, t):
        return self.allgather(t)[1]


def compress(method, peer, n=300, **opts):
    comp = make(method, seed=0, **opts)
    comp.comm = FakeComm(peer)
    comp.gen.manual_seed(0)
    comp.iteration = 5
    buf = torch.randn(n)
    seg = Segments([100, n - 100])
    return comp.compress(0, buf.clone(), seg), buf


@pytest.mark.parametrize("method", ["terngrad", "qsgd", "dgc", "bingrad", "orq", "co3"])
def test_honest_echo_decodes_to_own_estimate(method):
    """Both ranks sending the same payload: the mean is this rank's own decoded estimate."""
    fut, buf = (
        compress(method, lambda p: p, density=0.5)
        if method == "dgc"
        else compress(method, lambda p: p)
    )
    out = fut.wait()
    assert out.shape == buf.shape and torch.isfinite(out).all()
    rel = float((out - buf).norm() / buf.norm())
    assert rel < 1.5  # a compressed estimate of the same gradient


def _poke(offset, value):
    def f(p):
        p[offset] = value
        return p

    return f


@pytest.mark.parametrize(
    "method,opts,peer,match",
    [
        ("dgc", {"density": 0.1}, lambda p: _set_i32(p, 30 * 4, 10**6), "index"),
        ("dgc", {"density": 0.1}, lambda p: _set_i32(p, 30 * 4, -1), "index"),
        ("terngrad", {}, _poke(-1, 0xFF), "code 3"),
        ("terngrad", {}, lambda p: _set_f32(p, 0, float("nan")), "scaler"),
        ("qsgd", {"levels": 5}, _poke(-1, 0xFF), "code"),
        ("qsgd", {}, lambda p: _set_f32(p, 0, float("inf")), "norm"),
        ("orq", {"levels": 3}, _poke(-1, 0xFF), "code"),
        ("bingrad", {}, lambda p: _set_f32(p, 4, float("nan")), "level"),
        ("co3", {}, _poke(6, 0x00), "inflate"),
        ("co3", {}, _poke(3, 0x7F), "exponent"),
    ],
)
def test_malformed_payloads_raise(method, opts, peer, match):
    fut, _ = compress(method, peer, **opts)
    # decoding runs in the future's callback: torch wraps the PeerError in a RuntimeError
    with pytest.raises(RuntimeError, match=f"PeerError: malformed gradient payload.*({match})"):
        fut.wait()


def _set_f32(p, i, v):
    p[i : i + 4] = torch.tensor([v], dtype=torch.float32).view(torch.uint8)
    return p


def _set_i32(p, i, v):
    p[i : i + 4] = torch.tensor([v], dtype=torch.int32).view(torch.uint8)
    return p


def test_co3_oversized_length_rejected_before_gathering():
    comp = make("co3")
    comp.comm = FakeComm(lambda p: p)
    comp.comm.allgather_now = lambda t: [t, torch.tensor([10**9])]
    comp.iteration = 5
    with pytest.raises(PeerError, match="length"):
        comp.compress(0, torch.randn(50), Segments([50]))
