"""Secret-vs-public comparison: ``[C < r]`` for public ``C`` and a dealer mask ``r`` held as XOR
shares of its bits, by a log-depth prefix circuit (the standard carry / "lt-eq" tree used for
comparisons of a masked opening, e.g. in ABY and SecureNN; sharing the low block between
thresholds follows Rabbit, Makri et al. 2021).

Leaves are *digits* of ``d`` bits (``d`` chosen per group, see below), local, no communication.
For a digit at positions ``p..p+s-1`` with public value ``v`` (those bits of ``C``) and the mask
digit ``r_D``, both ``lt = [v < r_D]`` and ``eq = [v == r_D]`` are Boolean functions of the ``s``
mask bits alone, hence XOR-linear in the monomials ``prod_{i in S} r_(p+i)`` (algebraic normal
form; the coefficients depend only on the public ``v``). The dealer provides XOR shares of every
monomial of degree >= 2 of each digit (``2^s - s - 1`` bits per digit and element, P1's share by
correction; degree 1 are the mask bits themselves), so a digit costs no online traffic and no
round -- the multi-fan-in AND from preprocessed monomials (one-time truth tables, Ishai et al.
TCC 2013; TinyTable, Damgard et al. CRYPTO 2017), here for the lowest levels of the tree only.
``d = 1`` is the classic bit-leaf tree: ``lt_i = (not c_i) and r_i``, ``eq_i = not (c_i xor r_i)``.
The jobs of a group read the *same* mask bits above ``low``, so their high digits share one set
of monomials. ``d`` is chosen per group from 1..5 for the fewest bits (then the fewest rounds);
``d = 4`` is typical (11 monomials replace the 3 combines, 2 rounds, of a 4-bit subtree).

Combine a higher block with the block below it, one AND per output, all ANDs of a level (over
all trees, jobs and groups) in ONE exchange::

    (lt, eq) = (lt_hi xor (eq_hi and lt_lo),  eq_hi and eq_lo)

``eq`` is computed only where it is needed later (a node that is the higher operand of a combine,
or on the path of a root whose ``eq`` is wanted).

A :class:`Group` is a set of comparisons against the *same* mask ``r``: a shared low block of
``low`` bits (positions ``0..low-1``, the same public bits for every job -- e.g. the low ``k``
bits of thresholds that are multiples of ``2^k``) computed ONCE, and per job a high block of
``widths[j]`` bits (positions ``low..low+widths[j]-1``), joined with the low root at the end:
``lt = lt_hi xor (eq_hi and lt_low)``.

AND gates (Beaver for bits with dealer triples), with one refinement: a level's gates are given
as pairs of *operands*, and each distinct operand is opened once, masked by its own dealer bit
``a_i`` (``d_i = x_i xor a_i``, 1 bit per party); gate ``(i, j)`` then needs the dealer's
``c_ij = a_i and a_j`` (XOR-shared, P1's share by correction) and yields
``z = c_ij xor (d_i and a_j) xor (d_j and a_i) xor [P0](d_i and d_j)``. A plain triple is the case
of two operands used once (4 online bits per AND); ``eq_hi`` feeds both gates of a combine and
the low root ``b`` feeds every join, so those gates share an opening (3 operands for 2 gates).
Reusing a mask for one opened value reveals nothing new.

Cost, with ``U`` = operand openings and ``G`` = AND gates summed over levels and elements, and
``M`` = digit monomials (``n * sum over digits of 2^s - s - 1``, low block and high block)::

    online = 2*U bits, offline = G + M bits, rounds = D
    D = max over groups of  max(ceil(log2 ceil(low/d)), max_j ceil(log2 ceil(widths[j]/d)))
                            + [low > 0 and some job has width > 0]
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property

import torch

from privquant.protocols.base import Protocol
from privquant.protocols.preprocessing.base import Need, Provider
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.transport.channel import SERVER, Party


def depth(m: int) -> int:
    """Levels of a binary combine tree over ``m >= 1`` leaves: ``ceil(log2 m)``."""
    return math.ceil(math.log2(m)) if m > 1 else 0


@dataclass(frozen=True)
class TreePlan:
    """Shape of one combine tree over ``m`` leaves (LSB first) and where ``eq`` is needed."""

    m: int
    root_eq: bool

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        s = [self.m]
        while s[-1] > 1:
            s.append((s[-1] + 1) // 2)
        return tuple(s)

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @cached_property
    def eq_parents(self) -> tuple[tuple[int, ...], ...]:
        """Per level ``l``: indices of combined parents (at level l+1) whose ``eq`` is computed."""
        sizes = self.sizes
        need = [self.root_eq]  # need-eq of the nodes at the current (upper) level
        out = []
        for lvl in range(self.depth - 1, -1, -1):
            pairs = sizes[lvl] // 2
            out.append(tuple(p for p in range(pairs) if need[p]))
            below = [False] * sizes[lvl]
            for p in range(sizes[lvl + 1]):
                if p < pairs:
                    below[2 * p + 1] = True
                below[2 * p] = need[p]
            need = below
        return tuple(reversed(out))

    def level(self, lvl: int) -> tuple[int, list[tuple[int, int]]]:
        """Operand count and gates (operand index pairs) at tree level ``lvl`` (0-based).

        Operand layout: ``eq_hi`` of every pair, ``lt_lo`` of every pair, ``eq_lo`` of every pair
        whose parent needs ``eq``. Gates: the ``lt`` gates, then the ``eq`` gates.
        """
        pairs = self.sizes[lvl] // 2
        eqp = self.eq_parents[lvl]
        gates = [(p, pairs + p) for p in range(pairs)]
        gates += [(p, 2 * pairs + i) for i, p in enumerate(eqp)]
        return 2 * pairs + len(eqp), gates


DIGITS = (1, 2, 3, 4, 5)


def digit_sizes(width: int, d: int) -> tuple[int, ...]:
    """Sizes of the digits (LSB first) of a block of ``width`` bits cut into ``d``-bit digits."""
    return tuple(min(d, width - i) for i in range(0, width, d))


def multi_masks(s: int) -> tuple[int, ...]:
    """Monomials of degree >= 2 of an ``s``-bit digit, as bit masks (the dealer's item order)."""
    return tuple(m for m in range(1 << s) if m.bit_count() >= 2)


@dataclass(frozen=True)
class Group:
    """Comparisons of public values against one shared mask (see module docstring).

    ``digit`` is the leaf digit size ``d`` (0: chosen by :attr:`d` for the fewest bits)."""

    n: int
    low: int
    widths: tuple[int, ...]
    want_low: bool = False
    digit: int = 0

    def __post_init__(self):
        if self.low == 0 and any(w == 0 for w in self.widths):
            raise ValueError("a comparison job needs at least one bit")
        if self.digit and self.digit not in DIGITS:
            raise ValueError(f"digit size must be one of {DIGITS}, got {self.digit}")

    @cached_property
    def d(self) -> int:
        """The digit size: the given one, or the cheapest (bits per element, then depth)."""
        if self.digit:
            return self.digit
        return _best_digit(self.low, self.widths, self.want_low)

    @property
    def unit(self) -> tuple[int, int, int, int]:
        """Per element: (operand openings, AND gates, monomials, depth); memoized on the shape."""
        return _unit_counts(self.low, self.widths, self.want_low, self.d)

    @property
    def high(self) -> int:
        """Width of the high region read by the jobs: ``max(widths)`` (0 if none)."""
        return max(self.widths, default=0)

    @cached_property
    def blocks(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """``(start, digit sizes)`` of the low block and of the high region (shared by jobs)."""
        out = []
        if self.low > 0:
            out.append((0, digit_sizes(self.low, self.d)))
        if self.high > 0:
            out.append((self.low, digit_sizes(self.high, self.d)))
        return tuple(out)

    @property
    def monomials(self) -> int:
        """Dealer monomial bits per element: ``sum over digits of 2^s - s - 1``."""
        return sum(len(multi_masks(s)) for _start, sizes in self.blocks for s in sizes)

    def leaves(self, width: int) -> int:
        return -(-width // self.d)

    @cached_property
    def trees(self) -> tuple[TreePlan | None, ...]:
        """The low tree (or None), then one high tree per job (None for width 0), over digits."""
        low = TreePlan(self.leaves(self.low), False) if self.low > 0 else None
        return (
            low,
            *(TreePlan(self.leaves(w), self.low > 0) if w > 0 else None for w in self.widths),
        )

    @property
    def joins(self) -> int:
        return sum(1 for w in self.widths if w > 0) if self.low > 0 else 0

    @property
    def depth(self) -> int:
        """Levels of the circuit: the deepest tree, plus one for the joins (memoized)."""
        return self.unit[3]

    def _tree_depth(self) -> int:
        d = max((t.depth for t in self.trees if t is not None), default=0)
        return d + (1 if self.joins else 0)

    def level(self, level: int) -> tuple[int, list[tuple[int, int]]]:
        """Operands and gates per element at global level ``level`` (1-based): the active trees
        in order (low, then jobs), then the joins (operand ``b`` followed by each job's ``eq``)."""
        nops, gates = 0, []
        for t in self.trees:
            if t is not None and level <= t.depth:
                u, gs = t.level(level - 1)
                gates += [(i + nops, j + nops) for i, j in gs]
                nops += u
        if self.joins and level == self._tree_depth():
            b = nops
            nops += 1
            for _ in range(self.joins):
                gates.append((nops, b))
                nops += 1
        return nops, gates

    @property
    def nbits(self) -> int:
        """Mask bits read: positions ``0 .. low + max(widths) - 1``."""
        return self.low + self.high


def _depth(groups) -> int:
    return max((g.depth for g in groups), default=0)


@functools.cache
def _level_gates(low: int, widths: tuple[int, ...], want_low: bool, d: int, level: int):
    """``Group.level`` memoized on the group's shape (it does not depend on ``n``)."""
    return Group(1, low, widths, want_low, d).level(level)


@functools.cache
def _gate_index(low: int, widths: tuple[int, ...], want_low: bool, d: int, level: int):
    """The gates' operand index tensors of one level (memoized)."""
    _nops, gates = _level_gates(low, widths, want_low, d, level)
    ii = torch.tensor([p for p, _ in gates], dtype=torch.long)
    jj = torch.tensor([q for _, q in gates], dtype=torch.long)
    return ii, jj


@functools.cache
def _eq_rows(t: TreePlan, lvl: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At tree level ``lvl``: the parents whose ``eq`` is computed and the rows of their lower
    children (``2p``), as index tensors (memoized)."""
    eqp = t.eq_parents[lvl]
    return torch.tensor(eqp, dtype=torch.long), torch.tensor([2 * p for p in eqp], dtype=torch.long)


@functools.cache
def _unit_counts(low: int, widths: tuple[int, ...], want_low: bool, d: int):
    g = Group(1, low, widths, want_low, d)
    u = gates = 0
    depth = g._tree_depth()
    for lv in range(1, depth + 1):
        nops, gs = g.level(lv)
        u += nops
        gates += len(gs)
    return u, gates, g.monomials, depth


@functools.cache
def _best_digit(low: int, widths: tuple[int, ...], want_low: bool) -> int:
    def key(d: int):
        u, gates, mono, depth = _unit_counts(low, widths, want_low, d)
        return (2 * u + gates + mono, depth, d)

    return min(DIGITS, key=key)


def counts(groups) -> tuple[int, int]:
    """(operand openings, AND gates), summed over levels, groups and elements."""
    u = gates = 0
    for g in groups:
        gu, gg, _m, _d = g.unit
        u += g.n * gu
        gates += g.n * gg
    return u, gates


@dataclass(frozen=True)
class CircuitSig:
    """The comparison groups of one circuit run (all levels batched together)."""

    groups: tuple[Group, ...]


class Circuit(Protocol):
    """The prefix-circuit engine: ``[C_j < r]`` for public ``C_j`` against one mask per group
    (see the module docstring). Online ``2*U`` bits in ``D`` rounds; needs ``G`` AND-gate
    products and ``M`` digit monomials (kinds ``gates`` and ``monomials``)."""

    kind = "circuit"

    def online_cost(self, sig: CircuitSig) -> Cost:
        u, _gates = counts(sig.groups)
        return Cost(online_bits=2 * u, rounds=_depth(sig.groups))

    def needs(self, sig: CircuitSig) -> list[Need]:
        _u, gates = counts(sig.groups)
        mono = sum(g.n * g.unit[2] for g in sig.groups)
        return [Need("gates", gates), Need("monomials", mono)]

    def offline(self, corr: Provider, sig: CircuitSig, state=None, masks=None) -> CmpPre:
        """``masks[g]``: the value of group ``g``'s mask where the provider knows it."""
        return _offline(corr, sig.groups, masks)

    def online(self, party: Party, sig: CircuitSig, pre, data, tag: str = "cmp"):
        """See :func:`_online`."""
        return _online(party, sig.groups, pre, data, tag)


def circuit(groups) -> CircuitSig:
    return CircuitSig(tuple(groups))


@dataclass
class CmpPre:
    """Per level and group: operand masks (nops, n) and gate products ``c`` (gates, n); per group
    the digit monomials (M, n) in :func:`multi_masks` order, low block then high region."""

    masks: list | None
    cs: list | None
    monos: list | None = None


def _offline(corr: Provider, groups, rvals=None) -> CmpPre:
    """Operand masks (both XOR shares seeded) and, in ONE dealer message, P1's shares of every
    gate's ``a_i and a_j`` and of every digit monomial of the mask bits.

    ``rvals[g]``: the value (int64, ``(n,)``) of group ``g``'s mask ``r`` where it is known (the
    dealer; ``Rand.value``, None elsewhere); needed when a group has monomials."""
    layout = []
    for lv in range(1, _depth(groups) + 1):
        for g in groups:
            nops, gs = g.level(lv)
            layout.append((g.n, nops, gs))
    masks = [corr.random_bits((nops, n)) for n, nops, _gs in layout]
    total = sum(n * len(gs) for n, _nops, gs in layout)
    mono_counts = [g.n * g.monomials for g in groups]
    if any(mono_counts) and rvals is None:
        raise ValueError("comparison digits need the masks for the monomials")

    def monomials() -> torch.Tensor:
        rows = [
            _monomials(g, ring.bits(r, g.nbits)).reshape(-1)
            for g, cnt, r in zip(groups, mono_counts, rvals)
            if cnt
        ]
        return torch.cat(rows)

    pairs = [(m, gs) for m, (_n, _nops, gs) in zip(masks, layout)]
    cflat = corr.gates_and_monomials(pairs, total, monomials, sum(mono_counts))
    if corr.role not in (0, 1):
        return CmpPre(None, None)
    _plan_tables(groups)
    cs, pos = [], 0
    for n, _nops, gs in layout:
        cs.append(cflat[pos : pos + n * len(gs)].reshape(len(gs), n) if gs else None)
        pos += n * len(gs)
    monos = []
    for g, cnt in zip(groups, mono_counts):
        monos.append(cflat[pos : pos + cnt].reshape(g.monomials, g.n) if cnt else None)
        pos += cnt
    return CmpPre([m.share for m in masks], cs, monos)


def _plan_tables(groups) -> None:
    """Build the memoized public tables of the online step (gate indices, eq rows, leaf tables)
    during preprocessing: they depend only on the groups' shapes, not on any data, so the online
    step of a new shape does not spend its time on them."""
    for g in groups:
        for level in range(1, g.depth + 1):
            _gate_index(g.low, g.widths, g.want_low, g.d, level)
            for t in g.trees:
                if t is not None and level <= t.depth:
                    _eq_rows(t, level - 1)
        fields = ([(0, g.low)] if g.low else []) + [(g.low, w) for w in g.widths if w > 0]
        for _start, width in fields:
            small = width <= (23 if g.d <= LUT_DIGIT else 31)
            _leaf_consts(g.d, width, torch.int32 if small else torch.int64)
        for _start, sizes in g.blocks:
            for s in set(sizes):
                _digit_consts(s, torch.uint8 if g.d <= LUT_DIGIT else torch.int64)


def _monomials(g: Group, rb: torch.Tensor) -> torch.Tensor:
    """The dealer's plaintext monomials (M, n) of the mask bits ``rb`` (nbits, n)."""
    rows = []
    for start, sizes in g.blocks:
        pos = start
        for s in sizes:
            for m in multi_masks(s):
                bits = [pos + i for i in range(s) if m >> i & 1]
                v = rb[bits[0]].clone()
                for i in bits[1:]:
                    v &= rb[i]
                rows.append(v)
            pos += s
    return torch.stack(rows).to(torch.uint8)


def _anf(f) -> list[int]:
    """Algebraic normal form (Moebius transform) of a truth table ``f`` (list of 0/1)."""
    a = list(f)
    s = 1
    while s < len(a):
        for m in range(len(a)):
            if m & s:
                a[m] ^= a[m ^ s]
        s <<= 1
    return a


def _tables(s: int) -> torch.Tensor:
    """ANF coefficients of ``r -> [v < r]`` (bits 0..31) and ``r -> [v == r]`` (bits 32..63)
    over ``s``-bit ``r`` (s <= 5), one int64 per public value ``v``: bit ``m`` (``32 + m``) is the
    coefficient of monomial ``m`` (a bit mask over the digit's bits) in ``lt`` (``eq``)."""
    if s not in _TABLES:
        vals = range(1 << s)

        def packed(row) -> int:
            return sum(b << m for m, b in enumerate(row))

        rows = [
            packed(_anf([int(v < r) for r in vals]))
            | packed(_anf([int(v == r) for r in vals])) << 32
            for v in vals
        ]
        # as signed int64 (two's complement: the eq half may use bit 63)
        _TABLES[s] = torch.tensor([x - (1 << 64) if x >> 63 else x for x in rows])
    return _TABLES[s]


_TABLES: dict[int, torch.Tensor] = {}


# Leaves are vectorized over the digits of a block, in slices of at most this many elements
# (digits x n) so that the temporaries stay bounded (about 20 MB) on large layers; whole blocks
# at once up to n = 2^21 / digits (Python overhead matters only for small layers).
LEAF_SLICE = 1 << 21


_FOLD = tuple((sh, ((1 << sh) - 1) * (1 | 1 << 32)) for sh in (16, 8, 4, 2, 1))

# Digits of up to this many bits have at most 8 monomials: their leaves are one lookup in a
# (value, packed monomial byte) -> (lt, eq) table instead of the parity of a masked word.
LUT_DIGIT = 3


def _parities(x: torch.Tensor, width: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Parities of bits 0..width-1 and of bits 32..32+width-1 of each int64, as uint8 0/1:
    XOR-folding each 32-bit half onto its low bits (masked, so the halves and the sign never
    mix). ``width`` (a power of two <= 32) says the other bits of each half are zero, which
    skips the folds that would only move zeros."""
    for sh, keep in _FOLD:
        if sh < width:
            x = x ^ ((x >> sh) & keep)
    return (x & 1).to(torch.uint8), ((x >> 32) & 1).to(torch.uint8)


@functools.cache
def _digit_consts(s: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift amounts placing an ``s``-bit digit's single bits (at bit ``2^i``) and its
    degree >= 2 monomials (at bit ``m``, :func:`multi_masks` order) in the packed word."""
    single = torch.tensor([1 << i for i in range(s)], dtype=dtype).reshape(s, 1)
    multi = torch.tensor(multi_masks(s), dtype=dtype).reshape(-1, 1)
    return single, multi


def _block_monos(role: int, g: Group, rbits: torch.Tensor, mono: torch.Tensor | None):
    """Per block, this party's shares of ALL monomials of each digit packed in one word per
    element, bit ``m`` = monomial ``m`` (mask 0 is the constant 1, held by P0; single bits are
    the mask-bit shares; degree >= 2 the provider's monomials): one (digits, n) tensor per block,
    uint8 for digits of up to :data:`LUT_DIGIT` bits (8 monomials), else int64. The bits are
    disjoint, so sums of the shifted bits are their ORs."""
    dt = torch.uint8 if g.d <= LUT_DIGIT else torch.int64
    out, row = [], 0
    for start, sizes in g.blocks:
        digits, pos = [], start
        for s in sizes:
            single, multi = _digit_consts(s, dt)
            acc = (rbits[pos : pos + s].to(dt) << single).sum(0, dtype=dt)
            if len(multi):
                acc += (mono[row : row + len(multi)].to(dt) << multi).sum(0, dtype=dt)
                row += len(multi)
            if role == SERVER:
                acc |= 1
            digits.append(acc)
            pos += s
        out.append(torch.stack(digits))
    return out


@functools.cache
def _leaf_consts(d: int, width: int, dtype: torch.dtype):
    """For the digits of a ``width``-bit field cut into ``d``-bit digits: their shifts (k, 1),
    value masks (k, 1), offsets into the concatenated tables (k, 1), and that table: the
    :func:`_tables` of each distinct digit size, the full size first (so only a short last
    digit has a non-zero offset). For ``d <= LUT_DIGIT`` each row ``v`` is expanded to the 256
    packed monomial bytes ``m``, entry ``[lt] | [eq] << 1`` = the parities of (coefficients AND
    ``m``), flat, and masks and offsets are scaled by 256 (the field is read shifted left by 8
    bits, so that ``v * 256`` comes out of the mask directly). ``dtype``: that of the field's
    values (int32 when it fits, to halve the memory traffic)."""
    sizes = digit_sizes(width, d)
    shifts = torch.tensor([i * d for i in range(len(sizes))], dtype=dtype)
    masks = torch.tensor([(1 << s) - 1 for s in sizes], dtype=dtype)
    distinct = sorted(set(sizes), reverse=True)
    base, off = {}, 0
    for s in distinct:
        base[s] = off
        off += 1 << s
    offs = torch.tensor([base[s] for s in sizes], dtype=dtype)
    table = torch.cat([_tables(s) for s in distinct])
    if d <= LUT_DIGIT:
        m = torch.arange(256, dtype=torch.int64)
        lt, eq = _parities(table.reshape(-1, 1) & (m | m << 32), 8)
        table = (lt | eq << 1).reshape(-1)
        offs, masks = offs << 8, masks << 8
    return shifts.reshape(-1, 1), masks.reshape(-1, 1), offs.reshape(-1, 1), table


def _leaves(g: Group, digits: torch.Tensor, c: torch.Tensor, start: int, width: int):
    """Shares of ``[lt, eq]`` (leaves, n) of the digits of bits ``start..start+width-1`` of the
    public ``c`` against the mask (``digits`` = :func:`_block_monos` of the block at ``start``):
    the parity of (the public value's ANF coefficients AND this party's monomial shares). A
    digit shorter than the block's uses the monomials of its first ``s`` bits (masks < 2^s).
    All digits at once (in slices of at most :data:`LEAF_SLICE` elements); table lookups by
    ``index_select`` (several times faster than advanced indexing)."""
    lut = g.d <= LUT_DIGIT
    field = (c >> start) & ((1 << width) - 1)
    if width <= (23 if lut else 31):
        field = field.to(torch.int32)
    # the LUT reads v * 256 straight out of the field shifted left by 8 bits, unless that shift
    # would push a wide field's top bits out of the int64 (then each digit is shifted instead)
    pre_shift = lut and width + 8 <= 63
    if pre_shift:
        field = field << 8
    shifts, masks, offs, table = _leaf_consts(g.d, width, field.dtype)
    k, n = shifts.shape[0], c.shape[0]
    short = int(offs[-1]) != 0  # a short last digit: the only non-zero offset
    step = max(1, LEAF_SLICE // max(n, 1))
    lts, eqs = [], []
    for i in range(0, k, step):
        if lut and not pre_shift:
            v = ((field.unsqueeze(0) >> shifts[i : i + step]) & (masks[i : i + step] >> 8)) << 8
        else:
            v = (field.unsqueeze(0) >> shifts[i : i + step]) & masks[i : i + step]
        dg = digits[i : min(k, i + step)]
        if lut:
            idx = v | dg  # v * 256 + the packed monomial byte
            if short and i + step >= k:
                idx[-1] += offs[-1, 0]
            r = table.index_select(0, idx.reshape(-1)).reshape(idx.shape)
            lt, eq = r & 1, r >> 1
        else:
            idx = (v + offs[i : i + step]).reshape(-1)
            mono = dg | (dg << 32)  # the shares again under the eq coefficients
            coef = table.index_select(0, idx).reshape(mono.shape)
            lt, eq = _parities(coef & mono, 1 << g.d)
        lts.append(lt)
        eqs.append(eq)
    if len(lts) == 1:
        return [lts[0], eqs[0]]
    return [torch.cat(lts), torch.cat(eqs)]


def _online(party: Party, groups, pre: CmpPre, data, tag: str = "cmp") -> list[list[torch.Tensor]]:
    """Run all comparisons; ``data[g] = (rbits, c_low, c_jobs)`` for group ``g``.

    ``rbits`` (nbits, n) uint8: this party's XOR shares of the mask bits, row ``j`` = bit ``j``;
    ``c_low`` (n,) int64: public value whose bits ``0..low-1`` form the low block;
    ``c_jobs``: per job a public (n,) int64 whose bits ``low..low+width-1`` are compared.

    Returns per group a list of (n,) uint8 XOR shares of ``[C_j mod 2^(low+w_j) < r mod ...]``
    per job, followed by the low block's ``lt`` (the borrow) if ``want_low``.
    """
    role = party.rank
    # state[g][t] = [lt, eq] tensors (nodes, n) of tree t of group g
    state: list[list[list[torch.Tensor] | None]] = []
    for gi, (g, (rbits, c_low, c_jobs)) in enumerate(zip(groups, data)):
        mono = pre.monos[gi] if pre.monos else None
        blocks = dict(zip([b[0] for b in g.blocks], _block_monos(role, g, rbits, mono)))
        st = [_leaves(g, blocks[0], c_low, 0, g.low) if g.low > 0 else None]
        for w, c in zip(g.widths, c_jobs):
            st.append(_leaves(g, blocks[g.low], c, g.low, w) if w > 0 else None)
        state.append(st)

    idx = 0
    for level in range(1, _depth(groups) + 1):
        ops_all, metas = [], []
        for gi, g in enumerate(groups):
            ops = []
            active = []
            for ti, t in enumerate(g.trees):
                if t is not None and level <= t.depth:
                    lt, eq = state[gi][ti]
                    pairs = t.sizes[level - 1] // 2
                    eqp, eq_lo = _eq_rows(t, level - 1)
                    ops += [eq[1 : 2 * pairs : 2], lt[0 : 2 * pairs : 2], eq.index_select(0, eq_lo)]
                    active.append((ti, t, pairs, eqp))
            joins = g.joins and level == g.depth
            if joins:
                ops.append(state[gi][0][0][:1])  # b = low root lt
                ops += [
                    state[gi][ti][1][:1] for ti in range(1, len(g.trees)) if g.trees[ti] is not None
                ]
            nops, gates = _level_gates(g.low, g.widths, g.want_low, g.d, level)
            x = torch.cat(ops) if ops else torch.empty((0, g.n), dtype=torch.uint8)
            assert x.shape[0] == nops
            ops_all.append(x)
            metas.append((gi, g, gates, active, joins))

        masked = [x ^ pre.masks[idx + i] for i, x in enumerate(ops_all)]
        flat = torch.cat([m.reshape(-1) for m in masked])
        other = party.exchange_bits(flat, f"{tag}.L{level}")
        opened = torch.split(other, [m.numel() for m in masked])
        for i, (gi, g, gates, active, joins) in enumerate(metas):
            if not gates:
                continue
            d = masked[i] ^ opened[i].reshape(masked[i].shape)
            a = pre.masks[idx + i]
            ii, jj = _gate_index(g.low, g.widths, g.want_low, g.d, level)
            # z = c ^ (d_i & a_j) ^ (d_j & a_i) [^ (d_i & d_j) at P0]
            #   = c ^ (d_i & e_j) ^ (d_j & a_i), e = a ^ d at P0, e = a at P1 (rows: index_select)
            e = a ^ d if role == SERVER else a
            z = pre.cs[idx + i] ^ (d.index_select(0, ii) & e.index_select(0, jj))
            z ^= d.index_select(0, jj) & a.index_select(0, ii)
            zi = 0
            for ti, t, pairs, eqp in active:
                lt, eq = state[gi][ti]
                new_lt = lt[1 : 2 * pairs : 2] ^ z[zi : zi + pairs]
                zi += pairs
                new_eq = torch.zeros_like(new_lt)
                if len(eqp):
                    new_eq.index_copy_(0, eqp, z[zi : zi + len(eqp)])
                    zi += len(eqp)
                if t.sizes[level - 1] % 2:
                    new_lt = torch.cat([new_lt, lt[-1:]])
                    new_eq = torch.cat([new_eq, eq[-1:]])
                state[gi][ti] = [new_lt, new_eq]
            if joins:
                for ti in range(1, len(g.trees)):
                    if g.trees[ti] is not None:
                        lt, eq = state[gi][ti]
                        state[gi][ti] = [lt[:1] ^ z[zi : zi + 1], eq[:1]]
                        zi += 1
            assert zi == len(gates)
        idx += len(groups)

    out = []
    for g, st in zip(groups, state):
        low_lt = st[0][0][0] if st[0] is not None else None
        res = [s[0][0] if s is not None else low_lt for s in st[1:]]
        if g.want_low:
            res.append(low_lt)
        out.append(res)
    return out


# ----------------------------------------------------------------------------- the protocol
@dataclass(frozen=True)
class CompareSig:
    """``[x >= T_j]`` for shares of ``x`` in ``Z_{2^ell}`` (signed, ``lo <= x <= hi``) and public
    thresholds ``T_j``; the results are XOR shares (one (n,) uint8 tensor per threshold)."""

    n: int
    ell: int
    thresholds: tuple[int, ...]
    lo: int | None = None
    hi: int | None = None

    @cached_property
    def plan(self) -> tuple[str, tuple, Group | None]:
        L = ring.check_ell(self.ell)
        H = 1 << (L - 1)
        lo = -H if self.lo is None else self.lo
        hi = H - 1 if self.hi is None else self.hi
        if not -H <= lo <= hi < H:
            raise ValueError(f"bounds [{lo}, {hi}] do not fit the {L}-bit ring")
        const = tuple(1 if lo >= t else 0 if hi < t else None for t in self.thresholds)
        secret = [t for t, c in zip(self.thresholds, const) if c is None]
        if not secret:
            return "const", const, None
        msb = all(lo - t >= -H and hi - t < H for t in secret)
        if msb:
            return "msb", const, Group(self.n, 0, (L - 1,) * len(secret))
        return "rabbit", const, Group(self.n, 0, (L,) * (len(secret) + 1))


class Compare(Protocol):
    """Secret-vs-public comparison ``[x >= T]`` for several public thresholds at once.

    Steps: (1) dealer mask ``r`` (seeded shares) and XOR shares of its bits; (2) open
    ``c = x + 2^(ell-1) + r`` (``2*n*ell`` bits, 1 round); (3) per threshold ``T`` with
    ``u = x + 2^(ell-1)``, ``T' = T + 2^(ell-1)``: if ``x - T`` stays in ``[-2^(ell-1), 2^(ell-1))``
    for every threshold (known from the bounds), ``[u >= T'] = msb(C) xor r_(ell-1) xor [C_low <
    r_low]`` with ``C = c - T' + 2^(ell-1)`` (``ell-1``-bit comparisons); otherwise Rabbit
    (Makri et al. 2021): ``[u >= T'] = [c >= T'] xor [c < r] xor [c - T' < r]`` (``ell``-bit
    comparisons, one extra for the wrap). Thresholds decided by the bounds cost nothing.

    Cost: ``online = 2*n*ell + 2*U``, ``rounds = 1 + D``; needs ``mask_bits`` (``n*ell``) and the
    circuit's ``G`` gates and ``M`` monomials (:class:`Circuit`); all zero if every threshold is
    decided.
    """

    kind = "compare"

    def online_cost(self, sig: CompareSig) -> Cost:
        _mode, _const, grp = sig.plan
        if grp is None:
            return Cost()
        c = Cost(online_bits=2 * sig.n * sig.ell, rounds=1)
        return c.then(CIRCUIT.online_cost(circuit([grp])))

    def needs(self, sig: CompareSig) -> list[Need]:
        _mode, _const, grp = sig.plan
        if grp is None:
            return []
        return [Need("mask_bits", sig.n, items=sig.ell), *CIRCUIT.needs(circuit([grp]))]

    def offline(self, corr: Provider, sig: CompareSig, state=None):
        _mode, _const, grp = sig.plan
        if grp is None:
            return None
        r = corr.random((sig.n,), sig.ell)
        rbits = corr.mask_bits(r, sig.ell)
        return r.share, rbits, CIRCUIT.offline(corr, circuit([grp]), masks=[r.value])

    def online(self, party: Party, sig: CompareSig, pre, x: torch.Tensor) -> list[torch.Tensor]:
        mode, const, grp = sig.plan
        L, H, n = sig.ell, 1 << (sig.ell - 1), sig.n
        mine = party.rank == SERVER

        def pub(bits: torch.Tensor) -> torch.Tensor:
            return bits.to(torch.uint8) if mine else torch.zeros(n, dtype=torch.uint8)

        out: list[torch.Tensor | None] = [
            pub(torch.full((n,), c)) if c is not None else None for c in const
        ]
        if grp is None:
            return out
        r, rbits, cpre = pre
        u = ring.reduce(x.reshape(-1) + (H if mine else 0), L)
        cs = ring.reduce(u + r, L)
        c = ring.reduce(cs + party.exchange(cs, L, "cmp.open"), L)
        secret = [i for i, v in enumerate(const) if v is None]
        tp = [sig.thresholds[i] + H for i in secret]
        if mode == "msb":
            cj = [ring.reduce(c - t + H, L) for t in tp]
            lts = CIRCUIT.online(party, circuit([grp]), cpre, [(rbits, c, cj)], "cmp")[0]
            for i, C, lt in zip(secret, cj, lts):
                out[i] = pub((C >> (L - 1)) & 1) ^ rbits[L - 1] ^ lt
        else:
            cj = [c] + [ring.reduce(c - t, L) for t in tp]
            lts = CIRCUIT.online(party, circuit([grp]), cpre, [(rbits, c, cj)], "cmp")[0]
            for i, t, lt in zip(secret, tp, lts[1:]):
                out[i] = pub(c >= t) ^ lts[0] ^ lt
        return out


CIRCUIT = Circuit()
COMPARE = Compare()
