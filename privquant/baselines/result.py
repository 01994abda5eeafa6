"""One backend's communication for one model and batch: what ``privquant bench`` compares.

Every backend -- this project's runtime (measured), CrypTen-native (measured on the wire) and the
SiRNN-style cost model -- is reduced to the same shape: per-layer and total ``online_bits``,
``offline_bits`` (dealer / TTP traffic, per inference), ``setup_bits`` (once per model load or
session) and ``rounds``, plus wall-clock seconds where something ran, and the trust model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from privquant.costs import MB

PHASES = ("online_bits", "offline_bits", "setup_bits")
AMORTIZE = 100  # setup amortized over this many inferences in "total" figures


@dataclass
class LayerCost:
    name: str
    kinds: list[str]
    online_bits: int = 0
    offline_bits: int = 0
    setup_bits: int = 0
    rounds: int = 0

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kinds": list(self.kinds),
            "online_bits": int(self.online_bits),
            "offline_bits": int(self.offline_bits),
            "setup_bits": int(self.setup_bits),
            "rounds": int(self.rounds),
        }


@dataclass
class BackendResult:
    """Communication of one backend (``source`` says whether it was measured or modelled)."""

    backend: str
    source: str  # "measured (3 processes, loopback)" | "cost model" | ...
    trust: str  # who must be trusted for the figures to hold
    batch: int
    layers: list[LayerCost]
    total: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def trust_model(self) -> str:
        """``dealer-free``, ``dealer``/``ttp`` (a third party) -- for like-with-like checks."""
        s = self.trust.lower()
        if s.startswith("dealer-free"):
            return "dealer-free"
        return "third party"

    @classmethod
    def from_layers(cls, backend, source, trust, batch, layers, **kw) -> BackendResult:
        total = {p: int(sum(getattr(x, p) for x in layers)) for p in PHASES}
        total["rounds"] = int(sum(x.rounds for x in layers))
        return cls(backend, source, trust, batch, layers, total, **kw)

    def total_bits(self, amortize: int = AMORTIZE) -> float:
        """Online + offline per inference + setup / ``amortize`` (per batch of ``batch``)."""
        t = self.total
        return t["online_bits"] + t["offline_bits"] + t["setup_bits"] / amortize

    def mb(self, phase: str) -> float:
        return self.total[phase] / MB

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "source": self.source,
            "trust": self.trust,
            "batch": self.batch,
            "total": {k: int(v) for k, v in self.total.items()},
            "total_mb": {
                "online": self.mb("online_bits"),
                "offline": self.mb("offline_bits"),
                "setup": self.mb("setup_bits"),
                f"total_setup_amortized_{AMORTIZE}": self.total_bits() / MB,
            },
            "seconds": dict(self.seconds),
            "extra": self.extra,
            "layers": [x.as_dict() for x in self.layers],
        }
