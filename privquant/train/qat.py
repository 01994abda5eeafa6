"""Distributed QAT fine-tuning (``privquant quantize --qat-epochs E --workers N
--grad-compression M``): the same steps as :func:`privquant.quantize`, with the QAT loop run by
N data-parallel workers through a gradient compressor.

The launcher captures, calibrates (PTQ) and pickles the fake-quant ``QModel`` to a private temp
directory; every worker loads it, fine-tunes weights, biases and (unless frozen) step sizes with
Adam (step sizes at 10x the learning rate) and a cosine schedule -- exactly
:func:`privquant.quant.calibrate.qat`, without augmentation -- on its slice of each global
batch; rank 0 writes the fine-tuned state, which the launcher lowers to the integer program.
(This module imports the quantizer, not the two-party protocols.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from privquant.errors import PrivQuantError


def build_qat_model(qat: dict):
    """(QModel in quant/train mode, param-group factory) for a worker."""
    try:
        qm = torch.load(qat["path"], weights_only=False)  # our own temp file
    except (OSError, RuntimeError) as e:
        raise PrivQuantError(f"cannot load the calibrated model: {e}") from None
    qm.mode = "quant"
    qm.train()
    if qat.get("freeze_scales"):
        for p in [*qm.w_scales.values(), *qm.a_scales.values()]:
            p.requires_grad_(False)

    def groups(model, lr: float) -> list[dict]:
        wb = [p for p in [*model.weights.values(), *model.biases.values()] if p.requires_grad]
        sc = [p for p in [*model.w_scales.values(), *model.a_scales.values()] if p.requires_grad]
        out = [{"params": wb, "lr": lr}]
        if sc:
            out.append({"params": sc, "lr": lr * 10})
        return out

    return qm, groups


def quantize_distributed(
    model,
    calib_images: torch.Tensor,
    bits,
    *,
    name: str,
    input_shape: tuple[int, ...],
    qat_epochs: int,
    qat_lr: float,
    qat_limit: int | None,
    freeze_scales: bool,
    workers: int,
    method: str,
    options: dict,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    bucket_cap_mb: float = 4.0,
):
    """Like :func:`privquant.quantize` with ``qat_epochs > 0``, the QAT on ``workers`` ranks."""
    from privquant.quant.calibrate import calibrate
    from privquant.quant.fakequant import QModel
    from privquant.quant.graph import capture
    from privquant.quant.lower import lower
    from privquant.quantized import QuantizedModel, _as_assignment
    from privquant.train.ddp import RunConfig
    from privquant.train.launch import launch_local

    if qat_epochs < 1:
        raise PrivQuantError("distributed QAT needs --qat-epochs >= 1")
    assignment = _as_assignment(bits)
    t0 = time.perf_counter()
    graph = capture(model, name, tuple(input_shape))
    qm = QModel(graph, assignment)
    calibrate(qm, calib_images)
    with tempfile.TemporaryDirectory(prefix="privquant-qat-") as tmp:
        path, out = Path(tmp) / "qmodel.pt", Path(tmp) / "qat_state.pt"
        torch.save(qm, path)
        cfg = RunConfig(
            model=name,
            epochs=qat_epochs,
            lr=qat_lr,
            batch_size=batch_size,
            limit=qat_limit,
            test_limit=0,
            seed=seed,
            augment=False,
            method=method,
            options=dict(options),
            bucket_cap_mb=bucket_cap_mb,
            out=str(out),
            progress=progress,
            qat={"path": str(path), "freeze_scales": freeze_scales},
        )
        result = launch_local(cfg, workers)
        qm.load_state_dict(torch.load(out, weights_only=True))
    qm.eval()
    program = lower(qm)
    program.meta.update(bits=assignment.to_dict())
    info = {
        "calibration_images": len(calib_images),
        "qat_epochs": qat_epochs,
        "qat_lr": qat_lr,
        "qat_workers": workers,
        "qat_grad_compression": {"method": method, "options": dict(options)},
        "qat_bytes_per_step": result["bytes"]["wire_per_step"],
        "qat_fp32_bytes_per_step": result["bytes"]["fp32_wire_per_step"],
        "qat_replicas_identical": result["replicas_identical"],
        "qat_measured_equals_declared": result["bytes"]["measured_equals_declared"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if freeze_scales:
        info["qat_scales"] = "frozen"
    state = {k: v.detach().clone() for k, v in qm.state_dict().items()}
    return QuantizedModel(graph, assignment, state, program, info)
