"""The only module that imports CrypTen.

CrypTen 0.4.1 imports ``torch.onnx._internal.registration``, which torch 2.13 moved to
``torch.onnx._internal.torchscript_exporter.registration``; we alias the new module under the old
name in ``sys.modules`` before importing crypten. Everything else in privquant gets CrypTen through
:func:`get_crypten` (lazy, so ``import privquant`` stays fast and crypten-free).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_OLD = "torch.onnx._internal.registration"
_NEW = "torch.onnx._internal.torchscript_exporter.registration"


def get_crypten() -> ModuleType:
    """Import crypten (once), installing the torch-2.13 compatibility alias first."""
    if "crypten" in sys.modules:
        return sys.modules["crypten"]
    if _OLD not in sys.modules:
        try:
            importlib.import_module(_OLD)
        except ImportError:
            sys.modules[_OLD] = importlib.import_module(_NEW)
    return importlib.import_module("crypten")


def get_comm():
    """CrypTen's communicator module (``crypten.communicator``)."""
    get_crypten()
    return importlib.import_module("crypten.communicator")


def crypten_module(name: str) -> ModuleType:
    """A CrypTen submodule by dotted name (e.g. ``crypten.mpc.provider.ttp_provider``)."""
    get_crypten()
    return importlib.import_module(name)
