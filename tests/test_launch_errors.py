"""infer_local's role collector reports the cause of a failure, not its consequences."""

from __future__ import annotations

import pytest

from privquant.errors import PeerError
from privquant.launch import _wait_roles


class _Proc:
    def __init__(self, alive=True, exitcode=None):
        self._alive, self.exitcode = alive, exitcode

    def is_alive(self):
        return self._alive


class _Pipe:
    def __init__(self, msg=None):
        self.msg = msg

    def poll(self):
        return self.msg is not None

    def recv(self):
        return self.msg


def test_the_cause_is_reported_not_the_peer_that_saw_the_connection_close():
    closed = "receiving from the client (P1) failed: the peer closed the connection"
    cause = "input batch 3 differs from the agreed batch 2"
    procs = {
        0: (_Proc(), _Pipe(None)),  # the server still waits
        2: (_Proc(), _Pipe(("error", closed))),  # polled before the client: seen first
        1: (_Proc(alive=False, exitcode=2), _Pipe(("error", cause))),
    }
    with pytest.raises(PeerError, match=r"^client: input batch 3 differs"):
        _wait_roles(procs, limit=30, grace=0.2)


def test_only_consequences_still_give_one_line_within_the_grace():
    procs = {
        0: (_Proc(alive=False, exitcode=1), _Pipe(None)),
        1: (_Proc(), _Pipe(None)),
    }
    with pytest.raises(PeerError, match=r"^server exited with status 1$"):
        _wait_roles(procs, limit=30, grace=0.2)


def test_all_ok():
    procs = {0: (_Proc(), _Pipe(("ok", {"a": 1}))), 1: (_Proc(), _Pipe(("ok", {"b": 2})))}
    assert _wait_roles(procs, limit=5) == {0: {"a": 1}, 1: {"b": 2}}
