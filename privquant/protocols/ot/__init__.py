"""Dealer-free protocols (``--preprocessing ot``): every op kind that needs correlated
randomness, made by the server and the client alone over the OT layer
(:mod:`privquant.protocols.preprocessing.ot`) and, for linear layers, lattice HE
(:mod:`privquant.protocols.preprocessing.he`). Same trust model as SiRNN and Cheetah.

Each protocol has the shape of :class:`privquant.protocols.base.Protocol`; its ``offline`` takes
the ``ot`` provider (:class:`~privquant.protocols.preprocessing.ot_provider.OtProvider`) and
extends OTs on ``corr.session`` (phase ``offline``, both parties' traffic), its exact per-phase
cost is ``full_cost(sig)`` (an :class:`~privquant.protocols.preprocessing.ot.cost.OtCost`, offline
and setup rounds included) and ``cost(sig, "ot")`` the project's :class:`Cost`.

==================  ======================================================================
module              protocol (signature)
==================  ======================================================================
:mod:`.linear`      conv2d / linear (``LinearSig``): online as the dealer protocol; the
                    correlation ``lin(W, A1)`` by weight-bit OTs or by HE, chosen by cost
:mod:`.requant`     fused requantization (``RequantOpSig`` / ``RequantSig``): P1's own mask,
                    one opening to P0, comparisons, COT selection, known-MSB lift; unfused
:mod:`.maxpool`     max pooling (``MaxpoolSig``): comparisons of differences + COT multiplexer
:mod:`.compare`     ``[x >= T_j]`` (``CompareSig``), MSB
:mod:`.lift`        known-MSB ring extension (``LiftSig``), one COT
:mod:`.lut`         table lookup (``LutSig``): one 1-out-of-2^b OT per element (SCI-style),
                    direct or into a small ring plus a lift, chosen by cost
:mod:`.mul`         products of two secrets (``MulSig``): cross terms by COT (Gilboa) products,
                    broadcast and squares
:mod:`.argmax`      secure argmax / top-k output (``ArgmaxSig``): the dealer protocol's plans
                    (network, flat, rank) on OT comparisons, COT selections, OT equality leaves
building blocks     :mod:`.circuit` (comparisons with chosen-index leaf OTs and OT triples),
                    :mod:`.select` (polynomials in XOR-shared bits by COT products),
                    :mod:`.cotprod` (batched COT products), :mod:`.common`
==================  ======================================================================

The op table registers them in each kind's ``ot_protocols`` (input, output and the local ops run
their dealer protocols, which need no correlation). The registered objects are costed with the
provider's default SoftSpokenOT parameter (:data:`DEFAULT_K`); :func:`for_k` gives the same
protocol for another ``k``. Per-op bytes against EzPC SCI: ``bench/ot_ops.md``.
"""

from __future__ import annotations

import copy
import functools

from privquant.protocols.ot.common import DEFAULT_K, OtProtocol
from privquant.protocols.ot.compare import OT_COMPARE, OtCompare
from privquant.protocols.ot.lift import OT_LIFT, OtLift
from privquant.protocols.ot.linear import HE_KEYS_SCOPE, OT_LINEAR, OtLinear, he_keys_cost
from privquant.protocols.ot.maxpool import OT_MAXPOOL, OtMaxpool
from privquant.protocols.ot.requant import (
    OT_FUSED,
    OT_REQUANT,
    OT_REQUANT_UNFUSED,
    OT_UNFUSED,
    OtFusedRequant,
    OtRequantOp,
    OtUnfusedRequant,
)
from privquant.protocols.preprocessing.ot.extension import check_k


@functools.cache
def _for_k(proto: OtProtocol, k: int) -> OtProtocol:
    out = copy.copy(proto)
    out.k = k
    core = getattr(proto, "core", None)
    if core is not None:
        out.core = _for_k(core, k)
    return out


def for_k(proto: OtProtocol, k: int) -> OtProtocol:
    """``proto`` built for SoftSpokenOT parameter ``k`` (the same object for the default)."""
    k = check_k(k)
    return proto if k == proto.k else _for_k(proto, k)


__all__ = [
    "DEFAULT_K",
    "HE_KEYS_SCOPE",
    "OT_COMPARE",
    "OT_FUSED",
    "OT_LIFT",
    "OT_LINEAR",
    "OT_MAXPOOL",
    "OT_REQUANT",
    "OT_REQUANT_UNFUSED",
    "OT_UNFUSED",
    "OtCompare",
    "OtFusedRequant",
    "OtLift",
    "OtLinear",
    "OtMaxpool",
    "OtProtocol",
    "OtRequantOp",
    "OtUnfusedRequant",
    "for_k",
    "he_keys_cost",
]
