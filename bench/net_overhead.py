"""Bytes on the wire of one resnet8 session: TLS network transport vs the gloo path.

Each run happens in a fresh network namespace (``unshare -n``, root) whose only interface is
loopback, so the loopback counters hold every byte of the run (TCP/IP headers included):

* gloo: ``privquant infer resnet8-w4a4.pq --index 0 --batch B`` (server, client, dealer over
  CrypTen's gloo communicator);
* tls:  ``privquant dealer`` + ``privquant serve`` + ``privquant client --index 0 --batch B``
  (three TLS 1.3 links; the services are stopped with SIGTERM after the client is done).

Also reported: the Party-level wire bytes (16-byte headers + packed payloads, identical on both
transports by construction) and the client's online seconds.

    nice -n 10 python bench/net_overhead.py [--batch 1] [--out bench/net_overhead.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "privquant/models/weights/resnet8-w4a4.pq"

INNER = r"""
set -e
ip link set lo up
lo() { awk '/lo:/ {print $2, $10}' /proc/net/dev; }
before=$(lo)
PQ="@PY@ -m privquant.cli"
if [ "@MODE@" = gloo ]; then
  $PQ infer @MODEL@ --index 0 --batch @BATCH@ --json > @TMP@/out.json
else
  cd @TMP@
  $PQ keygen --out s.key >/dev/null; $PQ keygen --out d.key >/dev/null
  $PQ dealer --key d.key --trust-server s.fp 2> dealer.err &
  D=$!
  $PQ serve @MODEL@ --key s.key --dealer 127.0.0.1:29501 --dealer-key d.fp \
      --output logits 2> serve.err &
  S=$!
  for i in $(seq 1 600); do
    grep -q serving serve.err 2>/dev/null && grep -q dealing dealer.err && break; sleep 0.1
  done
  $PQ client --server 127.0.0.1:29500 --server-key s.fp --dealer-key d.fp \
      --index 0 --batch @BATCH@ \
      --expect-hash "$($PQ hash @MODEL@)" --json > out.json
  kill -TERM $S $D; wait $S $D || true
fi
after=$(lo)
echo "LO $before $after"
"""


def run(mode: str, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = INNER
        for k, v in dict(PY=sys.executable, MODE=mode, MODEL=MODEL, BATCH=batch, TMP=tmp).items():
            script = script.replace(f"@{k}@", str(v))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        p = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True,
                           text=True, env=env, timeout=900)  # fmt: skip
        if p.returncode != 0:
            raise SystemExit(f"@MODE@ failed: {p.stderr[-2000:]}")
        lo = next(ln for ln in p.stdout.splitlines() if ln.startswith("LO "))
        _, tb0, _, tb1 = (int(v) for v in lo.split()[1:])
        out = json.loads(Path(tmp, "out.json").read_text())
    if mode == "gloo":
        party_wire = out["comm"]["total"]["wire_bytes"]
        online = out["comm"]["seconds"].get("client_online")
        identical = out["identical"]
    else:
        party_wire = None
        online = out["seconds"].get("online")
        identical = None
    return {"mode": mode, "lo_bytes": tb1 - tb0, "party_wire_bytes": party_wire,
            "client_online_s": online, "identical": identical, "labels": out["labels"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    g, t = run("gloo", a.batch), run("tls", a.batch)
    assert g["labels"] == t["labels"], (g["labels"], t["labels"])
    over = t["lo_bytes"] / g["lo_bytes"] - 1
    lines = [
        f"resnet8 w4a4, batch {a.batch}, one session, every byte on loopback (TCP/IP included)",
        "",
        "| transport | bytes on the wire | vs gloo | client online s |",
        "|---|---|---|---|",
        f"| gloo (privquant infer) | {g['lo_bytes']:,} | - | {g['client_online_s']:.2f} |",
        f"| TLS 1.3 (serve/dealer/client) | {t['lo_bytes']:,} | {over:+.2%} | "
        f"{t['client_online_s']:.2f} |",
        "",
        f"Party-level bytes (headers + packed payloads, same on both): {g['party_wire_bytes']:,}",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
