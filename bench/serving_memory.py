"""Peak memory per party of real serving sessions, and resnet18-cifar online time per batch size;
writes bench/serving_memory.md (and .json).

Memory: ``privquant dealer``, ``privquant serve`` and ``privquant client`` as three OS processes
on loopback (TLS, dealer preprocessing, default output policy ``label``); the peak resident set
of the dealer and the server is their ``VmHWM`` (``/proc/PID/status``) read after the client
finished, the client's is ``/usr/bin/time -v``'s "Maximum resident set size". Scenarios:

* resnet8 w4a4 (shipped): ``client --input`` of the 500 shipped test images, server
  ``--max-batch 32`` (16 inferences in one session);
* resnet18-cifar w4a4 (random weights, quantized here): ``client --input`` of 16 random
  images, server ``--max-batch 16`` (one inference of batch 16).

Online time and memory: ``privquant infer`` (gloo, 3 processes) of resnet18-cifar at batch 1,
4 and 16 (one inference each): the client's online seconds per image (best of ``--repeats``
runs) and each role's peak RSS (``getrusage``, reported by the role).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/serving_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESNET8 = ROOT / "privquant" / "models" / "weights" / "resnet8-w4a4.pq"
LIMIT_MB = 1500.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "privquant.cli", *args]


def _hwm_mb(pid: int) -> float:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _wait_line(path: Path, text: str, proc, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3]} exited: {path.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"no {text!r} in {path}")


def free_port() -> int:
    from privquant.launch import free_port as fp

    return fp()


def session_memory(tmp: Path, artifact: Path, x: np.ndarray, max_batch: int) -> dict:
    """One dealer, one server, one client session over ``x``; peak RSS (MB) per party."""
    from privquant.ops.argmax import plain_topk
    from privquant.program import run_plain
    from privquant.protocols.transport.keys import Identity
    from privquant.quantized import QuantizedModel

    keys = {}
    for role in ("server", "dealer"):
        ident = Identity.generate()
        path = tmp / f"{role}-{time.monotonic_ns()}.key"
        ident.save(path)
        keys[role] = (str(path), ident.fingerprint)
    dport, sport = free_port(), free_port()
    logs = {r: tmp / f"{r}.log" for r in ("dealer", "server")}
    dealer = subprocess.Popen(
        _cli("dealer", "--key", keys["dealer"][0], "--trust-server", keys["server"][1],
             "--listen", f"127.0.0.1:{dport}", "--timeout", "600"),
        stderr=logs["dealer"].open("w"), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    server = subprocess.Popen(
        _cli("serve", str(artifact), "--key", keys["server"][0], "--listen", f"127.0.0.1:{sport}",
             "--dealer", f"127.0.0.1:{dport}", "--dealer-key", keys["dealer"][1],
             "--max-batch", str(max_batch), "--timeout", "600"),
        stderr=logs["server"].open("w"), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_line(logs["dealer"], "dealing on", dealer)
        _wait_line(logs["server"], "serving", server)
        base = {"dealer": _hwm_mb(dealer.pid), "server": _hwm_mb(server.pid)}
        np.save(tmp / "input.npy", x)
        art = QuantizedModel.load(artifact)
        t0 = time.perf_counter()
        r = subprocess.run(
            ["/usr/bin/time", "-v",
             *_cli("client", "--server", f"127.0.0.1:{sport}", "--server-key", keys["server"][1],
                   "--dealer-key", keys["dealer"][1], "--expect-hash", art.architecture_hash(),
                   "--input", str(tmp / "input.npy"), "--timeout", "600", "--json")],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"client failed: {r.stderr[-2000:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
        client_mb = int(m.group(1)) / 1024
        peak = {"dealer": _hwm_mb(dealer.pid), "server": _hwm_mb(server.pid), "client": client_mb}
        res = json.loads(r.stdout)
        ref = torch.cat(
            [
                run_plain(art.program, torch.from_numpy(x[i : i + 100]))
                for i in range(0, len(x), 100)
            ]
        )
        exact = res["labels"] == plain_topk(ref, 1)[:, 0].tolist()
    finally:
        for p in (server, dealer):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (server, dealer):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {
        "model": art.model,
        "images": len(x),
        "max_batch": max_batch,
        "inferences": res["inferences"],
        "peak_rss_mb": peak,
        "rss_after_load_mb": base,
        "labels_exact": exact,
        "output": res["output"],
        "client_wall_s": wall,
    }


def cifar_artifact(path: Path) -> Path:
    if path.exists():
        return path
    import privquant
    from privquant.cli import _randomize_bn
    from privquant.models import build_model, input_shape

    torch.manual_seed(0)
    model = build_model("resnet18-cifar")
    _randomize_bn(model, 0)
    gen = torch.Generator().manual_seed(0)
    shape = input_shape("resnet18-cifar")
    calib = torch.randint(0, 256, (32, *shape), dtype=torch.uint8, generator=gen)
    privquant.quantize(model, calib, "w4a4", name="resnet18-cifar", progress=False).save(path)
    return path


def online_per_image(artifact: Path, batches, repeats: int) -> list[dict]:
    from privquant.launch import infer_local

    out = []
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (max(batches), 3, 32, 32), dtype=torch.uint8, generator=gen)
    for b in batches:
        runs = []
        for _ in range(repeats):
            r = infer_local(artifact, x[:b], timeout=900, chunk=b)
            s = r["report"].seconds
            runs.append(
                {
                    "client_online_s": s["client_online"],
                    "server_online_s": s["server_online"],
                    "identical": r["identical"],
                    "peak_rss_mb": r["peak_rss_mb"],
                }
            )
        best = min(runs, key=lambda q: q["client_online_s"])
        out.append(
            {
                "batch": b,
                "client_online_s_per_image": best["client_online_s"] / b,
                "runs_client_online_s": [q["client_online_s"] for q in runs],
                "identical": all(q["identical"] for q in runs),
                "peak_rss_mb": {
                    role: max(q["peak_rss_mb"][role] for q in runs)
                    for role in runs[0]["peak_rss_mb"]
                },
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def markdown(mem: list[dict], online: list[dict], cmd: str, load=None) -> str:
    lines = [
        "# Serving memory and resnet18-cifar online time per batch size",
        "",
        f"Generated by `{cmd}` on this machine (2 shared cores, `OMP_NUM_THREADS=1`).",
        "",
        "## Peak resident memory per party (real `dealer`, `serve`, `client` processes, TLS)",
        "",
        f"Limit: {LIMIT_MB:.0f} MB per party. `after load` is the service's peak before the "
        "client connected (model loaded, listening).",
        "",
        "| model | images | server --max-batch | inferences | dealer MB | server MB | client MB "
        "| dealer / server after load MB | labels exact | within limit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in mem:
        p, b = m["peak_rss_mb"], m["rss_after_load_mb"]
        ok = max(p.values()) <= LIMIT_MB
        lines.append(
            f"| {m['model']} | {m['images']} | {m['max_batch']} | {m['inferences']} | "
            f"{p['dealer']:.0f} | {p['server']:.0f} | {p['client']:.0f} | "
            f"{b['dealer']:.0f} / {b['server']:.0f} | {m['labels_exact']} | {ok} |"
        )
    if online:
        lines += [
            "",
            "## resnet18-cifar w4a4 through `privquant infer` (gloo, 3 processes): online",
            "seconds per image and peak memory per party (max over the runs)",
            "",
            "| batch | online s / image (best run) | runs (online s) | dealer MB | server MB "
            "| client MB | identical |",
            "|---|---|---|---|---|---|---|",
        ]
        for o in online:
            runs = ", ".join(f"{v:.2f}" for v in o["runs_client_online_s"])
            p = o.get("peak_rss_mb") or {}
            mb = " | ".join(
                f"{p[r]:.0f}" if r in p else "-" for r in ("dealer", "server", "client")
            )
            lines.append(
                f"| {o['batch']} | {o['client_online_s_per_image']:.3f} | {runs} | {mb} | "
                f"{o['identical']} |"
            )
        busy = f" (load average {load[0]:.1f} at the end of the run)" if load else ""
        lines += [
            "",
            f"The machine was shared with other jobs{busy}: times are upper bounds and vary",
            "between runs by tens of percent; compare batch sizes within one table only.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-online", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--work", default=None, help="keep the quantized resnet18-cifar here")
    ap.add_argument("--out", default=str(ROOT / "bench" / "serving_memory.md"))
    ap.add_argument("--from-json", help="only re-render the markdown from a saved JSON")
    args = ap.parse_args()
    cmd = "bench/serving_memory.py" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        Path(args.out).write_text(markdown(doc["memory"], doc["online"], cmd, doc.get("load")))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from privquant.models.data import load_sample

    with tempfile.TemporaryDirectory(prefix="pq-mem-") as t:
        tmp = Path(t)
        work = Path(args.work) if args.work else tmp
        work.mkdir(parents=True, exist_ok=True)
        cifar = cifar_artifact(work / "resnet18-cifar-w4a4.pq")
        mem = []
        if not args.skip_memory:
            x8 = load_sample(500)[0].numpy()
            mem.append(session_memory(tmp, RESNET8, x8, 32))
            print(json.dumps(mem[-1]), flush=True)
            gen = torch.Generator().manual_seed(1)
            xc = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen).numpy()
            mem.append(session_memory(tmp, cifar, xc, 16))
            print(json.dumps(mem[-1]), flush=True)
        online = [] if args.skip_online else online_per_image(cifar, (1, 4, 16), args.repeats)
    load = list(os.getloadavg())
    Path(args.out).write_text(markdown(mem, online, cmd, load))
    Path(args.out).with_suffix(".json").write_text(
        json.dumps({"memory": mem, "online": online, "load": load}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
