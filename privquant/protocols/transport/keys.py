"""Identity keys of the long-running roles (server, dealer) and how peers pin them.

A role's identity is an Ed25519 key pair (``privquant keygen --out NAME.key``). Its
**fingerprint** is ``sha256(raw 32-byte public key)`` in hex (64 digits); peers pin it:

* the client pins the server (``--server-key FP``) and the dealer (``--dealer-key FP``);
* the server pins its dealer (``--dealer-key FP``);
* the dealer pins the servers it serves (``--trust-server FP``, repeatable).

A pin may be given as an unambiguous prefix of at least :data:`MIN_PIN_HEX` hex digits
(128 bits: finding a second key with a given 128-bit prefix costs ~2^128 work).

TLS needs a certificate: :func:`tls_identity` makes a self-signed X.509 certificate for the key
in memory (the certificate carries nothing but the public key; validity 2000-9999, so clocks do
not matter) and loads key + certificate into an ``ssl.SSLContext`` through an anonymous memory
file (``memfd``), so no private key is ever written anywhere but the key file itself.

The key file is PEM (PKCS#8, unencrypted), created with mode 0600 and ``O_EXCL``; loading refuses
a key file readable by group or others.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from privquant.errors import PrivQuantError

MIN_PIN_HEX = 32
FP_HEX = 64
_HEX = re.compile(r"^[0-9a-f]+$")


def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def fingerprint_of(public_raw: bytes) -> str:
    """Fingerprint of a raw 32-byte Ed25519 public key (64 hex digits)."""
    return hashlib.sha256(public_raw).hexdigest()


def normalize_pin(pin: str, what: str, *, min_hex: int = MIN_PIN_HEX) -> str:
    """A pin as lowercase hex (``sha256:`` prefix and ``:``/space separators allowed).

    ``pin`` may also name a file holding the fingerprint (``NAME.fp`` from keygen)."""
    if not isinstance(pin, str):
        raise PrivQuantError(f"{what}: expected a hex fingerprint")
    if not _HEX.match(pin.strip().lower() or "x") and Path(pin).is_file():
        try:
            with open(pin, "rb") as f:
                pin = f.read(256).decode("ascii", "replace").split("\n")[0]
        except OSError as e:
            raise PrivQuantError(f"{what}: cannot read {pin}: {e.strerror}") from None
    p = pin.strip().lower()
    p = p.removeprefix("sha256:").replace(":", "").replace(" ", "")
    if not _HEX.match(p or "x") or not min_hex <= len(p) <= FP_HEX:
        raise PrivQuantError(
            f"{what}: expected {min_hex} to {FP_HEX} hex digits of a fingerprint, got {pin!r}"
        )
    return p


def pin_matches(pin: str, fingerprint: str) -> bool:
    """True if the normalized ``pin`` is a prefix of ``fingerprint`` (constant time)."""
    return hmac.compare_digest(fingerprint[: len(pin)], pin)


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair: signs, and makes the TLS certificate of its role."""

    private_key: object  # cryptography Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        serialization, _ = _crypto()
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.public_raw)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def pem(self) -> bytes:
        serialization, _ = _crypto()
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @staticmethod
    def generate() -> Identity:
        _, ed25519 = _crypto()
        return Identity(ed25519.Ed25519PrivateKey.generate())

    def save(self, path: str | Path) -> None:
        """Write the private key (PEM) to a new file with mode 0600 (never overwrites)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise PrivQuantError(f"directory does not exist: {path.parent}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise PrivQuantError(f"{path} exists; refusing to overwrite a key") from None
        except OSError as e:
            raise PrivQuantError(f"cannot create {path}: {e.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(self.pem())

    @staticmethod
    def fingerprint_path(key_path: str | Path) -> Path:
        """Where keygen writes the (public) fingerprint of ``key_path``: NAME.fp."""
        p = Path(key_path)
        return p.with_suffix(".fp") if p.suffix == ".key" else p.with_name(p.name + ".fp")

    @staticmethod
    def load(path: str | Path) -> Identity:
        path = Path(path)
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise PrivQuantError(f"key file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise PrivQuantError(
                    f"key file {path} is readable by others (mode {st.st_mode & 0o777:o}); "
                    f"run: chmod 600 {path}"
                )
            if st.st_size > 16384:
                raise PrivQuantError(f"key file {path} is too large to be a key")
            data = path.read_bytes()
        except FileNotFoundError:
            raise PrivQuantError(f"key file not found: {path}") from None
        except OSError as e:
            raise PrivQuantError(f"cannot read key file {path}: {e.strerror}") from None
        serialization, ed25519 = _crypto()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise PrivQuantError(f"{path} is not an unencrypted PEM private key") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise PrivQuantError(f"{path} is not an Ed25519 key (make one with privquant keygen)")
        return Identity(key)


def verify_signature(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification (False on any malformed input)."""
    _, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    if len(public_raw) != 32 or len(signature) != 64:
        return False
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def certificate_pem(identity: Identity) -> bytes:
    """A self-signed X.509 certificate for ``identity`` (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privquant")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.private_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2000, 1, 1))
        .not_valid_after(datetime.datetime(9999, 12, 31))
        .sign(identity.private_key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def load_into_context(ctx: ssl.SSLContext, identity: Identity) -> None:
    """Load ``identity``'s key and self-signed certificate into ``ctx`` without touching disk."""
    fd = os.memfd_create("privquant-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, certificate_pem(identity) + identity.pem())
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def peer_fingerprint(der_cert: bytes | None) -> str:
    """Fingerprint of the Ed25519 key in a peer's DER certificate (PeerError-free: '' if none)."""
    if not der_cert:
        return ""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = x509.load_der_x509_certificate(der_cert).public_key()
    except ValueError:
        return ""
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return ""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return fingerprint_of(raw)
