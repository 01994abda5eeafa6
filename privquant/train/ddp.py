"""Data-parallel training with a gradient compressor: the worker and its configuration.

One process per rank (``torch.distributed``, gloo on CPU), joined through the standard
``env://`` rendezvous (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``: what torchrun
sets, and what :mod:`privquant.train.launch` sets for N local processes). Each rank:

* builds the model from the same seed (DDP also broadcasts rank 0's parameters), wraps it in
  DDP with ``broadcast_buffers=False`` (so a step's only traffic is the hooks' collectives) and
  registers the compressor's hook;
* takes every global batch (``batch_size`` images, the same permutation on every rank) and
  trains on its slice ``idx[rank::W]`` with its own augmentation RNG;
* SGD (momentum 0.9, Nesterov; momentum 0 for DGC, whose hook owns the momentum), cosine decay;
* measures the bytes it sends per step (kernel TCP counters) next to the declared ones;
* at the end averages the BatchNorm running statistics over the ranks, hashes its state and
  checks all replicas are bit-identical; rank 0 evaluates, saves and writes the JSON result.

``python -m privquant.train.ddp CONFIG.json`` runs one rank (a JSON list of configs: several
trainings in turn, in one process group).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from privquant.errors import PrivQuantError

DATASETS = ("fashion-mnist", "synthetic")


@dataclass
class RunConfig:
    """Everything a worker needs (JSON round-trip)."""

    model: str = "resnet8"
    epochs: int = 1
    lr: float = 0.1
    batch_size: int = 128  # global: split over the ranks
    limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    weight_decay: float = 5e-4
    augment: bool = True
    method: str = "none"
    options: dict = field(default_factory=dict)
    bucket_cap_mb: float = 4.0  # <= 4 MiB: the range where the traffic model is exact
    max_steps: int | None = None  # the schedule's length (timing runs)
    stop_at: int | None = None  # stop early without changing the schedule (checkpoint tests)
    data: str = "fashion-mnist"
    out: str | None = None
    result: str | None = None
    progress: bool = True
    timeout: float = 300.0
    threads: int = 1
    eval_every_epoch: bool = False
    resume: str | None = None  # checkpoint written by save_checkpoint
    checkpoint: str | None = None  # where each rank writes its checkpoint at the end
    qat: dict | None = None  # QAT fine-tuning of a calibrated QModel (privquant.train.qat)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls(**json.loads(text))

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise PrivQuantError("need --epochs >= 0, --batch-size >= 1 and --lr > 0")
        if self.data not in DATASETS:
            raise PrivQuantError(f"unknown training data {self.data!r}")
        if self.bucket_cap_mb <= 0:
            raise PrivQuantError("--bucket-cap-mb must be positive")
        from privquant.train.gradcomp import make

        make(self.method, seed=self.seed, **self.options)  # unknown method / bad options


# ---------------------------------------------------------------------- data
def load_data(cfg: RunConfig):
    """(train_x, train_y, test_x, test_y): uint8 images and int64 labels."""
    if cfg.data == "synthetic":
        gen = torch.Generator().manual_seed(12345)
        n, nt = cfg.limit or 512, cfg.test_limit or 128
        x = torch.randint(0, 256, (n + nt, 1, 28, 28), dtype=torch.uint8, generator=gen)
        y = (x[:, 0, :14].float().mean((1, 2)) > x[:, 0, 14:].float().mean((1, 2))).long()
        y = y * 5 + (x[:, 0, 0, 0] % 5).long()
        return x[:n], y[:n], x[n:], y[n:]
    from privquant.models.data import load_fashion_mnist

    x, y = load_fashion_mnist("train", cfg.limit)
    if cfg.test_limit == 0:
        return x, y, x[:0], y[:0]
    tx, ty = load_fashion_mnist("test", cfg.test_limit)
    return x, y, tx, ty


def state_hash(module: nn.Module, params_only: bool = False) -> str:
    h = hashlib.sha256()
    items = module.named_parameters() if params_only else module.state_dict().items()
    for name, t in items:
        h.update(name.encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cosine(total: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


# ---------------------------------------------------------------------- the worker
def run_worker(cfg: RunConfig) -> dict | None:
    """Train one rank; returns the result dict on rank 0 (None elsewhere)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from privquant.models.data import to_float
    from privquant.models.train import _augment, evaluate_float
    from privquant.train.gradcomp import hook, make
    from privquant.train.gradcomp.base import layout_pass
    from privquant.train.gradcomp.comm import tcp_bytes_sent

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("gloo", timeout=timedelta(seconds=cfg.timeout))
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        x, y, tx, ty = load_data(cfg)
        torch.manual_seed(cfg.seed)
        if cfg.qat is not None:
            from privquant.train.qat import build_qat_model

            model, param_groups = build_qat_model(cfg.qat)
        else:
            from privquant.models import build_model

            model = build_model(cfg.model)
            param_groups = None
        ddp = DDP(model, broadcast_buffers=False, bucket_cap_mb=cfg.bucket_cap_mb)
        comp = make(cfg.method, seed=cfg.seed, **cfg.options)
        momentum = 0.0 if cfg.method == "dgc" else 0.9
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.qat is not None:
            opt = torch.optim.Adam(param_groups(model, cfg.lr))
        else:
            opt = torch.optim.SGD(
                params,
                lr=cfg.lr,
                momentum=momentum,
                nesterov=momentum > 0,
                weight_decay=cfg.weight_decay,
            )
        per_epoch = math.ceil(len(y) / cfg.batch_size)
        total = max(cfg.epochs * per_epoch, 1)
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        if cfg.method == "dgc" and "warmup" not in cfg.options:
            comp.warmup = min(per_epoch, max(total // 4, 1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(total))
        start_step, aug_state = 0, None
        if cfg.resume:
            path = Path(cfg.resume) / f"rank{rank}.pt"
            try:
                ck = torch.load(path, weights_only=False)  # this job's own checkpoint
            except (OSError, RuntimeError, EOFError) as e:
                raise PrivQuantError(f"cannot read checkpoint {path}: {e}") from None
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            comp.load_state_dict(ck["comp"])
            start_step = int(ck["step"])
            aug_state = ck["aug_rng"]
        comp.setup(None)
        ddp.register_comm_hook(comp, hook)
        if cfg.resume:  # DDP's bucket layout as when the checkpoint was saved
            layout_pass(ddp, comp, to_float(x[:2]))

        perm_gen = torch.Generator().manual_seed(cfg.seed)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + rank)
        if aug_state is not None:
            aug_gen.set_state(aug_state)
        bar = None
        if cfg.progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(
                total=total, initial=start_step, desc=f"{cfg.method} W={world}", file=sys.stderr
            )
        steps, curve = [], []
        t_start = time.perf_counter()
        step = 0
        loss_sum = 0.0
        done = False
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(y), generator=perm_gen)
            model.train()
            for i in range(per_epoch):
                if step >= total or (cfg.stop_at is not None and step >= cfg.stop_at):
                    done = True
                    break
                if step < start_step:  # replay the data order of a resumed run
                    step += 1
                    continue
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size][rank::world]
                xb = to_float(x[idx])
                if cfg.augment and cfg.qat is None:
                    xb = _augment(xb, 2, aug_gen)
                t0, b0 = time.perf_counter(), tcp_bytes_sent()
                loss = F.cross_entropy(ddp(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                b1, t1 = tcp_bytes_sent(), time.perf_counter()
                rec = comp.comm.ledger.close_step()
                # excluded from the declared == measured comparison: the uncompressed warm-up
                # steps, and the first step of a resumed process -- in both DDP rebuilds its
                # buckets, which broadcasts the new bucket indices (traffic of no hook)
                rec.update(
                    step=step,
                    measured=b1 - b0,
                    seconds=t1 - t0,
                    warmup=comp.iteration <= comp.start_iter
                    or (bool(cfg.resume) and step == start_step),
                )
                steps.append(rec)
                loss_sum += float(loss.detach())
                step += 1
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix(loss=f"{float(loss):.3f}", kb=f"{rec['wire'] / 1e3:.1f}")
            if bar is not None:  # the log: this rank's bytes per step over the epoch
                ep = [r for r in steps if not r["warmup"]][-per_epoch:]
                if ep:
                    k = len(ep)
                    bar.write(
                        f"epoch {epoch + 1}: {sum(r['wire'] for r in ep) / k:,.0f} B/step/rank "
                        f"declared, {sum(r['measured'] for r in ep) / k:,.0f} measured, fp32 "
                        f"allreduce {sum(r['fp32_wire'] for r in ep) / k:,.0f}",
                        file=sys.stderr,
                    )
            if cfg.eval_every_epoch and rank == 0 and not done:
                acc = evaluate_float(model, tx, ty)
                curve.append(
                    {
                        "epoch": epoch + 1,
                        "step": step,
                        "test_top1": acc,
                        "seconds": time.perf_counter() - t_start,
                    }
                )
            if done:
                break
        train_seconds = time.perf_counter() - t_start
        if bar is not None:
            bar.close()
        if cfg.checkpoint:
            Path(cfg.checkpoint).mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "comp": comp.state_dict(),
                    "step": step,
                    "aug_rng": aug_gen.get_state(),
                },
                Path(cfg.checkpoint) / f"rank{rank}.pt",
            )
        params_hash = state_hash(model, params_only=True)
        for buf in model.buffers():  # BatchNorm statistics: the mean over ranks
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(world)
        full_hash = state_hash(model)
        gathered: list = [None] * world
        dist.all_gather_object(
            gathered,
            {"params": params_hash, "state": full_hash, "resets": comp.resets, "steps": steps},
        )
        if rank != 0:
            dist.barrier()
            return None
        result = summarize(cfg, world, gathered, curve, train_seconds, per_epoch)
        model.eval()
        result["test_top1"] = evaluate_float(model, tx, ty) if len(ty) else None
        result["train_size"] = len(y)
        result["final_loss"] = loss_sum / max(len(steps), 1)
        if cfg.out:
            if cfg.qat is None:
                torch.save(model.state_dict(), cfg.out)
            else:
                torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, cfg.out)
        if cfg.result:
            Path(cfg.result).write_text(json.dumps(result, sort_keys=True))
        dist.barrier()
        return result
    finally:
        if owner:
            shutdown()


def shutdown(timeout: float = 30.0) -> None:
    """Destroy the process group so that rank 0, which hosts the rendezvous store, leaves last:
    every other rank checks in at the store after its own teardown and rank 0 waits for them
    (a store vanishing under a rank still tearing down can abort it on a slow link)."""
    try:
        store = dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError):
        store = None
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.destroy_process_group()
    if store is None or world == 1:
        return
    try:
        if rank != 0:
            store.add("privquant/left", 1)
            return
        deadline = time.monotonic() + timeout
        while store.add("privquant/left", 0) < world - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    except (RuntimeError, OSError):  # a peer already gone: nothing left to protect
        pass


def summarize(cfg, world, gathered, curve, seconds, per_epoch) -> dict:
    """Bytes per step per rank (declared, closed form, measured), replica check, timing."""
    ranks = []
    for r, g in enumerate(gathered):
        st = [s for s in g["steps"] if not s["warmup"]]
        bad = [s["step"] for s in st if not (s["measured"] == s["wire"] == s["closed_wire"])]
        n = max(len(st), 1)
        ranks.append(
            {
                "rank": r,
                "steps": len(st),
                "wire_per_step": sum(s["wire"] for s in st) / n,
                "payload_per_step": sum(s["payload"] for s in st) / n,
                "measured_per_step": sum(s["measured"] for s in st) / n,
                "fp32_wire_per_step": sum(s["fp32_wire"] for s in st) / n,
                "fp32_payload_per_step": sum(s["fp32_payload"] for s in st) / n,
                "last_wire": st[-1]["wire"] if st else None,  # after DGC's warm-up, e.g.
                "last_fp32_wire": st[-1]["fp32_wire"] if st else None,
                "mismatched_steps": bad[:20],
                "measured_equals_declared": not bad,
            }
        )
    mean = lambda k: sum(r[k] for r in ranks) / len(ranks)  # noqa: E731
    st0 = [s for s in gathered[0]["steps"] if not s["warmup"]]
    step_s = sorted(s["seconds"] for s in st0) or [float("nan")]
    return {
        "method": cfg.method,
        "options": cfg.options,
        "world": world,
        "model": cfg.model,
        "epochs": cfg.epochs,
        "steps": len(gathered[0]["steps"]),
        "steps_per_epoch": per_epoch,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "train_size": None,
        "bytes": {
            "wire_per_step": mean("wire_per_step"),
            "payload_per_step": mean("payload_per_step"),
            "measured_per_step": mean("measured_per_step"),
            "fp32_wire_per_step": mean("fp32_wire_per_step"),
            "fp32_payload_per_step": mean("fp32_payload_per_step"),
            "ratio_wire": mean("fp32_wire_per_step") / max(mean("wire_per_step"), 1e-9),
            "ratio_payload": mean("fp32_payload_per_step") / max(mean("payload_per_step"), 1e-9),
            "measured_equals_declared": all(r["measured_equals_declared"] for r in ranks),
            "ratio_wire_last_step": (
                mean("last_fp32_wire") / max(mean("last_wire"), 1e-9) if st0 else None
            ),
            "per_rank": ranks,
        },
        "replicas_identical": len({g["state"] for g in gathered}) == 1,
        "bucket_state_resets": max(g["resets"] for g in gathered),
        "params_identical": len({g["params"] for g in gathered}) == 1,
        "state_hash": gathered[0]["state"],
        "seconds": seconds,
        "median_step_seconds": step_s[len(step_s) // 2],
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        doc = json.loads(Path(argv[0]).read_text())
        cfgs = [RunConfig(**d) for d in (doc if isinstance(doc, list) else [doc])]
        if len(cfgs) > 1:  # several trainings in one process group (tests, sweeps)
            dist.init_process_group("gloo", timeout=timedelta(seconds=cfgs[0].timeout))
        try:
            for cfg in cfgs:
                run_worker(cfg)
        finally:
            if dist.is_initialized():
                shutdown()
    except PrivQuantError as e:
        print(f"privquant: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a dead peer surfaces as a gloo RuntimeError in any collective
        text = str(e).strip()
        line = text.splitlines()[0] if text else type(e).__name__
        if "PeerError: " in line:  # raised in a hook's decoding callback, wrapped by torch
            line = line.split("PeerError: ", 1)[1]
        else:
            line = f"{type(e).__name__}: {line}"
        print(f"privquant: error: {line[:300]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
