"""Fashion-MNIST IDX loading, the shipped sample, and single-image loading."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from privquant.errors import DataError
from privquant.models import data
from privquant.models.data import (
    DEFAULT_FMNIST_DIR,
    load_dataset,
    load_fashion_mnist,
    load_image,
    load_sample,
    read_idx,
    to_float,
)

HAVE_PACKAGE = (DEFAULT_FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


def _write_idx(path, arr: np.ndarray, magic: int | None = None, compress: bool = True) -> None:
    magic = (0x08 << 8) | arr.ndim if magic is None else magic
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_fmnist(directory, n: int = 7, split_prefix: str = "t10k"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    _write_idx(directory / f"{split_prefix}-images-idx3-ubyte.gz", images)
    _write_idx(directory / f"{split_prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_sample_loads():
    images, labels = load_sample()
    assert images.shape == (500, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (500,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) <= 9
    few, few_labels = load_dataset("fashion-mnist-sample", limit=10)
    assert torch.equal(few, images[:10]) and torch.equal(few_labels, labels[:10])


def test_sample_is_the_head_of_the_test_split():
    if not HAVE_PACKAGE:
        pytest.skip("dataset-fashion-mnist is not installed")
    images, labels = load_fashion_mnist("test", limit=500)
    sample_images, sample_labels = load_sample()
    assert torch.equal(images, sample_images) and torch.equal(labels, sample_labels)


def test_synthetic_idx_roundtrip(tmp_path, monkeypatch):
    images, labels = _fake_fmnist(tmp_path)
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(tmp_path))
    x, y = load_dataset("fashion-mnist", "test")
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), images) and np.array_equal(y.numpy(), labels)
    x3, y3 = load_fashion_mnist("test", limit=3)
    assert torch.equal(x3, x[:3]) and torch.equal(y3, y[:3])


def test_uncompressed_idx(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x-idx3-ubyte", arr, compress=False)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte", 3), arr)


def test_missing_dir_names_package(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="dataset-fashion-mnist") as exc:
        load_dataset("fashion-mnist")
    assert str(tmp_path / "nowhere") in str(exc.value)
    assert "\n" not in str(exc.value)


def test_truncated_file(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match="corrupt IDX"):
        load_fashion_mnist("test")
    # A cut gzip stream (not just a short payload) is also a DataError.
    path.write_bytes(gzip.compress(raw)[:200])
    with pytest.raises(DataError, match="cannot read IDX"):
        load_fashion_mnist("test")


def test_bad_magic(tmp_path):
    _write_idx(tmp_path / "bad.gz", np.zeros((2, 28, 28), np.uint8), magic=0x0D03)
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad.gz", 3)


def test_label_count_mismatch(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match="labels"):
        load_fashion_mnist("test")


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="fashion-mnist-sample"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="split"):
        load_fashion_mnist("val")
    with pytest.raises(DataError, match="test"):
        load_dataset("fashion-mnist-sample", split="train")


def test_to_float_is_exact_division():
    x = torch.arange(256, dtype=torch.uint8)
    y = to_float(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, x.to(torch.float32) / 255.0)
    assert y[0] == 0.0 and y[-1] == 1.0
    with pytest.raises(DataError):
        to_float(y)


def test_png_roundtrip_gray_and_rgb(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (1, 28, 28) and out.dtype == torch.uint8
    assert np.array_equal(out[0].numpy(), gray)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    out = load_image(tmp_path / "c.png")
    assert out.shape == (3, 32, 32)
    assert np.array_equal(out.numpy(), rgb.transpose(2, 0, 1))


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (3, 32, 32)])
def test_npy_roundtrip(tmp_path, shape):
    arr = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    out = load_image(tmp_path / "x.npy")
    assert out.dtype == torch.uint8
    assert np.array_equal(out.numpy(), arr.reshape(out.shape))
    assert out.ndim == 3


def test_npy_integer_dtype_in_range(tmp_path):
    arr = np.arange(28 * 28, dtype=np.int64).reshape(28, 28) % 256
    np.save(tmp_path / "x.npy", arr)
    assert np.array_equal(load_image(tmp_path / "x.npy")[0].numpy(), arr)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((28, 28), np.float32), "dtype"),
        (np.full((28, 28), 256, np.int32), r"outside 0\.\.255"),
        (np.zeros((28, 28, 3), np.uint8), "shape"),
        (np.zeros((2, 1, 28, 28), np.uint8), "shape"),
    ],
)
def test_bad_npy(tmp_path, arr, match):
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(DataError, match=match):
        load_image(tmp_path / "x.npy")


def test_bad_image_paths(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(DataError, match="unsupported image format"):
        load_image(tmp_path / "x.jpg")
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read PNG"):
        load_image(tmp_path / "x.png")
    (tmp_path / "x.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read \.npy"):
        load_image(tmp_path / "x.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError):
        load_image(tmp_path / "obj.npy")
