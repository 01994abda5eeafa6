"""Latency on LAN/WAN: the estimate, and measurement under real network emulation.

**Estimate** (always)::

    seconds = compute + bits / bandwidth + rounds * RTT / 2

``compute`` is the online time measured on loopback, ``bits`` the online bits both parties send
(a half-duplex bottleneck: an upper bound for a full-duplex link), ``rounds`` the online rounds
as every report counts them: one-way message hops on the longest causal chain (a simultaneous
exchange is 1, a request and its reply 2), so each costs one one-way delay, ``RTT / 2``.

**Measurement** (when run as root and ``ip`` works): two network namespaces created here, the
server (and the dealer / TTP) in one, the client in the other, joined by

* a veth pair shaped with ``tc qdisc ... netem delay RTT/2 rate BW`` on both ends, when the
  kernel has ``sch_netem``;
* otherwise a *userspace wire*: a TUN device in each namespace and one process (this module's
  ``wire`` command) that forwards every IP packet to the other side after ``RTT/2`` plus its
  serialization time ``len*8/BW`` (a FIFO link per direction, tail drop beyond BDP + 1.5 MB),
  i.e. what netem's ``delay`` + ``rate`` do, in user space. It uses CPU on the same machine,
  which the report states.

Namespaces and devices are always removed (``try/finally``); without root, without ``ip`` or
when setup fails, measurement is skipped with the reason and only the estimate is reported.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import secrets
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privquant.errors import PrivQuantError


@dataclass(frozen=True)
class Network:
    name: str
    bandwidth_bps: float
    rtt_s: float

    @property
    def label(self) -> str:
        bw, rtt = self.bandwidth_bps / 1e6, self.rtt_s * 1e3
        return f"{self.name.upper()} ({bw:g} Mbit/s, {rtt:g} ms RTT)"


NETWORKS = {
    "lan": Network("lan", 1e9, 0.5e-3),
    "wan": Network("wan", 400e6, 40e-3),
}


def get_network(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise PrivQuantError(f"unknown network {name!r}; choose from {sorted(NETWORKS)}") from None


def estimate(compute_s: float, bits: float, rounds: int, net: Network) -> dict:
    """``compute + bits/bandwidth + rounds*RTT/2`` with its three terms. (The transport keeps
    receives posted ahead, so a hop costs one one-way delay: see
    :mod:`privquant.protocols.transport.crypten`.)"""
    transfer = bits / net.bandwidth_bps
    latency = rounds * net.rtt_s / 2
    return {
        "network": net.name,
        "compute_s": compute_s,
        "transfer_s": transfer,
        "latency_s": latency,
        "seconds": compute_s + transfer + latency,
    }


# ------------------------------------------------------------------------------ emulation
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
TUN_MTU = 65000
SERVER_SIDE, CLIENT_SIDE = "a", "b"


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")


def emulation_unavailable() -> str | None:
    """Why emulation cannot run here (None if it may)."""
    if os.geteuid() != 0:
        return "not running as root (network namespaces need CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


class Emulation:
    """Two namespaces joined by an emulated link; a context manager that always cleans up."""

    def __init__(self, net: Network):
        self.net = net
        tag = secrets.token_hex(3)
        self.ns = {SERVER_SIDE: f"pqa-{tag}", CLIENT_SIDE: f"pqb-{tag}"}
        self.dev = {SERVER_SIDE: f"pqa{tag}", CLIENT_SIDE: f"pqb{tag}"}
        self.addr = {SERVER_SIDE: "10.77.0.1", CLIENT_SIDE: "10.77.0.2"}
        self.method = None
        self.wire: subprocess.Popen | None = None
        self.notes: list[str] = []

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> Emulation:
        reason = emulation_unavailable()
        if reason:
            raise PrivQuantError(f"network emulation unavailable: {reason}")
        try:
            for ns in self.ns.values():
                _run(["ip", "netns", "add", ns])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            try:
                self._setup_netem()
                self.method = "tc netem on a veth pair"
            except RuntimeError as e:
                self.notes.append(f"netem unavailable ({str(e).splitlines()[-1][:120]})")
                self._teardown_links()
                self._setup_tun_wire()
                self.method = "userspace TUN wire (netem semantics: delay + rate, FIFO)"
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.wire is not None and self.wire.poll() is None:
            self.wire.terminate()
            try:
                self.wire.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.wire.kill()
                self.wire.wait()
        self.wire = None
        for ns in self.ns.values():
            with contextlib.suppress(Exception):
                _run(["ip", "netns", "del", ns])  # removes its devices too

    def _teardown_links(self) -> None:
        for side, ns in self.ns.items():
            with contextlib.suppress(Exception):
                _run(["ip", "-n", ns, "link", "del", self.dev[side]])

    # -------------------------------------------------------------- netem
    def _setup_netem(self) -> None:
        a, b = self.ns[SERVER_SIDE], self.ns[CLIENT_SIDE]
        da, db = self.dev[SERVER_SIDE], self.dev[CLIENT_SIDE]
        _run(["ip", "link", "add", da, "netns", a, "type", "veth", "peer", "name", db, "netns", b])
        for side in (SERVER_SIDE, CLIENT_SIDE):
            ns, dev = self.ns[side], self.dev[side]
            _run(["ip", "-n", ns, "addr", "add", f"{self.addr[side]}/24", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
            delay_ms = self.net.rtt_s / 2 * 1e3
            rate = f"{int(self.net.bandwidth_bps)}bit"
            _run(
                [
                    *("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root"),
                    *("netem", "delay", f"{delay_ms}ms", "rate", rate, "limit", "100000"),
                ]
            )

    # -------------------------------------------------------------- TUN wire
    def _setup_tun_wire(self) -> None:
        if not Path("/dev/net/tun").exists():
            raise PrivQuantError("network emulation unavailable: no netem and no /dev/net/tun")
        for side in (SERVER_SIDE, CLIENT_SIDE):
            other = CLIENT_SIDE if side == SERVER_SIDE else SERVER_SIDE
            ns, dev = self.ns[side], self.dev[side]
            _run(["ip", "-n", ns, "tuntap", "add", "dev", dev, "mode", "tun"])
            peer = self.addr[other]
            _run(["ip", "-n", ns, "addr", "add", self.addr[side], "peer", peer, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "mtu", str(TUN_MTU), "up"])
        cmd = [sys.executable, "-m", "privquant.baselines.latency", "wire"]
        cmd += ["--ns-a", self.ns[SERVER_SIDE], "--dev-a", self.dev[SERVER_SIDE]]
        cmd += ["--ns-b", self.ns[CLIENT_SIDE], "--dev-b", self.dev[CLIENT_SIDE]]
        cmd += ["--rate", str(self.net.bandwidth_bps), "--delay", str(self.net.rtt_s / 2)]
        self.wire = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.wire.stdout.readline().strip()  # "ready" once both devices are attached
        if line != "ready":
            err = self.wire.stderr.read() if self.wire.poll() is not None else ""
            raise RuntimeError(f"TUN wire did not start: {line} {err.strip()[-200:]}")

    # -------------------------------------------------------------- running parties
    def prefix(self, side: str) -> list[str]:
        """Command prefix that runs a program in ``side``'s namespace, gloo bound to its link."""
        return ["ip", "netns", "exec", self.ns[side], "env", f"GLOO_SOCKET_IFNAME={self.dev[side]}"]

    def measure_rtt(self, n: int = 20) -> float | None:
        """Median TCP ping-pong time across the link (seconds): a check of the emulated RTT."""
        port = 5000 + secrets.randbelow(20000)
        echo = (
            "import socket\n"
            f"s=socket.socket(); s.bind(('{self.addr[SERVER_SIDE]}',{port})); s.listen(1)\n"
            "c,_=s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
            "while (d:=c.recv(64)): c.sendall(d)\n"
        )
        ping = (
            "import socket,time,statistics,sys\n"
            f"a=('{self.addr[SERVER_SIDE]}',{port})\n"
            "for _ in range(50):\n"
            "    try: s=socket.create_connection(a); break\n"
            "    except OSError: time.sleep(0.1)\n"
            "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); t=[]\n"
            f"for _ in range({n}):\n"
            "    t0=time.perf_counter(); s.sendall(b'x'); s.recv(64)\n"
            "    t.append(time.perf_counter()-t0)\n"
            "print(statistics.median(t))\n"
        )
        srv = subprocess.Popen(
            [*self.prefix(SERVER_SIDE), sys.executable, "-c", echo],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            r = subprocess.run(
                [*self.prefix(CLIENT_SIDE), sys.executable, "-c", ping],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return float(r.stdout.strip()) if r.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError):
            return None
        finally:
            srv.kill()
            srv.wait()


def _setns(name: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name} failed")
    finally:
        os.close(fd)


def _open_tun(ns: str, dev: str) -> int:
    import fcntl

    _setns(ns)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def wire(ns_a: str, dev_a: str, ns_b: str, dev_b: str, rate_bps: float, delay_s: float) -> None:
    """Forward packets between two TUN devices with a one-way delay and a rate (FIFO per
    direction): a packet of ``L`` bytes arriving at ``t`` leaves the link at
    ``max(t, link_free) + 8L/rate`` and is delivered ``delay`` later."""
    fa = _open_tun(ns_a, dev_a)
    fb = _open_tun(ns_b, dev_b)
    cap = int(rate_bps * 2 * delay_s / 8) + 1_500_000  # BDP + 1.5 MB of queue, then tail drop
    queues = {fa: collections.deque(), fb: collections.deque()}
    qbytes = {fa: 0, fb: 0}
    free = {fa: 0.0, fb: 0.0}
    other = {fa: fb, fb: fa}
    stats = {"packets": 0, "dropped": 0}
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        for src, q in queues.items():
            while q and q[0][0] <= now:
                _, pkt = q.popleft()
                qbytes[src] -= len(pkt)
                try:
                    os.write(other[src], pkt)
                    stats["packets"] += 1
                except (BlockingIOError, OSError):
                    stats["dropped"] += 1
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - time.monotonic()) if due else 0.5
        readable, _, _ = select.select([fa, fb], [], [], timeout)
        for fd in readable:
            for _ in range(256):
                try:
                    pkt = os.read(fd, TUN_MTU + 64)
                except BlockingIOError:
                    break
                if not pkt:
                    break
                now = time.monotonic()
                if qbytes[fd] + len(pkt) > cap:
                    stats["dropped"] += 1
                    continue
                start = max(now, free[fd])
                free[fd] = start + len(pkt) * 8 / rate_bps
                queues[fd].append((free[fd] + delay_s, pkt))
                qbytes[fd] += len(pkt)


# ------------------------------------------------------------------------------ emulated runs
def _spawn(prefix: list[str], args: list[str], env_extra: dict | None = None):
    from privquant.launch import _die_with_parent

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [*prefix, sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
        env=env,
        text=True,
    )


def run_privquant_emulated(
    emu: Emulation, artifact_path, images, *, backend: str = "privquant", timeout: float = 300.0
) -> dict:
    """One private inference with the server + dealer on one side of the emulated link and the
    client on the other, over the network transport (TLS, as deployed: ``privquant serve`` /
    ``dealer`` / ``client``). Returns the client's JSON output and the wall time."""
    import signal as _signal
    import threading

    from privquant.launch import STARTUP_SLACK, _wait_all, free_port
    from privquant.protocols.transport.keys import Identity
    from privquant.quantized import QuantizedModel

    art = QuantizedModel.load(artifact_path)
    host = emu.addr[SERVER_SIDE]
    sport, dport = free_port(), free_port()
    common = ["--timeout", str(timeout), "--backend", backend]
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cli = ["-m", "privquant.cli"]
    with tempfile.TemporaryDirectory(prefix="privquant-emu-") as tmp:
        sk, dk = Identity.generate(), Identity.generate()  # throw-away keys for this run
        sk.save(Path(tmp) / "s.key")
        dk.save(Path(tmp) / "d.key")
        inp = Path(tmp) / "input.npy"
        np.save(inp, np.asarray(images, dtype=np.uint8), allow_pickle=False)
        services = {
            "dealer": _spawn(
                emu.prefix(SERVER_SIDE),
                [*cli, "dealer", "--key", f"{tmp}/d.key", "--trust-server", sk.fingerprint,
                 "--listen", f"{host}:{dport}", *common],
                env,
            ),
            "server": _spawn(
                emu.prefix(SERVER_SIDE),
                [*cli, "serve", str(artifact_path), "--key", f"{tmp}/s.key",
                 "--listen", f"{host}:{sport}", "--dealer", f"{host}:{dport}",
                 "--dealer-key", dk.fingerprint, "--output", "logits",
                 "--max-batch", str(max(1, len(images))), *common],
                env,
            ),
        }  # fmt: skip
        ready = {k: threading.Event() for k in services}
        errs: dict[str, list[str]] = {k: [] for k in services}

        def watch(role, p):
            for line in p.stderr:
                errs[role].append(line)
                if ("serving " in line) or ("dealing on" in line):
                    ready[role].set()

        for role, p in services.items():
            threading.Thread(target=watch, args=(role, p), daemon=True).start()
        try:
            deadline = time.monotonic() + STARTUP_SLACK
            for role, ev in ready.items():
                if not ev.wait(max(0.0, deadline - time.monotonic())):
                    raise PrivQuantError(f"{role} did not start: {''.join(errs[role])[-300:]}")
            t0 = time.perf_counter()
            client = _spawn(
                emu.prefix(CLIENT_SIDE),
                [*cli, "client", "--server", f"{host}:{sport}", "--server-key", sk.fingerprint,
                 "--dealer-key", dk.fingerprint, "--input", str(inp),
                 "--expect-hash", art.architecture_hash(), "--json", *common],
                env,
            )  # fmt: skip
            outs = _wait_all({"client": client}, deadline=time.perf_counter() + timeout * 3)
            wall = time.perf_counter() - t0
        finally:
            for p in services.values():
                if p.poll() is None:
                    p.send_signal(_signal.SIGTERM)
            for p in services.values():
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return {"roles": {"client": json.loads(outs["client"])}, "wall": wall}


def measure(
    artifact_path, images, nets: list[Network], *, backend: str = "privquant", timeout=300.0
) -> dict:
    """Measured online seconds under each network (``{"lan": {...}, ...}``), or skip reasons."""
    out: dict = {}
    reason = emulation_unavailable()
    for net in nets:
        if reason:
            out[net.name] = {"skipped": reason}
            continue
        try:
            with Emulation(net) as emu:
                rtt = emu.measure_rtt()
                r = run_privquant_emulated(
                    emu, artifact_path, images, backend=backend, timeout=timeout
                )
                cl = r["roles"]["client"]
                st = cl.get("stats", {})
                out[net.name] = {
                    "client_online_msgs_sent": st.get("msgs_sent", {}).get("online"),
                    "client_online_msgs_recv": st.get("msgs_recv", {}).get("online"),
                    "method": emu.method,
                    "notes": emu.notes,
                    "ping_rtt_s": rtt,
                    "client_online_s": cl["seconds"].get("online"),
                    "transport": "tls",
                    "wall_s": r["wall"],
                }
        except (PrivQuantError, RuntimeError, OSError, subprocess.SubprocessError) as e:
            out[net.name] = {"skipped": f"emulation failed: {str(e).splitlines()[0][:200]}"}
    return out


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="privquant.baselines.latency")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wire", help="(internal) userspace link between two TUN devices")
    w.add_argument("--ns-a", required=True)
    w.add_argument("--dev-a", required=True)
    w.add_argument("--ns-b", required=True)
    w.add_argument("--dev-b", required=True)
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--delay", type=float, required=True)
    args = p.parse_args(argv)
    try:
        wire(args.ns_a, args.dev_a, args.ns_b, args.dev_b, args.rate, args.delay)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(_main())
