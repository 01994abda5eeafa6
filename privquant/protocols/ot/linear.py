"""Linear layers (conv2d incl. stride/padding/groups/depthwise, and linear) with server-known
weights, without a dealer; the correlation made per layer by OT or by HE, whichever ``cost()``
finds cheaper.

Online: exactly the dealer protocol's (:mod:`privquant.protocols.linear`): P1 sends
``M = x1 - A1`` and P0 computes ``lin(W, x0 + M) = lin(W, x - A1)``. Here ``A1`` is P1's own
mask (uniform in ``Z_2^ell``, OS CSPRNG, drawn offline) and P0 has no mask share (``A0 = 0``,
no masked weights ``F``); the per-inference correlation is additive shares ``S0 + S1 =
lin(W, A1) mod 2^ell``, made offline by one of two dealer-free constructions:

* ``ot`` (:func:`privquant.protocols.preprocessing.ot.gilboa.linear_correlation`, SiRNN's
  orientation): P0's weight bits are the OT choice bits; the ``|W| * b_w`` chosen-choice OTs
  depend only on the weights and are made once per model load (setup); per inference P1 sends
  one correlated message per weight bit and output position, ``ell - t`` bits for bit ``t``.
* ``he`` (:mod:`privquant.protocols.preprocessing.he`, Delphi-style use of Cheetah's
  coefficient-encoded BFV): P1 encrypts ``A1`` under its own key, P0 multiplies by its weight
  polynomials (prepared once per model load), subtracts a fresh ``S0``, re-randomizes, floods and
  returns; P1 decrypts ``S1 = lin(W, A1) - S0``. The public keys, one per SEAL context, are made
  by the first layer that needs the context, in the scope :data:`HE_KEYS_SCOPE` (session setup,
  not part of a layer's cost: :func:`he_keys_cost`).

Steps: setup (per model load) -- ``ot``: the weight-bit OTs; ``he``: P0 prepares its weight
plaintexts (local). Offline (per inference) -- P1 draws ``A1``; the correlation. Online -- P1
sends ``x1 - A1``; P0: ``y0 = lin(W, x - A1) + S0 + bias``; P1: ``y1 = S1``.
``y0 + y1 = lin(W, x) + bias``. P0 sees ``x`` masked by the uniform ``A1``; P1 sees only OT and
RLWE messages (see the two modules for their security arguments).

Choice (:meth:`OtLinear.method`): the construction with the fewer total bits (online + offline +
setup; the HE public keys are shared by all layers of a context and not counted), ties to fewer
rounds (``ot``: 1 offline round, ``he``: 2). Cost (``E = |W|``, ``M`` = output positions per
weight element, ``b = b_w``)::

    online  = |x| * ell bits, 1 round                                   (both)
    ot:  setup = (128/k) * E * b bits, 1 round;  offline = E*M*(b*ell - b*(b-1)/2) bits, 1 round
    he:  offline = 8 * (query + response bytes) of he.plan(sig, b_w), 2 rounds
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.linear import LinearSig, ring_lin
from privquant.protocols.ot.common import (
    DEFAULT_K,
    SEND10,
    OtProtocol,
    private_ring,
    session_of,
)
from privquant.protocols.preprocessing import he
from privquant.protocols.preprocessing.he.protocol import _decrypt_response as decrypt_response
from privquant.protocols.preprocessing.he.protocol import _tags as he_tags
from privquant.protocols.preprocessing.he.protocol import encrypt_query
from privquant.protocols.preprocessing.he.sealio import context_key
from privquant.protocols.preprocessing.ot import gilboa
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party

HE_KEYS_SCOPE = "he.keys"
METHODS = ("ot", "he")


@dataclass
class _HeStore:
    keys: object = None  # ClientKeys (P1) or ServerKeys (P0)
    contexts: set | None = None


def he_keys(corr, params):
    """This party's HE key holder with a key for ``params``'s SEAL context: the first call for a
    context runs the key exchange (P1 -> P0 public key, phase ``setup``) in scope
    :data:`HE_KEYS_SCOPE`. The store lives on the provider object (one per session)."""
    store = corr.__dict__.setdefault("_he_store", _HeStore(contexts=set()))
    key = context_key(params)
    if key not in store.contexts:
        party = corr.party
        with party.scope(HE_KEYS_SCOPE):
            if corr.role == CLIENT:
                store.keys = store.keys or he.ClientKeys()
                party.send_raw(SERVER, store.keys.add(params), _pk_tag(key), phase="setup")
            else:
                store.keys = store.keys or he.ServerKeys()
                buf = party.recv_raw(CLIENT, params.pk_bits // 8, _pk_tag(key), phase="setup")
                store.keys.add(params, buf)
        store.contexts.add(key)
    return store.keys


def _pk_tag(key) -> str:
    n, ell, bits = key
    return f"he.pk:{n}:{ell}:{'-'.join(map(str, bits))}"


def he_keys_cost(sigs) -> OtCost:
    """Setup cost of the HE public keys of the layers ``sigs`` that use HE: one per distinct SEAL
    context of their one-sample plans, each a P1 -> P0 message made when first needed (so the
    scope's setup depth is the number of contexts)."""
    params = [he.plan(one_sample(s), s.w_bits).params for s in sigs if method(s) == "he"]
    c = he.setup_cost(params)
    return OtCost(setup_bits=c.setup_bits, setup_rounds=len({context_key(p) for p in params}))


def _w_bits(sig: LinearSig) -> int:
    b = int(sig.w_bits)
    if not 1 <= b <= 16:
        raise PrivQuantError(f"layer {sig.key!r}: weight width must be 1..16 bits, got {b}")
    return b


def _nx(sig: LinearSig) -> int:
    return int(np.prod(sig.x_shape))


def ot_cost(k: int, sig: LinearSig) -> OtCost | None:
    """Cost of the ``ot`` construction (None if it does not apply, e.g. 1-bit weights)."""
    b = _w_bits(sig)
    if not 2 <= b <= 16 or sig.ell <= b - 1:
        return None
    return gilboa.setup_cost(k, sig, b).then(gilboa.use_cost(sig, b))


def he_cost(sig: LinearSig) -> OtCost | None:
    """Cost of the ``he`` construction (None if no secure parameters exist): the one-sample plan
    once per sample, all queries in one message round and all responses in the next."""
    try:
        bits = he.plan(one_sample(sig), _w_bits(sig)).bits
    except PrivQuantError:
        return None
    return OtCost(offline_bits=int(sig.x_shape[0]) * bits, offline_rounds=2)


def _total(c: OtCost) -> int:
    return c.online_bits + c.offline_bits + c.setup_bits


@functools.lru_cache(maxsize=4096)
def _method(sig: LinearSig, k: int) -> str:
    cands = [(m, c) for m, c in (("ot", ot_cost(k, sig)), ("he", he_cost(sig))) if c is not None]
    if not cands:
        raise PrivQuantError(f"layer {sig.key!r}: no dealer-free linear construction applies")
    return min(cands, key=lambda mc: (_total(mc[1]), mc[1].offline_rounds, mc[0]))[0]


def method(sig: LinearSig, k: int | None = None) -> str:
    """``"ot"`` or ``"he"``: the construction :class:`OtLinear` uses for ``sig``, decided on one
    sample (the setup runs once per session, before the batch size of an inference is known)."""
    return _method(one_sample(sig), DEFAULT_K if k is None else k)


def one_sample(sig: LinearSig) -> LinearSig:
    """``sig`` with batch 1 (and no layer name): what the construction is chosen on."""
    return replace(sig, x_shape=(1, *sig.x_shape[1:]), key="")


@dataclass
class OtLinearState:
    method: str
    w: torch.Tensor | None = None  # P0
    bias: torch.Tensor | None = None  # P0
    gilboa: gilboa.LinearOtState | None = None
    prepared: he.PreparedWeights | None = None  # P0's weight plaintexts (one-sample plan)


@dataclass
class OtLinearPre:
    a: torch.Tensor | None  # P1's mask A1
    z: torch.Tensor  # P0: S0 + bias, P1: S1
    state: OtLinearState


class OtLinear(OtProtocol):
    """Conv2d / linear without a dealer (see the module docstring)."""

    kind = "linear"
    forced: str | None = None  # tests: force one construction

    def method(self, sig: LinearSig) -> str:
        return self.forced or method(sig, self.k)

    def full_cost(self, sig: LinearSig) -> OtCost:
        m = self.method(sig)
        c = ot_cost(self.k, sig) if m == "ot" else he_cost(sig)
        if c is None:
            raise PrivQuantError(f"layer {sig.key!r}: construction {m!r} does not apply")
        return OtCost(online_bits=_nx(sig) * sig.ell, online_rounds=1).then(c)

    def online_steps(self, sig: LinearSig) -> list[str]:
        return [SEND10]

    def setup(self, corr, sig: LinearSig, params=None) -> OtLinearState:
        ring.check_ell(sig.ell)
        b = _w_bits(sig)
        m = self.method(sig)
        st = OtLinearState(m)
        if corr.role == SERVER:
            if params is None or "weight" not in params:
                raise PrivQuantError(f"layer {sig.key!r}: the server has no weights")
            w = torch.as_tensor(np.asarray(params["weight"]).astype(np.int64))
            if tuple(w.shape) != tuple(sig.w_shape):
                raise PrivQuantError(
                    f"layer {sig.key!r}: weight shape {tuple(w.shape)} != {tuple(sig.w_shape)}"
                )
            lo, hi = -(1 << (b - 1)), (1 << (b - 1)) - 1
            if w.numel() and (int(w.min()) < lo or int(w.max()) > hi):
                raise PrivQuantError(f"layer {sig.key!r}: weights exceed the {b}-bit range")
            bias = params.get("bias")
            st.bias = (
                torch.as_tensor(np.asarray(bias).astype(np.int64))
                if bias is not None
                else torch.zeros(sig.w_shape[0], dtype=torch.int64)
            )
            st.w = w
        if m == "ot":
            session = session_of(corr, self.k)
            st.gilboa = gilboa.setup(session, sig, b, st.w)
        else:
            self._he_material(corr, sig, st)
        return st

    @staticmethod
    def _he_material(corr, sig: LinearSig, st: OtLinearState):
        """HE keys for the one-sample plan's context and, at P0, its weight plaintexts (once per
        model load: every batch runs the one-sample plan per sample)."""
        b, one = _w_bits(sig), one_sample(sig)
        keys = he_keys(corr, he.plan(one, b).params)
        if corr.role == SERVER and st.prepared is None:
            st.prepared = he.PreparedWeights(one, b, st.w, keys)
        return keys, st.prepared

    def _he_offline(self, corr, sig: LinearSig, st: OtLinearState, a):
        """Shares of ``lin(W, A1)`` by HE, one query per sample: P1 sends every query, then P0
        answers each (2 offline rounds for the whole batch)."""
        b, one = _w_bits(sig), one_sample(sig)
        keys, prepared = self._he_material(corr, sig, st)
        party, n = corr.party, int(sig.x_shape[0])
        one = replace(one, key=sig.key)
        if corr.role == SERVER:
            return torch.cat([he.server(party, one, b, prepared, keys) for _ in range(n)])
        pl = he.plan(one, b)
        ctx, enc, dec = keys.get(pl.params)
        q_tag, r_tag = he_tags(one)
        for i in range(n):
            query = encrypt_query(ctx, enc, pl, ring.reduce(a[i : i + 1], sig.ell))
            party.send_raw(SERVER, query, q_tag, phase="offline")
        outs = []
        for _ in range(n):
            buf = party.recv_raw(SERVER, pl.response_bytes, r_tag, phase="offline")
            outs.append(decrypt_response(pl, ctx, dec, buf))
        return torch.cat(outs)

    def offline(self, corr, sig: LinearSig, state: OtLinearState = None) -> OtLinearPre:
        if state is None:
            raise PrivQuantError(f"layer {sig.key!r}: setup must run before offline")
        _w_bits(sig)
        ell = sig.ell
        a = private_ring(sig.x_shape, ell) if corr.role == CLIENT else None
        if state.method == "ot":
            g = state.gilboa  # the setup's OTs serve every batch size: only the geometry changes
            g.sig, setup_sig = sig, g.sig
            try:
                s = gilboa.linear_correlation(
                    session_of(corr, self.k), g, a, tag=f"ot.gilboa:{sig.key}"
                )
            finally:
                g.sig = setup_sig
        else:
            s = self._he_offline(corr, sig, state, a)
        if corr.role == SERVER:
            s = s + state.bias.reshape((1, -1) + (1,) * (len(sig.y_shape) - 2))
        return OtLinearPre(a, ring.reduce(s, ell), state)

    def online(self, party: Party, sig: LinearSig, pre: OtLinearPre, x: torch.Tensor):
        if tuple(x.shape) != tuple(sig.x_shape):
            raise PrivQuantError(
                f"layer {sig.key!r}: input share has shape {tuple(x.shape)}, expected {sig.x_shape}"
            )
        ell = sig.ell
        x = ring.reduce(x, ell)
        if party.rank == CLIENT:
            party.send(SERVER, ring.reduce(x - pre.a, ell), ell, "linear.in")
            return pre.z
        m = party.recv(CLIENT, sig.x_shape, ell, "linear.in")
        e = ring.reduce(x + m, ell)
        return ring.reduce(ring_lin(sig, pre.state.w, e) + pre.z, ell)


OT_LINEAR = OtLinear()

__all__ = ["HE_KEYS_SCOPE", "OT_LINEAR", "OtLinear", "he_keys", "he_keys_cost", "method"]
