"""The public plans of :mod:`privquant.protocols.argmax` (no secrets, no communication).

* :func:`network`: a pruned top-``k`` comparator network (Batcher's odd-even merge in a tree,
  truncated to ``k``, dead comparators dropped, layers scheduled as early as possible); for
  ``k = 1`` the tournament of ``C - 1`` comparators in ``ceil(log2 C)`` layers.
* :func:`flat_plan`: which pair bits make each class's win, grouped for the ANDs of the ``flat``
  (constant-round) argmax.

Both are functions of ``(C, k)`` only, computed identically by the three roles.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

from privquant.errors import PrivQuantError


# ------------------------------------------------------------------------------ the network
@dataclass(frozen=True)
class Network:
    """A pruned top-``k`` comparator network on ``classes`` wires.

    ``layers[l]`` is a tuple of comparators ``(hi, lo)``: afterwards wire ``hi`` holds the larger
    and wire ``lo`` the smaller value; ``final[l]`` says every used output of layer ``l`` is a
    network output (read by no later comparator); ``outputs`` are the wires holding the ``k``
    largest values, largest first.
    """

    classes: int
    k: int
    layers: tuple[tuple[tuple[int, int], ...], ...]
    final: tuple[bool, ...]
    outputs: tuple[int, ...]

    @property
    def comparators(self) -> int:
        return sum(len(layer) for layer in self.layers)

    def run(self, values: list) -> list:
        """Apply the network to plain (distinct, comparable) values; the ``k`` largest, in order."""
        w = list(values)
        for layer in self.layers:
            for hi, lo in layer:
                if w[hi] < w[lo]:
                    w[hi], w[lo] = w[lo], w[hi]
        return [w[o] for o in self.outputs]


def _merge(a: list[int], b: list[int], comps: list[tuple[int, int]]) -> list[int]:
    """Batcher's odd-even merge of two wire lists sorted largest first (any lengths).

    Appends its comparators to ``comps`` and returns the wires in merged order. By the 0-1
    principle: the merge ``v`` of the even-position elements holds 0, 1 or 2 more ones than the
    merge ``w`` of the odd-position ones, so ``v0 w0 v1 w1 ...`` is sorted once each pair
    ``(w_i, v_(i+1))`` is ordered."""
    if not a or not b:
        return a + b
    if len(a) == 1 and len(b) == 1:
        comps.append((a[0], b[0]))
        return [a[0], b[0]]
    v = _merge(a[0::2], b[0::2], comps)
    w = _merge(a[1::2], b[1::2], comps)
    out = [v[0]]
    for i, wi in enumerate(w):
        if i + 1 < len(v):
            comps.append((wi, v[i + 1]))
            out += [wi, v[i + 1]]
        else:
            out.append(wi)
    out += v[len(w) + 1 :]
    return out


@functools.cache
def network(classes: int, k: int) -> Network:
    """The top-``k`` network on ``classes`` wires (see the module docstring, step 2)."""
    if not 1 <= k <= classes:
        raise PrivQuantError(f"top-k needs 1 <= k <= {classes} classes, got k={k}")
    comps: list[tuple[int, int]] = []
    lists = [[i] for i in range(classes)]
    while len(lists) > 1:
        nxt = [_merge(lists[i], lists[i + 1], comps)[:k] for i in range(0, len(lists) - 1, 2)]
        if len(lists) % 2:
            nxt.append(lists[-1])
        lists = nxt
    outputs = tuple(lists[0][:k])
    # keep the comparators whose outputs reach the k outputs (backwards liveness)
    live, kept = set(outputs), []
    for hi, lo in reversed(comps):
        if hi in live or lo in live:
            kept.append((hi, lo))
            live |= {hi, lo}
    kept.reverse()
    # schedule as early as possible; a comparator's layer follows the last one on its wires
    at: dict[int, int] = {}
    layers: list[list[tuple[int, int]]] = []
    for hi, lo in kept:
        lv = max(at.get(hi, -1), at.get(lo, -1)) + 1
        at[hi] = at[lo] = lv
        if lv == len(layers):
            layers.append([])
        layers[lv].append((hi, lo))
    # a layer is final when no later comparator reads what it writes
    final = []
    for lv, layer in enumerate(layers):
        later = {x for layer2 in layers[lv + 1 :] for c in layer2 for x in c}
        final.append(not any(x in later for c in layer for x in c))
    return Network(classes, k, tuple(tuple(x) for x in layers), tuple(final), outputs)


# ------------------------------------------------------------------------------ flat argmax
FLAT_MAX_CLASSES = 17  # C - 1 <= 16 winner bits: at most two AND levels of <= 4 bits
RANK_MAX_CLASSES = 33  # ranks of <= 5 bits: one comparison digit
FLAT_GROUP = 4


@dataclass(frozen=True)
class Flat:
    """Constant-round argmax (``k = 1``): every pair compared at once, then per class the AND
    of its ``C - 1`` wins (``groups`` ANDs of ``size`` bits, then one AND of the ``groups``
    results fused with ``index = sum_i i * win_i``; ``groups = 0``: one fused AND of all).
    Group bits beyond ``C - 1`` are the constant 1 (P0 holds 1, P1 holds 0)."""

    classes: int
    groups: int
    size: int

    @cached_property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        c = self.classes
        return tuple((i, j) for i in range(c) for j in range(i + 1, c))

    @cached_property
    def wins(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per class ``i >= 1`` (class 0 has index 0: no term), its ``C - 1`` win bits as
        ``(pair index, negated)``: ``[p_i > p_j]`` is pair ``(i, j)`` for ``j > i`` and NOT
        pair ``(j, i)`` for ``j < i``; then constant-one padding ``(-1, 0)``."""
        index = {pr: q for q, pr in enumerate(self.pairs)}
        out = []
        for i in range(1, self.classes):
            w = [(index[(j, i)], 1) if j < i else (index[(i, j)], 0)
                 for j in range(self.classes) if j != i]  # fmt: skip
            w += [(-1, 0)] * (max(self.groups, 1) * self.size - len(w))
            out.append(tuple(w))
        return tuple(out)

    @property
    def final_vars(self) -> int:
        """Bits per class in the final AND (the groups, or all wins)."""
        return self.groups or self.size


@functools.cache
def flat_plan(classes: int) -> Flat:
    m = classes - 1
    if m <= FLAT_GROUP:
        return Flat(classes, 0, m)
    g = -(-m // FLAT_GROUP)
    return Flat(classes, g, -(-m // g))
