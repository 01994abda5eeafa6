"""Calibration images from the Fashion-MNIST *training* split (never the test images).

The full split comes from the Debian package when installed; otherwise a shipped set of
``SHIPPED`` training images (a fixed random subset, ``samples/fashion_mnist_train_calib.npz``)
lets quantization run on a machine without the dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from privquant.errors import DataError
from privquant.models.data import load_fashion_mnist

SAMPLE = Path(__file__).resolve().parent / "samples" / "fashion_mnist_train_calib.npz"
SHIPPED = 512
SEED = 0


def calibration_indices(n_train: int = 60000) -> torch.Tensor:
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(SEED))[:SHIPPED]


def load_calibration(n: int = 256) -> torch.Tensor:
    """``n`` uint8 training images (1, 28, 28); at most SHIPPED without the Debian package."""
    if n < 1:
        raise DataError("need at least one calibration image")
    try:
        images, _ = load_fashion_mnist("train")
        return images[calibration_indices(len(images))][:n]
    except DataError:
        pass
    if n > SHIPPED:
        raise DataError(
            f"only {SHIPPED} shipped calibration images; install dataset-fashion-mnist for more"
        )
    with np.load(SAMPLE, allow_pickle=False) as z:
        return torch.from_numpy(z["images"][:n].copy())


def write_sample() -> None:
    """Regenerate the shipped calibration set from the full training split."""
    images, labels = load_fashion_mnist("train")
    idx = calibration_indices(len(images))
    np.savez_compressed(SAMPLE, images=images[idx].numpy(), labels=labels[idx].numpy())


if __name__ == "__main__":
    write_sample()
