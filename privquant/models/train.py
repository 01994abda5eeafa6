"""Float training and evaluation on Fashion-MNIST (input = uint8 / 255).

Usage: ``python -m privquant.models.train --model resnet8 --epochs 10 --out weights/resnet8.pt``
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from privquant.models.data import load_fashion_mnist, to_float


@torch.no_grad()
def evaluate_float(
    model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Top-1 accuracy in percent of ``model`` (switched to eval mode) on uint8 images."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(to_float(images_uint8[i : i + batch_size]))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return 100.0 * correct / max(len(labels), 1)


def _augment(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per sample."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def train(
    model: nn.Module,
    epochs: int,
    lr: float,
    batch_size: int,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    augment: bool = True,
    test_limit: int | None = None,
) -> dict:
    """Train ``model`` in place on the Fashion-MNIST train split, then evaluate on the test split.

    SGD (momentum 0.9, Nesterov) or Adam(W), per-step cosine decay from ``lr`` to 0, cross
    entropy. ``limit`` truncates the training set, ``test_limit`` the test set (default: all 10k).
    Deterministic for a given ``seed`` on a given machine/thread count.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = load_fashion_mnist("train", limit)
    test_images, test_labels = load_fashion_mnist("test", test_limit)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    elif optimizer == "adam":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected 'sgd' or 'adam'")
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total_steps = max(epochs * steps_per_epoch, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    start = time.perf_counter()
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(labels), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        loss_sum, seen = 0.0, 0
        for step in bar:
            idx = perm[step * batch_size : (step + 1) * batch_size]
            x = to_float(images[idx])
            if augment:
                x = _augment(x, 2, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss) * len(idx)
            seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        history.append(loss_sum / max(seen, 1))
    test_top1 = evaluate_float(model, test_images, test_labels)
    return {
        "test_top1": test_top1,
        "epochs": epochs,
        "train_loss": history,
        "train_size": len(labels),
        "test_size": len(test_labels),
        "seconds": time.perf_counter() - start,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> None:
    """Train a registry model and save its float32 state_dict."""
    from privquant.models import MODEL_NAMES, build_model, input_shape

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODEL_NAMES, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if input_shape(args.model)[0] != 1:
        parser.error(f"{args.model} takes 3-channel input; only Fashion-MNIST training is built in")
    torch.set_num_threads(args.threads)
    model = build_model(args.model)
    result = train(
        model,
        args.epochs,
        args.lr,
        args.batch_size,
        limit=args.limit,
        seed=args.seed,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        augment=not args.no_augment,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        args.out,
    )
    print(
        f"{args.model}: test top-1 {result['test_top1']:.2f}% after {args.epochs} epochs "
        f"in {result['seconds']:.0f}s -> {args.out}"
    )


if __name__ == "__main__":
    main()
