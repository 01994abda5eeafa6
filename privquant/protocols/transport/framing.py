"""Bounded parsing of everything a peer sends outside the ring messages: control frames, JSON.

A **control frame** (only while a link is being set up, before any :class:`Party` message) is a
4-byte little-endian length followed by that many bytes of UTF-8 JSON; the length is checked
against the receiver's limit *before* anything is read or allocated.

:func:`loads_bounded` parses JSON a peer sent (control frames, the public program) only after
checking its size and its nesting depth with a linear scan (strings skipped), so a hostile
``[[[[...]]]]`` never reaches Python's recursive parser; any parse failure is a
:class:`~privquant.errors.PeerError`.

:func:`parse_address` validates ``HOST:PORT`` (or ``tcp://HOST:PORT``) strings.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np

from privquant.errors import PeerError, PrivQuantError

CONTROL_LIMIT = 1 << 16
MAX_DEPTH = 32
LEN = struct.Struct("<I")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(data: bytes) -> int:
    """Maximum nesting depth of ``[``/``{`` in JSON text (strings are skipped)."""
    stripped = _STRING.sub(b'""', data)
    a = np.frombuffer(stripped, dtype=np.uint8)
    step = np.zeros(a.shape, dtype=np.int32)
    step[(a == ord("[")) | (a == ord("{"))] = 1
    step[(a == ord("]")) | (a == ord("}"))] = -1
    return int(np.cumsum(step).max(initial=0))


def loads_bounded(data: bytes, what: str, *, limit: int, depth: int = MAX_DEPTH):
    """``json.loads`` for peer data: at most ``limit`` bytes and ``depth`` levels (PeerError)."""
    if len(data) > limit:
        raise PeerError(f"{what} is {len(data)} bytes, more than the limit of {limit}")
    try:
        d = json_depth(data)
    except Exception:
        raise PeerError(f"{what} is not valid JSON") from None
    if d > depth:
        raise PeerError(f"{what} is nested {d} levels deep (limit {depth})")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PeerError(f"{what} is not valid JSON") from None


def encode_control(obj: dict) -> bytes:
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if len(body) > CONTROL_LIMIT:
        raise PrivQuantError("control frame too large")
    return LEN.pack(len(body)) + body


def decode_length(header: bytes, what: str, limit: int = CONTROL_LIMIT) -> int:
    (n,) = LEN.unpack(header)
    if not 0 < n <= limit:
        raise PeerError(f"{what}: frame of {n} bytes announced (limit {limit})")
    return n


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT``, ``tcp://HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    if not isinstance(text, str) or not text.strip():
        raise PrivQuantError(f"{what}: expected HOST:PORT, got {text!r}")
    t = text.strip()
    if "://" in t:
        scheme, _, t = t.partition("://")
        if scheme != "tcp":
            raise PrivQuantError(f"{what}: only tcp://HOST:PORT is supported, got {text!r}")
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([A-Za-z0-9.\-_]+):(\d{1,5})", t)
    if not m:
        raise PrivQuantError(f"{what}: expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise PrivQuantError(f"{what}: port {port} out of range")
    return host, port


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
