"""Two-party shares of ``lin(W, A) mod 2^ell`` by BFV with coefficient encoding (semi-honest).

Source: Cheetah (Huang et al., USENIX Security 2022) HomConv / HomFC, with the server's response
made circuit-private by re-randomisation and noise flooding (Gentry 2009; as in Delphi/Gazelle's
"statistical circuit privacy"), then modulus-switched and bit-truncated as in Cheetah's
implementation. ``W`` (weights, ``b_w``-bit signed) is the server's (P0); ``A`` (a random mask in
the Delphi-style preprocessing, or the client's share in the Cheetah-style online use) is the
client's (P1). Outputs: P0 gets ``S``, P1 gets ``lin(W, A) - S``, both mod ``2^ell``, bit-exact
with :func:`privquant.protocols.linear.ring_lin`.

Setup, once per session and SEAL context (:func:`setup`):
  0. P1 makes a secret key ``s`` and a public key ``pk = (-(a s + e), a)`` and sends ``pk``.
     (P1's secret key never leaves :class:`~.sealio.ClientKeys`.)
Per layer (:func:`client`, :func:`server`), with the plan of :mod:`.plan`:
  1. P1 packs ``A`` into ``n_in`` polynomials (:mod:`.layout`), encrypts each under its own secret
     key (symmetric BFV: ``(round(Q m / t) + e - a s, a)``) with ``a`` expanded from a fresh
     seed (:func:`~.sealio.reseed`), and sends the seed and the ``c0`` parts.
  2. P0 packs ``W`` into weight polynomials and, per response, computes
     ``ct = sum_cb Enc(A_cb) * K_cb`` (plaintext products in NTT form), ``ct -= S`` (``S`` fresh
     uniform in ``Z_{2^ell}`` at the used coefficients, 0 elsewhere), ``ct += Enc_pk(0)``
     (re-randomises ``c1``, which would otherwise be ``a * K`` and give ``W`` away to P1, who
     knows ``a``), ``ct += (f, 0)`` with ``f`` the flood, then switches it down to ``q_1``.
  3. P0 sends ``c1`` (all ``n`` coefficients, top ``b1`` bits) and ``c0`` only at the used
     coefficients (top ``b0`` bits), for all responses in one message.
  4. P1 puts back the dropped bits (midpoint), decrypts with SEAL and reads its share
     ``lin(W, A) - S`` at the used coefficients. P0's share is ``S``.

Security (semi-honest, 128-bit computational + ``2^-sigma`` statistical, :mod:`.params`): P0 sees
only RLWE ciphertexts under P1's key and P1's public key. P1 sees, per response, ``c1`` after
re-randomisation -- ``a K + (p_1 u + e_2)``, pseudorandom under RLWE with the server's secret
ternary ``u`` -- and ``c0`` at the used coefficients, whose decryption is ``lin(W, A) - S`` plus
noise. All the noise that depends on ``W`` or on ``u`` is flooded: it is statistically within
``2^-sigma`` of the flood alone. Switching and truncation are public post-processing, done
coefficient by coefficient. The decrypted values are masked by the uniform ``S``; the other
coefficients of the plaintext (unmasked partial sums) stay hidden, since their ``c0``
coefficients are never sent and ``c1`` alone is pseudorandom. So P1's view is simulatable from
its output.

Cost: :func:`~.plan.cost` (query ``256 + n_in * n sum bitlen(q_i)`` bits, response
``n_out * n * b1 + |y| * b0`` bits rounded to bytes, 2 rounds); setup ``2 n sum bitlen`` per key.

Why SEAL through ``seal-python`` (see also the package docstring): it is the only maintained
wrapper with a CPython 3.11 x86_64 wheel that does BFV with a power-of-two plaintext modulus and
coefficient encoding, in-memory (de)serialisation, symmetric encryption and modulus switching.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.preprocessing.he.plan import PHASES, SEED_BYTES, HePlan, plan, plan_key
from privquant.protocols.preprocessing.he.sealio import (
    ClientKeys,
    ServerKeys,
    context_key,
    expand_uniform,
    pack_residues,
    unpack_residues,
)
from privquant.protocols.primitives import packing, ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


def _pk_tag(params) -> str:
    n, ell, bits = context_key(params)
    return f"he.pk:{n}:{ell}:{'-'.join(map(str, bits))}"


def setup(party: Party, params_list, phase: str = "setup") -> ClientKeys | ServerKeys:
    """Key setup for the given parameter sets (deduplicated by SEAL context, fixed order).

    P1 returns its :class:`ClientKeys` (secret keys), P0 the :class:`ServerKeys` (public keys).
    """
    uniq = {}
    for p in params_list:
        uniq.setdefault(context_key(p), p)
    order = [uniq[k] for k in sorted(uniq)]
    if party.rank == CLIENT:
        keys = ClientKeys()
        for p in order:
            party.send_raw(SERVER, keys.add(p), _pk_tag(p), phase=phase)
        return keys
    if party.rank == SERVER:
        skeys = ServerKeys()
        for p in order:
            skeys.add(p, party.recv_raw(CLIENT, p.pk_bits // 8, _pk_tag(p), phase=phase))
        return skeys
    raise PrivQuantError("the HE setup runs between the server and the client only")


def _tags(sig) -> tuple[str, str]:
    return f"he.query:{sig.key}", f"he.resp:{sig.key}"


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}")


# ------------------------------------------------------------------------------------ client
def client(
    party: Party, sig, w_bits: int, a: torch.Tensor, keys: ClientKeys, phase: str = "offline"
) -> torch.Tensor:
    """P1: encrypt ``a`` (shape ``sig.x_shape``, mod ``2^ell``), get back ``lin(W, a) - S``."""
    _check_phase(phase)
    pl = plan(sig, w_bits)
    if tuple(a.shape) != tuple(sig.x_shape):
        raise PrivQuantError(f"HE linear {sig.key!r}: input {tuple(a.shape)} != {sig.x_shape}")
    ctx, enc, dec = keys.get(pl.params)
    q_tag, r_tag = _tags(sig)

    party.send_raw(SERVER, encrypt_query(ctx, enc, pl, ring.reduce(a, sig.ell)), q_tag, phase=phase)

    buf = party.recv_raw(SERVER, pl.response_bytes, r_tag, phase=phase)
    return _decrypt_response(pl, ctx, dec, buf)


def encrypt_query(ctx, enc, pl: HePlan, a: torch.Tensor) -> np.ndarray:
    """P1's query: a fresh 32-byte seed, then the ``c0`` of each packed input polynomial
    encrypted under the secret key with uniform part ``expand_uniform(seed, i)``."""
    prm = pl.params
    polys = pl.layout.input_polys(pl.geo.effective_input(a.numpy())).reshape(-1, prm.n)
    seed = secrets.token_bytes(SEED_BYTES)
    c0 = np.empty((polys.shape[0], len(prm.data_primes), prm.n), dtype=np.uint64)
    for i, poly in enumerate(polys):
        c0[i] = enc.encrypt(poly, seed, i)
    return np.concatenate([np.frombuffer(seed, np.uint8), pack_residues(c0, prm.data_widths)])


def _decrypt_response(pl: HePlan, ctx, dec, buf: np.ndarray) -> torch.Tensor:
    prm, lay, geo = pl.params, pl.layout, pl.geo
    n, q1 = prm.n, np.uint64(prm.q1)
    c1 = packing.unpack(buf[: pl.response_c1_bytes], lay.n_resp * n, prm.b1).numpy()
    c0 = packing.unpack(buf[pl.response_c1_bytes :], pl.n_used, prm.b0).numpy()
    c1 = _expand(c1.view(np.uint64), prm.d1, q1).reshape(lay.n_resp, n)
    c0 = _expand(c0.view(np.uint64), prm.d0, q1)
    y_e = np.zeros((geo.batch, geo.m, geo.oh, geo.ow), dtype=np.int64)
    ct = np.zeros((2, 1, n), dtype=np.uint64)
    r = 0
    for b in range(geo.batch):
        for tile in range(lay.tiles):
            for ob in range(lay.nob):
                pos, (o, rr, cc) = lay.used(tile, ob)
                k = lay.c0_offset(b, tile, ob)
                ct[0, 0] = 0
                ct[0, 0, pos] = c0[k : k + pos.size]
                ct[1, 0] = c1[r]
                pt = dec.decrypt(ctx.load(ctx.ct_last, ct, "response"))
                y_e[b, o, rr, cc] = ctx.coeffs(pt)[pos].astype(np.int64)
                r += 1
    return torch.from_numpy(geo.output(y_e).copy())


def _expand(u: np.ndarray, d: int, q: np.uint64) -> np.ndarray:
    """Put back ``d`` dropped low bits as their midpoint, reduced mod ``q``."""
    if d == 0:
        return u % q
    v = (u << np.uint64(d)) + np.uint64(1 << (d - 1))
    return np.where(v >= q, v - q, v)


# ------------------------------------------------------------------------------------ server
class PreparedWeights:
    """The server's weight plaintexts of one layer in NTT form, made once per model load and
    reused by every :func:`server` call (saves the ``ncb * nob`` plaintext NTTs per inference;
    memory ``ncb * nob * n * L * 8`` bytes)."""

    def __init__(self, sig, w_bits: int, w: torch.Tensor, keys: ServerKeys):
        pl = plan(sig, w_bits)
        w = _checked_weights(sig, w_bits, w)
        ctx, _ = keys.get(pl.params)
        w_e = pl.geo.effective_weight(w.numpy())
        self.sig_key, self.w_bits = plan_key(sig), w_bits
        self.blocks = [weight_plaintexts(ctx, pl.layout, w_e, ob) for ob in range(pl.layout.nob)]


def _checked_weights(sig, w_bits: int, w) -> torch.Tensor:
    w = torch.as_tensor(w)
    if tuple(w.shape) != tuple(sig.w_shape):
        raise PrivQuantError(f"HE linear {sig.key!r}: weight {tuple(w.shape)} != {sig.w_shape}")
    lo, hi = -(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1
    if w.numel() and (int(w.min()) < lo or int(w.max()) > hi):
        raise PrivQuantError(f"HE linear {sig.key!r}: weights outside the {w_bits}-bit range")
    return w.to(torch.int64)


def server(
    party: Party,
    sig,
    w_bits: int,
    w: torch.Tensor | PreparedWeights,
    keys: ServerKeys,
    phase: str = "offline",
) -> torch.Tensor:
    """P0: with weights ``w`` (shape ``sig.w_shape``, ``w_bits``-bit signed, or prepared once by
    :class:`PreparedWeights`), serve P1's query and return P0's share ``S``."""
    _check_phase(phase)
    pl = plan(sig, w_bits)
    prm, lay, geo = pl.params, pl.layout, pl.geo
    if isinstance(w, PreparedWeights):
        if w.sig_key != plan_key(sig) or w.w_bits != w_bits:
            raise PrivQuantError(f"HE linear {sig.key!r}: weights prepared for another layer")
        blocks = w.blocks
    else:
        w_e = geo.effective_weight(_checked_weights(sig, w_bits, w).numpy())
        blocks = None
    ctx, pk_enc = keys.get(prm)
    q_tag, r_tag = _tags(sig)
    cts = load_query(ctx, pl, party.recv_raw(CLIENT, pl.query_bytes, q_tag, phase=phase))
    s_e = np.frombuffer(secrets.token_bytes(8 * geo.n_out), dtype=np.uint64)
    s_e = (s_e & np.uint64(prm.t - 1)).view(np.int64).reshape(geo.batch, geo.m, geo.oh, geo.ow)
    c1_out = np.empty((geo.batch, lay.tiles, lay.nob, prm.n), dtype=np.uint64)
    c0_out = np.empty(geo.n_out, dtype=np.uint64)
    for ob in range(lay.nob):
        kpt = blocks[ob] if blocks is not None else weight_plaintexts(ctx, lay, w_e, ob)
        for b in range(geo.batch):
            for tile in range(lay.tiles):
                pos, (o, rr, cc) = lay.used(tile, ob)
                base = (b * lay.tiles + tile) * lay.ncb
                spoly = np.zeros(prm.n, dtype=np.int64)
                spoly[pos] = s_e[b, o, rr, cc]
                terms = [(cts[base + cb], k) for cb, k in kpt.items()]
                ct = respond(ctx, pk_enc, terms, spoly, prm.beta)
                d = ctx.ct_data(ct)
                c1_out[b, tile, ob] = d[1, 0] >> np.uint64(prm.d1)
                k = lay.c0_offset(b, tile, ob)
                c0_out[k : k + pos.size] = d[0, 0, pos] >> np.uint64(prm.d0)
    msg = np.concatenate(
        [
            packing.pack(c1_out.reshape(-1).view(np.int64), prm.b1).numpy(),
            packing.pack(c0_out.view(np.int64), prm.b0).numpy(),
        ]
    )
    party.send_raw(CLIENT, msg, r_tag, phase=phase)
    return torch.from_numpy(geo.output(s_e).copy())


def load_query(ctx, pl: HePlan, buf: np.ndarray) -> list:
    """P1's query as SEAL ciphertexts in NTT form (PeerError on anything malformed)."""
    prm, lay = pl.params, pl.layout
    seed = bytes(buf[:SEED_BYTES])
    c0 = unpack_residues(buf[SEED_BYTES:], (lay.n_in,), prm.n, prm.data_primes, "HE query")
    cts = []
    for i in range(lay.n_in):
        c1 = expand_uniform(seed, i, prm.data_primes, prm.n)
        ct = ctx.load(ctx.ct_first, np.stack([c0[i], c1]), "HE query ciphertext")
        ctx.evaluator.transform_to_ntt_inplace(ct)
        cts.append(ct)
    return cts


def weight_plaintexts(ctx, lay, w_e: np.ndarray, ob: int) -> dict:
    """NTT-form weight plaintexts of output block ``ob``, for the channel blocks it meets."""
    polys = lay.weight_polys(w_e, ob) % np.int64(ctx.params.t)
    live = np.flatnonzero(lay.pairs[:, ob]).tolist()
    return {cb: ctx.evaluator.transform_to_ntt(ctx.plaintext(polys[cb]), ctx.first) for cb in live}


def respond(ctx, pk_enc, terms, spoly: np.ndarray, beta: int):
    """One response before compression: ``sum ct*K - S + Enc_pk(0) + (f, 0)``, switched to q_1,
    with the flood ``f`` uniform on ``[-2^beta, 2^beta)``."""
    ev = ctx.evaluator
    acc = None
    for ct, k in terms:
        prod = ev.multiply_plain(ct, k)
        if acc is None:
            acc = prod
        else:
            ev.add_inplace(acc, prod)
    ev.transform_from_ntt_inplace(acc)
    ev.sub_plain_inplace(acc, ctx.plaintext(spoly))
    ev.add_inplace(acc, pk_enc.encrypt_zero())
    ev.add_inplace(acc, ctx.flood(beta))
    ev.mod_switch_to_inplace(acc, ctx.last)
    return acc
