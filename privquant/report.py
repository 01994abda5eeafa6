"""CommReport: per-layer and total communication of one private inference, measured and declared.

Measured numbers come from the parties' channel accounting
(``privquant.protocols.transport.channel``): bits are what every party *sent* (online between
server and client, offline from the dealer, setup once per model load), rounds are the joint
online Lamport depth. Declared numbers are the protocols' closed-form ``cost()`` for the same
signatures; the two must agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from privquant.costs import FIELDS, HANDSHAKE_SCOPE, MB, SEEDS_SCOPE, TRUST, declared
from privquant.program import Program
from privquant.protocols.preprocessing.ot_provider import DEFAULT_K
from privquant.protocols.transport.channel import CommStats, combine

__all__ = ["FIELDS", "HANDSHAKE_SCOPE", "MB", "SEEDS_SCOPE", "CommReport", "LayerComm"]


@dataclass
class LayerComm:
    name: str
    kinds: list[str]
    online_bits: int
    offline_bits: int
    setup_bits: int
    rounds: int
    messages: int
    declared: dict[str, int] = field(default_factory=dict)

    @property
    def matches(self) -> bool:
        return all(getattr(self, f) == self.declared.get(f, getattr(self, f)) for f in FIELDS)


@dataclass
class CommReport:
    model: str
    backend: str
    preprocessing: str  # "dealer" | "ot" | "simulated (insecure, tests only)"
    batch: int
    layers: list[LayerComm]
    total: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    view: str = "all parties"

    @classmethod
    def from_stats(
        cls,
        program: Program,
        parties: list[dict],
        *,
        batch: int,
        backend: str = "privquant",
        seconds: dict | None = None,
        view: str = "all parties",
        batches: list[int] | None = None,
        preprocessing: str = "dealer",
        ot_k: int = DEFAULT_K,
    ) -> CommReport:
        """Build from each party's ``{"stats": ..., "scopes": ...}`` (RoleResult fields).

        ``batches``: the inferences of a session (their sizes), when the batch ran in several
        chunks after one setup: the declared cost is then the chunks' costs in sequence."""
        totals = combine([CommStats.from_dict(p["stats"]) for p in parties])
        _total, costs, kinds = declared(
            program,
            batch=batch,
            backend=backend,
            batches=batches,
            preprocessing=preprocessing,
            ot_k=ot_k,
        )
        names = list(kinds)
        extra = sorted({s for p in parties for s in p["scopes"]} - set(names))
        layers = []
        for name in extra + names:
            st = [CommStats.from_dict(p["scopes"][name]) for p in parties if name in p["scopes"]]
            s = combine(st) if st else CommStats()
            d = costs.get(name)
            layers.append(
                LayerComm(
                    name,
                    kinds.get(name, ["setup"]),
                    s.online_bits,
                    s.offline_bits,
                    s.setup_bits,
                    s.rounds,
                    s.messages,
                    {f: getattr(d, f) for f in FIELDS} if d is not None else {},
                )
            )
        insecure = totals.insecure_simulated
        return cls(
            program.model,
            backend,
            "simulated (insecure, tests only)" if insecure else preprocessing,
            batch,
            layers,
            {
                "online_bits": totals.online_bits,
                "offline_bits": totals.offline_bits,
                "setup_bits": totals.setup_bits,
                "rounds": totals.rounds,
                "messages": totals.messages,
                "wire_bytes": totals.wire_bytes,
            },
            dict(seconds or {}),
            view,
        )

    @property
    def all_match(self) -> bool:
        return all(layer.matches for layer in self.layers)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "backend": self.backend,
            "preprocessing": self.preprocessing,
            "trust_model": self.trust_model,
            "batch": self.batch,
            "view": self.view,
            "total": self.total,
            "total_mb": {
                k.replace("_bits", ""): self.total[k] / MB
                for k in ("online_bits", "offline_bits", "setup_bits")
            },
            "seconds": self.seconds,
            "declared_equals_measured": self.all_match,
            "layers": [
                {
                    "name": x.name,
                    "kinds": x.kinds,
                    "online_bits": x.online_bits,
                    "offline_bits": x.offline_bits,
                    "setup_bits": x.setup_bits,
                    "rounds": x.rounds,
                    "messages": x.messages,
                    "declared": x.declared,
                }
                for x in self.layers
            ],
        }

    @property
    def trust_model(self) -> str:
        return TRUST.get(self.preprocessing.split(" ")[0], self.preprocessing)

    def table(self) -> str:
        """A fixed-width per-layer table (MB per phase, rounds, declared == measured)."""
        title = f"preprocessing: {self.preprocessing} -- trust model: {self.trust_model}"
        head = f"{'layer':<28}{'ops':<22}{'online MB':>11}{'offline MB':>11}{'setup MB':>10}"
        head += f"{'rounds':>8}  ok"
        rows = [title, head, "-" * len(head)]
        for x in self.layers:
            rows.append(
                f"{x.name[:27]:<28}{'+'.join(x.kinds)[:21]:<22}{x.online_bits / MB:>11.4f}"
                f"{x.offline_bits / MB:>11.4f}{x.setup_bits / MB:>10.4f}{x.rounds:>8}"
                f"  {'yes' if x.matches else 'NO'}"
            )
        t = self.total
        rows.append("-" * len(head))
        rows.append(
            f"{'total':<50}{t['online_bits'] / MB:>11.4f}{t['offline_bits'] / MB:>11.4f}"
            f"{t['setup_bits'] / MB:>10.4f}{t['rounds']:>8}"
        )
        return "\n".join(rows)
