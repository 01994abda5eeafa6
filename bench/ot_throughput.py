"""OT-extension micro-benchmark: random OTs per second on one core, time shares, bytes per OT.

For each SoftSpokenOT parameter k (k = 1 is IKNP) and each batch size n it sets up an
:class:`~privquant.protocols.preprocessing.ot.extension.OtSession` between P0 and P1 (threads of
this process over the in-process transport), warms up, then extends one batch of ``n`` random OTs
(128-bit keys, random choice bits, P0 sender) and checks every key against the receiver's.

Reported per (k, n):
* ``rot_per_s_one_core``: ``n / (cpu_P0 + cpu_P1)``: both parties' CPU time (per-thread
  ``time.thread_time``) added, i.e. the rate if sender and receiver shared ONE core. Run it
  pinned to one core (``taskset -c 0``) so that this is also the wall-clock rate;
* ``rot_per_s_sender`` / ``rot_per_s_receiver``: one party per core;
* time shares (per party, from ``cProfile`` with the thread CPU clock): ``aes_ctr`` (PRG
  expansion, OpenSSL AES-CTR), ``tccr`` (the hash: fixed-key AES-ECB and its XORs), ``transpose``
  (bit-matrix transposes), ``fold`` (SoftSpokenOT's XOR folding of the leaf streams and the
  subspace correction), ``other``;
* bytes per OT on the wire (logical; header bytes excluded): random choices and chosen choices,
  and the setup bytes of the session (both directions).

Second table: MSB of additively shared ``ell``-bit values (ell = 8, 16, 32; n elements; one
millionaire on ell-1 bits, digit size by cost) per k: measured offline + online bytes per element
(setup excluded, as in SCI's figures) and the ratio to SCI's measured MSB bytes/element
(``privquant/baselines/sci_ops.json``: 90.5 / 218 / 491.5), checked bit for bit.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 taskset -c 0 python bench/ot_throughput.py \\
        [--ks 1,2,4,8] [--ns 20,22] [--msb-n 4096] [--out bench/ot_throughput.md]

writes the markdown table to ``--out`` and the same data as JSON next to it (``.json``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import time
from pathlib import Path

import numpy as np
import torch

from privquant.protocols.preprocessing.ot import extension, millionaire
from privquant.protocols.preprocessing.ot.cost import measured
from privquant.protocols.preprocessing.ot.extension import OtSession, extend_cost, setup_cost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER
from privquant.protocols.transport.thread import simulate

CATEGORIES = {
    "aes_ctr": ("aes.py", "next"),
    "tccr": ("aes.py", "hash_pair"),
    "transpose": ("bitmatrix.py", "transpose"),
    "fold": ("extension.py", "_fold"),
}


def _shares(prof: cProfile.Profile, total: float) -> dict[str, float]:
    st = pstats.Stats(prof)
    cum: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    for (file, _line, fn), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        for cat, (f, name) in CATEGORIES.items():
            if file.endswith(f) and fn == name:
                cum[cat] += ct
    out = {c: v / total for c, v in cum.items()}
    out["other"] = max(0.0, 1.0 - sum(out.values()))
    return out


def run_one(k: int, n: int) -> dict:
    def party(p):
        s = OtSession(p, k, sid=b"bench")
        t0 = time.perf_counter()
        s.setup()
        setup_s = time.perf_counter() - t0
        s.rot(SERVER, 1 << 12)  # warm up buffers and code paths
        prof = cProfile.Profile(time.thread_time)
        w0, c0 = time.perf_counter(), time.thread_time()
        prof.enable()
        res = s.rot(SERVER, n)
        prof.disable()
        cpu = time.thread_time() - c0
        wall = time.perf_counter() - w0
        return res, cpu, wall, setup_s, _shares(prof, cpu)

    r = simulate(party, party, timeout=900)
    (snd, cpu0, wall0, setup0, sh0), (rcv, cpu1, wall1, setup1, sh1) = r.results[:2]
    good = np.where(rcv.r[:, None].astype(bool), snd.m1, snd.m0)
    if not np.array_equal(good, rcv.m):
        raise SystemExit(f"k={k} n={n}: random OT keys do not match")
    tot = measured([p.stats for p in r.parties[:2]])
    ext_bits = tot.offline_bits - extend_cost(k, 1 << 12).offline_bits
    assert ext_bits == extend_cost(k, n).offline_bits, "measured != declared"
    assert tot.setup_bits == setup_cost(k).setup_bits
    return {
        "k": k,
        "n": n,
        "cpu_sender_s": cpu0,
        "cpu_receiver_s": cpu1,
        "wall_s": max(wall0, wall1),
        "rot_per_s_one_core": n / (cpu0 + cpu1),
        "rot_per_s_sender": n / cpu0,
        "rot_per_s_receiver": n / cpu1,
        "shares_sender": sh0,
        "shares_receiver": sh1,
        "bytes_per_ot_random": ext_bits / n / 8,
        "bytes_per_ot_chosen": extend_cost(k, n, chosen=True).offline_bits / n / 8,
        "setup_bytes": tot.setup_bits / 8,
        "setup_s": max(setup0, setup1),
    }


def sci_msb() -> dict[int, float]:
    path = Path(__file__).resolve().parents[1] / "privquant" / "baselines" / "sci_ops.json"
    data = json.loads(path.read_text())
    return {m["bits"]: m["bytes_per_element"] for m in data["measurements"] if m["op"] == "msb"}


def run_msb(k: int, ell: int, n: int, sci: float) -> dict:
    g = torch.Generator().manual_seed(ell)
    x = ring.uniform(g, (n,), ell)
    x0, x1 = ring.share(x, ell, g)
    shares = {SERVER: x0, CLIENT: x1}

    def party(p):
        s = OtSession(p, k, sid=b"bench-msb")
        s.setup()
        with p.scope("msb"):
            t0 = time.perf_counter()
            pre = millionaire.msb_offline(s, n, ell)
            t1 = time.perf_counter()
            out = millionaire.msb_online(p, pre, shares[p.rank])
            t2 = time.perf_counter()
        return out, t1 - t0, t2 - t1

    r = simulate(party, party, timeout=900)
    got = r.results[0][0] ^ r.results[1][0]
    if not torch.equal(got, ((x >> (ell - 1)) & 1).to(torch.uint8)):
        raise SystemExit(f"MSB k={k} ell={ell}: wrong result")
    c = measured([r.parties[0].scopes["msb"], r.parties[1].scopes["msb"]])
    if c != millionaire.msb_cost(k, n, ell):
        raise SystemExit(f"MSB k={k} ell={ell}: measured {c} != declared")
    per = (c.offline_bits + c.online_bits) / 8 / n
    return {
        "k": k,
        "ell": ell,
        "n": n,
        "digit_m": millionaire.best_m(k, ell - 1),
        "offline_bytes_per_elem": c.offline_bits / 8 / n,
        "online_bytes_per_elem": c.online_bits / 8 / n,
        "bytes_per_elem": per,
        "online_rounds": c.online_rounds,
        "sci_bytes_per_elem": sci,
        "ratio_to_sci": per / sci,
        "offline_s": max(r.results[0][1], r.results[1][1]),
        "online_s": max(r.results[0][2], r.results[1][2]),
    }


def _pct(d: dict) -> str:
    return " / ".join(f"{100 * d[c]:.0f}" for c in (*CATEGORIES, "other"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--ns", default="20,22", help="log2 of the batch sizes")
    ap.add_argument("--msb-n", type=int, default=4096, help="elements per MSB run (0: skip)")
    ap.add_argument("--out", default="bench/ot_throughput.md")
    args = ap.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    ns = [1 << int(x) for x in args.ns.split(",")]
    rows = []
    for k in ks:
        for n in ns:
            row = run_one(k, n)
            rows.append(row)
            print(
                f"k={k} n=2^{n.bit_length() - 1}: {row['rot_per_s_one_core'] / 1e6:.2f} M ROT/s "
                f"on one core ({row['rot_per_s_sender'] / 1e6:.2f} M sender, "
                f"{row['rot_per_s_receiver'] / 1e6:.2f} M receiver), "
                f"{row['bytes_per_ot_random']:.3f} B/OT",
                flush=True,
            )
    msb_rows = []
    if args.msb_n:
        sci = sci_msb()
        for k in ks:
            for ell in sorted(sci):
                row = run_msb(k, ell, args.msb_n, sci[ell])
                msb_rows.append(row)
                print(
                    f"MSB k={k} ell={ell}: {row['bytes_per_elem']:.2f} B/elem "
                    f"(SCI {row['sci_bytes_per_elem']}), ratio {row['ratio_to_sci']:.3f}",
                    flush=True,
                )
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "lambda": extension.LAMBDA,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"env": env, "rows": rows, "msb": msb_rows}, indent=1) + "\n"
    )
    lines = [
        "# OT extension throughput (random OT, 128-bit keys)",
        "",
        "Generated by `OMP_NUM_THREADS=1 nice -n 10 taskset -c 0 python bench/ot_throughput.py` "
        f"(CPU affinity {env['cpu_affinity']}). Both parties run as threads of one process; "
        "`one core` = n / (CPU time of sender + receiver), the rate if both shared one core. "
        "Bytes are logical bits on the wire / 8 (receiver -> sender, headers excluded); setup = "
        "base OTs + GGM corrections of both directions, once per session. Time shares (% of each "
        "party's CPU time): AES-CTR PRG / TCCR hash / transposes / SoftSpokenOT folding / other.",
        "",
        "| k | n | M ROT/s one core | M ROT/s sender | M ROT/s receiver | B/OT random | "
        "B/OT chosen | setup KB | shares sender (%) | shares receiver (%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | 2^{r['n'].bit_length() - 1} | {r['rot_per_s_one_core'] / 1e6:.2f} | "
            f"{r['rot_per_s_sender'] / 1e6:.2f} | {r['rot_per_s_receiver'] / 1e6:.2f} | "
            f"{r['bytes_per_ot_random']:.3f} | {r['bytes_per_ot_chosen']:.3f} | "
            f"{r['setup_bytes'] / 1000:.1f} | {_pct(r['shares_sender'])} | "
            f"{_pct(r['shares_receiver'])} |"
        )
    if msb_rows:
        lines += [
            "",
            f"## MSB (one millionaire on ell-1 bits), n = {args.msb_n}, vs SCI's measured MSB",
            "",
            "Bytes per element = offline (OT extension) + online, both parties, setup excluded "
            "(SCI's figures exclude its base-OT/IKNP setup too); checked bit for bit and "
            "measured == declared. Times: wall clock of the offline and online parts (both "
            "parties as threads).",
            "",
            "| k | ell | digit m | offline B | online B | total B/elem | SCI B/elem | ratio | "
            "online rounds | offline s | online s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in msb_rows:
            lines.append(
                f"| {r['k']} | {r['ell']} | {r['digit_m']} | {r['offline_bytes_per_elem']:.2f} | "
                f"{r['online_bytes_per_elem']:.2f} | {r['bytes_per_elem']:.2f} | "
                f"{r['sci_bytes_per_elem']} | {r['ratio_to_sci']:.3f} | {r['online_rounds']} | "
                f"{r['offline_s']:.2f} | {r['online_s']:.2f} |"
            )
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
