"""Bit-width specifications: uniform ``wXaY`` strings and per-layer assignments (JSON).

An assignment maps a conv/linear module's qualified name to its weight bits ``w`` and the bits
``a`` of the activation it *consumes* (HAWQ convention). Layers that consume the same activation
tensor share one quantizer, so their ``a`` must agree (``quant.graph.QGraph.tie_groups``).
The network input is always 8-bit unsigned; the first layers' ``a`` is ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from privquant.errors import PrivQuantError

MIN_BITS, MAX_BITS = 2, 8
_UNIFORM = re.compile(r"^w(\d+)a(\d+)$")


@dataclass(frozen=True)
class LayerBits:
    w: int
    a: int

    def __post_init__(self):
        for kind, b in (("weight", self.w), ("activation", self.a)):
            if not isinstance(b, int) or isinstance(b, bool) or not MIN_BITS <= b <= MAX_BITS:
                raise PrivQuantError(
                    f"{kind} bit width {b!r} out of range: use {MIN_BITS}..{MAX_BITS}"
                )

    def tag(self) -> str:
        return f"w{self.w}a{self.a}"


def parse_bits(spec: str) -> LayerBits:
    """Parse ``'w4a4'`` into LayerBits; one clear error for anything else (e.g. ``'w9a1'``)."""
    m = _UNIFORM.match(spec.strip().lower())
    if not m:
        raise PrivQuantError(f"bad bit spec {spec!r}: expected wXaY, e.g. w4a4 or w8a8")
    return LayerBits(int(m.group(1)), int(m.group(2)))


@dataclass
class BitAssignment:
    """Per-layer bit widths keyed by module name, with an optional default for unlisted layers."""

    layers: dict[str, LayerBits] = field(default_factory=dict)
    default: LayerBits | None = None
    model: str | None = None

    @classmethod
    def uniform(cls, bits: LayerBits | str) -> BitAssignment:
        return cls(default=parse_bits(bits) if isinstance(bits, str) else bits)

    def get(self, layer: str) -> LayerBits:
        if layer in self.layers:
            return self.layers[layer]
        if self.default is None:
            raise PrivQuantError(f"bit assignment has no entry for layer {layer!r} and no default")
        return self.default

    def check_layers(self, names: list[str]) -> None:
        unknown = sorted(set(self.layers) - set(names))
        if unknown:
            raise PrivQuantError(
                f"bit assignment names unknown layers {unknown}; model layers are {names}"
            )
        for n in names:
            self.get(n)

    def to_dict(self) -> dict:
        d: dict = {
            "version": 1,
            "layers": {k: {"w": v.w, "a": v.a} for k, v in self.layers.items()},
        }
        if self.default is not None:
            d["default"] = {"w": self.default.w, "a": self.default.a}
        if self.model:
            d["model"] = self.model
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BitAssignment:
        try:
            if d.get("version", 1) != 1:
                raise PrivQuantError(f"unsupported assignment version {d.get('version')!r}")
            layers = {str(k): LayerBits(int(v["w"]), int(v["a"])) for k, v in d["layers"].items()}
            default = d.get("default")
            default = LayerBits(int(default["w"]), int(default["a"])) if default else None
        except PrivQuantError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PrivQuantError(f"malformed bit assignment: {e!r}") from None
        return cls(layers=layers, default=default, model=d.get("model"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BitAssignment:
        p = Path(path)
        if not p.is_file():
            raise PrivQuantError(f"assignment file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PrivQuantError(f"assignment file {p} is not valid JSON: {e}") from None
        if not isinstance(d, dict) or "layers" not in d:
            raise PrivQuantError(f"assignment file {p} has no 'layers' object")
        return cls.from_dict(d)
