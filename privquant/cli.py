"""``privquant`` command line: a thin layer over the Python API.

Every command that reports also takes ``--json`` and then prints exactly one JSON object on
stdout. Errors a user can cause end in one line ``privquant: error: ...`` on stderr and exit
status 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from privquant.errors import PrivQuantError

EXIT_USER_ERROR = 2


def _emit(args, result: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, sort_keys=True))
    else:
        print(text)


def _load_images(data: str, split: str, limit: int | None):
    from privquant.models.data import load_dataset

    return load_dataset(data, split=split, limit=limit)


def _calibration_images(n: int):
    """Training-split images for calibration: the full package if present, else the shipped set."""
    from privquant.models.calibration import load_calibration

    return load_calibration(n)


# ---------------------------------------------------------------------- commands
def cmd_train(args) -> None:
    import torch

    from privquant import models
    from privquant.models.train import train
    from privquant.train.options import wants_distributed

    if tuple(models.input_shape(args.model)) != (1, 28, 28):
        raise PrivQuantError(f"{args.model} is CIFAR-shaped; only Fashion-MNIST models train here")
    out = Path(args.out)
    if not out.parent.exists():
        raise PrivQuantError(f"output directory does not exist: {out.parent}")
    if wants_distributed(args):
        _train_distributed(args, out)
        return
    model = models.build_model(args.model)
    res = train(
        model,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        limit=args.limit,
        seed=args.seed,
        progress=not args.json,
    )
    torch.save(model.state_dict(), out)
    res = {"model": args.model, "out": str(out), **res}
    _emit(args, res, f"trained {args.model}: test top-1 {res['test_top1']:.2f}% -> {out}")


def _train_distributed(args, out: Path) -> None:
    """``train --workers N --grad-compression METHOD``: N local processes, or this process as
    one rank of a torchrun job (rank 0 reports)."""
    from privquant.train.ddp import RunConfig, run_worker
    from privquant.train.launch import launch_local, torchrun_env
    from privquant.train.options import method_options

    method, opts = method_options(args)
    cfg = RunConfig(
        model=args.model,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        limit=args.limit,
        seed=args.seed,
        method=method,
        options=opts,
        bucket_cap_mb=args.bucket_cap_mb,
        out=str(out),
        progress=not args.json,
    )
    if torchrun_env():
        if args.workers and args.workers != int(os.environ["WORLD_SIZE"]):
            raise PrivQuantError(
                f"--workers {args.workers} but the torchrun job has WORLD_SIZE "
                f"{os.environ['WORLD_SIZE']}"
            )
        res = run_worker(cfg)
        if res is None:  # not rank 0
            return
    else:
        res = launch_local(cfg, args.workers or 1)
    b = res["bytes"]
    res = {"model": args.model, "out": str(out), **res}
    _emit(
        args,
        res,
        f"trained {args.model} on {res['world']} workers ({method}): test top-1 "
        f"{res['test_top1']:.2f}% -> {out}\n"
        f"bytes per step per rank: {b['wire_per_step']:,.0f} ({b['ratio_wire']:.1f}x less than "
        f"fp32 allreduce's {b['fp32_wire_per_step']:,.0f}); measured == declared: "
        f"{b['measured_equals_declared']}; replicas bit-identical: {res['replicas_identical']}",
    )


def cmd_quantize(args) -> None:
    import privquant
    from privquant.quant.spec import BitAssignment, parse_bits

    if (args.bits is None) == (args.assignment is None):
        raise PrivQuantError("give exactly one of --bits wXaY or --assignment FILE")
    from privquant.protocols.transport.keys import Identity

    key = Identity.load(args.sign) if args.sign else None  # before the work, not after
    bits = parse_bits(args.bits) if args.bits is not None else BitAssignment.load(args.assignment)
    model, shape, calib = _model_and_calib(args)
    from privquant.train.options import wants_distributed

    if wants_distributed(args):
        art = _quantize_distributed(args, model, shape, calib, bits)
        _report_quantized(args, art, key)
        return
    train_x = train_y = None
    if args.qat_epochs > 0:
        train_x, train_y = _load_images("fashion-mnist", "train", args.qat_limit)
    art = privquant.quantize(
        model,
        calib,
        bits,
        name=args.model,
        input_shape=shape,
        train_images=train_x,
        train_labels=train_y,
        qat_epochs=args.qat_epochs,
        qat_lr=args.qat_lr,
        freeze_scales=args.freeze_scales,
        progress=not args.json,
    )
    _report_quantized(args, art, key)


def _quantize_distributed(args, model, shape, calib, bits):
    """QAT on ``--workers`` processes through ``--grad-compression``."""
    from privquant.train.launch import torchrun_env
    from privquant.train.options import method_options
    from privquant.train.qat import quantize_distributed

    if torchrun_env():
        raise PrivQuantError("distributed QAT starts its own workers; run it without torchrun")
    if tuple(shape) != (1, 28, 28):
        raise PrivQuantError(f"{args.model} is CIFAR-shaped: no training data for QAT here")
    method, opts = method_options(args)
    return quantize_distributed(
        model,
        calib,
        bits,
        name=args.model,
        input_shape=shape,
        qat_epochs=args.qat_epochs,
        qat_lr=args.qat_lr,
        qat_limit=args.qat_limit,
        freeze_scales=args.freeze_scales,
        workers=args.workers or 1,
        method=method,
        options=opts,
        seed=args.seed,
        progress=not args.json,
        bucket_cap_mb=args.bucket_cap_mb,
    )


def _report_quantized(args, art, key=None) -> None:
    digest = art.save(args.out, sign=key)
    res = {
        "model": args.model,
        "out": str(args.out),
        "content_hash": digest,
        "architecture_hash": art.architecture_hash(),
        "signer": art.signer,
        "bits": art.bits.to_dict(),
        **art.info,
    }
    signed = (
        f"\nsigned by key:     {art.signer}  (what loaders pin: --signer)" if art.signer else ""
    )
    _emit(
        args,
        res,
        f"quantized {args.model} ({_bits_text(art.bits)}) -> {args.out}\n"
        f"architecture hash: {res['architecture_hash']}  (what clients check: --expect-hash)\n"
        f"file sha256:       {digest}" + signed,
    )


def _model_and_calib(args):
    """The float model (``--weights``, else the shipped weights, else random weights with random
    BatchNorm statistics from ``--seed``), its input shape and the calibration images (Fashion-MNIST
    training images, or seeded uint8 noise for CIFAR-shaped models). ``quantize`` and ``search``
    share it, so a searched prediction is exactly what ``quantize --assignment`` then builds."""
    import torch

    from privquant import models

    if models.is_user_model(args.model):  # package.module:ClassOrFactory
        model, shape = models.user_model(args.model, args.weights, args.input_shape)
        return model, shape, _calibration_for(shape, args.calib, args.seed)
    if args.input_shape:
        raise PrivQuantError("--input-shape goes with --model package.module:ClassOrFactory")
    if args.weights:
        model = models.build_model(args.model)
        wpath = Path(args.weights)
        if not wpath.is_file():
            raise PrivQuantError(f"weights file not found: {wpath}")
        try:
            state = torch.load(wpath, weights_only=True, map_location="cpu")
            model.load_state_dict(state)
        except Exception as e:  # torch raises many types for a bad checkpoint
            raise PrivQuantError(f"cannot load weights {wpath}: {str(e).splitlines()[0]}") from None
    elif models.reference_weights_path(args.model) is not None:
        model = models.load_reference(args.model)
    else:
        torch.manual_seed(args.seed)
        model = models.build_model(args.model)
        _randomize_bn(model, args.seed)
    shape = models.input_shape(args.model)
    return model.eval(), shape, _calibration_for(shape, args.calib, args.seed)


def _calibration_for(shape, n: int, seed: int):
    """Fashion-MNIST training images for 1x28x28 inputs, seeded uint8 noise otherwise."""
    import torch

    if n < 1:
        raise PrivQuantError("need at least one calibration image (--calib)")
    if tuple(shape) == (1, 28, 28):
        return _calibration_images(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)


def _randomize_bn(model, seed: int) -> None:
    """Random-weight models: give BatchNorm non-trivial statistics so folding is exercised."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    model.eval()


def _bits_text(bits) -> str:
    if not bits.layers and bits.default is not None:
        return bits.default.tag()
    return f"mixed, {len(bits.layers)} layers"


def cmd_eval(args) -> None:
    import privquant

    art = privquant.load(args.artifact, signer=args.signer)
    if tuple(art.input_shape) != (1, 28, 28):
        raise PrivQuantError(f"{art.model} takes {art.input_shape} inputs; no such dataset here")
    from privquant.models.data import resolve_dataset

    data = resolve_dataset(args.data)
    images, labels = _load_images(data, "test", args.limit)
    res = {
        "model": art.model,
        "data": data,
        **art.evaluate(images, labels, progress=not args.json),
    }
    _emit(
        args,
        res,
        f"{art.model} on {res['n']} {data} test images: FP32 {res['fp32_top1']:.2f}%  "
        f"fake-quant {res['fakequant_top1']:.2f}%  integer program {res['int_top1']:.2f}%",
    )


def _client_inputs(args, shape=None):
    import numpy as np
    import torch

    from privquant.launch import load_inputs

    if args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise PrivQuantError(f"input file not found: {path}")
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError, EOFError) as e:
            raise PrivQuantError(f"cannot read input batch {path}: {e}") from None
    if getattr(args, "random", None):
        if shape is None:
            raise PrivQuantError("--random needs the model's input shape (use infer)")
        gen = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, 256, (args.random, *shape), dtype=torch.uint8, generator=gen)
    return load_inputs(shape, image=args.image, index=args.index, batch=args.batch, data=args.data)


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so cleanup (children, temporary directories) runs."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_infer(args) -> None:
    import privquant
    from privquant.launch import infer_local

    _sigterm_as_interrupt()
    art = privquant.load(args.artifact, signer=args.signer)
    x = _client_inputs(args, art.input_shape)
    res = infer_local(
        art,
        x,
        backend=args.backend,
        timeout=args.timeout,
        progress=not args.json,
        chunk=args.chunk,
        preprocessing=args.preprocessing,
        output=args.output,
    )
    rep = res.pop("report")
    res["comm"] = rep.as_dict()
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    t = rep.total
    n = res["n"]
    print(rep.table())
    print()
    print(f"model {res['model']}, {n} image(s), preprocessing: {rep.preprocessing}")
    print(f"label(s):           {res['labels']}")
    print(f"plaintext label(s): {res['plain_labels']}")
    if "topk" in res:
        print(f"top-k (largest first): {res['topk']}")
    what = "logits" if args.output == "logits" else f"output ({args.output})"
    print(f"{what} identical to the plaintext integer program: {res['identical']}")
    print(
        f"per image: online {t['online_bits'] / 8e6 / n:.4f} MB, offline "
        f"{t['offline_bits'] / 8e6 / n:.4f} MB; setup (once per model load) "
        f"{t['setup_bits'] / 8e6:.4f} MB; {t['rounds']} online rounds"
    )
    print(f"measured traffic equals declared cost(): {rep.all_match}")
    print(
        f"wall time {rep.seconds['wall']:.2f} s (client online "
        f"{rep.seconds.get('client_online', 0):.2f} s)"
    )


def _log(args, role: str):
    def log(msg: str) -> None:
        print(f"privquant {role}: {msg}", file=sys.stderr, flush=True)

    return log


def cmd_serve(args) -> None:
    import privquant
    from privquant.serving import DEFAULT_OUTPUT, Policy, Server

    art = privquant.load(args.artifact, signer=args.signer)
    policy = Policy(
        preprocessing=args.preprocessing,
        output=args.output or DEFAULT_OUTPUT,
        max_batch=args.max_batch,
    )
    srv = Server(
        art,
        key=args.key,
        listen=args.listen,
        dealer=args.dealer,
        dealer_key=args.dealer_key,
        dealer_public=args.dealer_public,
        policy=policy,
        max_sessions=args.max_sessions,
        timeout=args.timeout,
        backend=args.backend,
        log=_log(args, "serve"),
    ).start()
    log = _log(args, "serve")
    log(
        f"serving {art.model} on {srv.address} (architecture hash {srv.digest}); "
        f"server key {srv.fingerprint}; output {policy.output}, preprocessing "
        f"{policy.preprocessing}, up to {args.max_sessions} session(s) of batches <= "
        f"{policy.max_batch}; SIGTERM or Ctrl-C stops"
    )
    srv.serve_until_signal()
    res = {"sessions": srv.completed, "failed": srv.failed, "architecture_hash": srv.digest}
    log(f"stopped after {srv.completed} session(s) ({srv.failed} dropped)")
    if args.json:
        print(json.dumps(res, sort_keys=True))


def cmd_dealer(args) -> None:
    from privquant.serving import Dealer

    d = Dealer(
        key=args.key,
        trust_servers=args.trust_server or [],
        listen=args.listen,
        max_sessions=args.max_sessions,
        timeout=args.timeout,
        backend=args.backend,
        log=_log(args, "dealer"),
    ).start()
    log = _log(args, "dealer")
    log(
        f"dealing on {d.address}; dealer key {d.fingerprint}; serving {len(d.pins)} trusted "
        "server key(s); SIGTERM or Ctrl-C stops"
    )
    d.serve_until_signal()
    log(f"stopped after {d.completed} session(s) ({d.failed} dropped)")
    if args.json:
        print(json.dumps({"sessions": d.completed, "failed": d.failed}, sort_keys=True))


def cmd_client(args) -> None:
    from privquant.serving import Client, validate_hash_arg

    validate_hash_arg(args.expect_hash)
    names = None
    if args.images is not None:
        from privquant.launch import load_image_dir

        x, names = load_image_dir(args.images)
    else:
        x = _client_inputs(args)
    log = _log(args, "client")
    c = Client(
        args.server,
        server_key=args.server_key,
        dealer_key=args.dealer_key,
        dealer=args.dealer,
        expect_hash=args.expect_hash,
        timeout=args.timeout,
        backend=args.backend,
        progress=args.progress and not args.json,
        chunk=args.chunk,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    with c:
        if args.progress and not args.json:
            log(f"connected: model {c.program.model}, output {c.policy.output}")
        res = c.infer(x)
        summary = c.close()
    res.update(
        architecture_hash=summary.extra["architecture_hash"],
        inferences=summary.inferences,
        batches=summary.batches,
        stats=summary.stats,
        seconds=summary.seconds,
        files=names,
    )
    text = f"label(s): {res['labels']}"
    if "topk" in res:
        text += f"\ntop-k (largest first): {res['topk']}"
    _emit(args, res, text)


def cmd_keygen(args) -> None:
    from privquant.protocols.transport.keys import Identity

    if args.show:
        ident = Identity.load(args.show)
        _emit(args, {"key": args.show, "fingerprint": ident.fingerprint}, ident.fingerprint)
        return
    if not args.out:
        raise PrivQuantError("give --out FILE (new key) or --show FILE (fingerprint of a key)")
    ident = Identity.generate()
    ident.save(args.out)
    fp_path = Identity.fingerprint_path(args.out)
    fp_path.write_text(ident.fingerprint + "\n")
    _emit(
        args,
        {"key": args.out, "fingerprint": ident.fingerprint, "fingerprint_file": str(fp_path)},
        f"wrote private key {args.out} (mode 600; keep it secret) and its fingerprint to "
        f"{fp_path} (public: give it to the peers that pin this key)\n"
        f"fingerprint: {ident.fingerprint}",
    )


def cmd_hash(args) -> None:
    import privquant

    art = privquant.load(args.artifact, signer=args.signer)
    res = {
        "model": art.model,
        "architecture_hash": art.architecture_hash(),
        "content_hash": art.content_hash,
        "signer": art.signer,
    }
    _emit(args, res, res["architecture_hash"])


def cmd_bench(args) -> None:
    from privquant.bench import BenchConfig, run_bench

    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    nets = {"none": (), "all": ("lan", "wan")}.get(args.network, (args.network,))
    cfg = BenchConfig(
        baselines=baselines,
        unfused=args.unfused,
        uniform_bits=tuple(args.uniform_bits or ()),
        networks=nets,
        emulate=not args.no_emulation,
        images=args.images,
        outputs=tuple(o.strip() for o in args.outputs.split(",") if o.strip()),
        crypten_images=args.crypten_images,
        sirnn_width=args.sirnn_width,
        preprocessing=args.preprocessing,
        timeout=args.timeout,
        progress=not args.json,
    )
    rep = run_bench(
        args.target,
        bits=args.bits,
        assignment=args.assignment,
        config=cfg,
        out_dir=args.out,
        weights=args.weights,
        input_shape=args.input_shape,
    )
    if args.json:
        print(json.dumps(rep, sort_keys=True, default=float))
        return
    from privquant.bench import markdown

    print(markdown(rep))
    if args.out:
        print(f"wrote {', '.join(rep['files'].values())}")


def _bits_list(text: str, what: str) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise PrivQuantError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not out:
        raise PrivQuantError(f"{what}: empty list")
    return out


def _floats(text: str, what: str) -> list[float]:
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PrivQuantError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not out or any(not x > 0 for x in out):
        raise PrivQuantError(f"{what}: give positive numbers")
    return out


QUICK = {  # --quick: small data and short fine-tuning, for tests and iteration
    "qat_limit": 2048,
    "select_qat_limit": 512,
    "val_limit": 2000,
    "eval_limit": 2000,
    "hutchinson_iters": 8,
}


def _search_data(args, shape):
    """EvalData for QAT, selection and accuracy: Fashion-MNIST models only (empty otherwise).

    Fine-tuning images are the training split minus the validation split
    (``models.data.train_val_split``); the test split (or the shipped sample) is for reporting."""
    from privquant.errors import DataError
    from privquant.models.data import resolve_dataset, train_val_split
    from privquant.quant.selection import EvalData, Split

    needs_train = args.qat_epochs > 0 or (args.select_k > 1 and args.select_qat_epochs > 0)
    if tuple(shape) != (1, 28, 28):
        if needs_train or args.select_k > 1:
            raise PrivQuantError(
                f"{args.model} is CIFAR-shaped: no training or validation data for QAT or "
                "selection here"
            )
        return EvalData(), None
    if args.calib + args.val_size > 60000:
        raise PrivQuantError("--calib + --val-size must leave the splits disjoint (<= 60000)")
    data = EvalData()
    try:
        (tx, ty), (vx, vy) = train_val_split(args.val_size)
        data.train = Split("train", tx, ty)
        data.val = Split("val", vx, vy).head(args.val_limit)
    except DataError:
        if needs_train or args.select_k > 1:
            raise
    name = resolve_dataset(args.data)
    test = _load_images(name, "test", args.eval_limit)
    data.test = Split("test", *test)
    return data, name


def cmd_search(args) -> None:
    from privquant.quant import search as S
    from privquant.quant import sweep as W
    from privquant.quant.selection import PointCache, Recipe, select, train_point
    from privquant.quant.spec import BitAssignment

    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    if args.hutchinson_iters is None:
        args.hutchinson_iters = 32
    if args.qat_epochs < 0 or args.select_qat_epochs < 0:
        raise PrivQuantError("--qat-epochs and --select-qat-epochs must be >= 0")
    if args.select_k < 1 or args.distance < 1:
        raise PrivQuantError("--select-k and --distance must be >= 1")
    for flag in ("qat_limit", "select_qat_limit", "val_limit", "eval_limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise PrivQuantError(f"--{flag.replace('_', '-')} must be >= 1")
    if not 0 < args.val_size < 60000:
        raise PrivQuantError("--val-size must be in 1..59999")
    limits: dict[str, float] = {}
    if args.budget_mb is not None:
        limits["mb"] = args.budget_mb
    if args.max_rounds is not None:
        limits["rounds"] = args.max_rounds
    if args.budget_ms is not None:
        limits[args.network] = args.budget_ms
    if args.max_sensitivity is not None:
        limits["sensitivity"] = args.max_sensitivity
    if any(v <= 0 for v in limits.values()):
        raise PrivQuantError("budgets must be positive")
    objective = "sensitivity" if args.objective == "sensitivity" else args.objective
    if objective == "latency":
        objective = args.network
    budgets = _floats(args.budgets, "--budgets") if args.budgets else None
    shares = _floats(args.extra_shares, "--extra-shares") if args.extra_shares else []
    if args.sweep and (limits or objective != "sensitivity"):
        raise PrivQuantError("--sweep traces MB budgets; it takes no other budget or objective")
    if (budgets or shares) and not args.sweep:
        raise PrivQuantError("--budgets and --extra-shares go with --sweep")
    if args.anchor_uniform and not args.sweep:
        raise PrivQuantError("--anchor-uniform goes with --sweep")
    if args.select_k > 1 and objective != "sensitivity":
        raise PrivQuantError("--select-k chooses among the best by sensitivity (no --objective)")
    cost_limits = [k for k in limits if k != "sensitivity"]
    if not args.sweep and objective == "sensitivity" and not cost_limits:
        raise PrivQuantError("give --budget-mb X (or --max-rounds / --budget-ms), or --sweep")
    out = Path(args.out)
    if not out.parent.exists():
        raise PrivQuantError(f"output directory does not exist: {out.parent}")
    wbits = _bits_list(args.wbits, "--wbits")
    abits = _bits_list(args.abits, "--abits")
    recipe = Recipe(args.qat_epochs, args.qat_lr, args.qat_limit, not args.learn_scales)
    select_recipe = Recipe(
        args.select_qat_epochs, args.qat_lr, args.select_qat_limit, not args.learn_scales
    )
    model, shape, calib = _model_and_calib(args)
    data, test_name = _search_data(args, shape)
    progress = not args.json
    cache = PointCache(args.cache) if args.cache else PointCache()
    searcher = S.Searcher(
        model,
        args.model,
        shape,
        calib,
        wbits=wbits,
        abits=abits,
        method=args.sensitivity,
        iters=args.hutchinson_iters,
        amortize=args.amortize,
        include_setup=args.include_setup,
        batch=args.batch,
        preprocessing=args.preprocessing,
        time_limit=args.time_limit,
        progress=progress,
    )
    if args.table:
        S.write_json(searcher.table.to_dict(), args.table)

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    if args.sweep:
        w8 = searcher.metric("mb").of(searcher.exact(searcher.uniform_values(8, 8)))
        table = W.sweep(
            searcher,
            recipe=recipe,
            data=data,
            budgets=budgets,
            extra_budgets=tuple(s * w8 / 100 for s in shares),
            select_k=args.select_k,
            select_recipe=select_recipe,
            distance=args.distance,
            anchor_uniform=args.anchor_uniform,
            cache=cache,
            log=log,
        )
        table.update(test_data=test_name, preprocessing=args.preprocessing)
        png = out.with_suffix(".png")
        S.write_json(table, out)
        plotted = data.test is not None
        if plotted:
            W.plot_front(table, png)
        res = {"model": args.model, "out": str(out), "plot": str(png) if plotted else None, **table}
        lines = [f"{'point':<22}{'MB':>9}{'% w8a8':>8}{'proxy':>10}{'val':>7}{'test':>7}  kind"]
        for p in table["points"]:
            if "error" in p:
                tag = f"budget {p['budget_mb']:.3f}"
                lines.append(f"{tag:<22}{'-':>9}  {p['error']}")
                continue
            tag = p["bits"] if p["kind"] == "uniform" else f"<= {p['budget_mb']:.3f} MB"
            lines.append(
                f"{tag:<22}{p['metrics']['mb']:>9.4f}{p.get('pct_w8a8', 0):>8.1f}"
                f"{p['proxy']:>10.3g}{W._f(W._top1(p, 'val')):>7}{W._f(W._top1(p, 'test')):>7}"
                f"  {p['kind']}"
            )
        ck = table["checks"]
        if "front_ok" in ck:
            lines.append(
                f"front >= uniform - {ck['tolerance']} everywhere: "
                f"{'yes' if ck['front_ok'] else 'no'}; within 1 point of FP32 at <= 55% of "
                f"w8a8: {'yes' if ck.get('target_ok') else 'no'} (MILP minimum "
                f"{ck.get('min_share', 0):.1f}%)"
            )
        lines.append(f"wrote {out}" + (f" and {png}" if plotted else ""))
        _emit(args, res, "\n".join(lines))
        return
    if args.select_k > 1:
        r, selection = select(
            searcher,
            limits,
            k=args.select_k,
            recipe=select_recipe,
            data=data,
            distance=args.distance,
            cache=cache,
            log=log,
        )
    else:
        r, selection = searcher.search(limits, objective), None
    point = None
    if data.test is not None or args.qat_epochs > 0:
        point = train_point(searcher, r.values, recipe, data, cache=cache)
    doc = r.assignment.to_dict()
    doc["search"] = {k: v for k, v in r.to_dict().items() if k not in ("assignment",)}
    doc["search"].update(
        sensitivity_method=searcher.sens.method,
        candidates={"w": list(wbits), "a": list(abits)},
        batch=args.batch,
        preprocessing=args.preprocessing,
        amortize=args.amortize,
        include_setup=args.include_setup,
        calib=args.calib,
        seed=args.seed,
        selection=selection,
    )
    BitAssignment.from_dict(doc)  # what quantize --assignment will read
    S.write_json(doc, out)
    res = {
        "model": args.model,
        "out": str(out),
        "assignment": r.assignment.to_dict(),
        "predicted": r.predicted.as_dict(),
        "predicted_metrics": r.metrics,
        "table_cost": r.table_cost.as_dict(),
        "sensitivity": r.sensitivity,
        "limits": r.limits,
        "objective": r.objective,
        "preprocessing": args.preprocessing,
        "solves": r.iterations,
        "selection": selection,
        "seconds": {**searcher.seconds, "search": r.seconds},
        "data": test_name,
        "trained": point,
    }
    m, c = r.metrics, r.predicted
    lines = [f"{'layer':<28}{'w':>3}{'a':>3}"]
    lines += [f"{n:<28}{b.w:>3}{b.a:>3}" for n, b in r.assignment.layers.items()]
    lines.append(
        f"predicted (PTQ program, exact, {args.preprocessing} preprocessing): "
        f"{m['mb']:.4f} MB online+offline "
        f"({c.online_bits / 8e6:.4f} + {c.offline_bits / 8e6:.4f}), setup {c.setup_bits / 8e6:.4f}"
        f" MB, {c.rounds} rounds, est. LAN {m['lan']:.1f} ms / WAN {m['wan']:.0f} ms"
    )
    if selection is not None and selection["evaluations"]:
        lines.append(
            f"selected candidate {r.rank} of {selection['found']} by validation top-1 "
            f"({selection['evaluations']} evaluation(s), "
            f"{sum(selection['seconds'].values()):.0f} s)"
        )
    if point is not None:
        acc, val = point["accuracy"], point["validation"]
        after = f" (after {args.qat_epochs} QAT epoch(s): {point['metrics']['mb']:.4f} MB)"
        if val:
            lines.append(f"top-1 on {val['n']} validation images: {val['int_top1']:.2f}%")
        if acc:
            lines.append(
                f"top-1 on {acc['n']} {test_name} test images: FP32 {acc['fp32_top1']:.2f}%  "
                f"integer program {acc['int_top1']:.2f}%" + (after if args.qat_epochs else "")
            )
    else:
        lines.append("accuracy: n/a (no labelled test set for this input shape)")
    lines.append(f"wrote {out}")
    _emit(args, res, "\n".join(lines))


# ---------------------------------------------------------------------- parser
MODEL_HELP = (
    "a model name (lenet5, resnet8, resnet18-cifar, mobilenetv2-cifar) or your own: "
    "package.module:ClassOrFactory (importable; see --weights, --input-shape)"
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``privquant: error: ...``, exit 2; JSON under --json)."""

    def error(self, message: str):
        _fail(message, "--json" in sys.argv[1:])


def _print_error(message: str, as_json: bool) -> int:
    print(f"privquant: error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "exit_status": EXIT_USER_ERROR}))
    return EXIT_USER_ERROR


def _fail(message: str, as_json: bool):
    sys.exit(_print_error(message, as_json))


def _timeout(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(v) or v <= 0 or v > 86400:
        raise argparse.ArgumentTypeError(f"must be finite, > 0 and at most 86400 s, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= v <= 1 << 20:
        raise argparse.ArgumentTypeError(f"must be in 1..{1 << 20}, got {text!r}")
    return v


def _train_options(sp) -> None:
    """--workers, --grad-compression and the methods' options (train, quantize --qat-epochs)."""
    from privquant.train.options import add_arguments

    add_arguments(sp)


def _signer_opt(sp):
    sp.add_argument(
        "--signer",
        metavar="FP",
        help="require the artifact to be signed by this key (fingerprint, >= 32 hex digits, "
        "or its .fp file)",
    )


def _data_opt(sp) -> None:
    sp.add_argument(
        "--data",
        default="auto",
        choices=["auto", "fashion-mnist", "fashion-mnist-sample"],
        help="test images: auto (default) = the full Fashion-MNIST test set when installed, "
        "else the shipped sample (its first 500 images)",
    )


def build_parser() -> argparse.ArgumentParser:
    from privquant import __version__

    p = _Parser(prog="privquant", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"privquant {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a Fashion-MNIST model (FP32)")
    t.add_argument("--model", required=True)
    t.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist"])
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--json", action="store_true")
    _train_options(t)
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("quantize", help="quantize a model into a .pq artifact")
    q.add_argument("--model", required=True, help=MODEL_HELP)
    q.add_argument("--weights", help="state_dict (.pt); default: the shipped reference weights")
    q.add_argument("--input-shape", help="C,H,W of a --model package.module:Class")
    q.add_argument("--bits", help="uniform bit widths, e.g. w4a4")
    q.add_argument("--assignment", help="per-layer bit assignment JSON (from privquant search)")
    q.add_argument("--calib", type=int, default=256, help="calibration images")
    q.add_argument("--qat-epochs", type=int, default=0, help="QAT fine-tuning epochs")
    q.add_argument("--qat-lr", type=float, default=1e-4)
    q.add_argument("--qat-limit", type=int, default=None, help="QAT on the first N train images")
    q.add_argument(
        "--freeze-scales",
        action="store_true",
        help="QAT keeps calibration's step sizes (cost stays exactly the PTQ program's)",
    )
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--sign", metavar="KEY", help="sign the artifact with this Ed25519 key file")
    q.add_argument("--out", required=True)
    q.add_argument("--json", action="store_true")
    _train_options(q)
    q.set_defaults(func=cmd_quantize)

    s = sub.add_parser(
        "search", help="communication-aware mixed-precision search (ILP over the cost table)"
    )
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--weights", help="state_dict (.pt); default: the shipped reference weights")
    s.add_argument("--input-shape", help="C,H,W of a --model package.module:Class")
    s.add_argument("--budget-mb", type=float, help="online+offline MB per inference")
    s.add_argument("--sweep", action="store_true", help="accuracy-vs-MB front (JSON + PNG)")
    s.add_argument("--budgets", help="sweep budgets in MB (comma-separated); default: uniform MBs")
    s.add_argument(
        "--extra-shares", help="also sweep these budgets, in %% of uniform w8a8's MB (e.g. 55)"
    )
    s.add_argument("--max-rounds", type=int, help="bound on the summed per-layer rounds")
    s.add_argument("--budget-ms", type=float, help="bound on the estimated online latency")
    s.add_argument("--network", default="lan", choices=["lan", "wan"])
    s.add_argument(
        "--objective",
        default="sensitivity",
        choices=["sensitivity", "mb", "rounds", "latency"],
        help="what to minimize (a cost objective usually goes with --max-sensitivity)",
    )
    s.add_argument("--max-sensitivity", type=float, help="bound on the summed sensitivity")
    s.add_argument("--wbits", default="2,3,4,6,8", help="candidate weight bit widths")
    s.add_argument("--abits", default="2,3,4,6,8", help="candidate activation bit widths")
    s.add_argument("--sensitivity", default="hessian", choices=["hessian", "measured"])
    s.add_argument("--hutchinson-iters", type=int, default=None, help="default 32 (--quick: 8)")
    s.add_argument("--include-setup", action="store_true", help="add setup bits / --amortize")
    s.add_argument("--amortize", type=int, default=100, help="inferences per model load")
    s.add_argument("--batch", type=int, default=1, help="images per private inference")
    s.add_argument("--calib", type=int, default=256, help="calibration images (as quantize)")
    s.add_argument("--qat-epochs", type=int, default=0, help="fine-tune the result (QAT)")
    s.add_argument("--qat-lr", type=float, default=1e-4)
    s.add_argument(
        "--learn-scales",
        action="store_true",
        help="QAT also learns step sizes (better accuracy; the cost then moves off the "
        "prediction and is re-measured); default: frozen, the prediction stays exact",
    )
    s.add_argument(
        "--qat-limit", type=int, default=None, help="QAT on the first N fine-tuning images"
    )
    s.add_argument(
        "--select-k",
        type=int,
        default=1,
        help="choose among the K best MILP assignments by validation top-1 (default 1: the "
        "proxy's optimum)",
    )
    s.add_argument(
        "--distance", type=int, default=2, help="candidates differ in at least this many widths"
    )
    s.add_argument(
        "--anchor-uniform",
        action="store_true",
        help="sweep: the widest uniform point that fits a budget is a candidate too",
    )
    s.add_argument(
        "--select-qat-epochs", type=int, default=1, help="QAT epochs per candidate (selection)"
    )
    s.add_argument(
        "--select-qat-limit",
        type=int,
        default=None,
        help="selection QAT on the first N fine-tuning images (default: all)",
    )
    s.add_argument(
        "--val-size",
        type=int,
        default=10000,  # models.data.VALIDATION_SIZE (kept literal: the CLI imports lazily)
        help="validation images carved out of the training split",
    )
    s.add_argument("--val-limit", type=int, default=None, help="score on N validation images")
    _data_opt(s)
    s.add_argument("--eval-limit", type=int, default=None, help="evaluate on N test images")
    s.add_argument(
        "--cache", help="directory of evaluated points (a re-run skips what is already there)"
    )
    s.add_argument(
        "--quick",
        action="store_true",
        help="small data and short fine-tuning (tests, iteration): "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )
    s.add_argument(
        "--preprocessing",
        default="dealer",
        choices=["dealer", "ot"],
        help="trust model the costs are for: a non-colluding dealer, or the two parties alone "
        "(ot: OT/HE; rounds are then an upper bound)",
    )
    s.add_argument("--time-limit", type=float, default=120.0, help="MILP seconds per solve")
    s.add_argument("--table", help="also write the cost table (JSON) here")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="assignment JSON (or the sweep table)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)

    e = sub.add_parser("eval", help="FP32 / fake-quant / integer-program top-1 of an artifact")
    e.add_argument("artifact")
    _data_opt(e)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--json", action="store_true")
    _signer_opt(e)
    e.set_defaults(func=cmd_eval)

    def party_opts(sp):
        sp.add_argument(
            "--timeout",
            type=_timeout,
            default=60.0,
            help="seconds any one step may wait for a peer (finite, > 0)",
        )
        sp.add_argument(
            "--backend", default="privquant", choices=["privquant", "privquant-unfused"]
        )
        sp.add_argument("--json", action="store_true")

    def input_opts(sp, images_dir=False):
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--image", help="one image: .png or .npy (uint8)")
        g.add_argument("--input", help="a batch as .npy, uint8 (N, C, H, W)")
        g.add_argument("--index", type=int, help="first test image index in --data")
        if images_dir:
            g.add_argument("--images", metavar="DIR", help="every .png/.npy image in DIR")
        sp.add_argument("--batch", type=_positive_int, default=1)
        _data_opt(sp)
        sp.add_argument(
            "--chunk",
            type=_positive_int,
            default=None if images_dir else 32,
            help="images per inference (memory bound); at most the server's max batch",
        )

    i = sub.add_parser("infer", help="private inference with all parties on this machine")
    i.add_argument("artifact")
    input_opts(i)
    i.add_argument("--random", type=int, metavar="N", help="N random images (CIFAR models)")
    i.add_argument(
        "--output",
        default="logits",
        help="what the client learns: logits (default here, to compare them), label or topk:K",
    )
    i.add_argument("--seed", type=int, default=0)
    i.add_argument(
        "--preprocessing",
        default="dealer",
        choices=["dealer", "ot"],
        help="dealer: a non-colluding third process; ot: the two parties alone (OT/HE)",
    )
    party_opts(i)
    _signer_opt(i)
    i.set_defaults(func=cmd_infer)

    sv = sub.add_parser("serve", help="long-running server: holds the model, serves clients")
    sv.add_argument("artifact")
    sv.add_argument("--key", required=True, help="the server's key file (privquant keygen)")
    sv.add_argument(
        "--listen", default="127.0.0.1:29500", help="HOST:PORT to accept clients on (loopback)"
    )
    sv.add_argument("--dealer", help="HOST:PORT of the dealer (dealer preprocessing)")
    sv.add_argument("--dealer-key", help="fingerprint of the dealer's key (pinned)")
    sv.add_argument(
        "--dealer-public", help="the dealer's HOST:PORT as clients reach it (default: --dealer)"
    )
    sv.add_argument("--preprocessing", default="dealer", choices=["dealer", "ot"])
    sv.add_argument(
        "--output",
        default=None,
        help="what the client learns: label (default: the index of the largest logit, by "
        "secure argmax), topk:K (the K largest, in order) or logits",
    )
    sv.add_argument("--max-sessions", type=_positive_int, default=4)
    sv.add_argument("--max-batch", type=_positive_int, default=32, help="samples per inference")
    party_opts(sv)
    _signer_opt(sv)
    sv.set_defaults(func=cmd_serve)

    c = sub.add_parser("client", help="client role: holds the input, learns the prediction")
    c.add_argument("--server", required=True, help="HOST:PORT of the server")
    c.add_argument(
        "--server-key", required=True, help="fingerprint of the server's key (or its .fp file)"
    )
    c.add_argument("--dealer-key", help="fingerprint of the dealer you trust (dealer mode)")
    c.add_argument("--dealer", help="HOST:PORT of the dealer (default: what the server says)")
    input_opts(c, images_dir=True)
    c.add_argument("--expect-hash", help="architecture hash (>= 16 hex digits) of the model")
    c.add_argument("--progress", action="store_true")
    party_opts(c)
    c.set_defaults(func=cmd_client)

    k = sub.add_parser("keygen", help="make an identity key pair for serve or dealer")
    k.add_argument(
        "--out", help="new private key file (PEM, mode 600); NAME.fp gets its fingerprint"
    )
    k.add_argument("--show", metavar="FILE", help="print the fingerprint of an existing key")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keygen)

    h = sub.add_parser("hash", help="print an artifact's architecture hash (for --expect-hash)")
    h.add_argument("artifact")
    h.add_argument("--json", action="store_true")
    _signer_opt(h)
    h.set_defaults(func=cmd_hash)

    b = sub.add_parser("bench", help="communication/latency vs CrypTen-native and SiRNN-style")
    b.add_argument(
        "target",
        help="a .pq artifact, or a model to quantize (--bits): a name or package.module:Class",
    )
    b.add_argument("--weights", help="for package.module:Class: its state_dict (.pt)")
    b.add_argument("--input-shape", help="for package.module:Class: C,H,W")
    b.add_argument("--bits", help="for a model name: uniform bits (default w4a4)")
    b.add_argument("--assignment", help="for a model name: per-layer bit assignment JSON")
    b.add_argument("--baselines", default="crypten,sirnn-style", help="comma list (or '')")
    b.add_argument("--unfused", action="store_true", help="also measure privquant-unfused")
    b.add_argument(
        "--uniform-bits", type=int, action="append", metavar="N", help="also measure uniform wNaN"
    )
    b.add_argument("--network", default="all", choices=["lan", "wan", "all", "none"])
    b.add_argument("--no-emulation", action="store_true", help="estimate latency only")
    b.add_argument("--images", type=int, default=1, help="images per private inference")
    b.add_argument(
        "--outputs",
        default="label",
        help="output policies measured beside the logits (comma list of label, topk:K; '' none)",
    )
    b.add_argument("--crypten-images", type=int, default=None)
    b.add_argument(
        "--sirnn-width",
        type=int,
        default=16,
        help="second SiRNN-style reference at this fixed-point width (the first one uses the "
        "artifact's own bit widths)",
    )
    b.add_argument(
        "--preprocessing",
        default="dealer",
        choices=["dealer", "ot"],
        help="trust model of the privquant rows: a non-colluding dealer, or the two parties alone",
    )
    b.add_argument("--timeout", type=_timeout, default=600.0)
    b.add_argument("--out", help="directory for report.json, report.md, comm.png")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("dealer", help="long-running dealer: correlated randomness for servers")
    d.add_argument("--key", required=True, help="the dealer's key file (privquant keygen)")
    d.add_argument("--listen", default="127.0.0.1:29501", help="HOST:PORT (loopback by default)")
    d.add_argument(
        "--trust-server",
        action="append",
        metavar="FINGERPRINT",
        help="key fingerprint of a server this dealer serves (repeatable)",
    )
    d.add_argument("--max-sessions", type=_positive_int, default=4)
    party_opts(d)
    d.set_defaults(func=cmd_dealer)
    return p


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: idle worker threads must sleep, not spin. Spinning threads of
    # three co-located party processes starve each other and multiply ping-pong latency (measured:
    # resnet8 batch-1 online phase 12.3 s spinning vs 0.71 s passive on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except PrivQuantError as e:
        return _print_error(str(e), getattr(args, "json", False))
    except KeyboardInterrupt:
        print("privquant: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
