"""The ``.pq`` artifact: one portable, pickle-free file per quantized model.

Layout (little-endian)::

    b"PRIVQNT1"                  8-byte magic (format version 1)
    u64 header_len
    header                       UTF-8 JSON: {"kind", "meta", "arrays": [{name, dtype, shape,
                                 offset, nbytes}]}
    array data                   raw C-order bytes, each array 8-byte aligned
    sha256(everything above)     32-byte content hash
    [signature trailer]          optional, 104 bytes: b"PQSIGED1", the signer's raw Ed25519
                                 public key (32), Ed25519 signature (64) over
                                 SIGN_CONTEXT + content hash

Loading checks the magic, the sizes, the content hash and a dtype whitelist before parsing, and
never executes code: a truncated, corrupt or tampered file raises one ``ArtifactError``.
The content hash doubles as the artifact's identity (``Artifact.content_hash``).

The content hash detects corruption, not tampering (anyone can recompute it). Signing
(``quantize --sign KEY``, an Ed25519 key from ``privquant keygen``) appends the trailer; a
present signature is always verified, and a loader that pins a signer (``--signer FP``, the
key's fingerprint or an unambiguous prefix of >= 32 hex digits) refuses an unsigned artifact or
one signed by another key. The signature covers the content hash, hence every byte before it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from privquant.errors import ArtifactError

MAGIC = b"PRIVQNT1"
_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "float32", "float64"}
_HASH = 32
SIG_MAGIC = b"PQSIGED1"
SIGN_CONTEXT = b"privquant artifact signature v1\0"
_SIG_BYTES = len(SIG_MAGIC) + 32 + 64


def write_container(
    path: str | Path, meta: dict, arrays: dict[str, np.ndarray], signer=None
) -> str:
    """Write ``meta`` (JSON-able) and integer/float ``arrays``; return the content hash (hex).

    ``signer``: an :class:`~privquant.protocols.transport.keys.Identity` that signs the content
    hash (the signature trailer is appended), or None."""
    table, blobs, offset = [], [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a).reshape(np.shape(a))  # keeps 0-d arrays 0-d
        if a.dtype.name not in _DTYPES:
            raise ArtifactError(f"array {name!r} has unsupported dtype {a.dtype}")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        table.append(
            {
                "name": name,
                "dtype": a.dtype.name,
                "shape": list(a.shape),
                "offset": offset,
                "nbytes": len(raw),
            }
        )
        pad = (-len(raw)) % 8
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header = json.dumps(
        {"kind": "privquant-artifact", "meta": meta, "arrays": table},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    body = MAGIC + struct.pack("<Q", len(header)) + header + b"".join(blobs)
    digest = hashlib.sha256(body).digest()
    trailer = b""
    if signer is not None:
        trailer = SIG_MAGIC + signer.public_raw + signer.sign(SIGN_CONTEXT + digest)
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ArtifactError(f"output directory does not exist: {path.parent}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(body + digest + trailer)
    tmp.replace(path)
    return digest.hex()


def read_container(path: str | Path) -> tuple[dict, dict[str, np.ndarray], str]:
    """Read and verify a container; return ``(meta, arrays, content_hash)``."""
    meta, arrays, digest, _signer = read_signed_container(path)
    return meta, arrays, digest


def _check_signer(path: Path, pin: str | None, sig: tuple[bytes, bytes] | None, digest: bytes):
    """The signer's fingerprint (None if unsigned); ArtifactError if the signature is bad or
    does not match ``pin``."""
    from privquant.protocols.transport.keys import fingerprint_of, pin_matches, verify_signature

    fp = None
    if sig is not None:
        pub, signature = sig
        if not verify_signature(pub, signature, SIGN_CONTEXT + digest):
            raise ArtifactError(
                f"artifact {path} carries a signature that does not verify: it was modified "
                "after signing"
            )
        fp = fingerprint_of(pub)
    if pin is not None:
        if fp is None:
            raise ArtifactError(f"artifact {path} is not signed, but signer {pin} is required")
        if not pin_matches(pin, fp):
            raise ArtifactError(
                f"artifact {path} is signed by key {fp}, not by the required signer {pin}"
            )
    return fp


def read_signed_container(
    path: str | Path, signer: str | None = None
) -> tuple[dict, dict[str, np.ndarray], str, str | None]:
    """Read and verify a container; return ``(meta, arrays, content_hash, signer_fingerprint)``.

    A signature present is verified; ``signer`` (a pin: hex fingerprint or prefix, or a
    ``.fp`` file) requires one by that key."""
    from privquant.protocols.transport.keys import normalize_pin

    pin = normalize_pin(signer, "--signer") if signer is not None else None
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    data = path.read_bytes()
    sig = None
    if len(data) >= _SIG_BYTES and data[-_SIG_BYTES : -_SIG_BYTES + len(SIG_MAGIC)] == SIG_MAGIC:
        block = data[-_SIG_BYTES + len(SIG_MAGIC) :]
        sig = (block[:32], block[32:])
        data = data[:-_SIG_BYTES]
    if len(data) < len(MAGIC) + 8 + _HASH or data[: len(MAGIC)] != MAGIC:
        if data[: len(MAGIC)] == MAGIC:
            raise ArtifactError(f"artifact {path} is truncated")
        raise ArtifactError(f"{path} is not a PrivQuant artifact (bad magic)")
    (hlen,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    if start + hlen + _HASH > len(data):
        raise ArtifactError(f"artifact {path} is truncated")
    body, digest = data[:-_HASH], data[-_HASH:]
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(
            f"artifact {path} failed its integrity check (content hash mismatch): "
            "the file is corrupt, truncated or was modified"
        )
    fp = _check_signer(path, pin, sig, digest)  # before parsing anything
    try:
        header = json.loads(data[start : start + hlen].decode("utf-8"))
        if not isinstance(header, dict) or header.get("kind") != "privquant-artifact":
            raise ValueError("header is not a privquant artifact header")
        blob = memoryview(body)[start + hlen :]
        arrays = {}
        for e in header["arrays"]:
            if e["dtype"] not in _DTYPES:
                raise ValueError(f"dtype {e['dtype']!r} not allowed")
            dt = np.dtype(e["dtype"]).newbyteorder("<")
            n = int(np.prod(e["shape"], dtype=np.int64)) * dt.itemsize
            off = int(e["offset"])
            if n != e["nbytes"] or off < 0 or off + n > len(blob):
                raise ValueError(f"array {e['name']!r} out of bounds")
            arrays[e["name"]] = np.frombuffer(blob[off : off + n], dtype=dt).reshape(e["shape"])
        meta = header["meta"]
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
    except RecursionError:
        raise ArtifactError(
            f"artifact {path} is malformed: its header is nested too deeply"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"artifact {path} is malformed: {e}") from None
    return meta, arrays, digest.hex(), fp
