"""PrivQuant's two-party protocol layer (P0 = server, P1 = client, D = dealer).

Modules
=======

==========================  ===================================================================
``ring``                    shares in Z_2^ell (int64, reduced, 2 <= ell <= 62), XOR bit shares
``packing``                 ell-bit values <-> exactly ceil(n*ell/8) bytes; 1-bit packing
``channel``                 ``Party``, 16-byte header, ``CommStats`` per party/scope, Lamport rounds
``transport_thread``        in-process queues; ``simulate(fn0, fn1, dealer_fn)``
``transport_crypten``       CrypTen communicator (gloo): ``init_communicator``, ``CryptenTransport``
``dealer``                  seeds, ``Correlations`` (one code path for P0/P1/D), simulated dealer
``cost``                    ``Cost(online_bits, offline_bits, setup_bits, rounds)``, then/alongside
``base``                    the ``Protocol`` interface: cost / setup / offline / online
``compare``                 prefix circuits [public < mask], AND gates with shared openings;
                            the ``x >= T`` protocol
``bitpoly``                 one-opening evaluation of polynomials in masked bits (B2A + products)
``basic``                   open, open_to, input, output, sumpool, flatten, pre-sum, bias add
``linear``                  conv2d / linear with server-known weights
``requant``                 fused requantization (+ the unfused ablation)
``maxpool``                 tree of pairwise maxima
``sim``                     ``run_protocol``: one protocol end to end over threads
==========================  ===================================================================

Catalogue and cost formulas
===========================

Totals over both parties; ``n`` elements, ``ell``/``L`` the ring, ``L'`` the output ring.
Online bits are what P0 and P1 send each other, offline bits what the dealer sends (P1's
corrections; every share P0 needs and every random share of P1 is derived from seeds), setup bits
once per model load.

==================  ==============================  ==================  ==========  ============
protocol            online bits                     offline bits        setup bits  rounds
==================  ==============================  ==================  ==========  ============
open                2*n*ell                         0                   0           1
open_to / output    n*ell                           0                   0           1
input               0 (common randomness)           0                   0           0
sumpool, flatten,   0                               0                   0           0
pre-sum, bias add
linear (conv/fc)    |x|*ell                         |y|*ell             |W|*ell     1
compare engine      2*U                             G                   0           D
compare (x >= T)    2*n*ell + 2*U                   n*ell + G           0           1 + D
requant (fused)     2*n*L + 2*U + 2*n*V             n*rbits + G         0           1 + D + [V>0]
                                                    + n*L'*I
requant (unfused)   sum over its 3 steps (truncation in L, clip in L, extension L -> L')
maxpool, per level  2*n*L + 2*U + 2*n               n*L + G + 2*n*L     0           2 + D
  last level if     4*n*L + 2*U + 6*n               n*(2L-1) + G        0           2 + D
  L' > L                                            + 7*n*L'
seeds               --                              --                  384         --
==================  ==============================  ==================  ==========  ============

``U`` = operand openings and ``G`` = AND gates of the prefix circuits (:mod:`.compare`: 2 bits
per opening, 1 correction bit per gate), ``D`` = circuit depth; ``V`` = opened bits and ``I`` =
dealer items of a selection polynomial (:mod:`.bitpoly`). Requant: ``D = max(ceil(log2 k),
ceil(log2 m)) + [k > 0 and m > 0]`` with ``m = L-1-k`` (msb mode) or ``L-k`` (rabbit mode).
Example, ``L = 20, k = 12, L' = 20``, ReLU + 4-bit clip (form ``adom``), per element:
``U = 68, G = 44, V = 4, I = 15``: online 40 + 136 + 8 = 184 bits, offline 20 + 44 + 300 = 364
bits, 7 rounds (unfused: 390 online bits, 14 rounds). Every protocol's ``cost(sig)`` computes
its formula in closed form; the tests check it against the measured traffic exactly.

Using it (the runtime walker)
=============================

::

    rings = privquant.program.ring_bits(program)
    # per process: one Party (rank 0 server, 1 client, 2 dealer) on a transport
    init_communicator(rank, "tcp://127.0.0.1:29500", timeout=60)      # real processes
    party = Party(rank, CryptenTransport(timeout=60))
    seeds = establish_seeds(party)                                     # setup phase, 384 bits
    corr = make_correlations(party, seeds)
    for op in program.ops:                                             # model load
        kind = privquant.ops.get(op.kind)   # the op table (privquant.ops)
        proto, sig = kind.protocol(backend), kind.signature(op, program, rings, batch)
        state[op] = proto.setup(corr, sig, op.arrays if rank == 0 else None)
    for op in program.ops:                                             # offline (all 3 roles)
        pre[op] = proto.offline(corr, sig, state[op])
    for op in program.ops:                                             # online (P0, P1)
        with party.scope(op.name):                   # input op: P1 passes x, P0 nothing
            env[op.output] = proto.online(party, sig, pre[op], *[env[i] for i in op.inputs])
    party.close()                                    # flush pending sends (the dealer too!)
    shutdown_communicator()

Scopes: wrapping setup/offline/online of a layer in the same scope name is fine; each entry
measures that layer's rounds per phase from synchronized clocks (the scope clock), so per-layer
rounds equal ``cost()``; the session depth (``party.stats``) can be lower than their sum when
consecutive layers overlap. tests/protocols/test_proto_program.py has a complete walker.
"""

from privquant.protocols.base import LocalProtocol, Protocol
from privquant.protocols.basic import (
    FLATTEN,
    INPUT,
    OPEN,
    OPEN_TO,
    OUTPUT,
    SUMPOOL,
    FlattenSig,
    InputSig,
    OpenSig,
    OpenToSig,
    SumpoolSig,
    add_public,
    presum,
)
from privquant.protocols.compare import COMPARE, CompareSig
from privquant.protocols.harness import ProtocolRun, run_protocol
from privquant.protocols.linear import LINEAR, LinearSig
from privquant.protocols.maxpool import MAXPOOL, MaxpoolSig
from privquant.protocols.preprocessing.dealer import (
    SEED_SETUP_COST,
    Correlations,
    Seeds,
    SimulatedCorrelations,
    establish_seeds,
    make_correlations,
    simulated_dealer_book,
)
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.protocols.primitives.ring import RingWidthError
from privquant.protocols.requant import REQUANT, REQUANT_UNFUSED, RequantOpSig, RequantSig
from privquant.protocols.transport.channel import (
    CLIENT,
    DEALER,
    HEADER_BYTES,
    SERVER,
    CommStats,
    Party,
    StatsBook,
    Transport,
    combine,
)
from privquant.protocols.transport.crypten import (
    CryptenTransport,
    init_communicator,
    shutdown_communicator,
)
from privquant.protocols.transport.thread import SimResult, ThreadHub, ThreadTransport, simulate

__all__ = [
    "CLIENT",
    "COMPARE",
    "DEALER",
    "FLATTEN",
    "HEADER_BYTES",
    "INPUT",
    "LINEAR",
    "MAXPOOL",
    "OPEN",
    "OPEN_TO",
    "OUTPUT",
    "REQUANT",
    "REQUANT_UNFUSED",
    "SEED_SETUP_COST",
    "SERVER",
    "SUMPOOL",
    "ZERO",
    "CommStats",
    "CompareSig",
    "Correlations",
    "Cost",
    "CryptenTransport",
    "FlattenSig",
    "InputSig",
    "LinearSig",
    "LocalProtocol",
    "MaxpoolSig",
    "OpenSig",
    "OpenToSig",
    "Party",
    "Protocol",
    "ProtocolRun",
    "RequantOpSig",
    "RequantSig",
    "RingWidthError",
    "Seeds",
    "SimResult",
    "SimulatedCorrelations",
    "StatsBook",
    "SumpoolSig",
    "ThreadHub",
    "ThreadTransport",
    "Transport",
    "add_public",
    "combine",
    "establish_seeds",
    "init_communicator",
    "make_correlations",
    "presum",
    "run_protocol",
    "shutdown_communicator",
    "simulate",
    "simulated_dealer_book",
]
