"""Fashion-MNIST and single-image loading.

Images are uint8 tensors shaped (N, 1, 28, 28). Float models see ``uint8 / 255`` (no mean/std
normalization); the integer program sees the uint8 image itself, at scale 1/255.

The full dataset comes from the Debian package ``dataset-fashion-mnist`` (IDX files in
``/usr/share/datasets/fashion-mnist``, overridable with ``PRIVQUANT_FMNIST_DIR``). The first 500
test images ship with the package as ``samples/fashion_mnist_test_500.npz``.

Validation split (:func:`train_val_split`): ``VALIDATION_SIZE`` (10,000) images of the *training*
split, the last ones of the seeded permutation ``SPLIT_SEED`` whose first images are the
calibration images (``models.calibration``), so the two are disjoint while ``calib + validation
<= 60,000``; the remaining 50,000 (in file order) are what fine-tuning may use. Model selection
reads the validation images only; the test split stays for the final report.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from privquant.errors import DataError

DEFAULT_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_DIR_ENV = "PRIVQUANT_FMNIST_DIR"
FMNIST_PACKAGE = "dataset-fashion-mnist"
SAMPLE_PATH = Path(__file__).resolve().parent / "samples" / "fashion_mnist_test_500.npz"
DATASET_NAMES = ("fashion-mnist", "fashion-mnist-sample")
AUTO = "auto"  # the full test set when installed, else the shipped sample (its first 500)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08


def fmnist_dir() -> Path:
    """The Fashion-MNIST directory: ``$PRIVQUANT_FMNIST_DIR`` or the Debian package's."""
    env = os.environ.get(FMNIST_DIR_ENV)
    return Path(env) if env else DEFAULT_FMNIST_DIR


def _missing(path: Path) -> DataError:
    return DataError(
        f"Fashion-MNIST file not found: {path} (install it with "
        f"`apt-get install {FMNIST_PACKAGE}`, set {FMNIST_DIR_ENV}, "
        f"or use the shipped 'fashion-mnist-sample')"
    )


def _idx_file(directory: Path, stem: str) -> Path:
    """``stem.gz`` if present, else uncompressed ``stem``; DataError if neither exists."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise _missing(directory / f"{stem}.gz")


def read_idx(path: str | Path, ndim: int, limit: int | None = None) -> np.ndarray:
    """Parse an unsigned-byte IDX file (optionally gzipped) with ``ndim`` dimensions.

    Checks the magic number (0x0000 08 <ndim>) and that the payload holds exactly the declared
    number of bytes; returns the first ``limit`` items (all when None) as a uint8 array.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt IDX file {path}: {len(raw)} bytes, shorter than its header")
    magic, want = int.from_bytes(raw[:4], "big"), (_IDX_UBYTE << 8) | ndim
    if magic != want:
        raise DataError(f"corrupt IDX file {path}: magic 0x{magic:08x}, expected 0x{want:08x}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"corrupt IDX file {path}: dims {dims} need {expected} data bytes, "
            f"found {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if limit is not None:
        data = data[:limit]
    return data.copy()


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise DataError(f"limit must be a non-negative integer or None, got {limit!r}")


def load_fashion_mnist(
    split: str = "test", limit: int | None = None, directory: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` ("train" or "test") as (uint8 (N,1,28,28), int64 (N,))."""
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    _check_limit(limit)
    root = Path(directory) if directory is not None else fmnist_dir()
    img_stem, lbl_stem = _FILES[split]
    img_path, lbl_path = _idx_file(root, img_stem), _idx_file(root, lbl_stem)
    images = read_idx(img_path, 3, limit)
    labels = read_idx(lbl_path, 1, limit)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels "
            f"({img_path}, {lbl_path})"
        )
    if images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST images in {img_path} are {images.shape[1:]}, not 28x28")
    if labels.size and labels.max() > 9:
        raise DataError(f"Fashion-MNIST labels in {lbl_path} exceed 9")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


VALIDATION_SIZE = 10000
SPLIT_SEED = 0  # the permutation models.calibration takes its images from (its first ones)


def train_permutation(n_train: int) -> torch.Tensor:
    """The seeded permutation of the training indices shared by calibration and validation."""
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(SPLIT_SEED))


def validation_indices(n_train: int = 60000, size: int = VALIDATION_SIZE) -> torch.Tensor:
    """Training indices of the validation split (sorted): the permutation's last ``size``."""
    if not 0 < size < n_train:
        raise DataError(f"validation size must be in 1..{n_train - 1}, got {size}")
    return train_permutation(n_train)[-size:].sort().values


def train_val_split(
    size: int = VALIDATION_SIZE, directory: str | Path | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((train_images, train_labels), (val_images, val_labels))`` from the Fashion-MNIST
    training split: ``size`` validation images (:func:`validation_indices`) and the rest, both in
    file order. Raises DataError without the full dataset."""
    images, labels = load_fashion_mnist("train", directory=directory)
    val = validation_indices(len(images), size)
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[val] = False
    return (images[keep], labels[keep]), (images[val], labels[val])


def load_sample(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped sample: the first 500 Fashion-MNIST test images and their labels."""
    _check_limit(limit)
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, KeyError, ValueError, zlib.error) as exc:
        raise DataError(f"cannot read the shipped sample {SAMPLE_PATH}: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
        raise DataError(f"malformed shipped sample {SAMPLE_PATH}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def fashion_mnist_available(split: str = "test") -> bool:
    """True if the full Fashion-MNIST ``split`` is installed (:func:`fmnist_dir`)."""
    try:
        for stem in _FILES[split]:
            _idx_file(fmnist_dir(), stem)
    except DataError:
        return False
    return True


def resolve_dataset(name: str) -> str:
    """``auto`` -> ``fashion-mnist`` if installed, else ``fashion-mnist-sample`` (the same
    first 500 test images); other names unchanged. The one default of every command."""
    if name == AUTO:
        return "fashion-mnist" if fashion_mnist_available() else "fashion-mnist-sample"
    return name


def load_dataset(
    name: str, split: str = "test", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset by name: "fashion-mnist" (package data), "fashion-mnist-sample" or "auto"
    (:func:`resolve_dataset`)."""
    name = resolve_dataset(name)
    if name == "fashion-mnist":
        return load_fashion_mnist(split, limit)
    if name == "fashion-mnist-sample":
        if split != "test":
            raise DataError("'fashion-mnist-sample' has only the 'test' split")
        return load_sample(limit)
    raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the float32 model input: exactly ``images / 255``."""
    if images.dtype != torch.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    return images.to(torch.float32) / 255.0


MAX_IMAGE_PIXELS = 1 << 24  # 4096 x 4096: far above any model input, far below a memory bomb


def _load_png(path: Path) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - PIL ships with matplotlib
        return _load_png_matplotlib(path)
    try:
        with Image.open(path) as img:  # reads the header only: check the size before decoding
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"PNG {path} is {w}x{h} pixels; images are limited to {MAX_IMAGE_PIXELS} pixels"
                )
            mode = img.mode
            if mode in ("1", "L", "LA"):
                arr = np.asarray(img.convert("L"))
            elif mode in ("RGB", "RGBA", "P"):
                arr = np.asarray(img.convert("RGB"))
            else:
                raise DataError(f"unsupported PNG mode {mode!r} in {path}; need 8-bit gray or RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read PNG {path}: {exc}") from None
    return arr if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _load_png_matplotlib(path: Path) -> np.ndarray:  # pragma: no cover - fallback only
    import matplotlib.image

    try:
        arr = matplotlib.image.imread(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read PNG {path}: {exc}") from None
    if arr.dtype != np.uint8:
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))
    return arr


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read .npy {path}: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path} is not a single .npy array")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iu":
        raise DataError(f"{path} has dtype {arr.dtype}; expected uint8 or integers in 0..255")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError(f"{path} has values outside 0..255 ({arr.min()}..{arr.max()})")
    return arr.astype(np.uint8)


def load_image(path: str | Path) -> torch.Tensor:
    """Load one image (.png or .npy) as a uint8 tensor shaped (C, H, W), C = 1 or 3.

    ``.npy`` arrays may be (H, W), (1, H, W) or (3, H, W) of uint8 or integers in 0..255.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".png":
        arr = _load_png(path)
    elif suffix == ".npy":
        arr = _load_npy(path)
    else:
        raise DataError(f"unsupported image format {path.suffix!r} for {path}; use .png or .npy")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or min(arr.shape) == 0:
        raise DataError(f"image {path} has shape {arr.shape}; expected (H,W), (1,H,W) or (3,H,W)")
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C", copy=True))
