"""The network transport: :class:`Party` messages over authenticated TLS links (or socketpairs).

One :class:`~privquant.protocols.transport.tls.Link` per peer rank. A message is exactly what
:class:`~privquant.protocols.transport.channel.Party` hands over -- its 16-byte header, then the
payload -- written back to back on the link's byte stream (TLS adds its own record framing and
AEAD tag: 22 bytes per record of at most 16 KiB). Receiving follows the channel's contract:

* :meth:`NetTransport.recv_header` reads exactly 16 bytes; :class:`Party` checks magic,
  version, phase, tag and the announced length against what the *receiver* expects from the
  public program (``packed_nbytes(n, ell)``) before anything else is read, so a peer can never
  make us read or allocate more than the public program allows;
* :meth:`NetTransport.recv_payload` then reads exactly that many bytes into a fresh buffer;
  a peer that sends fewer and stops, closes, or stalls gets a :class:`PeerError` at the
  deadline (each receive waits at most ``timeout`` for its header and ``timeout`` for its
  payload).

Accounting is done by :class:`Party` and is therefore identical to the gloo transport's (same
messages, same header + payload bytes); the bytes on the wire are measured per link
(``Link.bytes_in``/``bytes_out``) and, for the whole run, by the tests' counting proxy.
"""

from __future__ import annotations

import time

import numpy as np

from privquant.errors import PeerError
from privquant.protocols.transport.channel import HEADER_BYTES, PARTY_NAMES, SendHandle, Transport
from privquant.protocols.transport.tls import Link


class NetTransport(Transport):
    """Transport of ``rank`` over one :class:`Link` per peer rank."""

    def __init__(self, rank: int, links: dict[int, Link]):
        self.rank = rank
        self.links = dict(links)

    def _link(self, r: int, what: str) -> Link:
        link = self.links.get(r)
        if link is None:
            raise PeerError(f"no link to the {PARTY_NAMES.get(r, r)} for {what}")
        return link

    def post_send(self, dst: int, header: bytes, payload: np.ndarray) -> SendHandle:
        what = f"a message to the {PARTY_NAMES[dst]}"
        data = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
        return self._link(dst, what).send([header, data], what)

    def recv_header(self, src: int, nbytes: int, what: str) -> bytes:
        link = self._link(src, what)
        return link.recv_exact(HEADER_BYTES, what, time.monotonic() + link.timeout)

    def recv_payload(self, src: int, nbytes: int, what: str) -> np.ndarray:
        return self._link(src, what).recv_array(nbytes, what)

    def close(self) -> None:
        for link in self.links.values():
            link.close()

    @property
    def wire_bytes(self) -> dict[str, int]:
        return {
            "sent": sum(k.bytes_out for k in self.links.values()),
            "received": sum(k.bytes_in for k in self.links.values()),
        }
