"""Secure argmax / top-k: the client learns only the indices of the ``k`` largest logits.

Input: shares in ``Z_{2^Lin}`` of the logits ``x`` (``n`` samples of ``C`` classes, public bounds
``lo <= x <= hi``, ``Lin >= Ld = signed_bits(lo - hi, hi - lo)`` so differences fit); output:
shares in ``Z_{2^Lo}`` of the ``k`` indices per sample, in order: largest logit first, equal
logits by lower index first (``torch.sort(x, descending=True, stable=True)``; for ``k = 1`` this
is ``torch.argmax``). ``Lo = signed_bits(0, C - 1)`` is the ring of the label tensor; the output
op (:class:`~privquant.protocols.basic.Output`) then opens it to the client alone.

Construction (a comparator network of secret compare-exchanges, each one the pairwise maximum of
:mod:`~privquant.protocols.maxpool`):

1. **Index packing, local.** With ``s = Lo`` and ``L = Ld + s``, each party forms
   ``p_i = x_i * 2^s + (C - 1 - i)`` in ``Z_{2^L}`` (shares of ``x mod 2^Ld`` times ``2^s`` are
   shares of ``x * 2^s mod 2^L``; P0 adds the public ``C - 1 - i``). The ``p_i`` are distinct,
   their order is the output order (ties by lower index), every difference fits ``L`` bits signed,
   and the low ``s`` bits of a ``p`` are ``C - 1 - index``: the winner carries its own index, so no
   index has to be tracked or selected separately and ties need no extra comparison.
2. **Network.** Batcher's odd-even merge (any list lengths) in a tree: adjacent sorted lists are
   merged pairwise, each merge truncated to its ``k`` largest; then every comparator none of whose
   outputs reaches the ``k`` outputs is dropped, and the rest are scheduled as early as possible
   into layers (:func:`network`). For ``k = 1`` this is the tournament of ``C - 1`` comparators in
   ``ceil(log2 C)`` layers.
3. **One layer** of ``m`` comparators ``(a, b)`` over all samples at once (``n_l = n*m``), exactly
   a normal level of :mod:`~privquant.protocols.maxpool`: open ``c = (a - b) + r mod 2^L`` with a
   dealer mask ``r``; ``t = [a > b] = 1 xor msb(c) xor r_(L-1) xor [c_low < r_low]`` by one
   ``(L-1)``-bit comparison (:mod:`~privquant.protocols.compare`); ``t*(a - b) = t*c - t*r`` by the
   selection polynomial (:mod:`~privquant.protocols.bitpoly`, one opened bit); then locally
   ``max = b + t*(a - b)`` and ``min = a - t*(a - b)``. A layer whose every used output is a
   final output evaluates the selection in ``Z_{2^Lo}`` (``Lo <= L``; the identity holds modulo
   any power of two dividing ``2^L``), the others in ``Z_{2^L}``.
4. **Index, local.** ``index = (C - 1) - (p mod 2^s)`` at the ``k`` output wires, in ``Z_{2^Lo}``.

Cost, per layer with ``n_l`` comparators (``cmp`` = :class:`~privquant.protocols.compare.Circuit`
cost of one ``(L-1)``-bit comparison per comparator, ``D`` its depth, ``Ls`` the layer's
selection ring, ``L`` or ``Lo``)::

    online  = 2*n_l*L + cmp_online + 2*n_l          rounds = 1 + D + 1
    offline = n_l*L (mask bits) + cmp_offline + 2*n_l*Ls (selection items rho, rho*r)

summed over the layers of :func:`network` (``n_l = n * comparators in the layer``). Steps 1 and 4
are free. Security: every value the parties exchange is masked by dealer randomness the receiver
does not hold (``c`` by ``r``, the circuit's operands and the selection's bit by dealer bits), so
the client's view is the output opening (the ``k`` indices) plus uniformly masked values.

``ot`` preprocessing (hook): the protocol needs the kinds ``mask_bits``, ``gates``,
``monomials`` and ``products``, exactly those of :mod:`~privquant.protocols.maxpool`; a
dealer-free version replaces :meth:`Argmax.layer_offline` / :meth:`Argmax.layer_online` (one
comparator layer: an OT millionaire for ``[c_low < r_low]`` and an OT-based bit times value
selection) and keeps the network, the packing and the index extraction unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import torch

from privquant.errors import PrivQuantError
from privquant.protocols import compare
from privquant.protocols.base import Protocol
from privquant.protocols.bitpoly import SELECTION, Poly, PolyPre, PolySpec
from privquant.protocols.preprocessing.base import Need
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.transport.channel import SERVER, Party

MAX_CLASSES = 4096


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


# ------------------------------------------------------------------------------ signature
@dataclass(frozen=True)
class ArgmaxSig:
    n: int  # samples
    classes: int  # C
    k: int
    lo: int  # public bounds of the logits
    hi: int
    ell_in: int  # ring of the logits' shares
    ell_out: int  # ring of the index shares (Lo)

    @cached_property
    def ell_diff(self) -> int:
        return signed_bits(self.lo - self.hi, self.hi - self.lo)

    @property
    def shift(self) -> int:
        return self.ell_out

    @cached_property
    def ell(self) -> int:
        """``L = Ld + s``: the ring of the packed values (checked)."""
        if not 1 <= self.classes <= MAX_CLASSES:
            raise PrivQuantError(f"argmax over {self.classes} classes (limit {MAX_CLASSES})")
        if self.lo > self.hi:
            raise PrivQuantError(f"argmax: empty range [{self.lo}, {self.hi}]")
        if self.ell_in < self.ell_diff:
            raise PrivQuantError(
                f"argmax: range [{self.lo}, {self.hi}] needs differences wider than "
                f"{self.ell_in} bits"
            )
        if self.ell_out < signed_bits(0, self.classes - 1):
            raise PrivQuantError(f"argmax: {self.classes} indices do not fit {self.ell_out} bits")
        ring.check_ell(self.ell_in)
        ring.check_ell(self.ell_out)
        return ring.check_ell(self.ell_diff + self.shift)

    @property
    def net(self) -> Network:
        return network(self.classes, self.k)

    def layer_ring(self, lv: int) -> int:
        return self.ell_out if self.net.final[lv] else self.ell


def _poly(c) -> Poly:
    t = Poly.var("m")
    return t * Poly.const(c) - t * Poly.arith("R")


def _layer_spec(sig: ArgmaxSig, lv: int) -> tuple[PolySpec, list[compare.Group]]:
    n = sig.n * len(sig.net.layers[lv])
    ls = sig.layer_ring(lv)
    z = torch.zeros(1, dtype=torch.int64)
    spec = PolySpec.of(_poly(z).reduced(ls), ls, n, provided=("R",))
    return spec, [compare.Group(n, 0, (sig.ell - 1,))]


def _layer_parts(sig: ArgmaxSig, lv: int) -> tuple[Cost, list[Need]]:
    n, L = sig.n * len(sig.net.layers[lv]), sig.ell
    spec, groups = _layer_spec(sig, lv)
    cs = compare.circuit(groups)
    online = Cost(online_bits=2 * n * L, rounds=1)
    online = online.then(compare.CIRCUIT.online_cost(cs)).then(SELECTION.online_cost(spec))
    needs = [Need("random", n, L), Need("mask_bits", n, items=L)]
    return online, needs + compare.CIRCUIT.needs(cs) + SELECTION.needs(spec)


@dataclass
class LayerPre:
    r: torch.Tensor | None  # this party's share of the mask (None at the dealer)
    rbits: torch.Tensor | None
    cmp: compare.CmpPre
    spec: PolySpec
    poly: PolyPre


class Argmax(Protocol):
    """Secure top-k by a comparator network on index-packed logits (module docstring)."""

    kind = "argmax"

    def online_cost(self, sig: ArgmaxSig) -> Cost:
        _ = sig.ell  # checks the signature
        out = ZERO
        for lv in range(len(sig.net.layers)):
            out = out.then(_layer_parts(sig, lv)[0])
        return out

    def needs(self, sig: ArgmaxSig) -> list[Need]:
        _ = sig.ell
        return [x for lv in range(len(sig.net.layers)) for x in _layer_parts(sig, lv)[1]]

    # -- one comparator layer (the part a dealer-free version replaces)
    def layer_offline(self, corr, sig: ArgmaxSig, lv: int) -> LayerPre:
        L = sig.ell
        spec, groups = _layer_spec(sig, lv)
        r = corr.random((spec.n,), L)
        rbits = corr.mask_bits(r, L)
        cmp = compare.CIRCUIT.offline(corr, compare.circuit(groups), masks=[r.value])
        ppre = SELECTION.offline(corr, spec, arith={"R": lambda: r.value})
        return LayerPre(r.share, rbits, cmp, spec, ppre)

    def layer_online(
        self, party: Party, sig: ArgmaxSig, lv: int, pre: LayerPre, d: torch.Tensor
    ) -> torch.Tensor:
        """Shares (mod ``2^Ls``) of ``[d > 0] * d`` for shares ``d`` (n_l,) of non-zero
        differences in ``Z_{2^L}``."""
        L, tag = sig.ell, f"am{lv}"
        mine = ring.reduce(d + pre.r, L)
        c = ring.reduce(mine + party.exchange(mine, L, f"{tag}.open"), L)
        groups = _layer_spec(sig, lv)[1]
        (lt,) = compare.CIRCUIT.online(
            party, compare.circuit(groups), pre.cmp, [(pre.rbits, c, [c])], f"{tag}.cmp"
        )[0]
        top = ((c >> (L - 1)) & 1) ^ 1
        top = top.to(torch.uint8) if party.rank == SERVER else torch.zeros_like(lt)
        t = top ^ pre.rbits[L - 1] ^ lt
        poly = _poly(c).reduced(pre.spec.ell)
        return SELECTION.online(
            party, pre.spec, pre.poly, poly, {"m": t}, {"R": pre.r}, tag=f"{tag}.sel"
        )

    # -- the protocol
    def offline(self, corr, sig: ArgmaxSig, state=None) -> list[LayerPre]:
        _ = sig.ell
        return [self.layer_offline(corr, sig, lv) for lv in range(len(sig.net.layers))]

    def online(
        self, party: Party, sig: ArgmaxSig, pre: list[LayerPre], x: torch.Tensor
    ) -> torch.Tensor:
        C, L, Lo, s = sig.classes, sig.ell, sig.ell_out, sig.shift
        if tuple(x.shape) != (sig.n, C):
            raise PrivQuantError(f"argmax: share has shape {tuple(x.shape)}, expected {(sig.n, C)}")
        w = ring.reduce(ring.reduce(x, sig.ell_diff) << s, L)
        if party.rank == SERVER:
            w = ring.reduce(w + torch.arange(C - 1, -1, -1, dtype=torch.int64), L)
        for lv, (layer, p) in enumerate(zip(sig.net.layers, pre)):
            ls = sig.layer_ring(lv)
            hi = torch.tensor([c[0] for c in layer], dtype=torch.long)
            lo = torch.tensor([c[1] for c in layer], dtype=torch.long)
            a, b = w[:, hi], w[:, lo]
            td = self.layer_online(party, sig, lv, p, ring.reduce(a - b, L).reshape(-1))
            td = td.reshape(a.shape)
            w = w.clone()
            w[:, hi] = ring.reduce(b + td, ls)
            w[:, lo] = ring.reduce(a - td, ls)
        out = w[:, list(sig.net.outputs)]
        idx = -ring.reduce(out, s)
        if party.rank == SERVER:
            idx = idx + (C - 1)
        return ring.reduce(idx, Lo)


ARGMAX = Argmax()
