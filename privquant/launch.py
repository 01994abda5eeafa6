"""``privquant infer``: all three roles on this machine, as processes started through the API.

The launcher parses the artifact once, then starts the server, the dealer and the client as
``multiprocessing`` processes (``spawn``: a fresh interpreter each, no fork of a process whose
OpenMP pool is running). Each receives what it needs through its start-up pipe -- the server
the program with weights, the client its input batch, the dealer nothing -- so no file ever
holds the input or the weights, and nothing private is left on disk after any signal. Each
child dies with the launcher (``PR_SET_PDEATHSIG``).

Transport: CrypTen's gloo communicator over loopback (``GLOO_SOCKET_IFNAME=lo``), rendezvous
through a ``file://`` store in a private temporary directory (the store holds addresses only),
so nothing listens on another interface. gloo cannot encrypt and aborts a process on a
message longer than the receive posted; on one machine between its own children that is
acceptable (see :mod:`privquant.protocols.transport.crypten`). Networked deployments use
``privquant serve`` / ``dealer`` / ``client`` (TLS, :mod:`privquant.serving`).

The roles run the same session protocol as the network services (:mod:`privquant.serving`): one
session, the batch in chunks of at most ``chunk`` samples. The launcher joins the three
parties' accounting into one CommReport and compares the client's logits with the plaintext
integer program.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from privquant.errors import PeerError, PrivQuantError
from privquant.program import check_input, output_logits, run_plain
from privquant.report import CommReport

_PR_SET_PDEATHSIG = 1
STARTUP_SLACK = 60.0  # seconds for interpreter start and imports, on top of the protocol timeouts
ROLES = {0: "server", 1: "client", 2: "dealer"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _role_main(rank: int, rdv: str, timeout: float, backend: str, payload: dict, conn) -> None:
    """One role in a child process; sends ("ok", summary) or ("error", line) to ``conn``."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides; it kills us if needed
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    try:
        out = _run_role(rank, rdv, timeout, backend, payload)
        conn.send(("ok", out))
    except PrivQuantError as e:
        conn.send(("error", str(e)))
    except BaseException as e:  # one line, never a traceback
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _run_role(rank: int, rdv: str, timeout: float, backend: str, payload: dict) -> dict:
    from privquant.protocols.transport.channel import Party
    from privquant.protocols.transport.crypten import (
        CryptenTransport,
        init_communicator,
        shutdown_communicator,
    )
    from privquant.serving import ClientSession, dealer_session, server_session

    init_communicator(rank, rdv, timeout=timeout, dealer=payload["dealer"])
    try:
        party = Party(rank, CryptenTransport(timeout=timeout))
        try:
            if rank == 0:
                s = server_session(party, payload["program"], payload["policy"], backend=backend)
                return s.as_dict()
            if rank == 2:
                return dealer_session(party, backend=backend).as_dict()
            cs = ClientSession(
                party,
                expect_hash=payload["hash"],
                backend=backend,
                progress=payload["progress"],
            )
            cs.open()
            logits = cs.infer(torch.from_numpy(payload["x"]))
            s = cs.close()
            s.extra["logits_int"] = logits.numpy()
            return s.as_dict()
        finally:
            with contextlib.suppress(PrivQuantError):
                party.close()
    finally:
        shutdown_communicator()


def infer_local(
    artifact,
    images,
    *,
    backend: str = "privquant",
    timeout: float = 60.0,
    progress: bool = False,
    chunk: int = 32,
    preprocessing: str = "dealer",
    output: str = "logits",
) -> dict:
    """Private inference of ``images`` (uint8, (N, *input_shape)) with all roles on this machine.

    ``artifact``: a QuantizedModel or a ``.pq`` path (loaded once, here). ``preprocessing``:
    ``dealer`` (server, client and dealer processes) or ``ot`` (server and client only).
    ``output``: the output policy (``logits``, ``label`` or ``topk:K``); the result's
    ``identical`` compares what the client learned with the plaintext integer program (logits,
    or its top-k indices)."""
    from privquant.ops.argmax import output_program, plain_topk, policy_k
    from privquant.quantized import QuantizedModel
    from privquant.serving import Policy

    art = artifact if isinstance(artifact, QuantizedModel) else QuantizedModel.load(artifact)
    x = check_input(art.program, images).to(torch.uint8)
    if not 1 <= chunk <= 1 << 16:
        raise PrivQuantError("chunk must be in 1..65536")
    policy = Policy(preprocessing, output=output, max_batch=int(min(chunk, len(x))))
    dealer = policy.needs_dealer
    executed = output_program(art.program, output)  # checks K against the model's classes
    ref = run_plain(art.program, x)
    payloads = {
        0: {"program": art.program, "policy": policy, "dealer": dealer},
        1: {
            "x": x.numpy(),
            "hash": art.architecture_hash(),
            "progress": progress,
            "dealer": dealer,
        },
        2: {"dealer": dealer},
    }
    ranks = (0, 2, 1) if dealer else (0, 1)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the children
    ctx = mp.get_context("spawn")
    rdv_dir = tempfile.mkdtemp(prefix="privquant-rdv-")  # 0700; rendezvous addresses only
    procs: dict[int, tuple] = {}
    t0 = time.perf_counter()
    try:
        rdv = f"file://{rdv_dir}/store"
        for rank in ranks:
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=_role_main,
                args=(rank, rdv, timeout, backend, payloads[rank], send),
                name=f"privquant-{ROLES[rank]}",
                daemon=True,
            )
            p.start()
            send.close()
            procs[rank] = (p, recv)
        chunks = -(-len(x) // policy.max_batch)
        outs = _wait_roles(procs, STARTUP_SLACK + timeout * (3 + chunks))
    finally:
        for p, recv in procs.values():
            if p.is_alive():
                p.kill()
            p.join(5)
            recv.close()
        shutil.rmtree(rdv_dir, ignore_errors=True)
    wall = time.perf_counter() - t0
    cl = outs[1]
    got = torch.from_numpy(np.asarray(cl["logits_int"], dtype=np.int64))
    parties = [outs[r] for r in sorted(outs)]
    secs = {
        "wall": wall,
        **{f"{p['role']}_{k}": v for p in parties for k, v in p["seconds"].items()},
    }
    report = CommReport.from_stats(
        executed,
        parties,
        batch=len(x),
        backend=backend,
        seconds=secs,
        batches=cl["batches"],
        preprocessing=preprocessing,
    )
    k = policy_k(output)
    res = {
        "model": art.model,
        "n": len(x),
        "output": output,
        "plain_labels": plain_topk(ref, 1)[:, 0].tolist(),
        "batches": cl["batches"],
        "peak_rss_mb": {ROLES[r]: outs[r].get("peak_rss_mb") for r in sorted(outs)},
        "report": report,
    }
    if k is None:
        res.update(
            labels=plain_topk(got, 1)[:, 0].tolist(),
            logits=output_logits(art.program, got).tolist(),
            identical=bool(torch.equal(got, ref)),
        )
    else:
        res.update(labels=got[:, 0].tolist(), identical=bool(torch.equal(got, plain_topk(ref, k))))
        if output != "label":
            res["topk"] = got.tolist()
    return res


def infer(
    artifact,
    x,
    *,
    backend: str = "privquant",
    timeout: float = 60.0,
    progress: bool = False,
    preprocessing: str = "dealer",
    output: str = "logits",
) -> dict:
    """Python API: private inference of ``x`` with all parties on this machine.

    ``artifact`` is a QuantizedModel or a ``.pq`` path; returns the client's labels (and logits
    or top-k), the plaintext labels, ``identical`` (what the client learned == the plaintext
    integer program's) and a CommReport. ``preprocessing``: ``dealer`` (a non-colluding third
    process) or ``ot`` (two parties only); ``output``: ``logits``, ``label`` or ``topk:K``.
    """
    return infer_local(
        artifact,
        x,
        backend=backend,
        timeout=timeout,
        progress=progress,
        preprocessing=preprocessing,
        output=output,
    )


_CONSEQUENCE = ("closed the connection", "exited with status", "did not answer", "timed out")


def _wait_roles(procs: dict[int, tuple], limit: float, grace: float = 3.0) -> dict[int, dict]:
    """Collect every role's result; on a failure (or after ``limit`` s) raise one line.

    When a role fails, the others usually fail right after with "the peer closed the
    connection": for up to ``grace`` s the other roles' errors are collected too and the first
    one that is not such a consequence is reported (the cause, e.g. the client's own error)."""
    outs: dict[int, dict] = {}
    errors: dict[int, str] = {}  # rank -> its one line, in the order seen
    deadline = time.perf_counter() + limit
    first_error = None
    while len(outs) + len(errors) < len(procs):
        for rank, (p, recv) in procs.items():
            if rank in outs or rank in errors:
                continue
            if recv.poll():
                try:
                    status, val = recv.recv()
                except (EOFError, OSError):
                    status, val = "error", f"exited with status {p.exitcode}"
                if status != "ok":
                    errors[rank] = f"{ROLES[rank]}: {val}"
                else:
                    outs[rank] = val
            elif not p.is_alive() and not recv.poll():
                errors[rank] = f"{ROLES[rank]} exited with status {p.exitcode}"
        now = time.perf_counter()
        if errors and first_error is None:
            first_error = now
        if errors and now - first_error > grace:
            break
        if now > deadline:
            if errors:
                break
            raise PeerError("the parties did not finish before the deadline; stopped them")
        time.sleep(0.02)
    if errors:
        lines = list(errors.values())
        causes = [e for e in lines if not any(c in e for c in _CONSEQUENCE)]
        raise PeerError((causes or lines)[0])
    return outs


def _error_line(stderr: str | None, role: str, code: int) -> str:
    for line in reversed((stderr or "").strip().splitlines()):
        if line.startswith("privquant: error: "):
            return f"{role}: {line.removeprefix('privquant: error: ')}"
    return f"{role} exited with status {code}"


def _wait_all(procs: dict, deadline: float) -> dict[str, str]:
    """Wait for every subprocess (``role -> Popen``, stdout/stderr pipes); on the first failure
    or the deadline stop them all and raise its one line. Used by the baselines' launchers."""
    import subprocess

    outs: dict[str, str] = {}
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
            for role, p in procs.items():
                if role in outs or p.returncode is not None:
                    continue
                try:
                    p.communicate(timeout=2.0)
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
        return x.unsqueeze(0) if x.dim() == 3 else x
    i = 0 if index is None else index
    if i < 0:
        raise PrivQuantError("--index must be >= 0")
    images, _ = load_dataset(data, split="test", limit=i + batch)
    if len(images) < i + batch:
        raise PrivQuantError(f"{data} has only {len(images)} test images")
    return images[i : i + batch]


MAX_IMAGES = 100_000


def load_image_dir(path: str) -> tuple[torch.Tensor, list[str]]:
    """Every ``.png``/``.npy`` image in a directory (sorted by name) as one uint8 batch."""
    from privquant.models.data import load_image

    d = Path(path)
    if not d.is_dir():
        raise PrivQuantError(f"not a directory: {d}")
    files = sorted(f for f in d.iterdir() if f.suffix.lower() in (".png", ".npy") and f.is_file())
    if not files:
        raise PrivQuantError(f"no .png or .npy images in {d}")
    if len(files) > MAX_IMAGES:
        raise PrivQuantError(f"{d} holds {len(files)} images (limit {MAX_IMAGES})")
    imgs = [load_image(f) for f in files]
    shapes = {tuple(i.shape) for i in imgs}
    if len(shapes) != 1:
        raise PrivQuantError(f"the images in {d} differ in shape: {sorted(shapes)}")
    return torch.stack(imgs), [f.name for f in files]
