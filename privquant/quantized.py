"""QuantizedModel: what ``privquant.quantize`` returns and what a ``.pq`` artifact holds.

It keeps the normalized float graph (the FP32 reference, BN folded), the fine-tuned fake-quant
state, the bit assignment and the lowered integer program, so one file can report FP32,
fake-quant and integer-program accuracy on the same images and be served privately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from privquant import __version__
from privquant.artifact import read_signed_container, write_container
from privquant.errors import ArtifactError, PrivQuantError
from privquant.program import (
    Program,
    op_from_dict,
    op_to_dict,
    run_plain,
    tensors_from_dict,
    tensors_to_dict,
)
from privquant.quant.fakequant import QModel
from privquant.quant.graph import QGraph, QNode, capture
from privquant.quant.pipeline import check_calibration, evaluate, quantize_graph
from privquant.quant.spec import BitAssignment, LayerBits, parse_bits


@dataclass
class QuantizedModel:
    graph: QGraph
    bits: BitAssignment
    qstate: dict[str, torch.Tensor]
    program: Program
    info: dict = field(default_factory=dict)
    content_hash: str | None = None
    signer: str | None = None  # fingerprint of the key that signed the loaded/saved artifact

    @property
    def model(self) -> str:
        return self.graph.model

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.graph.input_shape)

    def architecture_hash(self) -> str:
        return self.program.architecture_hash()

    # ------------------------------------------------------------------ models
    def qmodel(self, mode: str = "quant") -> QModel:
        """The fake-quant model (``mode="quant"``) or the FP32 reference (``mode="float"``)."""
        qm = QModel(self.graph, self.bits)
        if mode == "quant":
            qm.load_state_dict(self.qstate)
        qm.mode = mode
        return qm.eval()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_int(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return torch.cat(
            [
                run_plain(self.program, images[i : i + batch_size])
                for i in range(0, len(images), batch_size)
            ]
        )

    @torch.no_grad()
    def evaluate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 500,
        progress: bool = False,
    ) -> dict:
        """Top-1 (percent) of FP32, fake-quant and integer program on the same uint8 images
        (``progress``: a bar on stderr)."""
        fp, fq = self.qmodel("float"), self.qmodel("quant")
        return evaluate(fp, fq, self.program, images, labels, batch_size, progress=progress)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, sign=None) -> str:
        """Write the artifact; ``sign``: an Ed25519 key (file path or ``Identity``) that signs
        it (:mod:`privquant.artifact`). Returns the content hash."""
        from privquant.protocols.transport.keys import Identity

        key = Identity.load(sign) if isinstance(sign, str | Path) else sign
        meta, arrays = self._to_container()
        self.content_hash = write_container(path, meta, arrays, signer=key)
        self.signer = key.fingerprint if key is not None else None
        return self.content_hash

    @classmethod
    def load(cls, path: str | Path, signer: str | None = None) -> QuantizedModel:
        """Load and verify an artifact; ``signer`` (a key fingerprint, prefix or ``.fp`` file)
        requires a valid signature by that key."""
        meta, arrays, digest, signed_by = read_signed_container(path, signer)
        try:
            obj = cls._from_container(meta, arrays)
        except ArtifactError:
            raise
        except PrivQuantError as e:
            raise ArtifactError(f"artifact {path} is malformed: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise ArtifactError(f"artifact {path} is malformed: {e!r}") from None
        obj.content_hash, obj.signer = digest, signed_by
        return obj

    def _to_container(self) -> tuple[dict, dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        nodes = []
        for n in self.graph.nodes:
            nodes.append(
                {"name": n.name, "kind": n.kind, "inputs": n.inputs, "act": n.act, "attrs": n.attrs}
            )
            if n.weight is not None:
                arrays[f"graph/{n.name}/weight"] = n.weight.numpy()
                arrays[f"graph/{n.name}/bias"] = n.bias.numpy()
        for k, v in sorted(self.qstate.items()):
            arrays[f"qstate/{k}"] = v.detach().numpy()
        ops = []
        for i, op in enumerate(self.program.ops):
            ops.append(op_to_dict(op, sorted(op.arrays)))
            for k, a in sorted(op.arrays.items()):
                arrays[f"program/{i}/{k}"] = a
        tensors = tensors_to_dict(self.program.tensors)
        meta = {
            "format": 1,
            "privquant_version": __version__,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "bits": self.bits.to_dict(),
            "graph": nodes,
            "qstate": sorted(self.qstate),
            "program": {"ops": ops, "tensors": tensors, "meta": self.program.meta},
            "info": self.info,
        }
        return meta, arrays

    @classmethod
    def _from_container(cls, meta: dict, arrays: dict[str, np.ndarray]) -> QuantizedModel:
        if meta.get("format") != 1:
            raise ArtifactError(f"unsupported artifact format {meta.get('format')!r}")

        def t(name):
            return torch.from_numpy(np.array(arrays[name]))

        nodes = []
        for d in meta["graph"]:
            w = t(f"graph/{d['name']}/weight") if f"graph/{d['name']}/weight" in arrays else None
            b = t(f"graph/{d['name']}/bias") if w is not None else None
            nodes.append(QNode(d["name"], d["kind"], list(d["inputs"]), d["act"], d["attrs"], w, b))
        graph = QGraph(meta["model"], tuple(meta["input_shape"]), nodes)
        bits = BitAssignment.from_dict(meta["bits"])
        qstate = {k: t(f"qstate/{k}") for k in meta["qstate"]}
        p = meta["program"]
        ops = [
            op_from_dict(o, {k: np.array(arrays[f"program/{i}/{k}"]) for k in o["arrays"]})
            for i, o in enumerate(p["ops"])
        ]
        tensors = tensors_from_dict(p["tensors"])
        program = Program(meta["model"], ops, tensors, p.get("meta", {}))
        program.validate()
        if not program.has_weights:
            raise ArtifactError("artifact holds no weights for some layer")
        obj = cls(graph, bits, qstate, program, meta.get("info", {}))
        obj.qmodel("quant")  # checks that the state matches the graph
        return obj


def _as_assignment(bits) -> BitAssignment:
    if isinstance(bits, BitAssignment):
        return bits
    if isinstance(bits, LayerBits):
        return BitAssignment(default=bits)
    if isinstance(bits, str):
        return BitAssignment(default=parse_bits(bits))
    raise PrivQuantError(f"bits must be 'wXaY', LayerBits or BitAssignment, not {type(bits)}")


def quantize(
    model: nn.Module | str,
    calib_images: torch.Tensor,
    bits: str | LayerBits | BitAssignment = "w8a8",
    *,
    name: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    train_images: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    qat_epochs: int = 0,
    qat_lr: float = 1e-4,
    freeze_scales: bool = False,
    progress: bool = True,
) -> QuantizedModel:
    """Quantize a float model (or a model name with shipped weights) for private serving.

    ``calib_images``: uint8 (N, C, H, W) calibration batch (128 images suffice). With
    ``qat_epochs > 0`` the fake-quant model is fine-tuned on ``train_images/labels`` (uint8).
    ``freeze_scales``: QAT moves only weights and biases and keeps calibration's step sizes, so
    every public integer of the program (multipliers, shifts, bounds, hence rings and the
    communication cost) is exactly the PTQ program's -- what ``privquant search`` predicted.
    """
    from privquant import models

    if isinstance(model, str):
        name = name or model
        input_shape = input_shape or models.input_shape(model)
        model = models.load_reference(model)
    if name is None:
        name = type(model).__name__.lower()
    if input_shape is None:
        input_shape = tuple(calib_images.shape[1:])
    calib_images = check_calibration(calib_images, tuple(input_shape))
    q = quantize_graph(
        capture(model, name, tuple(input_shape)),
        calib_images,
        _as_assignment(bits),
        train_images=train_images,
        train_labels=train_labels,
        qat_epochs=qat_epochs,
        qat_lr=qat_lr,
        freeze_scales=freeze_scales,
        progress=progress,
    )
    return QuantizedModel(q.graph, q.bits, q.state(), q.program, q.info)


def load(path: str | Path, signer: str | None = None) -> QuantizedModel:
    """Load a ``.pq`` artifact (verified, pickle-free); ``signer`` pins the key that must have
    signed it (fingerprint, prefix of >= 32 hex digits, or a ``.fp`` file)."""
    return QuantizedModel.load(path, signer=signer)
