"""The quantization pipeline: calibrate (PTQ), optionally fine-tune (QAT), lower; and evaluation.

One implementation for everything that builds an integer program from a float graph:
``privquant.quantize`` (which wraps the result in a ``QuantizedModel`` artifact) and the
mixed-precision search (``quant.search``), whose cost predictions must be exactly the cost of
what ``quantize`` builds. Steps (:func:`quantize_graph`):

1. ``QModel(graph, bits)`` (weights cloned from the graph: the graph is never modified);
2. ``calibrate``: MSE-optimal step sizes on the calibration images;
3. with ``qat_epochs > 0``: ``qat`` (LSQ + STE, Adam, cosine schedule) on the training images;
   ``freeze_scales`` keeps calibration's step sizes (no gradient), so every public integer of the
   program -- multipliers, shifts, bounds, rings, hence the communication cost -- is exactly the
   PTQ program's;
4. ``lower``: the integer program.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from privquant.errors import PrivQuantError
from privquant.program import Program, output_logits, run_plain
from privquant.quant.calibrate import calibrate, qat
from privquant.quant.fakequant import QModel
from privquant.quant.graph import QGraph
from privquant.quant.lower import lower
from privquant.quant.spec import BitAssignment

EVAL_BATCH = 500


@dataclass
class Quantized:
    """What :func:`quantize_graph` builds: the fine-tuned fake-quant model and its program."""

    graph: QGraph
    bits: BitAssignment
    qm: QModel  # eval mode, quant mode
    program: Program
    info: dict = field(default_factory=dict)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.qm.state_dict().items()}

    def float_model(self) -> QModel:
        """The FP32 reference (the graph's float weights, BN folded)."""
        fp = QModel(self.graph, self.bits)
        fp.mode = "float"
        return fp.eval()

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        return evaluate(self.float_model(), self.qm, self.program, images, labels)


def check_calibration(calib: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    calib = torch.as_tensor(calib)
    if calib.dim() == 0 or len(calib) == 0:
        raise PrivQuantError("quantization needs at least one calibration image")
    if calib.dtype != torch.uint8 or tuple(calib.shape[1:]) != tuple(input_shape):
        raise PrivQuantError(
            f"calibration images must be uint8 of shape (N, {', '.join(map(str, input_shape))})"
        )
    return calib


def quantize_graph(
    graph: QGraph,
    calib: torch.Tensor,
    bits: BitAssignment,
    *,
    train_images: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    qat_epochs: int = 0,
    qat_lr: float = 1e-4,
    freeze_scales: bool = False,
    progress: bool = True,
) -> Quantized:
    """Calibrate, fine-tune (``qat_epochs > 0``) and lower ``graph`` at ``bits``."""
    calib = check_calibration(calib, graph.input_shape)
    t0 = time.perf_counter()
    qm = QModel(graph, bits)
    calibrate(qm, calib)
    info: dict = {"calibration_images": len(calib), "qat_epochs": 0}
    if graph.notes:
        info["notes"] = list(graph.notes)
    if qat_epochs > 0:
        if train_images is None or train_labels is None:
            raise PrivQuantError("QAT needs training images and labels")
        scales = [*qm.w_scales.values(), *qm.a_scales.values()]
        for p in scales if freeze_scales else ():
            p.requires_grad_(False)  # no gradient: the optimizer leaves them untouched
        try:
            qat(qm, train_images, train_labels, epochs=qat_epochs, lr=qat_lr, progress=progress)
        finally:
            for p in scales:
                p.requires_grad_(True)
        info.update(qat_epochs=qat_epochs, qat_images=len(train_images), qat_lr=qat_lr)
        if freeze_scales:
            info["qat_scales"] = "frozen"
    qm.eval()
    program = lower(qm)
    program.meta.update(bits=bits.to_dict())
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return Quantized(graph, bits, qm, program, info)


def _check_eval(images: torch.Tensor, labels: torch.Tensor) -> None:
    if len(images) != len(labels) or len(images) == 0:
        raise PrivQuantError("evaluate needs the same non-zero number of images and labels")


@torch.no_grad()
def fakequant_top1(qm: QModel, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 (percent) of the fake-quant model alone (about 10x faster than the integer
    program's plaintext executor; agrees with it on all but a few images in a thousand)."""
    _check_eval(images, labels)
    hits = 0
    for i in range(0, len(images), EVAL_BATCH):
        x, y = images[i : i + EVAL_BATCH], labels[i : i + EVAL_BATCH]
        hits += int((qm(x.float() / 255.0).argmax(1) == y).sum())
    return 100.0 * hits / len(images)


@torch.no_grad()
def evaluate(
    fp: QModel,
    fq: QModel,
    program: Program,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = EVAL_BATCH,
    progress: bool = False,
) -> dict:
    """Top-1 (percent) of FP32, fake-quant and integer program on the same uint8 images
    (``progress``: a bar on stderr)."""
    from tqdm import tqdm

    _check_eval(images, labels)
    hits = {"fp32": 0, "fakequant": 0, "int": 0}
    agree = 0
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="evaluate", unit="batch", disable=not progress, leave=False):
        x, y = images[i : i + batch_size], labels[i : i + batch_size]
        xf = x.float() / 255.0
        p_fp = fp(xf).argmax(1)
        p_fq = fq(xf).argmax(1)
        p_int = output_logits(program, run_plain(program, x)).argmax(1)
        hits["fp32"] += int((p_fp == y).sum())
        hits["fakequant"] += int((p_fq == y).sum())
        hits["int"] += int((p_int == y).sum())
        agree += int((p_fq == p_int).sum())
    n = len(images)
    return {
        "n": n,
        **{f"{k}_top1": 100.0 * v / n for k, v in hits.items()},
        "fakequant_int_agreement": 100.0 * agree / n,
    }


__all__ = ["Quantized", "check_calibration", "evaluate", "fakequant_top1", "quantize_graph"]
