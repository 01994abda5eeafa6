"""The README's two-terminal serving commands, copied verbatim from README.md, run as written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[1]


def blocks_after(text: str, heading: str) -> list[str]:
    part = text[text.index(heading) :]
    return re.findall(r"```bash\n(.*?)```", part, re.S)


def test_readme_two_terminal_commands(tmp_path):
    readme = (ROOT / "README.md").read_text()
    terminal1 = blocks_after(readme, "Terminal 1 (keys, dealer, server)")[0]
    terminal2 = blocks_after(readme, "Terminal 2 (the client")[0]
    assert "privquant serve" in terminal1 and "privquant client" in terminal2
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "privquant"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m privquant.cli "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "resnet8.pq").write_bytes(
        (ROOT / "privquant/models/weights/resnet8-w4a4.pq").read_bytes()
    )
    from PIL import Image

    from privquant.models.data import load_sample

    x, _ = load_sample(1)
    Image.fromarray(x[0, 0].numpy()).save(work / "x.png")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    t1 = subprocess.Popen(
        ["bash", "-c", "set -e\n" + terminal1], cwd=work, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        deadline = time.time() + 90
        while time.time() < deadline and not any("serving resnet8" in ln for ln in lines):
            line = t1.stderr.readline()
            if not line and t1.poll() is not None:
                break
            lines.append(line)
        assert any("serving resnet8" in ln for ln in lines), lines
        t2 = subprocess.run(
            ["bash", "-c", "set -e\n" + terminal2], cwd=work, env=env, text=True,
            capture_output=True, timeout=180,
        )  # fmt: skip
        assert t2.returncode == 0, t2.stderr
        from privquant import load
        from privquant.program import output_logits, run_plain

        prog = load(work / "resnet8.pq").program
        label = int(output_logits(prog, run_plain(prog, x)).argmax(1)[0])
        assert t2.stdout.strip() == f"label(s): [{label}]"
        assert "warning" not in t2.stderr
    finally:
        os.killpg(t1.pid, signal.SIGTERM)
        try:
            t1.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(t1.pid, signal.SIGKILL)
            t1.wait()
    assert not (work / "x.npy").exists()
