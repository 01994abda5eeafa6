"""The three roles as separate OS processes (one per machine if wanted): server, client, dealer.

Ranks: server 0 (hosts the rendezvous), client 1, dealer 2 (CrypTen's TTP slot). Handshake, all in
the ``(handshake)`` scope of the setup phase, before any secret moves:

1. server -> client and dealer: the public program (architecture, bit widths, scales, bounds,
   public multipliers; no weights) as JSON bytes;
2. the client checks its architecture hash against the one it expects (``expect_hash``) and
   validates its input against the input shape; it then sends the server and the dealer an
   acknowledgement: status (0 = go, 1 = refused), the batch size and the hash it computed;
3. the server checks the echoed hash equals its own.

A refusal or any mismatch ends every role with one ``PeerError`` line before secrets are shared.
"""

from __future__ import annotations

import json
import time

import torch

from privquant.errors import PeerError, PrivQuantError
from privquant.program import Program, check_input
from privquant.protocols.transport.channel import CLIENT, DEALER, SERVER, Party
from privquant.protocols.transport.crypten import (
    DEFAULT_TIMEOUT,
    CryptenTransport,
    init_communicator,
    shutdown_communicator,
)
from privquant.report import HANDSHAKE_SCOPE
from privquant.runtime import RoleResult, run_role

GO, REFUSED = 0, 1
_HASH_BYTES = 32


def _send_bytes(party: Party, dst: int, data: bytes, tag: str) -> None:
    party.send(dst, torch.tensor([len(data)]), 32, f"{tag}.len", phase="setup")
    party.send(
        dst,
        torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64),
        8,
        tag,
        phase="setup",
    )


def _recv_bytes(party: Party, src: int, tag: str, limit: int = 1 << 28) -> bytes:
    n = int(party.recv(src, (1,), 32, f"{tag}.len", phase="setup")[0])
    if not 0 < n <= limit:
        raise PeerError(f"peer announced an implausible {tag} of {n} bytes")
    return bytes(party.recv(src, (n,), 8, tag, phase="setup").to(torch.uint8).numpy().tobytes())


def _send_ack(party: Party, dst: int, status: int, batch: int, digest: str) -> None:
    party.send(dst, torch.tensor([status, batch]), 32, "ack", phase="setup")
    party.send(dst, torch.tensor(list(bytes.fromhex(digest))), 8, "ack.hash", phase="setup")


def _recv_ack(party: Party) -> tuple[int, int, str]:
    status, batch = (int(v) for v in party.recv(CLIENT, (2,), 32, "ack", phase="setup"))
    h = party.recv(CLIENT, (_HASH_BYTES,), 8, "ack.hash", phase="setup")
    return status, batch, bytes(h.to(torch.uint8).numpy().tobytes()).hex()


def _connect(rank: int, rendezvous: str, timeout: float) -> Party:
    init_communicator(rank, rendezvous, timeout=timeout)
    return Party(rank, CryptenTransport(timeout=timeout))


def _result(res: RoleResult, party: Party, seconds: dict, **extra) -> dict:
    return {
        "role": {SERVER: "server", CLIENT: "client", DEALER: "dealer"}[party.rank],
        "seconds": {**res.seconds, **seconds},
        "stats": res.stats,
        "scopes": res.scopes,
        **extra,
    }


def serve(
    program: Program,
    rendezvous: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    backend: str = "privquant",
) -> dict:
    """The server role: offer the public program, then run the private inference."""
    if not program.has_weights:
        raise PrivQuantError("serve needs an artifact with weights")
    t0 = time.perf_counter()
    party = _connect(SERVER, rendezvous, timeout)
    try:
        with party.scope(HANDSHAKE_SCOPE):
            blob = json.dumps(program.public_dict(), sort_keys=True).encode()
            _send_bytes(party, CLIENT, blob, "program")
            _send_bytes(party, DEALER, blob, "program")
            status, batch, digest = _recv_ack(party)
        if status != GO:
            raise PeerError(
                "the client refused the session (model or input mismatch); no secret was shared"
            )
        if digest != program.architecture_hash():
            raise PeerError(
                "the client acknowledged a different model (architecture hash "
                "mismatch); no secret was shared"
            )
        res = run_role(party, program, batch=batch, backend=backend)
        return _result(
            res, party, {"total": time.perf_counter() - t0}, batch=batch, architecture_hash=digest
        )
    finally:
        party.close()
        shutdown_communicator()


def dealer(
    rendezvous: str, *, timeout: float = DEFAULT_TIMEOUT, backend: str = "privquant"
) -> dict:
    """The dealer role: learn the public program, then produce the correlated randomness."""
    t0 = time.perf_counter()
    party = _connect(DEALER, rendezvous, timeout)
    try:
        with party.scope(HANDSHAKE_SCOPE):
            program = Program.from_public_dict(json.loads(_recv_bytes(party, SERVER, "program")))
            status, batch, _ = _recv_ack(party)
        if status != GO:
            raise PeerError("the client refused the session; the dealer stops")
        res = run_role(party, program, batch=batch, backend=backend)
        return _result(res, party, {"total": time.perf_counter() - t0}, batch=batch)
    finally:
        party.close()
        shutdown_communicator()


def client(
    x,
    rendezvous: str,
    *,
    expect_hash: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    backend: str = "privquant",
    progress: bool = False,
) -> dict:
    """The client role: check the offered model, share the input, receive the logits."""
    t0 = time.perf_counter()
    party = _connect(CLIENT, rendezvous, timeout)
    try:
        with party.scope(HANDSHAKE_SCOPE):
            program = Program.from_public_dict(json.loads(_recv_bytes(party, SERVER, "program")))
            digest = program.architecture_hash()
            problem = None
            if expect_hash is not None and digest != expect_hash.lower():
                problem = (
                    f"the server offers model {program.model!r} with architecture hash "
                    f"{digest[:16]}..., expected {expect_hash[:16]}...; refusing before "
                    "any secret is sent"
                )
            else:
                try:
                    x = check_input(program, x)
                except PrivQuantError as e:
                    problem = f"{e}; nothing was shared"
            batch = int(x.shape[0]) if problem is None else 0
            for dst in (SERVER, DEALER):
                _send_ack(party, dst, REFUSED if problem else GO, batch, digest)
        if problem:
            raise PeerError(problem)
        res = run_role(party, program, batch=batch, x=x, backend=backend, progress=progress)
        logits = res.logits
        scale = program.tensors[program.output_op.output].scale or 1.0
        return _result(
            res,
            party,
            {"total": time.perf_counter() - t0},
            batch=batch,
            model=program.model,
            architecture_hash=digest,
            logits_int=logits.tolist(),
            logits=(logits.double() * scale).tolist(),
            labels=logits.argmax(1).tolist(),
        )
    finally:
        party.close()
        shutdown_communicator()
