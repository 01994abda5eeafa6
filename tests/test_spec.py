"""Bit-width specifications: ``wXaY`` parsing and per-layer assignments (JSON)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import privquant
from privquant.errors import PrivQuantError
from privquant.quant.spec import MAX_BITS, MIN_BITS, BitAssignment, LayerBits, parse_bits

bits = st.integers(MIN_BITS, MAX_BITS)
layer_bits = st.builds(LayerBits, bits, bits)
layer_names = st.text(alphabet="abcdefgh0123456789._", min_size=1, max_size=20)


@settings(deadline=None, max_examples=60)
@given(w=st.integers(0, 20), a=st.integers(0, 20), upper=st.booleans())
def test_parse_bits_range(w, a, upper):
    spec = f"w{w}a{a}"
    spec = spec.upper() if upper else spec
    if MIN_BITS <= w <= MAX_BITS and MIN_BITS <= a <= MAX_BITS:
        b = parse_bits(spec)
        assert (b.w, b.a) == (w, a)
        assert b.tag() == f"w{w}a{a}"
    else:
        with pytest.raises(PrivQuantError, match="out of range"):
            parse_bits(spec)


@pytest.mark.parametrize("spec", ["w9a1", "w1a4", "w4a9", "w0a0", "w4a1", "w16a16"])
def test_parse_bits_out_of_range(spec):
    with pytest.raises(PrivQuantError) as e:
        parse_bits(spec)
    assert "\n" not in str(e.value)
    assert "2..8" in str(e.value)


@pytest.mark.parametrize(
    "spec", ["x", "w4", "a4", "4a4", "w4a", "wa4", "w4a4b", "w-4a4", "w 4a4", "", "w4.0a4", "a4w4"]
)
def test_parse_bits_malformed(spec):
    with pytest.raises(PrivQuantError, match="bad bit spec"):
        parse_bits(spec)


def test_parse_bits_whitespace_and_reexport():
    assert parse_bits(" w4a8 ") == LayerBits(4, 8)
    assert privquant.parse_bits("w2a3") == privquant.LayerBits(2, 3)


@pytest.mark.parametrize("w,a", [(1, 4), (9, 4), (4, 1), (4, 9), (True, 4), (4.0, 4), ("4", 4)])
def test_layerbits_rejects(w, a):
    with pytest.raises(PrivQuantError):
        LayerBits(w, a)


@settings(deadline=None, max_examples=40)
@given(
    layers=st.dictionaries(layer_names, layer_bits, max_size=6),
    default=st.none() | layer_bits,
    model=st.none() | st.sampled_from(["lenet5", "resnet8"]),
)
def test_assignment_round_trip(tmp_path_factory, layers, default, model):
    a = BitAssignment(layers=layers, default=default, model=model)
    assert BitAssignment.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    path = tmp_path_factory.mktemp("assign") / "a.json"
    a.save(path)
    b = BitAssignment.load(path)
    assert b == a
    for name, lb in layers.items():
        assert b.get(name) == lb


def test_assignment_get_default_and_missing():
    a = BitAssignment(layers={"conv1": LayerBits(3, 5)}, default=LayerBits(8, 8))
    assert a.get("conv1") == LayerBits(3, 5)
    assert a.get("fc3") == LayerBits(8, 8)
    no_default = BitAssignment(layers={"conv1": LayerBits(3, 5)})
    with pytest.raises(PrivQuantError, match="fc3"):
        no_default.get("fc3")
    assert BitAssignment.uniform("w4a6").get("anything") == LayerBits(4, 6)
    assert BitAssignment.uniform(LayerBits(2, 2)).default == LayerBits(2, 2)


def test_check_layers_rejects_unknown_and_uncovered():
    names = ["conv1", "conv2", "fc"]
    BitAssignment(layers={"conv1": LayerBits(4, 4)}, default=LayerBits(8, 8)).check_layers(names)
    with pytest.raises(PrivQuantError, match="conv9"):
        BitAssignment(layers={"conv9": LayerBits(4, 4)}, default=LayerBits(8, 8)).check_layers(
            names
        )
    # no default and a layer without an entry
    with pytest.raises(PrivQuantError, match="fc"):
        BitAssignment(layers={"conv1": LayerBits(4, 4), "conv2": LayerBits(4, 4)}).check_layers(
            names
        )


def test_unknown_layer_rejected_by_quantize(random_model, calib_images):
    a = BitAssignment(layers={"conv7": LayerBits(4, 4)}, default=LayerBits(8, 8))
    with pytest.raises(PrivQuantError, match="conv7"):
        privquant.quantize(
            random_model("lenet5"), calib_images("lenet5", 4), a, name="lenet5", progress=False
        )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[1, 2]",
        '"w4a4"',
        "{}",
        '{"default": {"w": 4, "a": 4}}',
        '{"layers": []}',
        '{"layers": {"conv1": 4}}',
        '{"layers": {"conv1": {"w": 4}}}',
        '{"layers": {"conv1": {"w": "four", "a": 4}}}',
        '{"layers": {"conv1": {"w": 9, "a": 4}}}',
        '{"layers": {"conv1": {"w": 4, "a": 1}}}',
        '{"layers": {}, "default": {"w": 1, "a": 4}}',
        '{"layers": {}, "default": 5}',
        '{"layers": {}, "version": 2}',
        '{"layers": null}',
    ],
)
def test_malformed_assignment_file(tmp_path, text):
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(PrivQuantError) as e:
        BitAssignment.load(path)
    assert "\n" not in str(e.value)


def test_assignment_file_binary_and_missing(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PrivQuantError):
        BitAssignment.load(path)
    with pytest.raises(PrivQuantError, match="not found"):
        BitAssignment.load(tmp_path / "missing.json")
    with pytest.raises(PrivQuantError, match="not found"):
        BitAssignment.load(tmp_path)  # a directory
