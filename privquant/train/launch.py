"""Start N training processes on this machine, or join a job started by torchrun.

``launch_local(cfg, workers)`` writes the config to a private temp directory, picks a free
loopback port and starts ``python -m privquant.train.ddp CONFIG`` once per rank with the
``env://`` rendezvous variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) and ``OMP_NUM_THREADS``; every child dies with the launcher
(``PR_SET_PDEATHSIG``). It waits with a deadline; on the first failure it stops the others and
raises one ``PeerError`` line naming the rank. Rank 0's stderr (its tqdm bar) is passed through
when ``cfg.progress``. ``prefixes`` (one command prefix per rank) let the benchmark run ranks
inside network namespaces.

``torchrun_env()`` tells whether this process was started by torchrun (or any launcher that
sets the same variables); then :func:`privquant.train.ddp.run_worker` joins directly.
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

from privquant.errors import PeerError, PrivQuantError
from privquant.train.ddp import RunConfig

ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
STARTUP_SLACK = 60.0


def torchrun_env() -> bool:
    return all(k in os.environ for k in ENV_KEYS)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _error_line(stderr: str, rank: int, code: int) -> str:
    for line in reversed((stderr or "").strip().splitlines()):
        if line.startswith("privquant: error: "):
            return f"rank {rank}: {line.removeprefix('privquant: error: ')}"
    tail = (stderr or "").strip().splitlines()[-1:] or [""]
    return f"rank {rank} exited with status {code} {tail[0][:200]}".strip()


def launch_local(
    cfg: RunConfig | list[RunConfig],
    workers: int,
    *,
    master_addr: str = "127.0.0.1",
    prefixes: list[list[str]] | None = None,
    deadline_s: float | None = None,
    threads: int = 1,
) -> dict:
    """Run ``workers`` ranks as child processes; returns rank 0's result dict (a list of them
    for a list of configs, trained one after the other by the same processes)."""
    if workers < 1:
        raise PrivQuantError("--workers must be >= 1")
    cfgs = cfg if isinstance(cfg, list) else [cfg]
    for c in cfgs:
        c.validate()
    with tempfile.TemporaryDirectory(prefix="privquant-train-") as tmp:
        conf = Path(tmp) / "config.json"
        results = [Path(tmp) / f"result{i}.json" for i in range(len(cfgs))]
        runs = []
        for c, res in zip(cfgs, results, strict=True):
            cfg_run = RunConfig.from_json(c.to_json())
            cfg_run.result = str(res)
            runs.append(json.loads(cfg_run.to_json()))
        conf.write_text(json.dumps(runs if isinstance(cfg, list) else runs[0]))
        port = free_port()
        procs, logs = [], []
        for rank in range(workers):
            env = {
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(workers),
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": str(threads),
                "PYTHONUNBUFFERED": "1",
            }
            prefix = prefixes[rank] if prefixes else []
            show = cfgs[0].progress and rank == 0
            log = None if show else open(Path(tmp) / f"rank{rank}.err", "w+")  # noqa: SIM115
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [*prefix, sys.executable, "-m", "privquant.train.ddp", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    preexec_fn=_die_with_parent,
                    env=env,
                    text=True,
                )
            )
        limit = deadline_s
        if limit is None:
            limit = sum(c.timeout * 4 for c in cfgs) + STARTUP_SLACK
        try:
            _wait(procs, logs, time.monotonic() + limit)
        finally:
            for log in logs:
                if log is not None:
                    log.close()
        if not all(r.is_file() for r in results):
            raise PeerError("training finished without a result from rank 0")
        out = [json.loads(r.read_text()) for r in results]
        return out if isinstance(cfg, list) else out[0]


def _read_err(log) -> str:
    if log is None:
        return ""
    log.seek(0)
    return log.read()


def _wait(procs: list[subprocess.Popen], logs: list, deadline: float) -> None:
    failure = None
    try:
        while failure is None and any(p.poll() is None for p in procs):
            for rank, p in enumerate(procs):
                if p.poll() is not None and p.returncode != 0:
                    failure = _error_line(_read_err(logs[rank]), rank, p.returncode)
                    break
            if time.monotonic() > deadline:
                failure = "the workers did not finish before the deadline; stopped them"
            time.sleep(0.05)
        if failure is None:
            for rank, p in enumerate(procs):
                if p.returncode != 0:
                    failure = _error_line(_read_err(logs[rank]), rank, p.returncode)
                    break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if failure is not None:
        raise PeerError(failure)
