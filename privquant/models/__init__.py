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


# ---------------------------------------------------------------------- user models
def is_user_model(spec: str) -> bool:
    """``package.module:ClassOrFactory`` (a user's model) rather than a registry name?"""
    return isinstance(spec, str) and ":" in spec and spec not in _BUILDERS


def build_user_model(spec: str) -> nn.Module:
    """Import ``package.module`` and call ``ClassOrFactory()`` (no arguments); the result must be
    an ``nn.Module``. The module must be importable (installed or on ``PYTHONPATH``)."""
    import importlib

    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr or not all(p.isidentifier() for p in mod_name.split(".")):
        raise PrivQuantError(f"--model {spec!r}: expected package.module:ClassOrFactory")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise PrivQuantError(f"--model {spec!r}: cannot import {mod_name!r}: {e}") from None
    obj = mod
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise PrivQuantError(f"--model {spec!r}: {mod_name!r} has no {attr!r}")
    if not callable(obj):
        raise PrivQuantError(f"--model {spec!r}: {attr!r} is not a class or factory function")
    try:
        model = obj()
    except Exception as e:  # the user's constructor: any error, one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrivQuantError(f"--model {spec!r}: {attr}() failed: {first}") from None
    if not isinstance(model, nn.Module):
        raise PrivQuantError(
            f"--model {spec!r}: {attr}() returned {type(model).__name__}, not an nn.Module"
        )
    return model


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load a ``state_dict`` file into ``model`` (``weights_only=True``, strict)."""
    path = Path(path)
    if not path.is_file():
        raise PrivQuantError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as e:  # torch raises many types for a bad checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrivQuantError(f"cannot load weights {path}: {first}") from None
    return model


def parse_shape(text) -> tuple[int, ...]:
    """``"1,28,28"`` (or a sequence) -> (1, 28, 28): a per-sample input shape."""
    try:
        parts = text.split(",") if isinstance(text, str) else list(text)
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise PrivQuantError(f"input shape {text!r}: expected C,H,W (e.g. 1,28,28)") from None
    if not shape or any(d < 1 or d > 4096 for d in shape):
        raise PrivQuantError(f"input shape {text!r}: expected positive sizes, e.g. 1,28,28")
    return shape


def user_model(spec: str, weights=None, shape=None) -> tuple[nn.Module, tuple[int, ...]]:
    """A user's model in eval mode (with ``weights`` if given) and its per-sample input shape
    (``shape``, else the model's ``input_shape`` attribute)."""
    model = build_user_model(spec)
    if weights:
        load_weights(model, weights)
    if shape is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise PrivQuantError(
                f"--model {spec!r}: give --input-shape C,H,W (the model has no input_shape)"
            )
    return model.eval(), parse_shape(shape)


__all__ = [
    "MODEL_NAMES",
    "WEIGHTS_DIR",
    "build_model",
    "build_user_model",
    "input_shape",
    "is_user_model",
    "load_reference",
    "load_weights",
    "num_classes",
    "parse_shape",
    "reference_weights_path",
    "user_model",
]
