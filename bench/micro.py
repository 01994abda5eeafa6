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

Lookup-table activations (second table): for b = 2, 4, 6, 8 an activation between two linear
layers (accumulator ring L = 20, next layer's ring 16, pre-sum over the whole ring) costs, per
element, either the fused requantization with ReLU + clip to b bits (``relu``), or a
requantization to a signed b-bit value in its small ring followed by a b-bit GELU table
(``requant -> b-bit`` + ``gelu table`` = ``gelu total``); ``gelu table`` alone is the price of
the lookup, and the ``unfused`` row the requantization into the wide ring instead. Next to
them, SiRNN-style (SCI) at the same width: truncation to b bits and one
1-out-of-2^b OT lookup with 16-bit messages (a lower bound for SiRNN's GELU).

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
from privquant.protocols.lut import LUT, LutSig
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


LUT_BITS = (2, 4, 6, 8)
ACC_RING, NEXT_RING = 20, 16


def bench_lut(n: int, gen: torch.Generator) -> list[dict]:
    """Per element: ReLU (fused requant) vs requant + GELU table, b = 2..8 (see the docstring)."""
    from privquant.ops.lut import table_values

    rows = []
    L, H = ACC_RING, 1 << (ACC_RING - 1)
    t = torch.randint(-H, H, (n,), generator=gen)
    t[0], t[1] = -H, H - 1
    a, b_ = _share(t, L)
    for b in LUT_BITS:
        k = L - b - 2  # the pre-sum spans about 4x the b-bit range: clipping matters
        hi = (1 << b) - 1
        res = {}
        relu = rq.RequantSig(n, L, k, 0, hi, -H, H - 1, NEXT_RING)
        r = run(_Requant(), relu, (a,), (b_,))
        assert torch.equal(_open(*r["out"], NEXT_RING), torch.clamp(t >> k, 0, hi))
        res["relu"] = r
        slo, shi = -(1 << (b - 1)), (1 << (b - 1)) - 1
        ring_in = ring.signed_bits(slo, shi)  # the requant's small ring (no lift)
        pre = rq.RequantSig(n, L, k, slo, shi, -H, H - 1, ring_in)
        r = run(_Requant(), pre, (a,), (b_,))
        q = torch.clamp(t >> k, slo, shi)
        assert torch.equal(_open(*r["out"], ring_in), q)
        res["requant"] = r
        wide = rq.RequantSig(n, L, k, slo, shi, -H, H - 1, NEXT_RING)  # not fused: a wide ring
        r = run(_Requant(), wide, (a,), (b_,))
        assert torch.equal(_open(*r["out"], NEXT_RING), q)
        res["wide"] = r
        s_in = 4.0 / (1 << (b - 1))
        table = table_values("gelu", (), range(slo, shi + 1), s_in, 4.0 / hi, 0, hi)
        sig = LutSig(n, b, slo, tuple(table), 0, hi, NEXT_RING)
        r = run(LUT, sig, r["out"][:1], r["out"][1:])
        assert torch.equal(_open(*r["out"], NEXT_RING), torch.tensor(table)[q - slo])
        res["lut"] = r
        sir = sci.truncate_and_reduce(L, L - b) + sci.kkot(1 << b, NEXT_RING)
        sir_relu = sci.truncate_and_reduce(L, k) + sci.relu(L - k)
        for name, parts, sr in (
            ("relu (fused requant)", ["relu"], sir_relu),
            ("requant -> signed b-bit", ["requant"], None),
            (f"(unfused: requant -> ring {NEXT_RING})", ["wide"], None),
            ("gelu table", ["lut"], None),
            ("gelu total", ["requant", "lut"], sir),
        ):
            on = sum(res[p]["online_bits"] for p in parts)
            off = sum(res[p]["offline_bits"] for p in parts)
            rounds = sum(res[p]["rounds"] for p in parts)
            secs = sum(res[p]["online_s"] for p in parts)
            rows.append(
                {
                    "op": name,
                    "b": b,
                    "n": n,
                    "online_B_per_elem": on / 8 / n,
                    "offline_B_per_elem": off / 8 / n,
                    "rounds": rounds,
                    "elems_per_s": n / secs if secs > 0 else None,
                    "sirnn_B_per_elem": sr.bits / 8 if sr else None,
                    "sirnn_rounds": sr.rounds if sr else None,
                    "plan": sig.plan[0] if "lut" in parts else "",
                }
            )
    return rows


def lut_markdown(rows: list[dict]) -> list[str]:
    out = [
        "",
        "## Lookup-table activations vs ReLU",
        "",
        f"Per element, accumulator ring {ACC_RING}, next layer's ring {NEXT_RING}, dealer "
        "preprocessing; measured (== declared `cost()`) and checked against plaintext. `relu`: "
        "the fused requantization with ReLU and clip to b bits; `gelu total`: a requantization "
        "to a signed b-bit value in its small ring, then a b-bit GELU table "
        "(`privquant.protocols.lut`, plan in the last column). SiRNN-style: SCI truncation to "
        "b bits + a 1-out-of-2^b OT lookup (16-bit messages), a lower bound for SiRNN's GELU; "
        "for relu: truncate_and_reduce + ReLU. A network at activation bits a uses b = "
        "min(8, a + 2) for its tables (w4a4: the b = 6 rows). The `unfused` row is the same "
        f"requantization emitted into the {NEXT_RING}-bit ring, as it would be without the "
        "table reading its small ring (what the fusion saves).",
        "",
        "| op | b | online B/elem | offline B/elem | total B/elem | rounds | elements/s "
        "| SiRNN-style B/elem | SiRNN-style rounds | lut plan |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = f"{r['elems_per_s']:.3g}" if r["elems_per_s"] else "-"
        sb = f"{r['sirnn_B_per_elem']:.1f}" if r["sirnn_B_per_elem"] is not None else ""
        sr = str(r["sirnn_rounds"]) if r["sirnn_rounds"] is not None else ""
        tot = r["online_B_per_elem"] + r["offline_B_per_elem"]
        out.append(
            f"| {r['op']} | {r['b']} | {r['online_B_per_elem']:.2f} | "
            f"{r['offline_B_per_elem']:.2f} | {tot:.2f} | {r['rounds']} | {eps} | {sb} | {sr} "
            f"| {r['plan']} |"
        )
    return out


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
    p.add_argument("--no-lut", action="store_true", help="skip the lookup-table section")
    p.add_argument("--out", default=None, help="write markdown here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for ell in (int(v) for v in args.ells.split(",")):
        rows += bench_ell(ell, args.n, gen)
    md = markdown(rows, args.n)
    lut_rows = [] if args.no_lut else bench_lut(args.n, gen)
    if lut_rows:
        md += "\n".join(lut_markdown(lut_rows)) + "\n"
    if args.out:
        Path(args.out).write_text(md)
    if args.json:
        print(json.dumps({"n": args.n, "rows": rows, "lut_rows": lut_rows}))
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
