"""Post-training calibration (PTQ) and quantization-aware fine-tuning (QAT) of a QModel.

Calibration picks every step size by minimizing the quantization MSE over a grid of clipping
ratios: weights per output channel (per tensor for the logit layer), activations per quantizer
point on a calibration batch run in float. QAT then fine-tunes weights, biases and all step sizes
jointly (LSQ) with Adam and a cosine schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from privquant.quant.fakequant import QModel, _key, weight_qmax

RATIOS = torch.linspace(0.3, 1.0, 36)
MAX_CALIB_VALUES = 1 << 16


def _mse_scale(x: torch.Tensor, amax: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Best step per row of ``x`` (rows, n) among ``ratio * amax / qmax``."""
    best_err = torch.full_like(amax, float("inf"))
    best = amax / qmax
    for r in RATIOS:
        s = (r * amax / qmax).clamp_min(1e-12)
        q = torch.clamp(torch.round(x / s[:, None]), qmin, qmax) * s[:, None]
        err = ((q - x) ** 2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


@torch.no_grad()
def calibrate(qm: QModel, images: torch.Tensor, batch_size: int = 128) -> None:
    """Set weight and activation step sizes by MSE search; leaves ``qm`` in quant mode."""
    for n in qm.graph.layers:
        w = qm.weights[_key(n.name)].detach()
        rows = w.reshape(1, -1) if n.name == qm.final else w.reshape(w.shape[0], -1)
        qmax = weight_qmax(qm.w_bits[n.name])
        amax = rows.abs().amax(1).clamp_min(1e-8)
        qm.w_scales[_key(n.name)].copy_(_mse_scale(rows, amax, -qmax, qmax))
    # activations: one pass; each quantizer is set when reached, after all upstream ones
    qm.mode = "quant"
    gen = torch.Generator().manual_seed(0)

    def set_scale(name: str, y: torch.Tensor) -> None:
        qz = qm.quantizers[name]
        v = y.detach().flatten()
        if v.numel() > MAX_CALIB_VALUES:
            v = v[torch.randint(0, v.numel(), (MAX_CALIB_VALUES,), generator=gen)]
        amax = (v.abs().max() if qz.signed else v.clamp_min(0).max()).clamp_min(1e-6)
        qm.a_scales[_key(name)].copy_(_mse_scale(v[None, :], amax.reshape(1), qz.qmin, qz.qmax)[0])

    qm(images[:batch_size].float() / 255.0, on_quantizer=set_scale)


def qat(
    qm: QModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Fine-tune ``qm`` (in quant mode) on uint8 ``images``/``labels`` with LSQ + STE."""
    torch.manual_seed(seed)
    qm.mode = "quant"
    qm.train()
    scale_params = list(qm.w_scales.values()) + list(qm.a_scales.values())
    opt = torch.optim.Adam(
        [
            {"params": list(qm.weights.values()) + list(qm.biases.values()), "lr": lr},
            {"params": scale_params, "lr": lr * 10},
        ]
    )
    n = images.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="QAT", disable=not progress, leave=False)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            x = images[idx].float() / 255.0
            loss = F.cross_entropy(qm(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    qm.eval()
