"""Helpers for the runtime tests: run the three roles as threads, record transcripts, compare
views, make argmax inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

import privquant
from privquant.program import Program
from privquant.protocols.transport.thread import simulate
from privquant.report import CommReport
from privquant.runtime import run_role

WEIGHTS = Path(privquant.__file__).resolve().parent / "models" / "weights"


def shipped(name: str):
    return privquant.load(WEIGHTS / name)


class Recording:
    """Transport wrapper keeping every payload this party received, in order."""

    def __init__(self, inner):
        self.inner = inner
        self.payloads: list[bytes] = []

    def recv_payload(self, src, nbytes, what):
        data = self.inner.recv_payload(src, nbytes, what)
        self.payloads.append(bytes(np.asarray(data, dtype=np.uint8).tobytes()))
        return data

    def __getattr__(self, name):
        return getattr(self.inner, name)


def run_threads(
    program: Program, x, *, backend="privquant", record=False, timeout=300.0, schedule="auto"
):
    """Server (full program), client (public program, input) and dealer as threads."""
    pub = Program.from_public_dict(program.public_dict())
    batch = int(torch.as_tensor(np.asarray(x)).shape[0])
    recs = {}

    def role(p, prog, **kw):
        if record:
            p.transport = recs[p.rank] = Recording(p.transport)
        return run_role(p, prog, batch=batch, backend=backend, schedule=schedule, **kw)

    res = simulate(
        lambda p: role(p, program),
        lambda p: role(p, pub, x=x),
        lambda p: role(p, pub),
        timeout=timeout,
    )
    report = CommReport.from_stats(
        program,
        [{"stats": r.stats, "scopes": r.scopes} for r in res.results],
        batch=batch,
        backend=backend,
    )
    return res.results[1].logits, report, recs


def with_other_weights(art, seed: int):
    """The same public program with different (random, in-range) secret weights and biases."""
    prog = copy.deepcopy(art.program)
    gen = np.random.default_rng(seed)
    for op in prog.ops:
        if "weight" in op.arrays:
            qmax = (1 << (int(op.attrs["w_bits"]) - 1)) - 1
            w = op.arrays["weight"]
            op.arrays["weight"] = gen.integers(-qmax, qmax + 1, w.shape).astype(w.dtype)
            b = op.arrays["bias"]
            op.arrays["bias"] = gen.integers(-100, 101, b.shape).astype(b.dtype)
    return prog


def max_z(views_a: np.ndarray, views_b: np.ndarray) -> float:
    """Largest two-sample z statistic over bit positions of two stacks of transcript bits (equal
    marginals: about 4 at most)."""
    m = len(views_a)
    pa, pb = views_a.mean(0), views_b.mean(0)
    p = (pa + pb) / 2
    var = p * (1 - p) * 2 / m
    diff = np.abs(pa - pb)
    z = np.where(var > 0, diff / np.sqrt(np.where(var > 0, var, 1)), np.where(diff > 0, np.inf, 0))
    return float(z.max())


def argmax_logits(lo: int, hi: int, n: int, classes: int, ties: bool, seed: int) -> torch.Tensor:
    """(n, classes) logits in ``[lo, hi]`` with both extremes present; with ``ties``, few distinct
    values (many equal logits, broken by the lower index)."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        vals = torch.tensor([lo, hi, (lo + hi) // 2])
        x = vals[torch.randint(0, 3, (n, classes), generator=g)]
    else:
        x = torch.randint(lo, hi + 1, (n, classes), generator=g)
    x.view(-1)[0] = hi
    x.view(-1)[-1] = lo
    return x
