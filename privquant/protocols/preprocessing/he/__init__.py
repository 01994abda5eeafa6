"""Dealer-free linear layers by lattice homomorphic encryption (Cheetah-style, BFV).

The server P0 holds integer weights ``W`` (``b_w``-bit signed), the client P1 a tensor ``A`` mod
``2^ell``; they end with additive shares of ``lin(W, A) mod 2^ell`` (P0: ``S``, P1:
``lin(W, A) - S``), bit-exact with :func:`privquant.protocols.linear.ring_lin`, for conv2d (any
stride, zero padding, groups incl. depthwise, batch) and linear layers. The same two-party
computation serves the Delphi-style preprocessing (``A`` a random mask, ``phase="offline"``) and
the Cheetah-style online use (``A`` the client's share, ``phase="online"``).

Modules: :mod:`.params` (security table, noise budget, flooding, compression widths),
:mod:`.layout` (coefficient packing), :mod:`.plan` (plan and closed-form ``cost``),
:mod:`.sealio` (SEAL objects as numpy arrays), :mod:`.protocol` (setup, client, server).

Library choice (checked on this machine, CPython 3.11 x86_64, ``pip install`` of wheels only):

* ``seal-python==4.4.0`` (Microsoft SEAL 4.x, pybind11, MIT): **used**. BFV with plaintext
  modulus ``t = 2^ell`` works (SEAL only needs ``t`` coprime to the odd primes); coefficient
  encoding and reading are SEAL plaintexts built from / read into numpy through SEAL's own
  uncompressed serialisation (:mod:`.sealio`); ``multiply_plain`` / ``sub_plain`` / ``add``, NTT
  forms, symmetric and public-key encryption, ``mod_switch_to``, ``invariant_noise_budget``;
  in-memory ``to_bytes`` / ``load_bytes`` with exact sizes. Missing: array access to
  coefficients (worked around as above), SEAL's seeded ``Serializable<Ciphertext>`` (worked
  around by re-seeding the uniform part with SEAL's own NTT products, :func:`.sealio.reseed`, so
  a query ciphertext still costs one polynomial plus a shared seed), and compressed
  serialisation (built without zstd/zlib -- irrelevant: the protocol packs residues itself to
  exact widths).
* ``tenseal==0.3.18``: its ``sealapi`` binds SEAL too (incl. seeded ``Serializable``) but saves
  and loads only through file paths, reads coefficients one Python call at a time, and
  serialises seeded objects with its default zstd compression (data-dependent size); its
  tensor API needs batching (a prime ``t``).
* ``openfhe`` (1.6.1.0.22.4 and older): the wheels carry only a CPython 3.10 extension
  (``openfhe.cpython-310-x86_64-linux-gnu.so``); no 3.11 wheel exists, so it cannot be imported.
* ``Pyfhel==3.5.0``: source distribution only (no wheel), ruled out by the install rule.

Noise control used: modulus switching (SEAL ``mod_switch_to``) after re-randomisation with a
public-key encryption of zero and explicit noise flooding (``2^-40`` statistical distance per
layer), plus dropping the low bits of the switched response (:mod:`.params`).
"""

from privquant.protocols.preprocessing.he.params import HeParams
from privquant.protocols.preprocessing.he.plan import HePlan, cost, plan, setup_cost
from privquant.protocols.preprocessing.he.protocol import PreparedWeights, client, server, setup
from privquant.protocols.preprocessing.he.sealio import ClientKeys, ServerKeys

__all__ = [
    "ClientKeys",
    "HeParams",
    "HePlan",
    "PreparedWeights",
    "ServerKeys",
    "client",
    "cost",
    "plan",
    "server",
    "setup",
    "setup_cost",
]
