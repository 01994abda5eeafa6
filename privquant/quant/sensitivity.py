"""Per-layer, per-bit-width sensitivity of the loss to quantization (the search's objective).

Two estimates, one API (:func:`sensitivity`):

* ``"hessian"`` (default; HAWQ-V2/V3, Dong et al. 2020, Yao et al. 2021): for every weight tensor
  and every activation quantizer point ``i``, the Hessian trace of the loss ``Tr(H_i)`` is
  estimated by Hutchinson's method (``E[v^T H v]`` with Rademacher ``v``; one Hessian-vector
  product per iteration gives every block at once, cross terms vanish in expectation) on one
  calibration batch with a fixed seed; the sensitivity of ``i`` at ``b`` bits is the second-order
  estimate ``Omega_i(b) = Tr(H_i) / n_i * ||Q_b(x_i) - x_i||^2`` where ``Q_b`` is the quantizer
  ``calibrate`` builds at ``b`` bits (the ScaleBook's step sizes) and ``x_i`` the weights or the
  activation tensor of the batch (``n_i`` elements).
* ``"measured"``: the measured change of the output divergence ``KL(p_fp32 || p_q)`` on the
  calibration batch when only ``i`` moves from 8 bits to ``b`` bits (others stay at 8 bits),
  clamped at zero.

Both are taken around the 8-bit fake-quant model (within 8-bit rounding of FP32), whose
``on_quantizer`` hook exposes every activation quantizer's input; the loss is the cross-entropy
against the FP32 model's own predictions, so no labels are needed (random-weight CIFAR models
with synthetic calibration data work the same way). The search minimizes ``sum_i Omega_i(b_i)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from privquant.errors import PrivQuantError
from privquant.quant.costtable import ScaleBook, frozen_qmodel
from privquant.quant.fakequant import _key, weight_qmax
from privquant.quant.graph import QGraph
from privquant.quant.spec import BitAssignment, LayerBits

METHODS = ("hessian", "measured")


@dataclass
class Sensitivity:
    """``weights[layer][b]`` and ``acts[quantizer][b]``: estimated loss increase at ``b`` bits."""

    method: str
    weights: dict[str, dict[int, float]]
    acts: dict[str, dict[int, float]]
    traces: dict[str, float] = field(default_factory=dict)  # hessian: Tr(H_i) / n_i
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def total(self, wbits: dict[str, int], abits: dict[str, int]) -> float:
        return sum(self.weights[k][b] for k, b in wbits.items()) + sum(
            self.acts[k][b] for k, b in abits.items()
        )

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "weights": {k: {str(b): v for b, v in d.items()} for k, d in self.weights.items()},
            "acts": {k: {str(b): v for b, v in d.items()} for k, d in self.acts.items()},
            "traces": self.traces,
            "seconds": self.seconds,
            **self.info,
        }


def _base(graph: QGraph, scales: ScaleBook):
    if 8 not in scales.bits:
        raise PrivQuantError("sensitivity needs 8-bit scales in the ScaleBook (the base model)")
    return frozen_qmodel(graph, BitAssignment.uniform(LayerBits(8, 8)), scales)


def _batch(images: torch.Tensor, batch: int) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise PrivQuantError("sensitivity needs a non-empty uint8 (N, C, H, W) calibration batch")
    return images[:batch].float() / 255.0


def _wpert(qm, layer: str, b: int, scales: ScaleBook) -> float:
    """||Q_b(W) - W||^2 with calibrate's step sizes (same float ops as QModel.qweight)."""
    w = qm.weights[_key(layer)].detach()
    s = (scales.w[(layer, b)].abs() + 1e-12).reshape(-1, *([1] * (w.dim() - 1)))
    q = weight_qmax(b)
    return float(((torch.clamp(torch.round(w / s), -q, q) * s - w) ** 2).sum())


def _qbits(graph: QGraph, q: str, b: int) -> int:
    """The bits quantizer ``q`` takes when the activations it feeds have ``b`` bits (more for
    the input of a lookup activation: :meth:`QGraph.derived_bits`)."""
    return b if graph.readers(q) else graph.derived_bits(q, b)


def _apert(qz, a: torch.Tensor, q: str, b: int, scales: ScaleBook) -> float:
    z = replace(qz, bits=b)
    s = scales.a[(q, b)].abs() + 1e-12
    return float(((torch.clamp(torch.round(a / s), z.qmin, z.qmax) * s - a) ** 2).sum())


def _sqrt_ce_hessian(logits: torch.Tensor) -> torch.Tensor:
    """Per sample, the symmetric square root of the Hessian of ``mean_n CE(z_n, y_n)`` w.r.t.
    ``z_n``: ``(diag(p_n) - p_n p_n^T) / N`` (it does not depend on the label)."""
    p = torch.softmax(logits.detach().double(), 1)
    s = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / len(p)
    lam, vec = torch.linalg.eigh(s)
    return (vec * lam.clamp_min(0).sqrt()[:, None, :]) @ vec.transpose(1, 2)


def hessian_sensitivity(
    graph: QGraph,
    scales: ScaleBook,
    images: torch.Tensor,
    *,
    wbits,
    abits,
    iters: int = 32,
    batch: int = 32,
    seed: int = 0,
    estimator: str = "logit",
    progress: bool = False,
) -> Sensitivity:
    """HAWQ-style ``Tr(H)/n * ||Q(x) - x||^2`` per layer (weights) and quantizer (activations).

    ``Tr(H_ii)`` (the diagonal Hessian block of the loss w.r.t. one weight tensor or one
    activation tensor) by Hutchinson's method with a fixed seed, one backward pass per iteration
    for every block at once. Estimators:

    * ``"logit"`` (default): between ``x_i`` and the logits the network is piecewise linear in
      ``x_i`` (conv/linear, ReLU/ReLU6, pooling, adds, the straight-through quantizers), so the
      block is exactly the Gauss-Newton block ``H_ii = J_i^T S J_i`` (``S`` the cross-entropy
      Hessian w.r.t. the logits) and ``Tr(H_ii) = E_u ||J_i^T S^(1/2) u||^2`` with Rademacher
      ``u`` over the (batch x classes) logits: non-negative, and far less noisy than probing the
      parameter space;
    * ``"hvp"``: the classic ``E_v[v^T H v]`` with Rademacher ``v`` over all weights and
      activations (Hessian-vector products by double backward; HAWQ-V2); negative estimates
      (noise) are clamped at zero.
    """
    if iters < 1:
        raise PrivQuantError("Hutchinson needs at least one iteration")
    if estimator not in ("logit", "hvp"):
        raise PrivQuantError(f"unknown Hutchinson estimator {estimator!r}; use 'logit' or 'hvp'")
    t0 = time.perf_counter()
    qm = _base(graph, scales)
    x = _batch(images, batch)
    with torch.no_grad():
        qm.mode = "float"
        labels = qm(x).argmax(1)
        qm.mode = "quant"
    acts: dict[str, torch.Tensor] = {}

    def keep(n: str, y: torch.Tensor) -> None:
        if not y.requires_grad:  # e.g. a public map of the input: no parameter before it
            y.requires_grad_()
        acts[n] = y

    logits = qm(x, on_quantizer=keep)
    layers = graph.layer_names
    quants = list(qm.quantizers)
    targets = [qm.weights[_key(n)] for n in layers] + [acts[q] for q in quants]
    gen = torch.Generator().manual_seed(seed)
    tr = torch.zeros(len(targets), dtype=torch.float64)
    bar = tqdm(range(iters), desc="Hutchinson", disable=not progress, leave=False)
    if estimator == "logit":
        root = _sqrt_ce_hessian(logits)
        for _ in bar:
            u = torch.randint(0, 2, logits.shape, generator=gen).double() * 2 - 1
            w = (root @ u[:, :, None])[:, :, 0].to(logits.dtype)
            gs = torch.autograd.grad(logits, targets, grad_outputs=w, retain_graph=True)
            for i, g in enumerate(gs):
                tr[i] += float((g.double() ** 2).sum())
    else:
        loss = F.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, targets, create_graph=True)
        for _ in bar:
            vs = [torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1 for t in targets]
            hv = torch.autograd.grad(
                grads, targets, grad_outputs=vs, retain_graph=True, allow_unused=True
            )
            for i, (h, v) in enumerate(zip(hv, vs)):
                if h is not None:
                    tr[i] += float((h * v).sum())
    tr /= iters
    keys = [f"w:{n}" for n in layers] + [f"a:{q}" for q in quants]
    traces = {k: float(tr[i]) / targets[i].numel() for i, k in enumerate(keys)}
    weights = {
        n: {b: max(traces[f"w:{n}"], 0.0) * _wpert(qm, n, b, scales) for b in wbits} for n in layers
    }
    act_vals = {}
    for q in quants:
        a = acts[q].detach()
        act_vals[q] = {
            b: max(traces[f"a:{q}"], 0.0)
            * _apert(qm.quantizers[q], a, q, _qbits(graph, q, b), scales)
            for b in abits
        }
    return Sensitivity(
        "hessian",
        weights,
        act_vals,
        traces,
        time.perf_counter() - t0,
        {"iters": iters, "batch": len(x), "seed": seed, "estimator": estimator},
    )


@torch.no_grad()
def measured_sensitivity(
    graph: QGraph,
    scales: ScaleBook,
    images: torch.Tensor,
    *,
    wbits,
    abits,
    batch: int = 64,
    progress: bool = False,
) -> Sensitivity:
    """Change of ``KL(p_fp32 || p_q)`` when one layer's weights or one quantizer leaves 8 bits."""
    t0 = time.perf_counter()
    qm = _base(graph, scales)
    x = _batch(images, batch)
    qm.mode = "float"
    ref = F.log_softmax(qm(x), 1)
    qm.mode = "quant"

    def div() -> float:
        out = F.log_softmax(qm(x), 1)
        return float(F.kl_div(out, ref, log_target=True, reduction="batchmean"))

    base = div()
    layers, quants = graph.layer_names, list(qm.quantizers)
    total = len(layers) * len(wbits) + len(quants) * len(abits)
    bar = tqdm(total=total, desc="sensitivity", disable=not progress, leave=False)
    weights: dict[str, dict[int, float]] = {}
    for n in layers:
        keep = qm.w_scales[_key(n)].detach().clone()
        weights[n] = {}
        for b in wbits:
            qm.w_bits[n] = b
            qm.w_scales[_key(n)].copy_(scales.w[(n, b)])
            weights[n][b] = max(div() - base, 0.0) if b != 8 else 0.0
            bar.update(1)
        qm.w_bits[n] = 8
        qm.w_scales[_key(n)].copy_(keep)
    acts: dict[str, dict[int, float]] = {}
    for q in quants:
        qz = qm.quantizers[q]
        keep = qm.a_scales[_key(q)].detach().clone()
        acts[q] = {}
        for b in abits:
            qz.bits = _qbits(graph, q, b)
            qm.a_scales[_key(q)].copy_(scales.a[(q, qz.bits)])
            acts[q][b] = max(div() - base, 0.0) if b != 8 else 0.0
            bar.update(1)
        qz.bits = 8
        qm.a_scales[_key(q)].copy_(keep)
    bar.close()
    return Sensitivity(
        "measured",
        weights,
        acts,
        {},
        time.perf_counter() - t0,
        {"batch": len(x), "base_kl": base},
    )


def sensitivity(
    method: str,
    graph: QGraph,
    scales: ScaleBook,
    images: torch.Tensor,
    *,
    wbits,
    abits,
    iters: int = 16,
    batch: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Sensitivity:
    """Dispatch on ``method`` (``"hessian"`` default, or ``"measured"``)."""
    if method == "hessian":
        return hessian_sensitivity(
            graph,
            scales,
            images,
            wbits=wbits,
            abits=abits,
            iters=iters,
            batch=batch or 32,
            seed=seed,
            progress=progress,
        )
    if method == "measured":
        return measured_sensitivity(
            graph, scales, images, wbits=wbits, abits=abits, batch=batch or 64, progress=progress
        )
    raise PrivQuantError(f"unknown sensitivity method {method!r}; choose from {list(METHODS)}")


__all__ = [
    "METHODS",
    "Sensitivity",
    "hessian_sensitivity",
    "measured_sensitivity",
    "sensitivity",
]
