"""``privquant infer``: all three roles on this machine as real OS processes over loopback.

The launcher picks a free port, starts ``privquant serve``, ``privquant dealer`` and
``privquant client`` as child processes (each dies with the launcher: PR_SET_PDEATHSIG), waits
with a deadline, and on the first failure stops the others and reports that failure's one-line
error. It then joins the three parties' accounting into one CommReport and compares the client's
logits with the plaintext integer program.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from privquant.errors import PeerError, PrivQuantError
from privquant.program import check_input, output_logits, run_plain
from privquant.report import CommReport

_PR_SET_PDEATHSIG = 1
STARTUP_SLACK = 30.0  # seconds for interpreter start and imports, on top of the protocol timeout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(args: list[str], *, show_stderr: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "privquant.cli", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=None if show_stderr else subprocess.PIPE,
        preexec_fn=_die_with_parent,
        env=env,
        text=True,
    )


def _error_line(stderr: str | None, role: str, code: int) -> str:
    for line in reversed((stderr or "").strip().splitlines()):
        if line.startswith("privquant: error: "):
            return f"{role}: {line.removeprefix('privquant: error: ')}"
    return f"{role} exited with status {code}"


def infer_local(
    artifact_path: str | Path,
    images,
    *,
    backend: str = "privquant",
    timeout: float = 60.0,
    progress: bool = False,
) -> dict:
    """Private inference of ``images`` (uint8, (N, *input_shape)) with all roles on this machine."""
    from privquant.quantized import QuantizedModel

    art = QuantizedModel.load(artifact_path)
    x = check_input(art.program, images).to(torch.uint8)
    ref = run_plain(art.program, x)
    port = free_port()
    rdv = f"tcp://127.0.0.1:{port}"
    common = ["--rendezvous", rdv, "--timeout", str(timeout), "--backend", backend, "--json"]
    with tempfile.TemporaryDirectory(prefix="privquant-") as tmp:
        inp = Path(tmp) / "input.npy"
        np.save(inp, x.numpy(), allow_pickle=False)
        t0 = time.perf_counter()
        procs = {
            "server": _spawn(["serve", str(artifact_path), *common], show_stderr=False),
            "dealer": _spawn(["dealer", *common], show_stderr=False),
            "client": _spawn(
                [
                    "client",
                    "--input",
                    str(inp),
                    "--expect-hash",
                    art.architecture_hash(),
                    *common,
                    *(["--progress"] if progress else []),
                ],
                show_stderr=progress,
            ),
        }
        outs = _wait_all(procs, deadline=time.perf_counter() + timeout * 3 + STARTUP_SLACK)
        wall = time.perf_counter() - t0
    res = {role: json.loads(out) for role, out in outs.items()}
    cl = res["client"]
    logits_int = torch.tensor(cl["logits_int"], dtype=torch.int64)
    parties = [res["server"], res["client"], res["dealer"]]
    secs = {
        "wall": wall,
        **{f"{p['role']}_{k}": v for p in parties for k, v in p["seconds"].items()},
    }
    report = CommReport.from_stats(
        art.program, parties, batch=len(x), backend=backend, seconds=secs
    )
    return {
        "model": art.model,
        "n": len(x),
        "labels": cl["labels"],
        "plain_labels": output_logits(art.program, ref).argmax(1).tolist(),
        "logits": cl["logits"],
        "identical": bool(torch.equal(logits_int, ref)),
        "report": report,
    }


def infer(
    artifact, x, *, backend: str = "privquant", timeout: float = 60.0, progress: bool = False
) -> dict:
    """Python API: private inference of ``x`` with all parties on this machine.

    ``artifact`` is a QuantizedModel or a ``.pq`` path; returns the client's labels and logits,
    the plaintext labels, ``identical`` (logits == plaintext integer program) and a CommReport.
    """
    from privquant.quantized import QuantizedModel

    if isinstance(artifact, QuantizedModel):
        with tempfile.TemporaryDirectory(prefix="privquant-") as tmp:
            path = Path(tmp) / "model.pq"
            artifact.save(path)
            return infer_local(path, x, backend=backend, timeout=timeout, progress=progress)
    return infer_local(artifact, x, backend=backend, timeout=timeout, progress=progress)


def _wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, str]:
    """Wait for every process; on the first failure or the deadline, stop all and raise."""
    outs: dict[str, str] = {}
    errs: dict[str, str] = {}
    failure = None
    try:
        while len(outs) < len(procs) and failure is None:
            for role, p in procs.items():
                if role in outs or p.poll() is None:
                    continue
                out, err = p.communicate()
                if p.returncode != 0:
                    failure = _error_line(err, role, p.returncode)
                    break
                outs[role] = out
            if time.perf_counter() > deadline:
                failure = "the parties did not finish before the deadline; stopped them"
            time.sleep(0.05)
        if failure is not None:
            # give the others a moment to report their own view, then stop them
            for role, p in procs.items():
                if role in outs or p.returncode is not None:
                    continue
                try:
                    _, err = p.communicate(timeout=2.0)
                    errs[role] = err or ""
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
            raise PeerError(failure)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def load_inputs(
    program_shape, *, image: str | None, index: int | None, batch: int, data: str
) -> torch.Tensor:
    """The client's input batch from ``--image FILE`` or ``--index I --batch B`` of a dataset."""
    from privquant.models.data import load_dataset, load_image

    if batch < 1:
        raise PrivQuantError("--batch must be at least 1")
    if image is not None:
        x = load_image(image)
        return x.unsqueeze(0) if tuple(x.shape) == tuple(program_shape) else x
    i = 0 if index is None else index
    if i < 0:
        raise PrivQuantError("--index must be >= 0")
    images, _ = load_dataset(data, split="test", limit=i + batch)
    if len(images) < i + batch:
        raise PrivQuantError(f"{data} has only {len(images)} test images")
    return images[i : i + batch]
