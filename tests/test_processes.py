"""Real OS processes over loopback: infer end to end, and failure behaviour.

Each role is the real ``privquant`` command (server, client, dealer) in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from runtime_helpers import WEIGHTS

import privquant
from privquant.launch import free_port
from privquant.models.data import load_sample

pytestmark = pytest.mark.multiprocess

LENET = WEIGHTS / "lenet5-w8a8.pq"
RESNET = WEIGHTS / "resnet8-w4a4.pq"


def role(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "privquant.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"process did not exit within {timeout} s")
    return p.returncode, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("privquant: error: ")
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


def test_infer_cli_resnet8_json():
    p = role("infer", str(RESNET), "--index", "3", "--batch", "2", "--json")
    code, out, err = finish(p, 240)
    assert code == 0, err
    res = json.loads(out)
    assert res["identical"] is True
    assert res["comm"]["declared_equals_measured"] is True
    assert res["labels"] == res["plain_labels"] and len(res["labels"]) == 2
    assert res["comm"]["preprocessing"] == "dealer"


def test_killed_client_makes_server_exit_with_clear_error():
    rdv = f"tcp://127.0.0.1:{free_port()}"
    common = ["--rendezvous", rdv, "--timeout", "30"]
    server = role("serve", str(RESNET), *common)
    dealer = role("dealer", *common)
    client = role("client", "--index", "0", "--batch", "8", "--progress", *common)
    seen = []

    def watch():  # the client's progress bar names the op it is in
        while True:
            ch = client.stderr.read(1)
            if not ch:
                return
            seen.append(ch)

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.time() + 120
    while "conv" not in "".join(seen) and time.time() < deadline and client.poll() is None:
        time.sleep(0.05)
    assert client.poll() is None, "client finished before it could be killed"
    client.kill()
    t0 = time.time()
    code, _, err = finish(server, 40)
    assert code != 0
    line = one_error_line(err)
    assert "client" in line
    assert time.time() - t0 < 32  # within the configured timeout
    finish(dealer, 40)
    client.wait()


def test_server_with_other_model_is_refused_before_any_secret():
    expected = privquant.load(RESNET).architecture_hash()
    rdv = f"tcp://127.0.0.1:{free_port()}"
    common = ["--rendezvous", rdv, "--timeout", "30"]
    server = role("serve", str(LENET), *common, "--json")
    dealer = role("dealer", *common, "--json")
    client = role("client", "--index", "0", "--expect-hash", expected, *common, "--json")
    c_code, c_out, c_err = finish(client, 90)
    s_code, s_out, s_err = finish(server, 60)
    d_code, _, d_err = finish(dealer, 60)
    assert c_code == 2 and "refusing before any secret is sent" in one_error_line(c_err)
    assert s_code == 2 and "refused" in one_error_line(s_err)
    assert d_code == 2 and "refused" in one_error_line(d_err)
    assert c_out == "" and s_out == ""  # no results: nothing was computed


def test_bad_client_input_refused_before_sharing(tmp_path):
    import numpy as np

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 1, 32, 32), dtype=np.uint8))
    rdv = f"tcp://127.0.0.1:{free_port()}"
    common = ["--rendezvous", rdv, "--timeout", "30"]
    server = role("serve", str(LENET), *common)
    dealer = role("dealer", *common)
    client = role("client", "--input", str(bad), *common)
    c_code, _, c_err = finish(client, 90)
    s_code, _, s_err = finish(server, 60)
    finish(dealer, 60)
    assert c_code == 2 and "shape" in one_error_line(c_err)
    assert s_code == 2 and "refused" in one_error_line(s_err)


def test_missing_peer_times_out_with_clear_error():
    rdv = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.time()
    code, _, err = finish(role("serve", str(LENET), "--rendezvous", rdv, "--timeout", "4"), 60)
    assert code == 2
    assert "could not connect" in one_error_line(err)
    assert time.time() - t0 < 40
