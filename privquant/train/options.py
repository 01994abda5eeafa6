"""Command-line options of data-parallel training with gradient compression, shared by
``privquant train`` and ``privquant quantize --qat-epochs`` (the CLI only calls these)."""

from __future__ import annotations

import argparse

from privquant.errors import PrivQuantError

METHOD_NAMES = ("none", "fp16", "terngrad", "qsgd", "dgc", "bingrad", "orq", "co3")

# flag dest -> (option name, methods it applies to, type, help)
FLAGS: dict[str, tuple[str, tuple[str, ...], type, str]] = {
    "gc_summable": ("summable", ("terngrad", "qsgd"), bool, "shared scale/norm: all_reduce sum"),
    "gc_private": ("private", ("terngrad", "qsgd"), bool, "pairwise PRG masks (with --summable)"),
    "gc_clip": ("clip", ("terngrad", "dgc"), float, "terngrad: c (x std); dgc: norm threshold"),
    "gc_levels": ("levels", ("qsgd", "orq"), int, "qsgd: s levels; orq: number of levels"),
    "gc_chunk": ("bucket", ("qsgd",), int, "qsgd: values per norm (the paper's bucket size d)"),
    "gc_norm": ("norm", ("qsgd",), str, "qsgd: l2 or max"),
    "gc_density": ("density", ("dgc",), float, "dgc: fraction of entries sent"),
    "gc_momentum": ("momentum", ("dgc",), float, "dgc: momentum (the optimizer's is 0)"),
    "gc_warmup": (
        "warmup",
        ("dgc",),
        int,
        "dgc: density warm-up steps (default min(1 epoch, 1/4 of all))",
    ),
    "gc_sample": ("sample", ("dgc", "orq"), None, "dgc: sampled fraction; orq: sample size"),
    "gc_iters": ("iters", ("bingrad",), int, "bingrad: fixed-point iterations"),
    "gc_no_ef": ("ef", ("bingrad",), bool, "bingrad: no error feedback"),
    "gc_sweeps": ("sweeps", ("orq",), int, "orq: Gauss-Seidel sweeps"),
    "gc_exp": ("exp", ("co3",), int, "co3: exponent bits"),
    "gc_man": ("man", ("co3",), int, "co3: mantissa bits"),
    "gc_beta": ("beta", ("co3",), float, "co3: error-feedback decay"),
    "gc_zlib_level": ("level", ("co3",), int, "co3: zlib level"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data-parallel training and gradient compression")
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes on this machine (gloo); under torchrun the job's WORLD_SIZE is used",
    )
    g.add_argument(
        "--grad-compression",
        choices=METHOD_NAMES,
        default=None,
        metavar="METHOD",
        help=f"one of {', '.join(METHOD_NAMES)} (default none = fp32 allreduce)",
    )
    g.add_argument(
        "--bucket-cap-mb", type=float, default=4.0, help="DDP bucket size (MiB; default 4)"
    )
    for dest, (_, methods, typ, text) in FLAGS.items():
        flag = "--" + dest.removeprefix("gc_").replace("_", "-")
        helptext = f"{text} [{', '.join(methods)}]"
        if typ is bool:
            g.add_argument(flag, dest=dest, action="store_true", default=None, help=helptext)
        else:
            meta = dest.removeprefix("gc_").upper()
            g.add_argument(
                flag, dest=dest, type=typ or float, default=None, metavar=meta, help=helptext
            )


def wants_distributed(args) -> bool:
    from privquant.train.launch import torchrun_env

    if args.workers is not None and args.workers < 1:
        raise PrivQuantError("--workers must be >= 1")
    return (
        bool(args.workers and args.workers > 1)
        or args.grad_compression is not None
        or (torchrun_env())
    )


def method_options(args) -> tuple[str, dict]:
    """(method, options) from the parsed flags; a flag that does not apply is an error."""
    method = args.grad_compression or "none"
    opts: dict = {}
    for dest, (name, methods, _typ, _) in FLAGS.items():
        val = getattr(args, dest, None)
        if val is None:
            continue
        flag = "--" + dest.removeprefix("gc_").replace("_", "-")
        if method not in methods:
            raise PrivQuantError(f"{flag} does not apply to --grad-compression {method}")
        if dest == "gc_no_ef":
            val = False
        elif dest == "gc_sample" and method == "orq":
            if val != int(val):
                raise PrivQuantError("--sample for orq is a sample size (an integer)")
            val = int(val)
        opts[name] = val
    if opts.get("private") and not opts.get("summable"):
        raise PrivQuantError("--private masks summable payloads: add --summable")
    return method, opts
