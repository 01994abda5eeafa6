"""Artifact signing (Ed25519): ``quantize --sign KEY``, ``--signer FP`` on load, and tampering."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import privquant
from privquant.artifact import MAGIC, SIG_MAGIC
from privquant.cli import main
from privquant.errors import ArtifactError
from privquant.protocols.transport.keys import Identity

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SHIPPED = Path(privquant.__file__).resolve().parent / "models" / "weights" / "lenet5-w8a8.pq"
SIG = len(SIG_MAGIC) + 32 + 64


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("author", "other"):
        ident = Identity.generate()
        ident.save(tmp / f"{name}.key")
        (tmp / f"{name}.fp").write_text(ident.fingerprint + "\n")
        out[name] = (tmp / f"{name}.key", ident)
    return out


@pytest.fixture(scope="module")
def signed(keys, tmp_path_factory):
    art = privquant.load(SHIPPED)
    path = tmp_path_factory.mktemp("signed") / "lenet5.pq"
    digest = art.save(path, sign=keys["author"][0])
    assert art.signer == keys["author"][1].fingerprint and digest == art.content_hash
    return path


def _copy(src: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copy(src, dst)
    return dst


def test_signed_artifact_loads_with_and_without_a_pin(keys, signed):
    fp = keys["author"][1].fingerprint
    assert privquant.load(signed).signer == fp  # unpinned: reported, still verified
    for pin in (fp, fp[:32], fp.upper(), f"sha256:{fp}", str(keys["author"][0].with_suffix(".fp"))):
        art = privquant.load(signed, signer=pin)
        assert art.signer == fp
    # the signature does not change the content: same program, same content hash as unsigned
    plain = privquant.load(SHIPPED)
    assert plain.signer is None
    assert art.architecture_hash() == plain.architecture_hash()


def test_pin_refuses_unsigned_and_other_signers(keys, signed, tmp_path):
    other = keys["other"][1].fingerprint
    with pytest.raises(ArtifactError, match="is not signed"):
        privquant.load(SHIPPED, signer=other)
    with pytest.raises(ArtifactError, match=f"signed by key {keys['author'][1].fingerprint}"):
        privquant.load(signed, signer=other)
    with pytest.raises(privquant.PrivQuantError, match="hex digits"):
        privquant.load(signed, signer="abcd")  # too short to be a pin


def test_tampered_signed_artifact_is_refused(keys, signed, tmp_path):
    data = bytearray(signed.read_bytes())
    body_end = len(data) - SIG - 32
    # 1. one flipped byte in the arrays: the content hash no longer matches
    t = _copy(signed, tmp_path, "flip.pq")
    d = bytearray(data)
    d[body_end - 100] ^= 1
    t.write_bytes(bytes(d))
    with pytest.raises(ArtifactError, match="integrity check"):
        privquant.load(t)
    # 2. a weight changed and the sha256 recomputed (what anyone can do): the signature fails,
    #    pinned or not
    d = bytearray(data[:body_end])
    d[-100] ^= 1
    forged = bytes(d) + hashlib.sha256(bytes(d)).digest() + bytes(data[-SIG:])
    t.write_bytes(forged)
    for pin in (None, keys["author"][1].fingerprint):
        with pytest.raises(ArtifactError, match="does not verify"):
            privquant.load(t, signer=pin)
    # 3. the signature stripped: loads as unsigned, refused when a signer is pinned
    t.write_bytes(bytes(data[:-SIG]))
    assert privquant.load(t).signer is None
    with pytest.raises(ArtifactError, match="is not signed"):
        privquant.load(t, signer=keys["author"][1].fingerprint)
    # 4. re-signed by another key (modified metadata): refused by the pin on the author
    art = privquant.load(signed)
    art.info["note"] = "modified"
    art.save(t, sign=keys["other"][1])
    assert privquant.load(t).signer == keys["other"][1].fingerprint
    with pytest.raises(ArtifactError, match="not by the required signer"):
        privquant.load(t, signer=keys["author"][1].fingerprint)
    # 5. a trailer with garbage in place of the signature
    t.write_bytes(bytes(data[:-64]) + bytes(64))
    with pytest.raises(ArtifactError, match="does not verify"):
        privquant.load(t)
    assert data[:8] == MAGIC


def test_cli_sign_and_pin(keys, tmp_path, capsys):
    out = tmp_path / "l.pq"
    key = keys["author"][0]
    fp = keys["author"][1].fingerprint
    argv = ["quantize", "--model", "lenet5", "--bits", "w8a8", "--calib", "16"]
    rc = main([*argv, "--sign", str(key), "--out", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["signer"] == fp
    rc = main(["hash", str(out), "--signer", fp[:40], "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["signer"] == fp
    rc = main(["eval", str(out), "--data", "fashion-mnist-sample", "--limit", "20",
               "--signer", str(key.with_suffix(".fp")), "--json"])  # fmt: skip
    assert rc == 0 and json.loads(capsys.readouterr().out)["n"] == 20
    for cmd in (["eval", str(out)], ["infer", str(out)], ["hash", str(out)]):
        rc = main([*cmd, "--signer", keys["other"][1].fingerprint])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "not by the required signer" in err[0], err
    rc = main(["eval", str(SHIPPED), "--signer", fp])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is not signed" in err[0]
    rc = main([*argv, "--sign", str(tmp_path / "missing.key"), "--out", str(tmp_path / "x.pq")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "key file not found" in err[0]
    assert not (tmp_path / "x.pq").exists()
