"""Elementwise product of two secrets without a dealer, ``z = x * y mod 2^L`` (with broadcasting);
the same signature (:class:`~privquant.protocols.mul.MulSig`) and outputs as
:mod:`privquant.protocols.mul`.

Source: Gilboa's product by oblivious transfer (CRYPTO 1999) in its correlated-OT form with
truncated messages (the message of bit ``t`` only influences bits ``t..L-1``, as in SiRNN's
``Alice_has_B`` matrix products, Rathee et al., S&P 2021), derandomized so that the OT extension
runs offline (Beaver 1995); the batched COT products of :mod:`.cotprod`.

With ``x = x0 + x1`` and ``y = y0 + y1`` (shares mod ``2^L``, broadcast to the product's shape
``Z``, ``nz`` elements)::

    x * y = x0*y0 + x1*y1 + x0*y1 + x1*y0

The first two terms are local. Each cross term is a product of one party's ring value and the
other's by its bits: ``x0*y1 = sum_{t<L} 2^t * x0_t * (y1 mod 2^(L-t))``, one COT product per bit
``t`` in ``Z_2^(L-t)`` (P0 the chooser with bit ``t`` of ``x0``, P1 the value holder);
symmetrically ``x1*y0`` with P1 choosing by the bits of ``x1``. All ``2*L`` groups run in one
round (every value holder's ``z`` and every chooser's ``d`` are sent simultaneously).

Square (``x * x``): ``x0^2 + x1^2 + 2*x0*x1``; the doubled cross term is made mod ``2^(L-1)``
(bits ``t < L-1`` of ``x0``, widths ``L-1-t``) and shifted by one.

Steps: offline the random OTs of every group (value holder the sender), one batch (1 offline
round); online one exchange of the COT messages; each party adds its local term and its shares
of the groups shifted by ``t`` (``t + 1`` for a square).

Cost (``o = 128/k - 1`` bits per random OT)::

    product: online = nz*sum_{t<L} 2*(L - t + 1) = nz*L*(L + 3),   offline = 2*o*nz*L
    square:  online = nz*sum_{t<L-1} (L - t)     = nz*(L - 1)*(L + 2)/2,  offline = o*nz*(L - 1)
    rounds: 1 online (0 if nothing to send), 1 offline

Why products made online rather than Beaver triples made offline by the same COT products: a
triple ``c = a*b`` has random ``a``'s bits as the random OT choices (no ``d`` bit), so its cross
terms cost ``nz*L*(L+1)`` offline bits, plus ``2*o*nz*L`` for the OTs and ``2*(nx + ny)*L`` online
for opening ``x - a`` and ``y - b``; the direct form pays ``2*nz*L`` choice bits instead of the
opening, ``2*L*(nx + ny - nz) >= 2*L*nx > 0`` bits less in total (square: ``2*nx*L`` against
``nx*(L - 1)``), in the same single round. The triple form would move ``nz*L*(L+1)`` bits
offline; at ``L = 16``, ``k = 4``: direct 304 online + 992 offline bits per element, triples
64 + 1264.
"""

from __future__ import annotations

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.mul import MulSig
from privquant.protocols.ot import cotprod
from privquant.protocols.ot.common import EXCHANGE, Batch, OtProtocol, session_of
from privquant.protocols.ot.cotprod import CotSpec
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def specs(sig: MulSig) -> list[tuple[CotSpec, int]]:
    """``(group, shift)``: the COT product groups and the power of two each share is scaled by."""
    L = ring.check_ell(sig.ell)
    if sig.square and sig.x_shape != sig.y_shape:
        raise PrivQuantError("a square needs one shape")
    nz = _numel(sig.z_shape)
    if nz == 0:
        return []
    if sig.square:
        return [(CotSpec(SERVER, nz, L - 1 - t), t + 1) for t in range(L - 1)]
    return [(CotSpec(c, nz, L - t), t) for c in (SERVER, CLIENT) for t in range(L)]


def _bits(v: np.ndarray, t: int) -> np.ndarray:
    return ((v >> np.uint64(t)) & np.uint64(1)).astype(np.uint8)


class OtMul(OtProtocol):
    """Product of two shared tensors by COT (Gilboa) products (see the module docstring)."""

    kind = "mul"

    def full_cost(self, sig: MulSig) -> OtCost:
        c = cotprod.cost(self.k, [s for s, _ in specs(sig)])
        return c

    def online_steps(self, sig: MulSig) -> list[str]:
        return [EXCHANGE] if specs(sig) else []

    def offline(self, corr, sig: MulSig, state=None):
        groups = specs(sig)
        b = Batch()
        b.add(cotprod.requests([s for s, _ in groups]))
        return b.run(session_of(corr, self.k), "ot.mul")

    def online(self, party: Party, sig: MulSig, pre, x: torch.Tensor, y=None, tag="mul"):
        L, me = sig.ell, party.rank
        y = x if y is None else y
        if tuple(x.shape) != tuple(sig.x_shape) or tuple(y.shape) != tuple(sig.y_shape):
            raise PrivQuantError(
                f"product: shares have shapes {tuple(x.shape)}, {tuple(y.shape)}; expected "
                f"{sig.x_shape}, {sig.y_shape}"
            )
        z = sig.z_shape
        xz = ring.reduce(x, L).expand(z).reshape(-1).numpy().view(np.uint64)
        yz = ring.reduce(y, L).expand(z).reshape(-1).numpy().view(np.uint64)
        groups = specs(sig)
        acc = (xz * yz).copy()  # the local term x_j * y_j (mod 2^64, reduced below)
        if groups:
            inputs = []
            for s, t in groups:
                if sig.square:
                    # 2*x0*x1: P0 chooses by bit t of x0, P1's value x1
                    inputs.append(_bits(xz, t - 1) if me == SERVER else xz.view(np.int64))
                elif s.chooser == me:
                    inputs.append(_bits(xz, t))  # bit t of x_me
                else:
                    inputs.append(yz.view(np.int64))  # y_me (times the other's x bits)
            shares = cotprod.online(party, [s for s, _ in groups], pre, inputs, tag)
            for (_s, t), sh in zip(groups, shares):
                acc += sh.view(np.uint64) << np.uint64(t)
        out = torch.from_numpy(acc.view(np.int64)).reshape(z)
        return ring.reduce(out, L)


OT_MUL = OtMul()

__all__ = ["OT_MUL", "OtMul", "specs"]
