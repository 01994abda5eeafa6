"""CrypTen-native baseline: the float model (BN folded) as CrypTen MPCTensors, three real processes.

What runs: the QGraph's BN-folded float weights, secret-shared by the server (rank 0) with
CrypTen's pseudo-random zero sharing, the client's input ``uint8 / 255`` shared by the client
(rank 1), CrypTen's 64-bit fixed point (16 fractional bits), its Beaver-triple conv/matmul, its
ReLU (``x * (x >= 0)``: A2B adder circuit + B2A), ``hardtanh`` for ReLU6, its average and max
pooling, and CrypTen's TTP provider in a third process (rank 2, ``TTPServer``). The logits are
revealed to the client only (``get_plain_text(dst=1)``). CrypTen's ONNX import is not used (it is
broken on this torch); the network is built from the QGraph directly.

Accounting (CrypTen's own counter charges 8 bytes per element and per ``sys.getsizeof`` of a
pickled object, and files TTP traffic under party 0): every communicator method of each process
is wrapped to count the bytes that process *sends* (``nelement * element_size`` for tensors, the
pickled length + 4 for objects; an ``all_reduce`` of ``n`` bytes between two parties sends ``n``
bytes per party), split by group: the parties' group (``online``) and the TTP groups (``ttp``:
party 0's triple requests, the TTP's size replies and correlated-randomness broadcasts). Rounds
are the parties' communicator calls on the main group counted at the client (an ``all_reduce`` is
one simultaneous exchange); CrypTen also fetches triples *on demand during the online phase*,
so every TTP request adds one party-0 <-> TTP round trip, reported as ``ttp_requests``. As a
cross-check each process also reports the bytes it wrote to sockets (``/proc/self/io`` wchar).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from privquant import ops
from privquant._crypten import crypten_module
from privquant.baselines.result import BackendResult, LayerCost
from privquant.errors import PeerError, PrivQuantError

TRUST = "trusted third party (CrypTen TTP provider, on-demand triples)"
SETUP_SCOPE = "(setup)"
SERVER, CLIENT, TTP = 0, 1, 2


# ------------------------------------------------------------------------------ public spec
def public_spec(graph) -> dict:
    """The QGraph without weight values: what the client (and the TTP) may know."""
    nodes = []
    for n in graph.nodes:
        d = {"name": n.name, "kind": n.kind, "inputs": list(n.inputs), "act": n.act}
        d["attrs"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in n.attrs.items()}
        if n.weight is not None:
            d["weight_shape"] = list(n.weight.shape)
            d["bias_shape"] = list(n.bias.shape)
        nodes.append(d)
    return {"model": graph.model, "input_shape": list(graph.input_shape), "nodes": nodes}


# ------------------------------------------------------------------------------ accounting
class Meter:
    """Counts bytes this process sends, per layer scope and per group (online / ttp)."""

    def __init__(self, comm_obj, rank: int):
        self.comm = comm_obj
        self.rank = rank
        self.scope = SETUP_SCOPE
        self.book: dict[str, dict[str, int]] = {}
        self._install()

    def _entry(self) -> dict[str, int]:
        return self.book.setdefault(
            self.scope,
            {
                "online_bytes": 0,
                "ttp_bytes": 0,
                "ttp_recv_bytes": 0,
                "online_calls": 0,
                "ttp_requests": 0,
            },
        )

    def _is_main(self, group) -> bool:
        return group is None or group is self.comm.main_group

    def _count(self, nbytes: int, group=None, call: bool = True) -> None:
        e = self._entry()
        if self._is_main(group):
            e["online_bytes"] += int(nbytes)
            if call:
                e["online_calls"] += 1
        else:
            e["ttp_bytes"] += int(nbytes)

    @staticmethod
    def _nbytes(t) -> int:
        if isinstance(t, (list, tuple)):
            return sum(Meter._nbytes(x) for x in t)
        return int(t.nelement()) * int(t.element_size())

    def _install(self) -> None:
        c = self.comm
        orig = {
            name: getattr(c, name)
            for name in (
                "send",
                "recv",
                "isend",
                "irecv",
                "all_reduce",
                "reduce",
                "broadcast",
                "gather",
                "all_gather",
                "scatter",
                "send_obj",
                "recv_obj",
            )
        }
        meter = self

        def send(tensor, dst):
            meter._count(meter._nbytes(tensor))
            return orig["send"](tensor, dst)

        def isend(tensor, dst):
            meter._count(meter._nbytes(tensor))
            return orig["isend"](tensor, dst)

        def recv(tensor, src=None):
            meter._count(0)
            return orig["recv"](tensor, src)

        def irecv(tensor, src=None):
            meter._count(0)
            return orig["irecv"](tensor, src)

        def all_reduce(inp, *a, **k):
            meter._count(meter._nbytes(inp))
            return orig["all_reduce"](inp, *a, **k)

        def reduce(inp, dst, *a, **k):
            meter._count(0 if meter.rank == dst else meter._nbytes(inp))
            return orig["reduce"](inp, dst, *a, **k)

        def broadcast(inp, src, group=None, batched=False):
            n = meter._nbytes(inp) if meter.rank == src else 0
            meter._count(n, group)
            if meter.rank != src and not meter._is_main(group):
                meter._entry()["ttp_recv_bytes"] += meter._nbytes(inp)
            return orig["broadcast"](inp, src, group=group, batched=batched)

        def gather(tensor, dst):
            meter._count(0 if meter.rank == dst else meter._nbytes(tensor))
            return orig["gather"](tensor, dst)

        def all_gather(tensor):
            meter._count(meter._nbytes(tensor))
            return orig["all_gather"](tensor)

        def scatter(scatter_list, src, size=None, device=None):
            n = meter._nbytes(scatter_list[1 - src]) if meter.rank == src else 0
            meter._count(n)
            return orig["scatter"](scatter_list, src, size=size, device=device)

        def send_obj(obj, dst, group=None):
            meter._count(len(pickle.dumps(obj)) + 4, group)
            if not meter._is_main(group) and meter.rank == SERVER:
                meter._entry()["ttp_requests"] += 1
            return orig["send_obj"](obj, dst, group)

        def recv_obj(src, group=None):
            meter._count(0, group)
            obj = orig["recv_obj"](src, group)
            if not meter._is_main(group):
                meter._entry()["ttp_recv_bytes"] += len(pickle.dumps(obj)) + 4
            return obj

        for name, fn in locals().copy().items():
            if name in orig:
                setattr(c, name, fn)


def _wchar() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


# ------------------------------------------------------------------------------ the network
class NetworkContext:
    """What a graph kind's ``crypten`` hook sees (:meth:`privquant.ops.graph.GraphKind.crypten`):
    sharing of the client's input and the server's weights, and the output to the client."""

    def __init__(self, crypten, spec: dict, rank: int, weights=None, x=None):
        self.crypten, self.spec, self.rank = crypten, spec, rank
        self.weights, self.x = weights, x
        self.logits = None

    def share_input(self):
        shape = (int(self.spec["batch"]), *self.spec["input_shape"])
        data = self.x if self.rank == CLIENT else torch.zeros(shape)
        return self.crypten.cryptensor(data, src=CLIENT)

    def layer_params(self, node: dict):
        if self.rank == SERVER:
            return self.weights[node["name"]]
        return torch.zeros(node["weight_shape"]), torch.zeros(node["bias_shape"])

    def share_weight(self, w):
        return self.crypten.cryptensor(w, src=SERVER)

    def reveal_to_client(self, y):
        out = y.get_plain_text(dst=CLIENT)
        self.logits = out if self.rank == CLIENT else None
        return y


def run_network(crypten, spec: dict, meter: Meter, rank: int, weights=None, x=None):
    """Evaluate the spec'd network on MPCTensors; returns the client's float logits (or None)."""
    ctx = NetworkContext(crypten, spec, rank, weights, x)
    env = {}
    for node in spec["nodes"]:
        meter.scope = node["name"]
        y = ops.graph_kind(node["kind"]).crypten(node, [env[i] for i in node["inputs"]], ctx)
        if node.get("act") == "relu":
            y = y.relu()
        elif node.get("act") == "relu6":
            y = y.hardtanh(0.0, 6.0)
        env[node["name"]] = y
    return ctx.logits


# ------------------------------------------------------------------------------ roles
def _init(rank: int, rendezvous: str, timeout: float):
    from privquant._crypten import get_comm, get_crypten
    from privquant.protocols.transport.crypten import init_communicator

    crypten = get_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = False
    init_communicator(rank, rendezvous, dealer=True, timeout=timeout)
    return crypten, get_comm().get()


def _shutdown() -> None:
    from privquant.protocols.transport.crypten import shutdown_communicator

    shutdown_communicator()


def role_party(rank: int, rendezvous: str, spec: dict, *, weights=None, x=None, timeout=60.0):
    """Server (rank 0, ``weights``) or client (rank 1, ``x`` float (N, C, H, W))."""
    torch.set_num_threads(1)
    w0 = _wchar()
    crypten, c = _init(rank, rendezvous, timeout)
    meter = Meter(c, rank)
    t0 = time.perf_counter()
    try:
        crypten._setup_prng()
        crypten_module("crypten.mpc.provider.ttp_provider").TTPClient._init()
        setup_s = time.perf_counter() - t0
        w1 = _wchar()
        t1 = time.perf_counter()
        with crypten.no_grad():
            logits = run_network(crypten, spec, meter, rank, weights=weights, x=x)
        online_s = time.perf_counter() - t1
        w2 = _wchar()
        meter.scope = "(teardown)"
        if rank == SERVER:
            c.send_obj("terminate", c.get_ttp_rank(), c.ttp_group)
    finally:
        _shutdown()
    return {
        "role": "server" if rank == SERVER else "client",
        "book": meter.book,
        "seconds": {"setup": setup_s, "online": online_s},
        "wchar": {"setup": w1 - w0, "online": w2 - w1},
        "logits": logits.tolist() if logits is not None else None,
    }


def role_ttp(rendezvous: str, timeout=60.0):
    torch.set_num_threads(1)
    w0 = _wchar()
    _, c = _init(TTP, rendezvous, timeout)
    meter = Meter(c, TTP)
    meter.scope = "(ttp)"
    t0 = time.perf_counter()
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crypten_module(
                "crypten.mpc.provider.ttp_provider"
            ).TTPServer()  # serves requests until party 0 sends "terminate"
    finally:
        _shutdown()
    return {
        "role": "ttp",
        "book": meter.book,
        "seconds": {"total": time.perf_counter() - t0},
        "wchar": {"total": _wchar() - w0},
        "logits": None,
    }


# ------------------------------------------------------------------------------ launcher
def run_crypten_native(
    artifact_path: str | Path, images, *, timeout: float = 120.0, threads: int = 1
) -> dict:
    """Run the CrypTen-native baseline on ``images`` (uint8 (N, C, H, W)); three processes."""
    from privquant.launch import STARTUP_SLACK, _wait_all, free_port
    from privquant.program import check_input
    from privquant.quantized import QuantizedModel

    art = QuantizedModel.load(artifact_path)
    x = check_input(art.program, images).to(torch.uint8)
    spec = public_spec(art.graph)
    spec["batch"] = int(x.shape[0])
    rdv = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="privquant-crypten-") as tmp:
        sp = Path(tmp) / "spec.json"
        sp.write_text(json.dumps(spec))
        inp = Path(tmp) / "input.npy"
        np.save(inp, x.numpy(), allow_pickle=False)
        common = ["--rendezvous", rdv, "--timeout", str(timeout)]
        t0 = time.perf_counter()
        procs = {
            "server": _spawn(
                [
                    "--role",
                    "server",
                    "--artifact",
                    str(artifact_path),
                    "--batch",
                    str(len(x)),
                    *common,
                ]
            ),
            "ttp": _spawn(["--role", "ttp", *common]),
            "client": _spawn(["--role", "client", "--spec", str(sp), "--input", str(inp), *common]),
        }
        outs = _wait_all(procs, deadline=time.perf_counter() + timeout * 3 + STARTUP_SLACK)
        wall = time.perf_counter() - t0
    res = {role: json.loads(out.strip().splitlines()[-1]) for role, out in outs.items()}
    logits = torch.tensor(res["client"]["logits"], dtype=torch.float64)
    with torch.no_grad():
        ref = art.qmodel("float")(x.float() / 255.0).double()
    err = (logits - ref).abs()
    result = _to_result(art, res, int(x.shape[0]), wall)
    result.extra.update(
        {
            "max_abs_logit_error_vs_float": float(err.max()),
            "mean_abs_logit_error_vs_float": float(err.mean()),
            "argmax_agreement_vs_float": float((logits.argmax(1) == ref.argmax(1)).double().mean()),
            "labels": logits.argmax(1).tolist(),
            "float_labels": ref.argmax(1).tolist(),
            "threads_per_party": threads,
        }
    )
    return {"result": result, "logits": logits, "float_logits": ref}


def _to_result(art, res: dict, batch: int, wall: float) -> BackendResult:
    books = [res[r]["book"] for r in ("server", "client", "ttp")]
    names = [SETUP_SCOPE] + [n.name for n in art.graph.nodes]
    layers = []
    for name in names:
        on = sum(b.get(name, {}).get("online_bytes", 0) for b in books)
        # TTP traffic of a layer, seen at party 0: its requests plus the TTP's replies
        e0 = res["server"]["book"].get(name, {})
        ttp = e0.get("ttp_bytes", 0) + e0.get("ttp_recv_bytes", 0)
        rounds = res["client"]["book"].get(name, {}).get("online_calls", 0)
        kinds = [next((n.kind for n in art.graph.nodes if n.name == name), "setup")]
        if name == SETUP_SCOPE:
            layers.append(LayerCost(name, kinds, setup_bits=8 * (on + ttp)))
        else:
            layers.append(LayerCost(name, kinds, 8 * on, 8 * ttp, 0, rounds))
    ttp_sent = res["ttp"]["book"].get("(ttp)", {}).get("ttp_bytes", 0)
    requests = sum(e.get("ttp_requests", 0) for e in res["server"]["book"].values())
    out = BackendResult.from_layers(
        "crypten",
        "measured: CrypTen 0.4.1, 3 processes (2 parties + TTP), loopback, bytes sent per process",
        TRUST,
        batch,
        layers,
        seconds={
            "wall": wall,
            "server_online": res["server"]["seconds"]["online"],
            "client_online": res["client"]["seconds"]["online"],
        },
        extra={
            "ttp_requests": requests,
            "ttp_process_sent_bytes": ttp_sent,
            "socket_write_bytes": {
                "server_online": res["server"]["wchar"]["online"],
                "client_online": res["client"]["wchar"]["online"],
                "ttp_total": res["ttp"]["wchar"]["total"],
            },
            "fixed_point": "64-bit ring, 16 fractional bits",
        },
    )
    return out


def _spawn(args: list[str]):
    import subprocess

    from privquant.launch import _die_with_parent

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "privquant.baselines.crypten_native", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
        env=env,
        text=True,
    )


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="privquant.baselines.crypten_native")
    p.add_argument("--role", required=True, choices=["server", "client", "ttp"])
    p.add_argument("--rendezvous", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--artifact")
    p.add_argument("--spec")
    p.add_argument("--input")
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args(argv)
    try:
        if args.role == "ttp":
            out = role_ttp(args.rendezvous, timeout=args.timeout)
        elif args.role == "server":
            from privquant.quantized import QuantizedModel

            art = QuantizedModel.load(args.artifact)
            spec = public_spec(art.graph)
            weights = {n.name: (n.weight, n.bias) for n in art.graph.nodes if n.weight is not None}
            spec["batch"] = args.batch  # public, like the shapes (CrypTen needs it up front)
            out = role_party(SERVER, args.rendezvous, spec, weights=weights, timeout=args.timeout)
        else:
            spec = json.loads(Path(args.spec).read_text())
            x = torch.from_numpy(np.load(args.input, allow_pickle=False)).float() / 255.0
            if tuple(x.shape) != (int(spec["batch"]), *spec["input_shape"]):
                raise PrivQuantError(f"input shape {tuple(x.shape)} does not match the spec")
            out = role_party(CLIENT, args.rendezvous, spec, x=x, timeout=args.timeout)
    except PrivQuantError as e:
        print(f"privquant: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a peer's death surfaces as many exception types from gloo
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"privquant: error: {PeerError(msg)}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
