"""Shared helpers for the protocol tests (not a test module)."""

from __future__ import annotations

import numpy as np
import torch

from privquant.program import Op
from privquant.protocols.harness import ProtocolRun
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost


def share(x: torch.Tensor, ell: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return ring.share(x.to(torch.int64), ell, g)


def measured(run: ProtocolRun) -> Cost:
    s = run.stats
    return Cost(s.bits_sent["online"], s.bits_sent["offline"], s.bits_sent["setup"], s.rounds)


def assert_cost(run: ProtocolRun, declared: Cost) -> None:
    got = measured(run)
    assert got == declared, f"measured {got} != declared {declared}"
    # every message is header + packed payload; nothing else goes on the wire
    s = run.stats
    for phase in ("online", "offline", "setup"):
        assert s.msgs_sent[phase] == s.msgs_recv[phase]
        assert s.bits_sent[phase] == s.bits_recv[phase]
        assert s.wire_sent[phase] >= 16 * s.msgs_sent[phase] + s.bits_sent[phase] // 8


def requant_op(shift: int, lo: int, hi: int, mults, offset) -> Op:
    arrays = {f"mult{i}": np.asarray(m, dtype=np.int64) for i, m in enumerate(mults)}
    arrays["offset"] = np.asarray(offset, dtype=np.int64)
    return Op(
        "requant",
        "rq",
        [f"x{i}" for i in range(len(mults))],
        "y",
        {"shift": shift, "lo": lo, "hi": hi},
        arrays,
    )
