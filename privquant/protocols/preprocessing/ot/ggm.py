"""All-but-one (punctured) GGM trees: (2^k - 1)-out-of-2^k random OT from k random 1-of-2 OTs.

Source: Goldreich-Goldwasser-Micali trees as used by SoftSpokenOT (L. Roy, CRYPTO 2022, section 4:
"small-field VOLE from (N-1)-of-N OT", the tree of Boyle et al. / Kolesnikov et al.).

Each of ``B`` trees has depth ``k`` and ``2^k`` leaves numbered ``x`` in natural order
(depth-``d`` node ``j`` has children ``2j`` (left, beta = 0) and ``2j+1``; the path to leaf ``x``
reads the bits of ``x`` MSB first). The *holder* (who will know every leaf) holds the ``k``
random-OT pairs ``(m_{b,d}^0, m_{b,d}^1)``, ``d = 1..k``, of each tree; the *puncturer* holds the
point ``alpha_b`` and received ``m_{b,d}^{not alpha_{b,d}}`` (``alpha_{b,d}`` = bit ``k-d`` of
``alpha_b``).

* depth-1 nodes are the OT keys of level 1 themselves: ``node_1[beta] = m_{b,1}^beta``;
* depth ``d >= 2``: every node ``s`` at depth ``d-1`` gets children
  ``G_beta(s) = H(s, tw(d, beta))`` (the TCCR hash of :mod:`.aes` under fixed-key AES, domain
  :data:`DOMAIN_GGM`); the holder sends
  ``e_{b,d}^beta = K_{b,d}^beta xor m_{b,d}^beta`` where ``K^beta`` is the XOR of all depth-``d``
  children on side ``beta``;
* the puncturer expands every node it knows, and recovers the sibling of its path at depth ``d`` as
  ``e^{not alpha_d} xor m^{not alpha_d} xor (XOR of its other known children on that side)``.

The puncturer ends with every leaf except ``alpha_b``. Message: ``B*(k-1)*2*128`` bits, holder to
puncturer, one message (:func:`correction_bits`).
"""

from __future__ import annotations

import numpy as np

from privquant.protocols.preprocessing.ot.aes import FixedKeyAes, tccr, tweaks

DOMAIN_GGM = 4


def correction_bits(trees: int, k: int) -> int:
    """Bits of the holder's correction message for ``trees`` trees of depth ``k``."""
    return trees * (k - 1) * 2 * 128


def _children(pi: FixedKeyAes, nodes: np.ndarray, depth: int) -> np.ndarray:
    """(B, w, 16) depth-(depth-1) nodes -> (B, 2w, 16) depth-``depth`` nodes."""
    b, w, _ = nodes.shape
    flat = np.ascontiguousarray(nodes).reshape(-1, 16)
    out = np.empty((b, w, 2, 16), dtype=np.uint8)
    for beta in (0, 1):
        tw = tweaks(depth, flat.shape[0], sub=beta, domain=DOMAIN_GGM)
        # tweak index = depth for every node: inputs are independent random seeds
        tw[:] = tw[0]
        out[:, :, beta, :] = tccr(pi, flat, tw).reshape(b, w, 16)
    return out.reshape(b, 2 * w, 16)


def holder(pairs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` (B, k, 2, 16): the OT pairs of level ``d = 1..k`` of each tree.

    Returns ``(leaves (B, 2^k, 16), corrections (B, k-1, 2, 16))``."""
    bt = pairs.shape[0]
    pi = FixedKeyAes()
    nodes = pairs[:, 0, :, :].copy()  # depth 1
    corr = np.empty((bt, max(k - 1, 0), 2, 16), dtype=np.uint8)
    for d in range(2, k + 1):
        nodes = _children(pi, nodes, d)
        for beta in (0, 1):
            kx = np.bitwise_xor.reduce(nodes[:, beta::2, :], axis=1)
            corr[:, d - 2, beta] = kx ^ pairs[:, d - 1, beta]
    return nodes, corr


def puncturer(keys: np.ndarray, alpha: np.ndarray, corr: np.ndarray, k: int) -> np.ndarray:
    """``keys`` (B, k, 16): ``m_{b,d}^{not alpha_{b,d}}``; ``alpha`` (B,) ints in [0, 2^k);
    ``corr`` the holder's corrections. Returns the leaves (B, 2^k, 16), leaf ``alpha_b`` zero."""
    bt = keys.shape[0]
    alpha = np.asarray(alpha, dtype=np.int64)
    rows = np.arange(bt)
    pi = FixedKeyAes()
    nodes = np.zeros((bt, 2, 16), dtype=np.uint8)
    a1 = (alpha >> (k - 1)) & 1
    nodes[rows, 1 - a1] = keys[:, 0]
    for d in range(2, k + 1):
        nodes = _children(pi, nodes, d)
        path = alpha >> (k - d + 1)  # the unknown node at depth d-1
        nodes[rows, 2 * path] = 0
        nodes[rows, 2 * path + 1] = 0
        ad = (alpha >> (k - d)) & 1
        side = 1 - ad  # the sibling of the path at depth d is on this side
        known = np.bitwise_xor.reduce(nodes[:, 0::2, :], axis=1)
        known_r = np.bitwise_xor.reduce(nodes[:, 1::2, :], axis=1)
        known = np.where(side[:, None] == 0, known, known_r)
        kside = corr[rows, d - 2, side] ^ keys[:, d - 1]
        nodes[rows, 2 * path + side] = kside ^ known
    if k == 1:
        nodes = nodes.copy()
    return nodes
