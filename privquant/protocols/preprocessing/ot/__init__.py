"""The OT layer of the dealer-free mode (``--preprocessing ot``): P0 and P1 make every
correlation themselves with oblivious transfer (semi-honest, lambda = 128), like EzPC SCI/SiRNN.

Layers (one module per concern; each module's docstring gives its source, steps and exact cost):

* primitives: :mod:`.aes` (fixed-key AES, TCCR hash, AES-CTR streams), :mod:`.bitmatrix`
  (vectorized bit transposes), :mod:`.cost` (:class:`OtCost`: bits and rounds per phase,
  :func:`measured`, :class:`OtError`);
* base OT: :mod:`.baseot` (Chou-Orlandi on libsodium's edwards25519 prime-order group, both
  directions at once), :mod:`.ggm` (punctured GGM trees for SoftSpokenOT);
* OT extension: :mod:`.extension` -- :class:`OtSession` (setup once, then any number of batches,
  either party as sender; SoftSpokenOT with k in {1, 2, 4, 8}, k = 1 being IKNP): correlated OT
  with a global Delta, random OT, several requests per round (:meth:`OtSession.batch`);
* messages: :mod:`.messages` (chosen-message OT, correlated OT on rings, one-round
  bit-times-value products), :mod:`.nofn` (1-out-of-2^m OT from m random OTs);
* gadgets: :mod:`.triples` (AND triples, AND gates), :mod:`.b2a`, :mod:`.mux`, :mod:`.lut`
  (secret table lookup), :mod:`.millionaire` (comparison and MSB), :mod:`.gilboa` (products with
  weight bits as choice bits; ``linear_correlation`` for conv2d/linear).

Phases: base OTs and anything done once per session (the fixed-weight OTs of a layer) are
``setup``; OT-extension traffic made ahead of the inputs is ``offline``; derandomization and
everything that depends on the inputs is ``online``. Every gadget has an ``offline`` part (input-
independent OTs) and an ``online`` part, and a closed-form ``cost`` that the tests compare with
the measured traffic of both parties, per phase, bits and rounds.

Typical use (both parties run the same code with their own inputs)::

    s = OtSession(party, k=4); s.setup()
    t = triples.offline(s, n)                 # AND triples
    z = triples.and_gates(party, t, x, y)     # XOR shares of x & y
"""

from privquant.protocols.preprocessing.ot.cost import OtCost, OtError, measured
from privquant.protocols.preprocessing.ot.extension import (
    KS,
    CotRecv,
    CotSend,
    OtRequest,
    OtSession,
    RotRecv,
    RotSend,
    extend_cost,
    setup_cost,
)

__all__ = [
    "KS",
    "CotRecv",
    "CotSend",
    "OtCost",
    "OtError",
    "OtRequest",
    "OtSession",
    "RotRecv",
    "RotSend",
    "extend_cost",
    "measured",
    "setup_cost",
]
