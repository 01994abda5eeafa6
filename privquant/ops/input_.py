"""``input``: the client's image, uint8 values in [0, 255] (real value ``q / 255``).

Two-party: the client shares it with common randomness (no traffic, ``protocols.basic.Input``).
The plaintext executor validates it with :func:`privquant.program.check_input`.
"""

from __future__ import annotations

from typing import ClassVar

from privquant.ops.base import OpKind, batched
from privquant.protocols.basic import INPUT, InputSig


class InputKind(OpKind):
    name = "input"
    arity = 0
    protocols: ClassVar[dict] = {"privquant": INPUT}

    def apply(self, op, ins, program):
        from privquant.program import check_input

        return check_input(program, ins[0])

    def signature(self, op, program, rings, batch):
        return InputSig(batched(batch, program.tensors[op.output].shape), rings[op.output])

    def sirnn(self, op, ctx):
        from privquant.baselines.sci import ZERO

        ctx.width[op.output] = ctx.cfg.width
        return ZERO


KIND = InputKind()
