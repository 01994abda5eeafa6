"""Helpers for the network tests: keys, service processes, a recording/tampering TCP proxy, and
the eavesdropper's reconstruction (what a passive observer of unencrypted traffic can do)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from privquant.launch import free_port
from privquant.program import Program, ring_bits
from privquant.protocols.preprocessing.dealer import Seeds
from privquant.protocols.primitives import packing, ring
from privquant.protocols.transport.channel import HEADER, MAGIC, VERSION, tag_code
from privquant.protocols.transport.keys import Identity

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "privquant" / "models" / "weights"
RESNET = WEIGHTS / "resnet8-w4a4.pq"
LENET = WEIGHTS / "lenet5-w8a8.pq"


def make_keys(tmp: Path, *names: str) -> dict[str, tuple[Path, str]]:
    out = {}
    for n in names:
        ident = Identity.generate()
        path = tmp / f"{n}.key"
        ident.save(path)
        out[n] = (path, ident.fingerprint)
    return out


class Proc:
    """A ``privquant`` CLI process whose stderr lines are collected by a thread."""

    def __init__(self, *args: str, env: dict | None = None):
        self.p = subprocess.Popen(
            [sys.executable, "-m", "privquant.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = 60.0, start: int = 0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for ln in self.lines[start:]:
                if text in ln:
                    return ln
            if self.p.poll() is not None:
                time.sleep(0.2)
                hits = [ln for ln in self.lines[start:] if text in ln]
                if hits:
                    return hits[0]
                raise AssertionError(f"process exited ({self.p.returncode}): {self.lines}")
            time.sleep(0.05)
        raise AssertionError(f"no line containing {text!r} within {timeout} s: {self.lines}")

    def stop(self, sig=None, timeout: float = 30.0) -> int:
        import signal

        if self.p.poll() is None:
            self.p.send_signal(sig or signal.SIGTERM)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._t.join(2)
        return self.p.returncode

    @property
    def rss_kb(self) -> int:
        for ln in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
        return 0


class Services:
    """A dealer and a server as real processes on loopback, with fresh keys."""

    def __init__(self, tmp: Path, model: Path = RESNET, *, timeout: float = 20.0, extra=()):
        self.keys = make_keys(tmp, "server", "dealer")
        self.dport, self.sport = free_port(), free_port()
        self.dealer_addr = f"127.0.0.1:{self.dport}"
        self.server_addr = f"127.0.0.1:{self.sport}"
        self.dealer = Proc(
            "dealer",
            "--key", str(self.keys["dealer"][0]),
            "--trust-server", self.keys["server"][1],
            "--listen", self.dealer_addr,
            "--timeout", str(timeout),
        )  # fmt: skip
        self.server = Proc(
            "serve", str(model),
            "--key", str(self.keys["server"][0]),
            "--listen", self.server_addr,
            "--dealer", self.dealer_addr,
            "--dealer-key", self.keys["dealer"][1],
            "--output", "logits",
            "--timeout", str(timeout),
            *extra,
        )  # fmt: skip
        self.dealer.wait_line("dealing on")
        self.server.wait_line("serving")

    @property
    def server_fp(self) -> str:
        return self.keys["server"][1]

    @property
    def dealer_fp(self) -> str:
        return self.keys["dealer"][1]

    def client_args(self) -> list[str]:
        return [
            "--server", self.server_addr,
            "--server-key", self.server_fp,
            "--dealer-key", self.dealer_fp,
        ]  # fmt: skip

    def stop(self) -> None:
        self.server.stop()
        self.dealer.stop()


# ------------------------------------------------------------------------------------ proxy
class Proxy:
    """TCP proxy ``listen -> target`` recording every byte per direction of every connection.

    ``flip=(direction, offset)`` flips one bit of the byte at ``offset`` of the first
    connection's ``direction`` stream ("down" = target -> client, "up" = client -> target).
    """

    def __init__(self, target: tuple[str, int], flip: tuple[str, int] | None = None):
        self.target, self.flip = target, flip
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[dict[str, bytearray]] = []
        self.flipped = False
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                t = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            rec = {"up": bytearray(), "down": bytearray()}
            first = not self.conns
            self.conns.append(rec)
            for src, dst, d in ((c, t, "up"), (t, c, "down")):
                threading.Thread(
                    target=self._pump, args=(src, dst, rec[d], d, first), daemon=True
                ).start()

    def _pump(self, src, dst, rec: bytearray, d: str, first: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if first and self.flip and self.flip[0] == d and not self.flipped:
                    off = self.flip[1] - len(rec)
                    if 0 <= off < len(data):
                        b = bytearray(data)
                        b[off] ^= 0x01
                        data = bytes(b)
                        self.flipped = True
                rec += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


# ------------------------------------------------------------------------------------ attack
def find_message(stream: bytes, tag: str, ell: int, n: int) -> bytes | None:
    """Scan a recorded byte stream for a PrivQuant message (any offset) and return its payload."""
    b = np.frombuffer(stream, dtype=np.uint8)
    if len(b) < HEADER.size:
        return None
    code = tag_code(tag, ell, n)
    nbytes = packing.packed_nbytes(n, ell)
    cand = np.nonzero((b[:-1] == MAGIC) & ((b[1:] >> 4) == VERSION))[0]
    for i in cand:
        i = int(i)
        if i + HEADER.size > len(b):
            break
        _, _, _, c, length, _ = HEADER.unpack(stream[i : i + HEADER.size])
        if c == code and length == nbytes and i + HEADER.size + nbytes <= len(b):
            return stream[i + HEADER.size : i + HEADER.size + nbytes]
    return None


def reconstruct(program: Program, batch: int, to_client: bytes, from_client: bytes,
                from_dealer_to_client: bytes, from_dealer_to_server: bytes):  # fmt: skip
    """The passive attack on unencrypted traffic: seeds in the clear + masked messages.

    Returns ``(x, w)``: the client's input batch and the first conv's weights, or raises
    ``LookupError`` when the recorded bytes do not contain what is needed."""
    rings = ring_bits(program)
    conv = next(op for op in program.ops if op.kind in ("conv2d", "linear"))
    inp = program.input_op
    ell, ell_in = rings[conv.output], rings[inp.output]
    shape = (batch, *program.input_shape)
    n = int(np.prod(shape))
    d1 = find_message(from_dealer_to_client, "seed.d1", 8, 16)
    s01 = find_message(to_client, "seed.01", 8, 16)
    d0 = find_message(from_dealer_to_server, "seed.d0", 8, 16)
    m = find_message(from_client, "linear.in", ell, n)
    wshape = tuple(conv.attrs["weight_shape"])
    f = find_message(to_client, f"linear.setup:{conv.name}", ell, int(np.prod(wshape)))
    if None in (d1, s01, d0, m, f):
        raise LookupError("the recorded traffic holds no readable PrivQuant messages")
    seeds = Seeds({"d1": d1, "01": s01, "d0": d0})
    a1 = ring.uniform(seeds.generator("d1", "offline"), shape, ell)
    s = ring.uniform(seeds.generator("01", "offline"), shape, ell_in)
    mt = packing.unpack(torch.frombuffer(bytearray(m), dtype=torch.uint8), n, ell).reshape(shape)
    x = ring.reduce(mt + a1 + s, ell)
    b = ring.uniform(seeds.generator("d0", f"keyed/linear/{conv.name}"), wshape, ell)
    nw = int(np.prod(wshape))
    ft = packing.unpack(torch.frombuffer(bytearray(f), dtype=torch.uint8), nw, ell).reshape(wshape)
    w = ring.to_signed(ring.reduce(ft + b, ell), ell)
    return x, w
