"""PrivQuant's two-party protocol layer (P0 = server, P1 = client, D = dealer).

Layers (each depends only on the ones above it, never on the integer program or quantization)
============================================================================================

==========================  ===================================================================
``primitives/``             rings Z_2^ell and XOR bits, exact bit packing, PRG, the ``Cost``
                            algebra, window geometry
``transport/``              ``Party`` and accounting (``channel``), in-process threads
                            (``thread``), CrypTen/gloo (``crypten``), TLS 1.3 (``net``,
                            ``tls``, ``framing``, ``keys``)
``preprocessing/``          correlated randomness *by kind* (``base``: ``Need``, ``Provider``,
                            costs per provider): ``dealer``, ``simulated`` (tests), ``ot``
                            (base OTs, OT extension, gadgets), ``he`` (lattice HE linear layers)
protocols (this package)    one shape (``base.Protocol``: ``online_cost``, ``needs``, ``cost``,
                            ``setup``, ``offline``, ``online``): building blocks ``compare``
                            (prefix circuit; ``x >= T``), ``bitpoly`` (one-opening selection
                            polynomial), ``lift`` (known-MSB ring extension); per-op protocols
                            ``basic`` (open, input, output, local ops), ``linear``, ``requant``
                            (fused and unfused), ``maxpool``, ``lut`` (table lookups),
                            ``mul`` (Beaver products)
                            (fused and unfused), ``maxpool``, ``argmax`` (secure top-k)
``harness``                 ``run_protocol`` / ``run_roles``: one protocol end to end over threads
``catalogue``               the table below, rendered from the code
==========================  ===================================================================

Catalogue
=========

Bits (totals over all parties) and rounds under dealer preprocessing, rendered by
``catalogue.render()`` from each protocol's ``cost()``; a test keeps this table equal to the code.

.. catalogue-begin

=========================  =========================  ======  =======  =====  ======
protocol                   signature                  online  offline  setup  rounds
=========================  =========================  ======  =======  =====  ======
open                       n=1000, ell=16             32000   0        0      1
open_to / output           n=1000, ell=16             16000   0        0      1
linear conv 16->32, 3x3    8x8, ell=20                20480   40960    92160  1
circuit (1 job, 19 bits)   n=1000                     30000   33000    0      3
compare x >= 0             n=1000, ell=20             70000   53000    0      4
lift Z_2^5 -> Z_2^20       n=1000                     2000    20000    0      1
requant ReLU + 4-bit clip  n=1000, L=20, k=12, L'=20  92000   133000   0      6
requant (unfused)          n=1000, L=20, k=12, L'=20  158000  219000   0      12
maxpool 2x2                8x8x16 in, 4-bit, L=6      13824   18432    0      6
lut 4-bit -> Z_2^16        n=1000, 4-bit output       10000   96000    0      2
mul x * y                  n=1000, ell=16             64000   16000    0      1
argmax (label)             1 image, 10 classes, L=16  3456    3168     0      6
top-3                      1 image, 10 classes, L=16  3464    2940     0      7
=========================  =========================  ======  =======  =====  ======

Without a dealer (``ot``: OT extension, SoftSpokenOT k = 4; the same signatures;
per-session setup such as base OTs and HE keys is not shown):

=========================  ======  =======  =====  ======
protocol                   online  offline  setup  rounds
=========================  ======  =======  =====  ======
open                       32000   0        0      1
open_to / output           16000   0        0      1
linear conv 16->32, 3x3    20480   2830592  0      1
circuit (1 job, 19 bits)   -       -        -      -
compare x >= 0             226000  794000   0      4
lift Z_2^5 -> Z_2^20       16000   31000    0      1
requant ReLU + 4-bit clip  298000  1259000  0      7
requant (unfused)          711000  2023000  0      11
maxpool 2x2                39936   170496   0      5
lut 4-bit -> Z_2^16        96000   155000   0      3
mul x * y                  304000  992000   0      1
argmax (label)             8987    34992    0      6
top-3                      9166    30692    0      7
=========================  ======  =======  =====  ======

.. catalogue-end

Online bits are what P0 and P1 send each other, offline bits what the provider's correlations
cost (the dealer's corrections; both parties' OT traffic in ``ot`` mode), setup bits once per
model load. Each module's docstring gives the protocol's source, steps and cost formula.

Using it: the runtime walker (``privquant.runtime``) takes each op's protocol and signature from
the op table (``privquant.ops``) and runs ``setup`` (per model load), ``offline`` (all three
roles; the dealer runs only this) and ``online`` (P0, P1) per layer scope;
tests/protocols/test_proto_program.py has a complete minimal walker.
"""

from privquant.protocols.base import LocalProtocol, Protocol
from privquant.protocols.preprocessing.base import Need, Provider, Rand, Unavailable
from privquant.protocols.preprocessing.dealer import (
    SEED_SETUP_COST,
    DealerProvider,
    Seeds,
    establish_seeds,
    make_provider,
)
from privquant.protocols.primitives.cost import ZERO, Cost
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
    "DEALER",
    "HEADER_BYTES",
    "SEED_SETUP_COST",
    "SERVER",
    "ZERO",
    "CommStats",
    "Cost",
    "CryptenTransport",
    "DealerProvider",
    "LocalProtocol",
    "Need",
    "Party",
    "Protocol",
    "Provider",
    "Rand",
    "Seeds",
    "SimResult",
    "StatsBook",
    "ThreadHub",
    "ThreadTransport",
    "Transport",
    "Unavailable",
    "combine",
    "establish_seeds",
    "init_communicator",
    "make_provider",
    "shutdown_communicator",
    "simulate",
]
