"""HE (BFV, Cheetah-style) linear layers of resnet18-cifar: traffic and time vs the OT cost.

For every distinct conv/linear shape of ``privquant.models.resnet.resnet18_cifar`` (batch 1,
3x32x32 input; shapes read from the model by forward hooks) and each ring ``ell``, with
``b_w``-bit weights, it runs the HE protocol end to end (P0 and P1 as threads over the
in-process transport: setup, then one layer), checks the shares against ``ring_lin`` and the
measured bytes against ``cost()``, and reports:

* MB each way (P1 -> P0 query, P0 -> P1 response), 1 MB = 10^6 bytes;
* CPU seconds of each party's thread for the layer (``time.thread_time``; SEAL is
  single-threaded, so this is the party's compute), P0 with the weight plaintexts prepared
  once per model load (their preparation is reported separately), and the end-to-end wall time
  of the layer, once with ``OMP_NUM_THREADS=1`` and once with the default threads (each setting
  in its own subprocess);
* the OT cost of the same layer (weights as choice bits, SiRNN orientation):
  ``sum_{j < b_w} |W| * M * (ell - j) + 128 * |W| * b_w`` bits, ``M`` = output positions per
  weight (``B * OH * OW``, the batch for linear).

Usage: ``python bench/he_linear.py [--ells 16,20,24] [--w-bits 4] [--out bench/he_linear.md]
[--save rows.json] [--from-json rows.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from privquant.protocols.linear import LinearSig, ring_lin
from privquant.protocols.preprocessing import he
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import combine
from privquant.protocols.transport.thread import simulate


def resnet18_layers() -> list[tuple[str, int, dict]]:
    """(first module name, count, geometry) of each distinct linear shape of resnet18-cifar."""
    from torch import nn

    from privquant.models.resnet import resnet18_cifar

    model = resnet18_cifar().eval()
    seen: dict[tuple, list] = {}

    def hook(name):
        def f(mod, inp, out):
            x = tuple(inp[0].shape)
            if isinstance(mod, nn.Conv2d):
                g = dict(
                    kind="conv2d",
                    x_shape=x,
                    w_shape=tuple(mod.weight.shape),
                    stride=tuple(mod.stride),
                    padding=tuple(mod.padding),
                    groups=mod.groups,
                )
            else:
                g = dict(kind="linear", x_shape=x, w_shape=tuple(mod.weight.shape))
            key = tuple(sorted(g.items()))
            seen.setdefault(key, [name, 0, g])[1] += 1

        return f

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return [tuple(v) for v in seen.values()]


def ot_bits(sig: LinearSig, w_bits: int) -> int:
    nw = 1
    for d in sig.w_shape:
        nw *= d
    y = sig.y_shape
    m = y[0] * (y[2] * y[3] if sig.kind == "conv2d" else 1)
    return sum(nw * m * (sig.ell - j) for j in range(w_bits)) + 128 * nw * w_bits


def measure(sig: LinearSig, w_bits: int, seed: int = 0) -> dict:
    pl = he.plan(sig, w_bits)
    g = torch.Generator().manual_seed(seed)
    lo = -(1 << (w_bits - 1))
    w = torch.randint(lo, -lo, sig.w_shape, generator=g)
    a = ring.uniform(g, sig.x_shape, sig.ell)
    out = {}

    def f0(p):
        keys = he.setup(p, [pl.params])
        t = time.thread_time()
        prep = he.PreparedWeights(sig, w_bits, w, keys)
        out["p0_prep"] = time.thread_time() - t
        t = time.thread_time()
        with p.scope("layer"):
            s = he.server(p, sig, w_bits, prep, keys)
        out["p0"] = time.thread_time() - t
        return s

    def f1(p):
        keys = he.setup(p, [pl.params])
        t, t1 = time.perf_counter(), time.thread_time()
        with p.scope("layer"):
            y = he.client(p, sig, w_bits, a, keys)
        out["p1"] = time.thread_time() - t1
        out["wall"] = time.perf_counter() - t
        return y

    res = simulate(f0, f1, None, timeout=900)
    ok = torch.equal(ring.reduce(res.results[0] + res.results[1], sig.ell), ring_lin(sig, w, a))
    st = [res.parties[r].scopes["layer"] for r in (0, 1)]
    declared = he.cost(sig, w_bits)
    return dict(
        exact=bool(ok),
        cost_ok=combine(st).offline_bits == declared.offline_bits,
        q_bytes=st[1].bits_sent["offline"] // 8,
        r_bytes=st[0].bits_sent["offline"] // 8,
        **out,
    )


def worker(ells: list[int], w_bits: int) -> list[dict]:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rows = []
    for name, count, geo in resnet18_layers():
        for ell in ells:
            sig = LinearSig(ell=ell, key=name, **geo)
            pl = he.plan(sig, w_bits)
            rows.append(
                dict(
                    layer=name,
                    count=count,
                    ell=ell,
                    geo=geo,
                    n=pl.params.n,
                    bits=list(pl.params.bits),
                    n_in=pl.layout.n_in,
                    n_out=pl.layout.n_resp,
                    cw=pl.layout.cw,
                    mw=pl.layout.mw,
                    declared_bits=pl.bits,
                    pk_bits=pl.params.pk_bits,
                    ot_bits=ot_bits(sig, w_bits),
                    **measure(sig, w_bits),
                    load=os.getloadavg()[0],
                )
            )
            print(f"{name} ell={ell}: {rows[-1]['wall']:.2f} s", file=sys.stderr, flush=True)
    return rows


def _run_worker(ells, w_bits, threads: str | None) -> list[dict]:
    env = dict(os.environ)
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = threads
    cmd = [sys.executable, __file__, "--worker", "--ells", ",".join(map(str, ells))]
    cmd += ["--w-bits", str(w_bits)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"worker failed ({threads=})")
    return json.loads(res.stdout)


def _shape(geo: dict) -> str:
    if geo["kind"] == "linear":
        return f"linear {geo['w_shape'][1]}x{geo['w_shape'][0]}"
    x, w = geo["x_shape"], geo["w_shape"]
    return f"{w[1]}->{w[0]} {w[2]}x{w[3]} s{geo['stride'][0]} @{x[2]}x{x[3]}"


def _load(rows: list[dict]) -> str:
    vals = [r["load"] for r in rows]
    return f"{min(vals):.1f}-{max(vals):.1f}"


def render(one: list[dict], dflt: list[dict], ells, w_bits: int) -> str:
    mb = 1e6
    lines = [
        "# HE linear layers (BFV via SEAL, Cheetah-style packing) on resnet18-cifar",
        "",
        f"Generated by `python bench/he_linear.py --ells {','.join(map(str, ells))} "
        f"--w-bits {w_bits}` (batch 1, b_w = {w_bits}). Each row ran end to end (P0 and P1 as "
        "threads in one process, in-process transport): shares equal `ring_lin` and the "
        "measured bytes equal `he.cost()` in every row (columns `exact`, `=cost`). "
        "MB = 10^6 bytes. CPU s = the party thread's CPU time for the layer (SEAL runs "
        "single-threaded); P0 with its weight plaintexts prepared once per model load "
        "(`prep s`, not per inference). wall s = end-to-end time of the layer, measured with "
        "`OMP_NUM_THREADS=1` and with the default threads (separate runs). The machine's 2 cores "
        "were shared with other jobs (1-minute load average during the runs: "
        f"{_load(one)}; {_load(dflt)}): wall times are upper bounds, CPU times are the "
        "reliable figure. OT = the same layer by OT "
        "with the weights as choice bits: sum_{j<b_w} |W| M (ell - j) + 128 |W| b_w bits.",
        "",
        "| layer | shape | x | ell | n | primes (bits) | cts in/out | P1->P0 MB | P0->P1 MB "
        "| HE MB | exact | =cost | P0 CPU s | prep s | P1 CPU s | wall s 1thr | wall s dflt "
        "| OT MB | OT/HE |",
        "|" + "---|" * 19,
    ]
    tot = {ell: [0.0, 0.0, 0.0, 0.0, 0.0, set(), 0.0] for ell in ells}
    for r, d in zip(one, dflt):
        he_mb = r["declared_bits"] / 8 / mb
        lines.append(
            f"| {r['layer']} | {_shape(r['geo'])} | {r['count']} | {r['ell']} | {r['n']} "
            f"| {'+'.join(map(str, r['bits']))} | {r['n_in']}/{r['n_out']} "
            f"| {r['q_bytes'] / mb:.2f} | {r['r_bytes'] / mb:.2f} | {he_mb:.2f} "
            f"| {'yes' if r['exact'] and d['exact'] else 'NO'} "
            f"| {'yes' if r['cost_ok'] and d['cost_ok'] else 'NO'} "
            f"| {r['p0']:.2f} | {r['p0_prep']:.2f} | {r['p1']:.2f} | {r['wall']:.2f} "
            f"| {d['wall']:.2f} | {r['ot_bits'] / 8 / mb:.1f} "
            f"| {r['ot_bits'] / r['declared_bits']:.0f} |"
        )
        t = tot[r["ell"]]
        t[0] += r["count"] * he_mb
        t[1] += r["count"] * r["ot_bits"] / 8 / mb
        t[2] += r["count"] * r["p0"]
        t[6] += r["count"] * r["p0_prep"]
        t[3] += r["count"] * r["p1"]
        t[4] += r["count"] * r["wall"]
        t[5].add((r["n"], tuple(r["bits"]), r["pk_bits"]))
    lines += [
        "",
        "Whole network (every conv and the fc, `x` = how many layers have that shape), per "
        "inference; setup = the client's public keys, once per session (one per distinct "
        "SEAL context):",
        "",
        "| ell | HE MB | OT MB | OT/HE | P0 CPU s | P0 prep s (once) | P1 CPU s | wall s 1thr "
        "| setup MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ell in ells:
        t = tot[ell]
        setup = sum(k[2] for k in t[5]) / 8 / mb
        lines.append(
            f"| {ell} | {t[0]:.1f} | {t[1]:.0f} | {t[1] / t[0]:.0f} | {t[2]:.1f} | {t[6]:.1f} "
            f"| {t[3]:.1f} | {t[4]:.1f} | {setup:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ells", default="16,20,24")
    ap.add_argument("--w-bits", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).with_name("he_linear.md")))
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--save", help="also write the measured rows to this JSON file")
    ap.add_argument("--from-json", help="re-render the markdown from a --save file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    ells = [int(e) for e in args.ells.split(",")]
    if args.worker:
        print(json.dumps(worker(ells, args.w_bits)))
        return
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        one, dflt = saved["one_thread"], saved["default_threads"]
    else:
        one = _run_worker(ells, args.w_bits, "1")
        dflt = _run_worker(ells, args.w_bits, None)
    if args.save:
        Path(args.save).write_text(json.dumps({"one_thread": one, "default_threads": dflt}))
    text = render(one, dflt, ells, args.w_bits)
    Path(args.out).write_text(text)
    if args.json:
        print(json.dumps({"one_thread": one, "default_threads": dflt}))
    else:
        print(text)


if __name__ == "__main__":
    main()
