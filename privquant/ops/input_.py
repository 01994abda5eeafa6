"""``input``: the client's image, uint8 values in [0, 255] (real value ``q / 255``).

Two-party: the client shares it with common randomness (no traffic, ``protocols.basic.Input``).
The plaintext executor validates it with :func:`privquant.program.check_input`.
"""

from __future__ import annotations

from typing import ClassVar

from privquant.baselines.sci import ZERO
from privquant.ir import Op, check_input
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.basic import INPUT, InputSig

INPUT_SCALE = 1.0 / 255.0  # the image is uint8 / 255: already on its 8-bit grid


class InputGraph(GraphKind):
    """The model's input placeholder (the client's image)."""

    name = "input"
    supported = (
        (
            "the model's input (one tensor argument)",
            "the client's uint8 image; real value `q / 255` (see the input convention)",
        ),
    )

    def capture(self, n, mods, src):
        return QNode("input", "input", []) if n.op == "placeholder" else None

    def signed(self, node, inputs_signed):
        return False  # uint8 pixels

    def forward(self, node, xs, params=None):
        return xs[0]

    def lower(self, node, ctx):
        ctx.emit(
            Op("input", "input", [], "input", {"bits": 8}),
            ctx.input_shape,
            0,
            255,
            INPUT_SCALE,
            INPUT_SCALE,
        )
        return ["input"]

    def crypten(self, node, ins, ctx):
        return ctx.share_input()


class InputKind(OpKind):
    name = "input"
    graph = InputGraph()
    arity = 0
    protocols: ClassVar[dict] = {"privquant": INPUT}

    def apply(self, op, ins, program):
        return check_input(program, ins[0])

    def signature(self, op, program, rings, batch):
        return InputSig(batched(batch, program.tensors[op.output].shape), rings[op.output])

    def sirnn(self, op, ctx):
        ctx.width[op.output] = int(op.attrs.get("bits", 8)) if ctx.cfg.mixed else ctx.cfg.width
        return ZERO


KIND = InputKind()
