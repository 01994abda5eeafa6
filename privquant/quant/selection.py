"""Choosing among the k best assignments by validation accuracy; training and scoring points.

The search's objective (``quant.sensitivity``, a Hessian-based proxy) ranks assignments only
approximately: near the optimum several assignments with almost the same proxy score and cost
differ in accuracy by tenths of a point, in either direction. :func:`select` therefore

1. enumerates the ``k`` best assignments under the budget (``Searcher.candidates``: the MILP
   re-solved with no-good cuts, pairwise Hamming distance >= ``distance``, each one's exact
   re-lowered cost checked against the budget);
2. builds each with the quantize pipeline, fine-tunes it with the *selection recipe* (a short QAT
   with frozen step sizes, so its cost stays exactly the prediction) and scores it by fake-quant
   top-1 on the **validation split** (``models.data.train_val_split``: 10,000 Fashion-MNIST
   *training* images, disjoint from the calibration images and from every QAT image; never the
   test split);
3. returns the best score (ties: the better proxy), with the selection's cost -- seconds and the
   number of candidate evaluations -- in its report.

Fake-quant top-1 is the selection score because it is ~10x faster than the integer program's
plaintext executor and agrees with it on all but a few images per thousand (the fake-quant and
integer models agree within 1 LSB per activation). Final points are scored on both.

:func:`train_point` fine-tunes one assignment with a :class:`Recipe` and evaluates it; results are
cached in memory and, with a directory, on disk (one JSON per point, keyed by the model's
fingerprint, the assignment, the recipe and the data), so a long sweep can be resumed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from privquant.errors import PrivQuantError
from privquant.quant.pipeline import fakequant_top1
from privquant.quant.search import Searcher, SearchResult, single_thread

SPLITS = ("val", "test")


@dataclass(frozen=True)
class Recipe:
    """How a point is fine-tuned before it is scored (the same for uniform and searched points).

    QAT from the FP32 weights (``quant.calibrate.qat``) for ``qat_epochs`` over the first
    ``qat_images`` fine-tuning images (all when None); ``freeze_scales`` keeps calibration's
    step sizes, so the program's cost is exactly the search's prediction."""

    qat_epochs: int = 0
    qat_lr: float = 1e-4
    qat_images: int | None = None
    freeze_scales: bool = True

    def __post_init__(self):
        if self.qat_epochs < 0 or (self.qat_images is not None and self.qat_images < 1):
            raise PrivQuantError("QAT epochs must be >= 0 and QAT images >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        if self.qat_epochs == 0:
            return "PTQ"
        n = "all" if self.qat_images is None else f"{self.qat_images}"
        s = "frozen" if self.freeze_scales else "learned"
        return f"QAT {self.qat_epochs} ep on {n} images, lr {self.qat_lr:g}, step sizes {s}"


@dataclass
class Split:
    """Labelled uint8 images of one split, with a content fingerprint (cache keys)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    _digest: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.images) != len(self.labels) or len(self.images) == 0:
            raise PrivQuantError(f"{self.name} split: need the same non-zero number of labels")

    def __len__(self) -> int:
        return len(self.images)

    def head(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(self.name, self.images[:n], self.labels[:n])

    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256(self.images.numpy().tobytes())
            h.update(self.labels.numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest


@dataclass
class EvalData:
    """Fine-tuning images (validation excluded), the validation split and the test split."""

    train: Split | None = None
    val: Split | None = None
    test: Split | None = None

    def describe(self) -> dict[str, int | None]:
        splits = (("train", self.train), ("val", self.val), ("test", self.test))
        return {k: None if s is None else len(s) for k, s in splits}


class PointCache:
    """Evaluated points by key: in memory, and as ``<key>.json`` files under ``directory``."""

    def __init__(self, directory: str | Path | None = None):
        self.mem: dict[str, dict] = {}
        self.dir = None if directory is None else Path(directory)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        if key in self.mem:
            return self.mem[key]
        if self.dir is not None:
            path = self.dir / f"{key}.json"
            if path.is_file():
                try:
                    doc = json.loads(path.read_text())
                except (OSError, ValueError):
                    return None  # a torn write: recompute
                if isinstance(doc, dict) and doc.get("key") == key:
                    self.mem[key] = doc
                    return doc
        return None

    def put(self, key: str, doc: dict) -> None:
        self.mem[key] = doc
        if self.dir is not None:
            tmp = self.dir / f".{key}.tmp"
            tmp.write_text(json.dumps(doc, sort_keys=True))
            tmp.replace(self.dir / f"{key}.json")


def point_key(
    searcher: Searcher,
    values: dict[str, int],
    recipe: Recipe,
    data: EvalData,
    evals: tuple[str, ...],
    fast: bool,
) -> str:
    parts = {
        "model": searcher.fingerprint(),
        "values": sorted(values.items()),
        "recipe": recipe.to_dict(),
        "train": None if recipe.qat_epochs == 0 or data.train is None else data.train.digest(),
        "evals": {s: getattr(data, s).digest() for s in evals if getattr(data, s) is not None},
        "fast": fast,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def train_point(
    searcher: Searcher,
    values: dict[str, int],
    recipe: Recipe,
    data: EvalData,
    *,
    evals: tuple[str, ...] = SPLITS,
    fast: bool = False,
    cache: PointCache | None = None,
    keep: bool = False,
    progress: bool | None = None,
) -> dict:
    """Fine-tune ``values`` with ``recipe`` and evaluate it on the ``evals`` splits present.

    ``fast``: fake-quant top-1 only (selection); otherwise FP32, fake-quant and integer-program
    top-1 (``Quantized.evaluate``). The returned ``cost`` is the final program's declared cost
    (with frozen step sizes: exactly the PTQ prediction). ``keep`` adds the built ``Quantized``
    as ``"quantized"`` (never cached)."""
    for s in evals:
        if s not in SPLITS:
            raise PrivQuantError(f"unknown split {s!r}")
    key = point_key(searcher, values, recipe, data, evals, fast)
    hit = None if cache is None or keep else cache.get(key)
    if hit is not None:
        return {**hit, "cached": True}
    t0 = time.perf_counter()
    if recipe.qat_epochs > 0:
        if data.train is None:
            raise PrivQuantError("QAT needs the Fashion-MNIST training images")
        train = data.train.head(recipe.qat_images)
        q = searcher.quantize(
            values,
            train_images=train.images,
            train_labels=train.labels,
            qat_epochs=recipe.qat_epochs,
            qat_lr=recipe.qat_lr,
            freeze_scales=recipe.freeze_scales,
            progress=searcher.progress if progress is None else progress,
        )
    else:
        q = searcher.ptq(values)[1]
    t1 = time.perf_counter()
    total = searcher.declared(q.program)
    scores: dict[str, dict] = {}
    with single_thread():
        for s in evals:
            split: Split | None = getattr(data, s)
            if split is None:
                continue
            if fast:
                scores[s] = {"n": len(split), "fakequant_top1": fakequant_top1(q.qm, *_xy(split))}
            else:
                scores[s] = q.evaluate(*_xy(split))
    doc = {
        "key": key,
        "cost": total.as_dict(),
        "metrics": searcher.metrics(total),
        "sensitivity": searcher.sensitivity_of(values),
        "recipe": recipe.to_dict(),
        "qat_scales": "frozen" if recipe.freeze_scales or not recipe.qat_epochs else "learned",
        "validation": scores.get("val", {}),
        "accuracy": scores.get("test", {}),
        "seconds": {"train": t1 - t0, "evaluate": time.perf_counter() - t1},
    }
    if cache is not None:
        cache.put(key, doc)
    if keep:
        doc = {**doc, "quantized": q}
    return {**doc, "cached": False}


def _xy(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    return split.images, split.labels


def select(
    searcher: Searcher,
    limits: dict[str, float],
    *,
    k: int,
    recipe: Recipe,
    data: EvalData,
    distance: int = 2,
    anchors: dict[str, dict[str, int]] | None = None,
    cache: PointCache | None = None,
    log=None,
) -> tuple[SearchResult, dict]:
    """The best of the ``k`` best assignments under ``limits`` by validation top-1 after the
    selection ``recipe``; returns it and the selection's report (every candidate's proxy score,
    predicted MB and validation top-1; seconds; evaluations). ``k = 1``: the proxy's optimum,
    no evaluation.

    ``anchors`` (``{label: values}``, e.g. the uniform point that fits the budget) join the
    candidates when their exact cost meets ``limits`` and the MILP did not already list them:
    the choice is then never worse *on validation* than those baselines. The report names the
    chosen candidate's source (``"milp"`` or the anchor's label)."""
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    cands, cached = _candidates(searcher, limits, k, distance if k > 1 else 1, cache)
    sources = ["milp"] * len(cands)
    for label, values in (anchors or {}).items():
        if any(c.values == values for c in cands):
            sources[next(i for i, c in enumerate(cands) if c.values == values)] = f"milp={label}"
            continue
        r = searcher.result(values, limits, rank=len(cands))
        if all(r.metrics[n] <= b * (1 + 1e-12) for n, b in limits.items() if n != "sensitivity"):
            cands.append(r)
            sources.append(label)
    t1 = time.perf_counter()
    report: dict = {
        "k": k,
        "distance": distance,
        "found": sources.count("milp") + sum(s.startswith("milp=") for s in sources),
        "anchors": sorted(anchors or {}),
        "recipe": recipe.to_dict(),
        "score": "fake-quant top-1 on the validation split",
        "val_images": None if data.val is None else len(data.val),
        "chosen_rank": 0,
        "chosen_source": sources[0],
        "evaluations": 0,
        "seconds": {"enumerate": t1 - t0, "evaluate": 0.0},
        "enumeration": {
            "cached": cached,
            "solves": cands[0].iterations,
            "seconds": cands[0].seconds,
        },
        "candidates": [],
    }
    if len(cands) == 1:
        report["candidates"] = [_cand(cands[0], None, False, source=sources[0])]
        return cands[0], report
    if data.val is None:
        raise PrivQuantError(
            "choosing among several candidates needs the validation split (install "
            "dataset-fashion-mnist; Fashion-MNIST models only)"
        )
    best, best_score = 0, -1.0
    for i, c in enumerate(cands):
        p = train_point(
            searcher, c.values, recipe, data, evals=("val",), fast=True, cache=cache, progress=False
        )
        score = p["validation"]["fakequant_top1"]
        report["evaluations"] += not p["cached"]
        report["candidates"].append(_cand(c, score, p["cached"], p["seconds"], sources[i]))
        log(
            f"  candidate {c.rank} ({sources[i]}): {c.metrics['mb']:.4f} MB, proxy "
            f"{c.sensitivity:.4g}, validation {score:.2f}%{' (cached)' if p['cached'] else ''}"
        )
        if score > best_score:  # best proxy first, anchors last: ties keep the better proxy
            best, best_score = i, score
    report["chosen_rank"] = cands[best].rank
    report["chosen_source"] = sources[best]
    report["seconds"]["evaluate"] = time.perf_counter() - t1
    return cands[best], report


def _candidates(
    searcher: Searcher, limits: dict[str, float], k: int, distance: int, cache: PointCache | None
) -> tuple[list[SearchResult], bool]:
    """``searcher.candidates``, remembered in ``cache`` (the MILP solves dominate a re-run)."""
    parts = {"model": searcher.fingerprint(), "limits": sorted(limits.items()), "k": k}
    parts["distance"] = distance
    key = "c" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:31]
    hit = None if cache is None else cache.get(key)
    if hit is not None:
        return [
            searcher.result(
                c["values"],
                limits,
                rank=i,
                iterations=hit["iterations"],
                seconds=hit["seconds"],
                solver=c["solver"],
            )
            for i, c in enumerate(hit["candidates"])
        ], True
    cands = searcher.candidates(limits, k=k, distance=distance)
    if cache is not None:
        cache.put(
            key,
            {
                "key": key,
                "iterations": cands[0].iterations,
                "seconds": cands[0].seconds,
                "candidates": [{"values": c.values, "solver": c.solver} for c in cands],
            },
        )
    return cands, False


def _cand(
    c: SearchResult,
    score: float | None,
    cached: bool,
    seconds: dict | None = None,
    source: str = "milp",
):
    return {
        "rank": c.rank,
        "source": source,
        "sensitivity": c.sensitivity,
        "mb": c.metrics["mb"],
        "val_fakequant_top1": score,
        "cached": cached,
        "seconds": seconds,
        "assignment": c.assignment.to_dict()["layers"],
    }


__all__ = [
    "EvalData",
    "PointCache",
    "Recipe",
    "Split",
    "point_key",
    "select",
    "train_point",
]
