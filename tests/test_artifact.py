"""The .pq artifact: round trip, determinism, and rejection of truncated, corrupt, tampered
(including re-hashed) files with one ArtifactError; loading never unpickles."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import privquant
from privquant.artifact import MAGIC, read_container, write_container
from privquant.errors import ArtifactError
from privquant.program import run_plain

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FIXTURE_OK = settings(
    deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def raw(lenet5_artifact) -> bytes:
    return lenet5_artifact.read_bytes()


def _split(raw: bytes) -> tuple[dict, bytes]:
    """(header JSON, array blob) of a container."""
    (hlen,) = struct.unpack("<Q", raw[8:16])
    return json.loads(raw[16 : 16 + hlen]), raw[16 + hlen : -32]


def _rehash(header_bytes: bytes, blob: bytes) -> bytes:
    """A container with a valid content hash around arbitrary header bytes (a forger's file)."""
    body = MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + blob
    return body + hashlib.sha256(body).digest()


def _edited(raw: bytes, edit) -> bytes:
    header, blob = _split(raw)
    header = copy.deepcopy(header)
    edit(header)
    return _rehash(json.dumps(header).encode(), blob)


def _entry(header: dict, name: str) -> dict:
    return next(e for e in header["arrays"] if e["name"] == name)


def _first_weight(header: dict) -> dict:
    return next(
        e
        for e in header["arrays"]
        if e["name"].startswith("program/") and e["name"].endswith("/weight")
    )


def _write(tmp_path, data: bytes, name: str = "x.pq"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------- round trip
def test_round_trip(lenet5_quantized, lenet5_artifact, sample, tmp_path):
    q0 = lenet5_quantized
    q1 = privquant.load(lenet5_artifact)
    assert q1.model == "lenet5"
    assert (
        q1.content_hash
        == q0.content_hash
        == hashlib.sha256(lenet5_artifact.read_bytes()[:-32]).hexdigest()
    )
    assert q1.architecture_hash() == q0.architecture_hash()
    assert q1.bits == q0.bits and q1.input_shape == (1, 28, 28)
    assert q1.info == q0.info
    assert q1.program.meta == q0.program.meta
    assert q1.qstate.keys() == q0.qstate.keys()
    for k, v in q0.qstate.items():
        # values exact; 0-d tensors come back 1-d (see test_container_keeps_zero_dim_shape)
        assert torch.equal(q1.qstate[k].reshape(v.shape), v), k
    for a, b in zip(q0.program.ops, q1.program.ops):
        assert (a.kind, a.name, a.inputs, a.output, a.attrs) == (
            b.kind,
            b.name,
            b.inputs,
            b.output,
            b.attrs,
        )
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            assert a.arrays[k].dtype == b.arrays[k].dtype, (a.name, k)
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    for name, t in q0.program.tensors.items():
        assert q1.program.tensors[name] == t
    images, labels = sample
    x = images[:64]
    assert torch.equal(run_plain(q0.program, x), run_plain(q1.program, x))
    with torch.no_grad():
        for mode in ("float", "quant"):
            assert torch.equal(q0.qmodel(mode)(x.float() / 255), q1.qmodel(mode)(x.float() / 255))
    assert q0.evaluate(images[:200], labels[:200]) == q1.evaluate(images[:200], labels[:200])


def test_save_is_deterministic(lenet5_quantized, lenet5_artifact, tmp_path):
    q0 = copy.copy(lenet5_quantized)  # save() sets content_hash: keep the fixture untouched
    assert q0.save(tmp_path / "a.pq") == lenet5_quantized.content_hash
    assert (tmp_path / "a.pq").read_bytes() == lenet5_artifact.read_bytes()
    # a loaded artifact re-saves stably (load -> save -> load -> save: same bytes)
    q1 = privquant.load(lenet5_artifact)
    h1 = q1.save(tmp_path / "b.pq")
    h2 = privquant.load(tmp_path / "b.pq").save(tmp_path / "c.pq")
    assert h1 == h2
    assert (tmp_path / "b.pq").read_bytes() == (tmp_path / "c.pq").read_bytes()


def test_resave_of_loaded_artifact_keeps_content_hash(lenet5_quantized, lenet5_artifact, tmp_path):
    q1 = privquant.load(lenet5_artifact)
    assert q1.save(tmp_path / "again.pq") == lenet5_quantized.content_hash


def test_loaded_arrays_are_independent_of_the_file(lenet5_artifact, tmp_path):
    path = _write(tmp_path, lenet5_artifact.read_bytes())
    q = privquant.load(path)
    before = run_plain(q.program, torch.zeros((1, 1, 28, 28), dtype=torch.uint8))
    path.write_bytes(b"overwritten")
    assert torch.equal(run_plain(q.program, torch.zeros((1, 1, 28, 28), dtype=torch.uint8)), before)


def test_container_round_trip_all_dtypes(tmp_path):
    arrays = {
        f"a/{dt}": (np.arange(-3, 9).reshape(3, 4) % (200 if dt == "uint8" else 1000)).astype(dt)
        for dt in ("int8", "int16", "int32", "int64", "uint8", "float32", "float64")
    }
    arrays["empty"] = np.zeros((0, 5), dtype=np.int64)
    arrays["odd"] = np.arange(3, dtype=np.int8)  # 3 bytes: padding before the next array
    arrays["big_endian"] = np.arange(4, dtype=">i4")
    meta = {"format": 1, "note": "ünïcode", "nested": {"x": [1, 2.5, None, True]}}
    path = tmp_path / "c.pq"
    digest = write_container(path, meta, arrays)
    meta2, arrays2, digest2 = read_container(path)
    assert digest2 == digest and meta2 == meta
    assert arrays2.keys() == arrays.keys()
    for k, a in arrays.items():
        assert arrays2[k].shape == a.shape, k
        np.testing.assert_array_equal(arrays2[k], a)


def test_container_keeps_zero_dim_shape(tmp_path):
    path = tmp_path / "s.pq"
    write_container(path, {}, {"scalar": np.array(7, dtype=np.int32)})
    _, arrays, _ = read_container(path)
    assert arrays["scalar"].shape == ()
    assert int(arrays["scalar"]) == 7


def test_write_container_rejects(tmp_path):
    with pytest.raises(ArtifactError, match="dtype"):
        write_container(tmp_path / "o.pq", {}, {"o": np.array([object()], dtype=object)})
    with pytest.raises(ArtifactError, match="dtype"):
        write_container(tmp_path / "f.pq", {}, {"h": np.zeros(3, dtype=np.float16)})
    with pytest.raises(ArtifactError, match="directory"):
        write_container(tmp_path / "missing" / "x.pq", {}, {})


# ---------------------------------------------------------------------- damaged files
def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        privquant.load(tmp_path / "nope.pq")
    with pytest.raises(ArtifactError, match="not found"):
        privquant.load(tmp_path)  # a directory


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PRIVQNT",
        b"PRIVQNT2" + bytes(64),
        b"\x89PNG\r\n\x1a\n" + bytes(64),
        b"hello world" * 10,
    ],
)
def test_wrong_magic(tmp_path, data):
    with pytest.raises(ArtifactError):
        privquant.load(_write(tmp_path, data))


def test_wrong_magic_message(tmp_path, raw):
    with pytest.raises(ArtifactError, match="magic"):
        privquant.load(_write(tmp_path, b"NOTPRIVQ" + raw[8:]))


def test_torch_checkpoint_is_not_an_artifact(tmp_path):
    path = tmp_path / "model.pq"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(ArtifactError, match="magic"):
        privquant.load(path)


def _truncation_points(n: int) -> list[int]:
    return [8, 12, 15, 16, 17, 100, n // 3, n // 2, n - 33, n - 32, n - 31, n - 1]


def test_truncated_at_fixed_offsets(tmp_path, raw):
    for cut in _truncation_points(len(raw)):
        with pytest.raises(ArtifactError) as e:
            privquant.load(_write(tmp_path, raw[:cut]))
        msg = str(e.value)
        assert "truncated" in msg or "integrity" in msg, (cut, msg)
        assert "\n" not in msg


@FIXTURE_OK
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_anywhere(tmp_path, raw, frac):
    cut = int(frac * len(raw))
    with pytest.raises(ArtifactError) as e:
        privquant.load(_write(tmp_path, raw[:cut]))
    if cut >= len(MAGIC):
        assert "truncated" in str(e.value) or "integrity" in str(e.value), cut


@FIXTURE_OK
@given(frac=st.floats(0.0, 1.0, exclude_max=True), xor=st.integers(1, 255))
def test_any_flipped_byte_is_rejected(tmp_path, raw, frac, xor):
    pos = int(frac * len(raw))
    data = bytearray(raw)
    data[pos] ^= xor
    with pytest.raises(ArtifactError):
        privquant.load(_write(tmp_path, bytes(data)))


def test_flipped_byte_in_each_region(tmp_path, raw):
    header, _ = _split(raw)
    hlen = struct.unpack("<Q", raw[8:16])[0]
    w = _first_weight(header)
    regions = {
        "magic": 3,
        "header length": 9,
        "header": 16 + hlen // 2,
        "weight bytes": 16 + hlen + w["offset"],
        "last array byte": len(raw) - 33,
        "hash": len(raw) - 5,
    }
    for region, pos in regions.items():
        data = bytearray(raw)
        data[pos] ^= 0x01
        with pytest.raises(ArtifactError) as e:
            privquant.load(_write(tmp_path, bytes(data)))
        assert "\n" not in str(e.value), region
        if region in ("header", "weight bytes", "last array byte", "hash"):
            assert "integrity" in str(e.value), region


def test_appended_bytes_rejected(tmp_path, raw):
    with pytest.raises(ArtifactError, match="integrity"):
        privquant.load(_write(tmp_path, raw + b"\0" * 8))


# ---------------------------------------------------------------------- forged (re-hashed) files
def test_rehash_helper_is_faithful(tmp_path, raw):
    """Sanity: an unedited re-hash loads (so the rejections below are about the edits)."""
    header, blob = _split(raw)
    q = privquant.load(_write(tmp_path, _rehash(json.dumps(header).encode(), blob)))
    assert q.model == "lenet5"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda h: _first_weight(h).update(offset=10**9), id="offset-out-of-bounds"),
        pytest.param(lambda h: _first_weight(h).update(offset=-8), id="negative-offset"),
        pytest.param(
            lambda h: h["arrays"][-1].update(offset=h["arrays"][-1]["offset"] + 8), id="past-end"
        ),
        pytest.param(
            lambda h: _first_weight(h).update(nbytes=_first_weight(h)["nbytes"] + 1), id="nbytes"
        ),
        pytest.param(lambda h: _first_weight(h).update(shape=[10**6]), id="shape-too-big"),
        pytest.param(lambda h: _first_weight(h).update(dtype="object"), id="dtype-object"),
        pytest.param(lambda h: _first_weight(h).update(dtype="O"), id="dtype-O"),
        pytest.param(lambda h: _first_weight(h).update(dtype="float16"), id="dtype-float16"),
        pytest.param(lambda h: _first_weight(h).update(dtype="V8"), id="dtype-void"),
        pytest.param(lambda h: _first_weight(h).update(dtype="|O"), id="dtype-|O"),
        pytest.param(lambda h: _first_weight(h).update(shape="abc"), id="shape-string"),
        pytest.param(lambda h: _first_weight(h).pop("offset"), id="missing-offset"),
        pytest.param(lambda h: h.update(kind="something-else"), id="kind"),
        pytest.param(lambda h: h.pop("meta"), id="no-meta"),
        pytest.param(lambda h: h.update(arrays=None), id="arrays-null"),
        pytest.param(lambda h: h["meta"].update(format=2), id="format-2"),
        pytest.param(lambda h: h["meta"].pop("program"), id="no-program"),
        pytest.param(lambda h: h["meta"].pop("graph"), id="no-graph"),
        pytest.param(
            lambda h: h["arrays"].remove(_first_weight(h)), id="op-references-missing-array"
        ),
        pytest.param(
            lambda h: h["meta"]["qstate"].append("weights.ghost"), id="qstate-missing-array"
        ),
        pytest.param(lambda h: h["meta"]["qstate"].pop(), id="qstate-key-dropped"),
        pytest.param(lambda h: h["meta"]["graph"][1].update(inputs=["ghost"]), id="graph-wiring"),
        pytest.param(
            lambda h: h["meta"]["program"]["tensors"]["input"].update(lo="zero"), id="bound-type"
        ),
        pytest.param(lambda h: h["meta"]["program"].update(ops=["x"]), id="ops-strings"),
    ],
)
def test_rehashed_tampering_rejected(tmp_path, raw, edit):
    with pytest.raises(ArtifactError) as e:
        privquant.load(_write(tmp_path, _edited(raw, edit)))
    assert "\n" not in str(e.value).strip()


@pytest.mark.parametrize("header", [b"{not json", b"\xff\xfe\x00", b""])
def test_rehashed_unparseable_header(tmp_path, raw, header):
    _, blob = _split(raw)
    with pytest.raises(ArtifactError, match="malformed"):
        privquant.load(_write(tmp_path, _rehash(header, blob)))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda raw: _rehash(b"[1, 2]", _split(raw)[1]), id="header-list"),
        pytest.param(lambda raw: _rehash(b'"text"', _split(raw)[1]), id="header-string"),
        pytest.param(lambda raw: _edited(raw, lambda h: h.update(meta=[1])), id="meta-list"),
        pytest.param(lambda raw: _edited(raw, lambda h: h.update(meta=None)), id="meta-null"),
        pytest.param(
            lambda raw: _edited(raw, lambda h: h["meta"]["program"]["ops"][1].update(attrs=None)),
            id="op-attrs-null",
        ),
    ],
)
def test_rehashed_non_object_json_rejected(tmp_path, raw, make):
    with pytest.raises(ArtifactError):
        privquant.load(_write(tmp_path, make(raw)))


def _float_weight(h):
    e = _first_weight(h)
    e.update(dtype="float32", nbytes=e["nbytes"] * 4)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_float_weight, id="float-weight"),
        pytest.param(
            lambda h: h["meta"]["bits"].update(default={"w": 9, "a": 8}), id="bits-out-of-range"
        ),
        pytest.param(
            lambda h: h["meta"]["program"]["ops"][1]["attrs"].update(weight_shape=[6, 1, 5, 4]),
            id="weight-shape-declaration",
        ),
        pytest.param(
            lambda h: h["meta"]["program"]["ops"][2].update(inputs=["logits"]), id="program-order"
        ),
    ],
)
def test_rehashed_invalid_program_is_an_artifact_error(tmp_path, raw, edit):
    with pytest.raises(ArtifactError):
        privquant.load(_write(tmp_path, _edited(raw, edit)))


def test_rehashed_missing_requant_attr_rejected_at_load(tmp_path, raw):
    def edit(h):
        for o in h["meta"]["program"]["ops"]:
            if o["kind"] == "requant":
                del o["attrs"]["shift"]

    path = _write(tmp_path, _edited(raw, edit))
    with pytest.raises(ArtifactError):
        q = privquant.load(path)
        run_plain(q.program, torch.zeros((1, 1, 28, 28), dtype=torch.uint8))


# ---------------------------------------------------------------------- no pickle
def test_load_never_unpickles(monkeypatch, lenet5_artifact, sample):
    def boom(*args, **kwargs):
        raise AssertionError("pickle used while loading an artifact")

    class NoUnpickler:
        def __init__(self, *args, **kwargs):
            boom()

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(np, "load", boom)
    q = privquant.load(lenet5_artifact)
    images, labels = sample
    res = q.evaluate(images[:50], labels[:50])
    assert res["n"] == 50


def test_artifact_holds_no_pickle_stream(raw):
    """No pickle protocol marker right after the header and no pickled-object opcodes."""
    header, _ = _split(raw)
    dtypes = {e["dtype"] for e in header["arrays"]}
    assert dtypes <= {"int8", "int16", "int32", "int64", "uint8", "float32", "float64"}
    assert header["kind"] == "privquant-artifact"
    meta = header["meta"]
    assert meta["model"] == "lenet5" and meta["format"] == 1
    # every array named by the program and graph is present in the table
    names = {e["name"] for e in header["arrays"]}
    for i, op in enumerate(meta["program"]["ops"]):
        for k in op["arrays"]:
            assert f"program/{i}/{k}" in names
