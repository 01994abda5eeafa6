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
# Internal only: `privquant bench --uniform-bits N` (the no-mixed-precision ablation) quantizes at
# up to 16 bits through ablation_bits(); user input (parse_bits, LayerBits(), assignment files)
# keeps the 2..8 limit. Assignments holding such bits carry ABLATION_KEY in their JSON.
ABLATION_MAX_BITS = 16
ABLATION_KEY = "internal_ablation_bits"
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


def ablation_bits(w: int, a: int) -> LayerBits:
    """LayerBits of up to ABLATION_MAX_BITS for the uniform-bits ablation (internal, bench only)."""
    for kind, b in (("weight", w), ("activation", a)):
        if not isinstance(b, int) or isinstance(b, bool) or not MIN_BITS <= b <= ABLATION_MAX_BITS:
            raise PrivQuantError(
                f"ablation {kind} bit width {b!r} out of range: use {MIN_BITS}..{ABLATION_MAX_BITS}"
            )
    lb = object.__new__(LayerBits)  # bypasses the user-facing range check in __post_init__
    object.__setattr__(lb, "w", w)
    object.__setattr__(lb, "a", a)
    return lb


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
        every = [*self.layers.values(), *([self.default] if self.default else [])]
        if any(max(b.w, b.a) > MAX_BITS for b in every):
            d[ABLATION_KEY] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BitAssignment:
        try:
            if d.get("version", 1) != 1:
                raise PrivQuantError(f"unsupported assignment version {d.get('version')!r}")
            make = ablation_bits if d.get(ABLATION_KEY) is True else LayerBits
            layers = {str(k): make(int(v["w"]), int(v["a"])) for k, v in d["layers"].items()}
            default = d.get("default")
            default = make(int(default["w"]), int(default["a"])) if default else None
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
        if ABLATION_KEY in d:
            raise PrivQuantError(f"assignment file {p} uses the internal key {ABLATION_KEY!r}")
        return cls.from_dict(d)
