"""Model registry: builders, input shapes and the shipped reference weights."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from privquant.errors import PrivQuantError
from privquant.models.lenet5 import LeNet5
from privquant.models.mobilenetv2 import mobilenetv2_cifar
from privquant.models.resnet import resnet8, resnet18_cifar

MODEL_NAMES = ("lenet5", "resnet8", "resnet18-cifar", "mobilenetv2-cifar")
num_classes = 10
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "lenet5": LeNet5,
    "resnet8": resnet8,
    "resnet18-cifar": resnet18_cifar,
    "mobilenetv2-cifar": mobilenetv2_cifar,
}
_INPUT_SHAPES = {
    "lenet5": (1, 28, 28),
    "resnet8": (1, 28, 28),
    "resnet18-cifar": (3, 32, 32),
    "mobilenetv2-cifar": (3, 32, 32),
}


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise PrivQuantError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")


def build_model(name: str) -> nn.Module:
    """A freshly initialised model (train mode) by registry name."""
    _check_name(name)
    return _BUILDERS[name]()


def input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input shape of a model."""
    _check_name(name)
    return _INPUT_SHAPES[name]


def reference_weights_path(name: str) -> Path | None:
    """Path of the shipped state_dict for ``name``, or None if none ships."""
    _check_name(name)
    path = WEIGHTS_DIR / f"{name}.pt"
    return path if path.is_file() else None


def load_reference(name: str) -> nn.Module:
    """Build ``name`` and load its shipped weights (``weights_only=True``); returns eval mode."""
    path = reference_weights_path(name)
    if path is None:
        shipped = [n for n in MODEL_NAMES if (WEIGHTS_DIR / f"{n}.pt").is_file()]
        raise PrivQuantError(
            f"no reference weights ship for model {name!r} "
            f"(available: {', '.join(shipped) or 'none'}); train it or pass a weights file"
        )
    model = build_model(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrivQuantError(f"cannot load reference weights {path}: {first}") from None
    return model.eval()


__all__ = [
    "MODEL_NAMES",
    "WEIGHTS_DIR",
    "build_model",
    "input_shape",
    "load_reference",
    "num_classes",
    "reference_weights_path",
]
