"""Real OS processes: ``privquant infer`` end to end, signals, and every bad input of the CLI
ending in one ``privquant: error:`` line (JSON under --json), exit 2, within the timeout."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from runtime_helpers import WEIGHTS

import privquant
from privquant.launch import free_port
from privquant.models.data import load_sample

pytestmark = pytest.mark.multiprocess

LENET = WEIGHTS / "lenet5-w8a8.pq"
RESNET = WEIGHTS / "resnet8-w4a4.pq"


def run(*args: str, timeout: float = 120, env=None) -> tuple[int, str, str, float]:
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "privquant.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return p.returncode, p.stdout, p.stderr, time.time() - t0


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("privquant: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_infer_api_lenet5_exact_and_counted():
    x, _ = load_sample(5)
    res = privquant.infer(LENET, x, timeout=60)
    assert res["identical"]
    assert res["labels"] == res["plain_labels"]
    rep = res["report"]
    assert rep.all_match and rep.preprocessing == "dealer"
    assert rep.total["online_bits"] > 0


def test_infer_cli_resnet8_json_chunks():
    code, out, err, _ = run("infer", str(RESNET), "--index", "3", "--batch", "3", "--chunk", "2",
                            "--json", timeout=240)  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert res["identical"] is True
    assert res["batches"] == [2, 1]
    assert res["comm"]["declared_equals_measured"] is True
    assert res["labels"] == res["plain_labels"] and len(res["labels"]) == 3


@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGKILL]
)
def test_infer_killed_leaves_no_private_data_on_disk(tmp_path, sig):
    """The input travels to the client process through its start-up pipe: after a kill, no
    file under TMPDIR holds it (SIGTERM also removes the rendezvous directory)."""
    x = np.random.default_rng(1).integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    inp = tmp_path / "in" / "x.npy"
    inp.parent.mkdir()
    np.save(inp, x)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-m", "privquant.cli", "infer", str(RESNET), "--input", str(inp)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )  # fmt: skip
    seen = []
    threading.Thread(target=lambda: seen.extend(iter(p.stderr.readline, "")), daemon=True).start()
    deadline = time.time() + 120
    while not any("private inference" in s for s in seen) and time.time() < deadline:
        time.sleep(0.1)  # the client's progress bar: the roles are running
    assert p.poll() is None
    p.send_signal(sig)
    p.wait(30)
    time.sleep(1.0)
    needle = x[0].tobytes()[200:264]
    leftovers = [f for f in tmpdir.rglob("*") if f.is_file()]
    for f in leftovers:
        assert needle not in f.read_bytes(), f
        assert f.suffix != ".npy"
    if sig == signal.SIGTERM:
        assert not leftovers and p.returncode == 130


BAD_TIMEOUTS = ["nan", "inf", "0", "-1", "abc"]


@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_bad_timeout_values(value):
    code, out, err, _ = run("client", "--server", "127.0.0.1:1", "--server-key", "0" * 64,
                            "--timeout", value, "--json")  # fmt: skip
    assert code == 2
    line = one_error_line(err)
    assert "--timeout" in line
    assert json.loads(out)["error"] in line


@pytest.mark.parametrize("addr", ["foo", "http://127.0.0.1:5", "file:///nonexistent/x"])
def test_bad_server_addresses(addr):
    code, _, err, t = run("client", "--server", addr, "--server-key", "0" * 64, "--index", "0",
                          "--timeout", "5")  # fmt: skip
    assert code == 2 and ("HOST:PORT" in one_error_line(err) or "only tcp" in err)
    assert t < 15


def test_silent_listener_and_foreign_program_bounded_by_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    foreign = socket.socket()
    foreign.bind(("127.0.0.1", 0))
    foreign.listen(4)

    def talk():  # a port held by another program: it answers garbage
        while True:
            try:
                c, _ = foreign.accept()
            except OSError:
                return
            c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            c.close()

    threading.Thread(target=talk, daemon=True).start()
    for s, what in ((silent, "did not complete a TLS handshake"), (foreign, "TLS handshake")):
        port = s.getsockname()[1]
        code, _, err, t = run("client", "--server", f"127.0.0.1:{port}", "--server-key",
                              "0" * 64, "--index", "0", "--timeout", "3")  # fmt: skip
        assert code == 2 and what in one_error_line(err)
        assert t < 3 + 12  # timeout + interpreter start
    silent.close()
    foreign.close()


def test_connection_refused_is_one_line():
    code, _, err, _ = run("client", "--server", f"127.0.0.1:{free_port()}", "--server-key",
                          "0" * 64, "--index", "0", "--timeout", "5")  # fmt: skip
    assert code == 2 and "connection refused" in one_error_line(err)


def test_quantize_empty_bits_and_version(tmp_path):
    code, _, err, _ = run("quantize", "--model", "lenet5", "--bits", "", "--out",
                          str(tmp_path / "x.pq"))  # fmt: skip
    assert code == 2 and "bad bit spec" in one_error_line(err)
    code, out, _, _ = run("--version")
    assert code == 0 and out.strip() == f"privquant {privquant.__version__}"


def test_huge_png_refused_before_decoding(tmp_path):
    import zlib

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c))

    w = h = 20000
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    f = tmp_path / "big.png"
    f.write_bytes(png)
    code, _, err, _ = run("infer", str(LENET), "--image", str(f))
    line = one_error_line(err)
    assert code == 2 and ("20000x20000" in line or "decompression bomb" in line)


def test_deeply_nested_artifact_header(tmp_path):
    header = b"[" * 200000 + b"]" * 200000
    body = b"PRIVQNT1" + struct.pack("<Q", len(header)) + header
    f = tmp_path / "nested.pq"
    f.write_bytes(body + hashlib.sha256(body).digest())
    code, _, err, _ = run("infer", str(f), "--index", "0")
    assert code == 2 and "nested too deeply" in one_error_line(err)


def test_keygen_and_hash_cli(tmp_path):
    code, out, err, _ = run("keygen", "--out", str(tmp_path / "s.key"), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert (tmp_path / "s.fp").read_text().strip() == res["fingerprint"]
    code, out, _, _ = run("keygen", "--show", str(tmp_path / "s.key"))
    assert out.strip() == res["fingerprint"]
    code, _, err, _ = run("keygen", "--out", str(tmp_path / "s.key"))
    assert code == 2 and "refusing to overwrite" in one_error_line(err)
    code, out, _, _ = run("hash", str(LENET))
    assert out.strip() == privquant.load(LENET).architecture_hash()
