"""Protocol micro-benchmarks: bytes/element, rounds and elements/second per protocol and ring.

For ell = 8, 16, 32 it runs each protocol of the catalogue end to end in this process (P0, P1 and
the dealer as threads over the in-process transport), checks the output against the plaintext
function, and reports the measured online/offline bytes per element, rounds and online
elements/second (wall time of the online phase, one core per party thread, GIL included: a
relative figure). Next to each row: the SiRNN-style model's bytes/element and rounds for the same
op at the same width (``privquant.baselines.sirnn``; SCI is dealer-free, no offline column).

Ops (n elements each):
  open              both parties learn x in Z_2^ell
  linear            1x16x32x32 conv 3x3 -> 16 channels, ell-bit ring; per output element
                    (SiRNN-style: W = ell-bit operands, weights as OT choice bits)
  comparison        [x >= 0] for x over the whole signed ring (SiRNN-style: MSB/DReLU)
  requant_relu      fused clip(floor(t / 2^(ell/2)), 0, 2^(ell/2) - 1) for t over the ring
                    (SiRNN-style: truncate_and_reduce(ell, ell/2) + ReLU(ell/2))
  maxpool2x2        2x2/stride 2 max pooling; per output element (SiRNN-style: 3 ReLU-max)

Usage: ``python bench/micro.py [--n 16384] [--out bench/micro.md] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from privquant.baselines import sci
from privquant.protocols import requant as rq
from privquant.protocols.basic import Open, OpenSig
from privquant.protocols.compare import Compare, CompareSig
from privquant.protocols.linear import Linear, LinearSig
from privquant.protocols.maxpool import MAXPOOL, MaxpoolSig
from privquant.protocols.preprocessing.dealer import Seeds, make_provider
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import DEALER
from privquant.protocols.transport.thread import simulate


class _Requant:
    """The fused requantization core as a protocol object (for the harness)."""

    def cost(self, sig):
        return rq.FUSED.cost(sig)

    def setup(self, corr, sig, params=None):
        return None

    def offline(self, corr, sig, state=None):
        return rq.FUSED.offline(corr, sig)

    def online(self, party, sig, pre, x):
        return rq.FUSED.online(party, sig, pre, x)


def run(proto, sig, in0, in1, params=None) -> dict:
    """Setup + offline + online with timing of the online phase; returns outputs and stats."""
    times = {}

    def body(party, inputs):
        corr = make_provider(party, Seeds.derived(0, party.rank))
        state = proto.setup(corr, sig, params if party.rank == 0 else None)
        pre = proto.offline(corr, sig, state)
        if party.rank == DEALER:
            return None
        t0 = time.perf_counter()
        out = proto.online(party, sig, pre, *inputs)
        times[party.rank] = time.perf_counter() - t0
        return out

    res = simulate(
        lambda p: body(p, in0), lambda p: body(p, in1), lambda p: body(p, ()), timeout=600
    )
    st = [p.stats for p in res.parties]
    online = sum(s.bits_sent["online"] for s in st)
    offline = sum(s.bits_sent["offline"] for s in st)
    setup = sum(s.bits_sent["setup"] for s in st)
    rounds = max(s.rounds for s in st[:2])
    declared = proto.cost(sig)
    assert (online, offline, setup) == (
        declared.online_bits,
        declared.offline_bits,
        declared.setup_bits,
    ), "measured traffic differs from the declared cost"
    return {
        "out": (res.results[0], res.results[1]),
        "online_bits": online,
        "offline_bits": offline,
        "setup_bits": setup,
        "rounds": rounds,
        "online_s": max(times.values()),
    }


def _share(x: torch.Tensor, ell: int, seed: int = 1):
    return ring.share(x.to(torch.int64), ell, torch.Generator().manual_seed(seed))


def _open(a, b, ell):
    return ring.to_signed(ring.reduce(a + b, ell), ell)


def bench_ell(ell: int, n: int, gen: torch.Generator) -> list[dict]:
    rows = []
    H = 1 << (ell - 1)

    def row(op, r, elems, sir: sci.Bits, note=""):
        rows.append(
            {
                "op": op,
                "ell": ell,
                "n": elems,
                "online_B_per_elem": r["online_bits"] / 8 / elems,
                "offline_B_per_elem": r["offline_bits"] / 8 / elems,
                "setup_B_per_elem": r["setup_bits"] / 8 / elems,
                "rounds": r["rounds"],
                "elems_per_s": elems / r["online_s"] if r["online_s"] > 0 else None,
                "sirnn_B_per_elem": sir.bits / 8,
                "sirnn_rounds": sir.rounds,
                "note": note,
            }
        )

    # open
    x = torch.randint(-H, H, (n,), generator=gen)
    a, b = _share(x, ell)
    r = run(Open(), OpenSig((n,), ell), (a,), (b,))
    assert torch.equal(r["out"][0], x)
    row("open", r, n, sci.Bits(2 * ell, 1))

    # linear: conv 3x3, 16 -> 16 channels on 32x32, weights in [-7, 7], inputs small enough
    # that nothing wraps (bit-exactness checked)
    xs = (1, 16, 32, 32)
    ws = (16, 16, 3, 3)
    w = torch.randint(-7, 8, ws, generator=gen)
    xin = torch.randint(0, 1 << max(1, ell // 2 - 6), xs, generator=gen)
    sig = LinearSig("conv2d", xs, ws, ell, (1, 1), (1, 1), 1, key="micro")
    a, b = _share(xin, ell)
    params = {"weight": w.numpy(), "bias": np.zeros(16, np.int64)}
    r = run(Linear(), sig, (a,), (b,), params)
    want = torch.nn.functional.conv2d(xin, w, padding=1)
    assert torch.equal(_open(*r["out"], ell), ring.to_signed(ring.reduce(want, ell), ell))
    m_out = int(np.prod(sig.y_shape))
    k = 16 * 9
    # SiRNN-style conv at width ell: per output element (cost model, favourable extension)
    sl = sci.linear_layer(32 * 32, k, 16, int(np.prod(xs)), sci.SirnnConfig(ell), msb_known=True)
    row("linear", r, m_out, sci.Bits(sl.bits // m_out, sl.rounds), "per output element")

    # comparison [x >= 0]
    x = torch.randint(-H, H, (n,), generator=gen)
    a, b = _share(x, ell)
    r = run(Compare(), CompareSig(n, ell, (0,)), (a,), (b,))
    got = r["out"][0][0] ^ r["out"][1][0]
    assert torch.equal(got.long(), (x >= 0).long())
    row("comparison", r, n, sci.msb(ell))

    # fused requant + ReLU + clip
    k_sh = ell // 2
    hi = (1 << k_sh) - 1
    x = torch.randint(-H, H, (n,), generator=gen)
    a, b = _share(x, ell)
    sig = rq.RequantSig(n, ell, k_sh, 0, hi, -H, H - 1, ell)
    r = run(_Requant(), sig, (a,), (b,))
    want = torch.clamp(x >> k_sh, 0, hi)
    assert torch.equal(_open(*r["out"], ell), want)
    row(
        "requant_relu",
        r,
        n,
        sci.truncate_and_reduce(ell, k_sh) + sci.relu(ell - k_sh),
        f"shift {k_sh}, clip [0, {hi}]",
    )

    # max pooling 2x2
    side = max(2, int(np.sqrt(n // 16)) // 2 * 2)
    xs = (1, 16, side, side)
    lo, hi = 0, (1 << (ell - 2)) - 1
    x = torch.randint(lo, hi + 1, xs, generator=gen)
    a, b = _share(x, ell)
    sig = MaxpoolSig(xs, (2, 2), (2, 2), (0, 0), lo, hi, ell, ell)
    r = run(MAXPOOL, sig, (a,), (b,))
    want = torch.nn.functional.max_pool2d(x.double(), 2).long()
    assert torch.equal(_open(*r["out"], ell), want)
    n_out = int(np.prod(sig.out_shape))
    rl = sci.relu(ell)
    row("maxpool2x2", r, n_out, sci.Bits(3 * rl.bits, 3 * rl.rounds), "per output element")
    return rows


def markdown(rows: list[dict], n: int) -> str:
    out = [
        "# Protocol micro-benchmarks",
        "",
        f"Generated by `python bench/micro.py --n {n}`: each protocol run end to end in one "
        "process (P0, P1, dealer as threads); measured bytes equal the declared `cost()`; outputs "
        "checked against plaintext. B/elem are bytes per element summed over all senders; "
        "elements/s is the online phase only (threads share the GIL: relative figures). "
        "SiRNN-style columns: the SCI cost model at the same width (dealer-free, all online).",
        "",
        "| op | ell | n | online B/elem | offline B/elem | rounds | elements/s "
        "| SiRNN-style B/elem | SiRNN-style rounds | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = f"{r['elems_per_s']:.3g}" if r["elems_per_s"] else "-"
        out.append(
            f"| {r['op']} | {r['ell']} | {r['n']} | {r['online_B_per_elem']:.2f} | "
            f"{r['offline_B_per_elem']:.2f} | {r['rounds']} | {eps} | "
            f"{r['sirnn_B_per_elem']:.1f} | {r['sirnn_rounds']} | {r['note']} |"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16384, help="elements per op")
    p.add_argument("--ells", default="8,16,32")
    p.add_argument("--out", default=None, help="write markdown here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for ell in (int(v) for v in args.ells.split(",")):
        rows += bench_ell(ell, args.n, gen)
    md = markdown(rows, args.n)
    if args.out:
        Path(args.out).write_text(md)
    if args.json:
        print(json.dumps({"n": args.n, "rows": rows}))
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
