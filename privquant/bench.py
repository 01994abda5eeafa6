"""``privquant bench``: communication, rounds and latency of one model against the baselines.

For one artifact (or a model name, quantized here) it measures, with real processes on loopback:

* ``privquant``            -- this project's runtime (fused requantization, the artifact's bits);
* ``privquant-unfused``    -- the same with truncation, ReLU/clip and extension as separate
                              protocols (``--unfused``), isolating what fusion saves;
* ``privquant-uniform-N``  -- the same float model re-quantized at uniform ``wNaN``
                              (``--uniform-bits N``, PTQ), isolating what low/mixed precision saves;
* ``privquant-label``      -- (``--outputs label,topk:K``) the client learns only the label (or
                              the top-K) by secure argmax instead of the logits (``privquant``);
* ``crypten``              -- CrypTen-native (float model, 64-bit fixed point, TTP), measured on
                              the wire (:mod:`privquant.baselines.crypten_native`);

and computes ``sirnn-style`` from the SCI cost model (:mod:`privquant.baselines.sirnn`) at the
artifact's own bit widths (like with like), plus ``sirnn-style-W`` at W-bit fixed point as a
second, labelled reference (``--sirnn-width``, 16 by default). ``--preprocessing ot`` runs the
privquant rows without a dealer (the trust model of SiRNN/SCI); every row names its trust model and
each ratio says whether it compares like with like (same trust model). Totals are
per inference of the batch: online + offline + setup / 100 (setup amortized over 100 inferences).
Latency: the estimate ``compute + bits/bandwidth + rounds*RTT/2`` for every backend, and the
online time measured under network emulation for ``privquant`` when possible
(:mod:`privquant.baselines.latency`). Writes ``report.json``, ``report.md`` and ``comm.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privquant.baselines.result import AMORTIZE, MB, BackendResult, LayerCost
from privquant.errors import PrivQuantError

BASELINES = ("crypten", "sirnn-style")
PQ_TRUST = {
    "dealer": "non-colluding dealer (CrypTen's TTP slot), semi-honest parties",
    "ot": "dealer-free: two parties, OT extension / HE (semi-honest)",
}
SIRNN_TRUST = "dealer-free: two parties, OT extension (SCI)"


@dataclass
class BenchConfig:
    baselines: tuple[str, ...] = BASELINES
    unfused: bool = True
    uniform_bits: tuple[int, ...] = (16,)
    networks: tuple[str, ...] = ("lan", "wan")
    emulate: bool = True
    images: int = 1
    outputs: tuple[str, ...] = ("label",)  # output policies measured beside the logits
    crypten_images: int | None = None  # default: same as images
    sirnn_width: int = 16
    preprocessing: str = "dealer"
    timeout: float = 600.0
    threads: int = 1  # intra-op threads per party process
    seed: int = 0
    accuracy_limit: int | None = None  # test images for top-1 (None: all available)
    progress: bool = False
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update({k: str(v) for k, v in kv.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _say(cfg: BenchConfig, msg: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    if cfg.progress:
        elapsed = time.perf_counter() - cfg.extra.setdefault("t0", time.perf_counter())
        print(f"[bench {elapsed:6.0f} s] {msg}", file=sys.stderr, flush=True)


def from_comm_report(name: str, rep, source: str) -> BackendResult:
    """A measured CommReport (privquant runtime) as a BackendResult."""
    layers = [
        LayerCost(x.name, list(x.kinds), x.online_bits, x.offline_bits, x.setup_bits, x.rounds)
        for x in rep.layers
    ]
    trust = PQ_TRUST.get(rep.preprocessing, rep.trust_model)
    res = BackendResult.from_layers(name, source, trust, rep.batch, layers)
    res.total["rounds"] = int(rep.total["rounds"])  # measured session depth
    res.seconds = dict(rep.seconds)
    res.extra = {
        "declared_equals_measured": rep.all_match,
        "wire_bytes": rep.total.get("wire_bytes"),
        "preprocessing": rep.preprocessing,
    }
    return res


def resolve_target(
    target: str,
    *,
    bits: str | None,
    assignment: str | None,
    workdir: Path,
    seed=0,
    weights=None,
    input_shape=None,
):
    """An artifact path, or a model quantized here: a registry name (shipped weights, else random
    weights) or ``package.module:ClassOrFactory`` (``weights``, ``input_shape``)."""
    from privquant import models

    p = Path(target)
    user = models.is_user_model(target)
    if not user and (p.suffix == ".pq" or p.is_file()):
        if not p.is_file():
            raise PrivQuantError(f"artifact not found: {p}")
        if bits or assignment or weights or input_shape:
            raise PrivQuantError(
                "--bits/--assignment/--weights/--input-shape apply to a model, not an artifact"
            )
        return p, {"quantized_here": False}
    if user:
        net, shape = models.user_model(target, weights, input_shape)
        return quantize_model(target, bits, assignment, workdir, seed, net=net, shape=shape)
    if weights or input_shape:
        raise PrivQuantError("--weights/--input-shape apply to package.module:Class targets")
    if target not in models.MODEL_NAMES:
        raise PrivQuantError(
            f"{target!r} is neither a .pq artifact nor a model ({', '.join(models.MODEL_NAMES)}"
            ", or package.module:ClassOrFactory)"
        )
    return quantize_model(target, bits, assignment, workdir, seed)


def _calibration(shape, n: int, seed: int) -> torch.Tensor:
    from privquant.models.calibration import load_calibration

    if tuple(shape) == (1, 28, 28):
        return load_calibration(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)


def _float_model(model: str, seed: int):
    from privquant import models

    if models.reference_weights_path(model) is not None:
        return models.load_reference(model), True
    torch.manual_seed(seed)
    m = models.build_model(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
    return m.eval(), False


def quantize_model(
    model: str, bits, assignment, workdir: Path, seed: int = 0, net=None, shape=None
):
    import privquant
    from privquant import models
    from privquant.quant.spec import BitAssignment, parse_bits

    if bits and assignment:
        raise PrivQuantError("give at most one of --bits and --assignment")
    spec = BitAssignment.load(assignment) if assignment else parse_bits(bits or "w4a4")
    if net is None:
        net, trained = _float_model(model, seed)
        shape = models.input_shape(model)
    else:
        trained = None  # a user's model: whatever weights it was given
    art = privquant.quantize(
        net,
        _calibration(shape, 256, seed),
        spec,
        name=model,
        input_shape=shape,
        progress=False,
    )
    tag = Path(assignment).stem if assignment else (bits or "w4a4")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model)
    path = workdir / f"{safe}-{tag}.pq"
    art.save(path)
    return path, {"quantized_here": True, "trained_weights": trained, "bits": art.bits.to_dict()}


def uniform_artifact(art, bits: int, workdir: Path, seed: int = 0) -> Path:
    """The artifact's float graph re-quantized (PTQ) at uniform ``w{bits}a{bits}`` through the
    internal ablation path (bits above 8 are never accepted from users)."""
    from privquant.quant.calibrate import calibrate
    from privquant.quant.fakequant import QModel
    from privquant.quant.lower import lower
    from privquant.quant.spec import BitAssignment, ablation_bits
    from privquant.quantized import QuantizedModel

    assignment = BitAssignment(default=ablation_bits(bits, bits))
    qm = QModel(art.graph, assignment)
    calibrate(qm, _calibration(art.input_shape, 256, seed))
    qm.eval()
    program = lower(qm)
    program.meta.update(bits=assignment.to_dict(), ablation=f"uniform-{bits}")
    state = {k: v.detach().clone() for k, v in qm.state_dict().items()}
    out = QuantizedModel(art.graph, assignment, state, program, {"ablation": f"uniform-{bits}"})
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in art.model)
    path = workdir / f"{safe}-uniform-{bits}.pq"
    out.save(path)
    return path


def bench_inputs(art, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    if tuple(art.input_shape) == (1, 28, 28):
        from privquant.models.data import load_sample

        x, y = load_sample()
        return x[:n], y[:n]
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *art.input_shape), dtype=torch.uint8, generator=gen), None


def accuracy(art, limit: int | None, progress: bool = False) -> dict | None:
    """FP32 / fake-quant / integer-program top-1 on Fashion-MNIST test (``--data auto``: the
    full set if installed, else the shipped sample)."""
    if tuple(art.input_shape) != (1, 28, 28):
        return None
    from privquant.models.data import load_dataset, resolve_dataset

    name = resolve_dataset("auto")
    x, y = load_dataset(name, split="test", limit=limit)
    data = "fashion-mnist test" if name == "fashion-mnist" else f"{name} (first 500 test images)"
    return {"data": data, **art.evaluate(x, y, progress=progress)}


# ------------------------------------------------------------------------------ main entry
def run_bench(
    target: str,
    *,
    bits=None,
    assignment=None,
    config=None,
    out_dir=None,
    weights=None,
    input_shape=None,
) -> dict:
    """Run the benchmark; returns the report dict (and writes files if ``out_dir``).

    ``target``: a ``.pq`` artifact, a model name, or ``package.module:ClassOrFactory`` (with
    its ``weights`` state_dict and ``input_shape``)."""
    from privquant.baselines import latency
    from privquant.baselines.sirnn import SirnnConfig, anchor_fit, program_cost
    from privquant.launch import infer_local
    from privquant.quantized import QuantizedModel

    cfg = config or BenchConfig()
    for b in cfg.baselines:
        if b not in BASELINES:
            raise PrivQuantError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
    nets = [latency.get_network(n) for n in cfg.networks]
    for b in cfg.uniform_bits:
        if not 2 <= b <= 16:
            raise PrivQuantError(f"--uniform-bits must be 2..16, got {b}")
    if cfg.images < 1:
        raise PrivQuantError("--images must be at least 1")
    from privquant.ops.argmax import policy_k

    for output in cfg.outputs:
        if policy_k(output) is None:
            raise PrivQuantError("--outputs lists label or topk:K (the logits row is privquant)")
    t_start = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="privquant-bench-") as tmp,
        _env(OMP_NUM_THREADS=cfg.threads),
    ):
        work = Path(out_dir) if out_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        art_path, origin = resolve_target(
            target,
            bits=bits,
            assignment=assignment,
            workdir=work,
            seed=cfg.seed,
            weights=weights,
            input_shape=input_shape,
        )
        art = QuantizedModel.load(art_path)
        x, _labels = bench_inputs(art, cfg.images, cfg.seed)
        acts = {n.name: n.act for n in art.graph.nodes}
        results: dict[str, BackendResult] = {}
        checks: dict[str, bool] = {}
        timeout = cfg.timeout

        pre = cfg.preprocessing
        procs = "3 processes (server, client, dealer)" if pre == "dealer" else "2 processes"
        _say(cfg, f"privquant ({pre}): {art.model}, {len(x)} image(s)")
        r = infer_local(art_path, x, backend="privquant", timeout=timeout, preprocessing=pre)
        results["privquant"] = from_comm_report(
            "privquant", r["report"], f"measured: {procs}, loopback, {pre} preprocessing"
        )
        checks["privquant"] = r["identical"]
        if cfg.unfused:
            _say(cfg, "privquant-unfused")
            r = infer_local(
                art_path, x, backend="privquant-unfused", timeout=timeout, preprocessing=pre
            )
            results["privquant-unfused"] = from_comm_report(
                "privquant-unfused", r["report"], f"measured: {procs}, loopback, --unfused"
            )
            checks["privquant-unfused"] = r["identical"]
        for output in cfg.outputs:
            name = f"privquant-{output.replace(':', '')}"
            _say(cfg, name)
            r = infer_local(art_path, x, backend="privquant", timeout=timeout, output=output)
            results[name] = from_comm_report(
                name, r["report"], f"measured: 3 processes, loopback, output policy {output}"
            )
            checks[name] = r["identical"]
        uniform_acc = {}
        for ub in cfg.uniform_bits:
            name = f"privquant-uniform-{ub}"
            _say(cfg, name)
            upath = uniform_artifact(art, ub, Path(tmp), cfg.seed)
            r = infer_local(upath, x, backend="privquant", timeout=timeout, preprocessing=pre)
            results[name] = from_comm_report(
                name, r["report"], f"measured: {procs}, loopback, uniform w{ub}a{ub} (PTQ)"
            )
            checks[name] = r["identical"]
            uniform_acc[name] = accuracy(
                QuantizedModel.load(upath), cfg.accuracy_limit, cfg.progress
            )
        if "crypten" in cfg.baselines:
            from privquant.baselines.crypten_native import run_crypten_native

            nc = cfg.crypten_images or cfg.images
            _say(cfg, f"crypten-native: {nc} image(s)")
            cr = run_crypten_native(art_path, x[:nc], timeout=timeout, threads=cfg.threads)
            results["crypten"] = cr["result"]
        if "sirnn-style" in cfg.baselines:
            # like with like: SCI's protocols at the artifact's own bit widths ...
            sm = SirnnConfig(mixed=True)
            results["sirnn-style"] = program_cost(art.program, batch=len(x), config=sm, acts=acts)
            # ... and, as a second labelled reference, at W-bit fixed point
            sc = SirnnConfig(cfg.sirnn_width)
            name = f"sirnn-style-{cfg.sirnn_width}"
            results[name] = program_cost(art.program, batch=len(x), config=sc, acts=acts)
            results[name].backend = name
            with contextlib.suppress(PrivQuantError):
                results["sirnn-style"].extra["anchor_fit"] = anchor_fit()

        _say(cfg, "latency")
        lat = latency_section(results, nets, cfg, art_path, x)
        _say(cfg, "accuracy")
        acc = accuracy(art, cfg.accuracy_limit, cfg.progress)
        report = assemble(art, origin, cfg, results, checks, lat, acc, uniform_acc)
        report["seconds_total"] = time.perf_counter() - t_start
        if out_dir:
            write_outputs(report, Path(out_dir))
    return report


def _per_image(res: BackendResult, bits: float) -> float:
    return bits / max(res.batch, 1)


def latency_section(results, nets, cfg: BenchConfig, art_path, x) -> dict:
    from privquant.baselines import latency

    out: dict = {"formula": "compute + online_bits / bandwidth + rounds * RTT / 2", "backends": {}}
    for name, res in results.items():
        compute = res.seconds.get("client_online")
        bits, hops = res.total["online_bits"], res.total["rounds"]
        if name == "crypten":  # triples are fetched from the TTP on demand, during the online phase
            bits += res.total["offline_bits"]
            hops += 2 * int(res.extra.get("ttp_requests", 0))
        est = {}
        for net in nets:
            e = latency.estimate(compute or 0.0, bits, hops, net)
            if compute is None:
                e["note"] = "no compute measured (cost model): communication only"
            est[net.name] = e
        out["backends"][name] = {"loopback_online_s": compute, "estimate": est}
    if cfg.emulate and nets:
        meas = latency.measure(art_path, x, nets, backend="privquant", timeout=cfg.timeout)
        pq = out["backends"]["privquant"]
        pq["measured"] = meas
        for net in nets:
            m = meas.get(net.name, {})
            if m.get("client_online_s") is not None:
                est_s = pq["estimate"][net.name]["seconds"]
                m["estimate_s"] = est_s
                m["measured_over_estimate"] = m["client_online_s"] / est_s if est_s else None
    return out


def assemble(art, origin, cfg, results, checks, lat, acc, uniform_acc) -> dict:
    pq = results["privquant"]
    base = pq.total_bits()
    summary = []
    for name, res in results.items():
        tb = res.total_bits()
        row = {
            "backend": name,
            "source": res.source,
            "trust": res.trust,
            "batch": res.batch,
            "online_mb": res.mb("online_bits"),
            "offline_mb": res.mb("offline_bits"),
            "setup_mb": res.mb("setup_bits"),
            "total_mb": tb / MB,
            "total_mb_per_image": _per_image(res, tb) / MB,
            "rounds": res.total["rounds"],
            "loopback_online_s": res.seconds.get("client_online"),
            "ratio_vs_privquant": (_per_image(res, tb) / _per_image(pq, base)) if base else None,
            "compares": f"{res.trust} vs privquant's {pq.trust}",
            "same_trust_model": res.trust_model == pq.trust_model,
            "online_ratio_vs_privquant": (
                _per_image(res, res.total["online_bits"]) / _per_image(pq, pq.total["online_bits"])
                if pq.total["online_bits"]
                else None
            ),
            "identical_to_plaintext": checks.get(name),
        }
        summary.append(row)
    return {
        "model": art.model,
        "bits": art.bits.to_dict(),
        "origin": origin,
        "architecture_hash": art.architecture_hash(),
        "images": cfg.images,
        "threads_per_party": cfg.threads,
        "amortize_setup_over": AMORTIZE,
        "summary": summary,
        "latency": lat,
        "accuracy": {"privquant": acc, **uniform_acc},
        "backends": {k: v.as_dict() for k, v in results.items()},
        "notes": notes(results),
    }


def notes(results) -> list[str]:
    out = [
        f"Total = online + offline + setup/{AMORTIZE} (setup amortized over {AMORTIZE} "
        "inferences), per inference of the batch; ratios are per image.",
        f"privquant rows: {results['privquant'].trust}; sirnn-style (SCI) is dealer-free (two "
        "parties, OT extension); crypten relies on a trusted third party. A ratio compares like "
        "with like only where the trust models agree (column 'same trust model').",
        "Rounds are one-way message hops on the longest causal chain (a simultaneous exchange "
        "is 1): privquant's are measured (Lamport clocks), crypten's are the client's "
        "communicator calls (plus ttp_requests party-0<->TTP round trips, on demand), "
        "sirnn-style's are modelled (an OT is 2 hops).",
    ]
    if "crypten" in results:
        c = results["crypten"]
        out.append(
            f"crypten: {c.extra.get('ttp_requests')} on-demand TTP requests; output error vs "
            f"the float model max {c.extra.get('max_abs_logit_error_vs_float', 0):.4g}, argmax "
            f"agreement {100 * c.extra.get('argmax_agreement_vs_float', 0):.0f}%."
        )
    if "sirnn-style" in results:
        s = results["sirnn-style"]
        fit = s.extra.get("anchor_fit") or []
        if fit:
            worst = max(abs(r["error_pct"]) for r in fit)
            out.append(
                "sirnn-style: cost model of EzPC SCI at the artifact's bit widths (sirnn-style-W: "
                f"at W-bit fixed point); {len(fit)} measured SCI anchors reproduced within "
                f"{worst:.2f}%."
            )
    return out


# ------------------------------------------------------------------------------ outputs
def write_outputs(report: dict, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "plot": out / "comm.png",
    }
    paths["json"].write_text(json.dumps(report, indent=1, sort_keys=True, default=float) + "\n")
    paths["markdown"].write_text(markdown(report))
    plot(report["backends"], paths["plot"], f"{report['model']}: per-layer communication")
    report["files"] = {k: str(v) for k, v in paths.items()}
    paths["json"].write_text(json.dumps(report, indent=1, sort_keys=True, default=float) + "\n")
    return report["files"]


def _f(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** (-nd)):
            return f"{v:.3g}"
        return f"{v:.{nd}f}"
    return str(v)


def markdown(report: dict) -> str:
    lines = [f"# privquant bench: {report['model']}", ""]
    bits = report["bits"]
    tag = (
        f"w{bits['default']['w']}a{bits['default']['a']}"
        if not bits.get("layers") and bits.get("default")
        else f"mixed ({len(bits.get('layers', {}))} layers)"
    )
    lines += [
        f"Bits: {tag}; images per inference: {report['images']}; "
        f"{report['threads_per_party']} thread(s) per party process; "
        f"setup amortized over {report['amortize_setup_over']} inferences.",
        "",
        "| backend | online MB | offline MB | setup MB | total MB | rounds | loopback online s "
        "| × privquant (total) | trust |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        lines.append(
            f"| {r['backend']} | {_f(r['online_mb'])} | {_f(r['offline_mb'])} | "
            f"{_f(r['setup_mb'])} | {_f(r['total_mb'])} | {r['rounds']} | "
            f"{_f(r['loopback_online_s'], 2)} | {_f(r['ratio_vs_privquant'], 2)} | {r['trust']} |"
        )
    lines += ["", "## Latency", "", f"Estimate: `{report['latency']['formula']}`.", ""]
    lat = report["latency"]["backends"]
    nets = sorted({n for b in lat.values() for n in b["estimate"]})
    head = "| backend | loopback s | " + " | ".join(f"{n} estimate s" for n in nets) + " |"
    lines += [head, "|" + "---|" * (2 + len(nets))]
    for name, b in lat.items():
        cells = [_f(b["estimate"][n]["seconds"], 2) for n in nets]
        lines.append(f"| {name} | {_f(b['loopback_online_s'], 2)} | " + " | ".join(cells) + " |")
    meas = lat.get("privquant", {}).get("measured")
    if meas:
        lines += ["", "Measured under emulation (privquant, client online time):", ""]
        lines += [
            "| network | method | ping RTT ms | measured s | estimate s | measured/est. |",
            "|---|---|---|---|---|---|",
        ]
        for n, m in meas.items():
            if "skipped" in m:
                lines.append(f"| {n} | skipped: {m['skipped']} | | | | |")
            else:
                rtt = m.get("ping_rtt_s")
                lines.append(
                    f"| {n} | {m['method']} | {_f(rtt * 1e3 if rtt else None, 2)} | "
                    f"{_f(m['client_online_s'], 2)} | {_f(m.get('estimate_s'), 2)} | "
                    f"{_f(m.get('measured_over_estimate'), 2)} |"
                )
    accs = {k: v for k, v in report["accuracy"].items() if v}
    if accs:
        lines += ["", "## Accuracy (top-1, %)", "", "| variant | data | n | FP32 | int program |"]
        lines += ["|---|---|---|---|---|"]
        for k, v in accs.items():
            lines.append(
                f"| {k} | {v['data']} | {v['n']} | {_f(v['fp32_top1'], 2)} | "
                f"{_f(v['int_top1'], 2)} |"
            )
    lines += ["", "## Per layer (online + offline MB)", ""]
    backends = ordered(report["backends"])
    names = list(backends)
    order = _layer_order(backends)
    lines += ["| layer | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
    for layer in order:
        cells = []
        for b in names:
            d = {x["name"]: x for x in backends[b]["layers"]}.get(layer)
            cells.append(_f((d["online_bits"] + d["offline_bits"]) / MB, 4) if d else "-")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    fit = backends.get("sirnn-style", {}).get("extra", {}).get("anchor_fit")
    if fit:
        lines += ["", "### SiRNN-style model vs measured SCI anchors", ""]
        lines += ["| op | bits | shift/to | measured B/elem | model B/elem | error % |"]
        lines += ["|---|---|---|---|---|---|"]
        for a in fit:
            extra = a["shift"] if a["shift"] is not None else a["to_bits"]
            lines.append(
                f"| {a['op']} | {a['bits']} | {_f(extra)} | "
                f"{a['measured_bytes'] / a['n']:.2f} | {a['bytes_per_element']:.2f} | "
                f"{a['error_pct']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _rank(name: str) -> tuple[int, str]:
    prefixes = ("privquant", "privquant-label", "privquant-topk", "privquant-unfused")
    for i, prefix in enumerate((*prefixes, "privquant-uniform", "crypten")):
        if name == prefix or (prefix.endswith(("uniform", "topk")) and name.startswith(prefix)):
            return i, name
    return 9, name


def ordered(backends: dict) -> dict:
    """Backends in report order: privquant, its ablations, then the baselines."""
    return {k: backends[k] for k in sorted(backends, key=_rank)}


def _layer_order(backends: dict) -> list[str]:
    order: list[str] = []
    for b in ordered(backends).values():
        for x in b["layers"]:
            if x["name"] not in order and (x["online_bits"] or x["offline_bits"]):
                order.append(x["name"])
    return order


def replot(report_json: str | Path) -> Path:
    """Redraw ``comm.png`` next to a ``report.json``."""
    p = Path(report_json)
    rep = json.loads(p.read_text())
    out = p.with_name("comm.png")
    plot(rep["backends"], out, f"{rep['model']}: per-layer communication")
    return out


def plot(backends: dict[str, dict], path: Path, title: str) -> None:
    """Per-layer MB (online + offline) by backend, log scale; ``backends`` as in report.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = ordered(backends)
    order = _layer_order(backends)
    n, k = len(order), len(backends)
    fig, ax = plt.subplots(figsize=(min(22.0, max(8.0, 2 + 0.45 * n)), 6))
    width = 0.8 / max(k, 1)
    xs = np.arange(n)
    for i, (name, b) in enumerate(backends.items()):
        per = {x["name"]: (x["online_bits"] + x["offline_bits"]) / MB for x in b["layers"]}
        vals = [per.get(layer, 0.0) for layer in order]
        ax.bar(xs + (i - (k - 1) / 2) * width, vals, width, label=name)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(order, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("MB per inference (online + offline, log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
