"""The ``neg`` op kind, the demonstration that an op kind is one module (privquant/ops/neg.py plus
its line in ``privquant.ops.MODULES``): a model using ``-x`` is captured, fake-quantized,
lowered, run privately (bit-exact, measured == declared), and costed by the search's table and
the SiRNN-style baseline -- with no other file knowing the kind."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from runtime_helpers import run_threads

import privquant
from privquant import ops
from privquant.baselines import sirnn
from privquant.program import apply_op, run_plain
from privquant.quant.costtable import build_cost_table, frozen_scales
from privquant.quant.graph import capture

PKG = Path(privquant.__file__).resolve().parent


class NegNet(nn.Module):
    """conv -> relu -> negate -> (both branches: maxpool of -x, and an add of -x) -> linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = -y  # the op under test
        z = self.c2(y) + y
        z = self.pool(z).neg()
        return self.fc(torch.flatten(z, 1))


def _calib(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)


def test_neg_is_one_module():
    src = (PKG / "ops" / "__init__.py").read_text()
    assert "neg" in src and ops.get("neg").graph.name == "neg"
    hits = [
        p
        for p in PKG.rglob("*.py")
        if p.name != "neg.py" and '"neg"' in p.read_text() and p.parent.name != "ops"
    ]
    assert not hits, f"the neg kind is named outside its module: {hits}"


def test_model_with_negation_end_to_end():
    torch.manual_seed(3)
    model = NegNet().eval()
    calib = _calib()
    graph = capture(model, "negnet", (1, 8, 8))
    assert [n.kind for n in graph.nodes].count("neg") == 2
    for bits in ("w8a8", "w4a4"):
        art = privquant.quantize(model, calib, bits, name="negnet", progress=False)
        prog = art.program
        assert [op.kind for op in prog.ops].count("neg") == 2
        x = calib[:3]
        ref, env = run_plain(prog, x, keep=True)
        # fake-quant vs integer program: the negations exact on the fake-quant model's own
        # inputs (teacher-forced: a requant before them may round a near-tie the other way),
        # every requant within 1 LSB
        rec: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            art.qmodel()(x.float() / 255.0, record=rec)
        for op in prog.ops:
            if op.kind == "neg" and op.output in rec:
                ins = [rec.get(t, env[t]) for t in op.inputs]
                assert torch.equal(apply_op(op, ins, prog), rec[op.output]), op.name
            if op.kind == "requant":
                assert int((env[op.output] - rec[op.output]).abs().max()) <= 1, op.name
        logits, report, _ = run_threads(prog, x)
        assert torch.equal(logits, ref), bits
        assert report.all_match
    # the SiRNN-style baseline and the search's cost table dispatch through the same table
    assert sirnn.program_cost(prog).total_bits() > 0
    scales = frozen_scales(graph, calib, (4, 8))
    table = build_cost_table(graph, wbits=(4, 8), abits=(4, 8), scales=scales)
    values = {v: 4 for v in table.domains}
    total, _ = table.evaluate(values)
    assert total.online_bits > 0
