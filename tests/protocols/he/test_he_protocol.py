"""HE linear layer end to end (SEAL): exact shares, measured == declared cost, the parties'
views, the decryption-noise margin, hostile input."""

import numpy as np
import pytest
import seal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.errors import PeerError, PrivQuantError
from privquant.protocols.linear import LinearSig, ring_lin
from privquant.protocols.preprocessing import he
from privquant.protocols.preprocessing.he import protocol as P
from privquant.protocols.preprocessing.he import sealio
from privquant.protocols.preprocessing.he.plan import plan
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import combine
from privquant.protocols.transport.thread import simulate


def _record(party, log):
    orig = party.transport.post_send

    def post(dst, header, payload):
        log.append((dst, bytes(np.asarray(payload, dtype=np.uint8))))
        return orig(dst, header, payload)

    party.transport.post_send = post


def run(sig, w_bits, w, a, phase="offline", extra_layers=()):
    """Setup + one layer; returns (S, share1, layer stats, setup stats, sent logs, client keys)."""
    pl = plan(sig, w_bits)
    params = [pl.params] + [plan(s, b).params for s, b in extra_layers]
    logs = {0: [], 1: []}

    def body(party, fn, arg):
        _record(party, logs[party.rank])
        with party.scope("setup"):
            keys = he.setup(party, params)
        with party.scope("layer"):
            out = fn(party, sig, w_bits, arg, keys, phase=phase)
        return out, keys

    res = simulate(
        lambda p: body(p, he.server, w), lambda p: body(p, he.client, a), None, timeout=300
    )
    (s, _), (y, ckeys) = res.results[0], res.results[1]
    lay = combine([res.parties[r].scopes["layer"] for r in (0, 1)])
    stp = combine([res.parties[r].scopes["setup"] for r in (0, 1)])
    return s, y, lay, stp, logs, ckeys


def _weights(g, shape, w_bits, mode):
    lo, hi = -(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1
    if mode == "min":
        return torch.full(shape, lo, dtype=torch.int64)
    if mode == "max":
        return torch.full(shape, hi, dtype=torch.int64)
    w = torch.randint(lo, hi + 1, shape, generator=g)
    edge = torch.randint(0, 3, shape, generator=g)
    return torch.where(edge == 0, lo, torch.where(edge == 1, hi, w))


def _inputs(g, shape, ell, mode):
    if mode == "zero":
        return torch.zeros(shape, dtype=torch.int64)
    if mode == "top":
        return torch.full(shape, (1 << ell) - 1, dtype=torch.int64)
    return ring.uniform(g, shape, ell)


@st.composite
def small_layer(draw, ell):
    if draw(st.integers(0, 4)) == 0:
        b, k, o = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 12))
        return LinearSig("linear", (b, k), (o, k), ell, key="fc")
    groups = draw(st.sampled_from([1, 1, 2, "dw"]))
    cin = draw(st.integers(1, 4)) * (2 if groups == 2 else 1)
    if groups == "dw":
        groups = cin
        cout = cin * draw(st.integers(1, 2))
    else:
        cout = draw(st.integers(1, 4)) * groups
    k = draw(st.sampled_from([1, 3, 5]))
    s = draw(st.integers(1, 2))
    p = draw(st.integers(0, k // 2))
    h = draw(st.integers(max(1, k - 2 * p), 10))
    w = draw(st.integers(max(1, k - 2 * p), 10))
    n = draw(st.integers(1, 2))
    return LinearSig(
        "conv2d", (n, cin, h, w), (cout, cin // groups, k, k), ell, (s, s), (p, p), groups, "conv"
    )


@settings(deadline=None, max_examples=30)
@given(
    data=st.data(),
    ell=st.integers(8, 41),
    w_bits=st.integers(2, 8),
    wmode=st.sampled_from(["min", "max", "mixed"]),
    xmode=st.sampled_from(["zero", "top", "random"]),
    seed=st.integers(0, 2**31),
)
def test_exact_shares_and_cost(data, ell, w_bits, wmode, xmode, seed):
    sig = data.draw(small_layer(ell))
    g = torch.Generator().manual_seed(seed)
    w = _weights(g, sig.w_shape, w_bits, wmode)
    a = _inputs(g, sig.x_shape, ell, xmode)
    s, y, lay, stp, _, _ = run(sig, w_bits, w, a)
    assert s.shape == y.shape == ring_lin(sig, w, a).shape
    assert torch.equal(ring.reduce(s + y, ell), ring_lin(sig, w, a))
    assert int(s.min()) >= 0 and int(s.max()) < (1 << ell)
    declared = he.cost(sig, w_bits)
    assert lay.offline_bits == declared.offline_bits and lay.online_bits == 0
    assert lay.rounds == declared.rounds == 0 and lay.messages == 2
    assert lay.phase_rounds("offline") == 2
    assert stp.setup_bits == he.setup_cost([plan(sig, w_bits).params]).setup_bits


def test_online_use_and_resnet_like_shapes():
    g = torch.Generator().manual_seed(1)
    cases = [
        (LinearSig("conv2d", (1, 16, 8, 8), (32, 16, 3, 3), 18, (2, 2), (1, 1), key="c"), 4),
        (LinearSig("conv2d", (1, 16, 8, 8), (32, 16, 1, 1), 16, (2, 2), (0, 0), key="s"), 4),
        (LinearSig("linear", (2, 64), (10, 64), 20, key="fc"), 4),
    ]
    for sig, wb in cases:
        w = _weights(g, sig.w_shape, wb, "mixed")
        a = ring.uniform(g, sig.x_shape, sig.ell)
        s, y, lay, _, _, _ = run(sig, wb, w, a, phase="online")
        assert torch.equal(ring.reduce(s + y, sig.ell), ring_lin(sig, w, a))
        declared = he.cost(sig, wb, phase="online")
        assert lay.online_bits == declared.online_bits and lay.offline_bits == 0
        assert lay.rounds == declared.rounds == 2


def test_views_secret_key_never_sent_and_server_sees_only_ciphertexts():
    sig = LinearSig("conv2d", (1, 3, 6, 6), (4, 3, 3, 3), 16, (1, 1), (1, 1), key="v")
    other = LinearSig("linear", (1, 8), (3, 8), 30, key="o")  # a second SEAL context
    g = torch.Generator().manual_seed(2)
    w = _weights(g, sig.w_shape, 4, "mixed")
    a = ring.uniform(g, sig.x_shape, 16)
    s, y, _, _, logs, ckeys = run(sig, 4, w, a, extra_layers=[(other, 4)])
    assert torch.equal(ring.reduce(s + y, 16), ring_lin(sig, w, a))
    pl, plo = plan(sig, 4), plan(other, 4)
    # the client sends two public keys (setup) and one query, nothing else
    sizes = [len(m) for _, m in logs[1]]
    assert all(dst == 0 for dst, _ in logs[1])
    assert sorted(sizes) == sorted(
        [pl.params.pk_bits // 8, plo.params.pk_bits // 8, pl.query_bytes]
    )
    # ... and no message contains the secret key, raw or packed like a ciphertext
    for prm in (pl.params, plo.params):
        skb = ckeys.secret_key_bytes(prm)
        count = len(prm.primes) * prm.n
        raw = skb[len(skb) - 8 * count :]
        packed = sealio.pack_residues(
            np.frombuffer(raw, dtype=np.uint64).reshape(1, len(prm.primes), prm.n), prm.key_widths
        ).tobytes()
        for _, m in logs[1] + logs[0]:
            for chunk in (raw[:32], raw[-32:], packed[:32], packed[-32:]):
                assert chunk not in m
    # the query P0 receives is n_in fresh encryptions of exactly the packed input, no plaintext
    query = next(m for _, m in logs[1] if len(m) == pl.query_bytes)
    ctx, _, dec = ckeys.get(pl.params)
    prm = pl.params
    seed = bytes(query[: P.SEED_BYTES])
    c0 = sealio.unpack_residues(
        np.frombuffer(query[P.SEED_BYTES :], np.uint8),
        (pl.layout.n_in,),
        prm.n,
        prm.data_primes,
        "q",
    )
    polys = pl.layout.input_polys(pl.geo.effective_input(a.numpy())).reshape(-1, prm.n)
    sk = ctx.ctx.from_secret_str(ckeys.secret_key_bytes(prm))
    for i in range(pl.layout.n_in):
        c1 = sealio.expand_uniform(seed, i, prm.data_primes, prm.n)
        ct = ctx.load(ctx.ct_first, np.stack([c0[i], c1]), "q")
        assert np.array_equal(ctx.coeffs(dec.decrypt(ct)), polys[i].astype(np.uint64))
        # the noise of a fresh SEAL encryption: re-seeding adds no error
        fresh = seal.Encryptor(ctx.ctx, sk).encrypt_symmetric(ctx.plaintext(polys[i]))
        assert abs(dec.invariant_noise_budget(ct) - dec.invariant_noise_budget(fresh)) <= 1
    plain = he.sealio.packing.pack(polys[0], 16).numpy().tobytes()
    assert plain[:32] not in query
    # the server's only message is the response
    assert [len(m) for _, m in logs[0]] == [pl.response_bytes]


def _negacyclic(a, b, t):
    n = a.size
    full = np.convolve(a % t, b)
    out = full[:n].copy()
    out[: full.size - n] -= full[n:]
    return out % t


def test_decryption_noise_margin_at_worst_case_weights():
    """Largest weights, full-ring inputs: the switched response's noise stays under the declared
    bound (budget >= 3 bits, i.e. invariant noise <= 1/16) and the flood is really there (budget
    <= 6); after compression every one of the n coefficients -- not only the used ones --
    decrypts exactly."""
    ell, wb = 24, 8
    sig = LinearSig("conv2d", (1, 16, 6, 6), (8, 16, 3, 3), ell, (1, 1), (1, 1), key="m")
    pl = plan(sig, wb)
    prm, lay, t = pl.params, pl.layout, 1 << ell
    ckeys, skeys = sealio.ClientKeys(), sealio.ServerKeys()
    skeys.add(prm, ckeys.add(prm))
    cctx, enc, dec = ckeys.get(prm)
    sctx, pk_enc = skeys.get(prm)
    w = torch.full(sig.w_shape, -(1 << (wb - 1)), dtype=torch.int64)
    a = torch.full(sig.x_shape, t - 1, dtype=torch.int64)
    cts = P.load_query(sctx, pl, P.encrypt_query(cctx, enc, pl, a))
    polys = lay.input_polys(pl.geo.effective_input(a.numpy()))[0]
    w_e = pl.geo.effective_weight(w.numpy())
    rng = np.random.default_rng(0)
    q1 = np.uint64(prm.q1)
    for ob in range(lay.nob):
        kpt = P.weight_plaintexts(sctx, lay, w_e, ob)
        kp = lay.weight_polys(w_e, ob) % t
        for tile in range(lay.tiles):
            spoly = rng.integers(0, t, prm.n)
            terms = [(cts[tile * lay.ncb + cb], k) for cb, k in kpt.items()]
            resp = P.respond(sctx, pk_enc, terms, spoly, prm.beta)
            ct = cctx.ctx.from_cipher_str(resp.to_string())
            assert 3 <= dec.invariant_noise_budget(ct) <= 6
            d = cctx.ct_data(ct)
            c0 = P._expand(d[0, 0] >> np.uint64(prm.d0), prm.d0, q1)
            c1 = P._expand(d[1, 0] >> np.uint64(prm.d1), prm.d1, q1)
            got = cctx.coeffs(
                dec.decrypt(cctx.load(cctx.ct_last, np.stack([c0, c1])[:, None], "r"))
            )
            want = -spoly
            for cb in kpt:
                want = want + _negacyclic(polys[tile, cb], kp[cb], t)
            assert np.array_equal(got.astype(np.int64), want % t)


def test_compression_error_bound():
    prm = plan(LinearSig("linear", (1, 8), (2, 8), 20), 4).params
    q1 = prm.q1
    c = np.random.default_rng(3).integers(0, q1, 100000, dtype=np.uint64)
    c[:2] = [0, q1 - 1]
    for d in (prm.d0, prm.d1):
        back = P._expand(c >> np.uint64(d), d, np.uint64(q1)).astype(object)
        err = [(int(x) - int(y) + q1 // 2) % q1 - q1 // 2 for x, y in zip(back, c)]
        assert max(abs(e) for e in err) <= 1 << (d - 1)
        assert int(back.max()) < q1


def _pair(sig, wb, fn0, fn1):
    pl = plan(sig, wb)

    def f0(p):
        return fn0(p, he.setup(p, [pl.params]))

    def f1(p):
        return fn1(p, he.setup(p, [pl.params]))

    return simulate(f0, f1, None, timeout=60)


def test_hostile_query_is_rejected():
    sig = LinearSig("linear", (1, 8), (2, 8), 16, key="h")
    pl = plan(sig, 4)
    w = torch.zeros(sig.w_shape, dtype=torch.int64)

    def bad_client(p, keys):
        data = np.zeros((pl.layout.n_in, len(pl.params.data_primes), pl.params.n), np.uint64)
        data[0, 0, 0] = pl.params.data_primes[0]  # not reduced
        msg = np.concatenate(
            [np.zeros(P.SEED_BYTES, np.uint8), sealio.pack_residues(data, pl.params.data_widths)]
        )
        p.send_raw(0, msg, "he.query:h", "offline")

    with pytest.raises(PeerError, match="not reduced"):
        _pair(sig, 4, lambda p, k: he.server(p, sig, 4, w, k), bad_client)

    def short_client(p, keys):
        p.send_raw(0, np.zeros(pl.query_bytes - 1, np.uint8), "he.query:h", "offline")

    with pytest.raises(PeerError):
        _pair(sig, 4, lambda p, k: he.server(p, sig, 4, w, k), short_client)


def test_bad_weights_and_shapes_are_refused():
    sig = LinearSig("linear", (1, 8), (2, 8), 16, key="b")
    ckeys, skeys = sealio.ClientKeys(), sealio.ServerKeys()
    prm = plan(sig, 4).params
    skeys.add(prm, ckeys.add(prm))
    with pytest.raises(PrivQuantError, match="4-bit range"):
        he.server(None, sig, 4, torch.full((2, 8), 8), skeys)
    with pytest.raises(PrivQuantError, match="weight"):
        he.server(None, sig, 4, torch.zeros((3, 8), dtype=torch.int64), skeys)
    with pytest.raises(PrivQuantError, match="input"):
        he.client(None, sig, 4, torch.zeros((2, 8), dtype=torch.int64), ckeys)
    with pytest.raises(PrivQuantError, match="no HE key"):
        he.client(None, LinearSig("linear", (1, 8), (2, 8), 30), 4, torch.zeros((1, 8)), ckeys)
    with pytest.raises(PrivQuantError):
        plan(sig, 0)
    with pytest.raises(PrivQuantError):
        plan(LinearSig("linear", (1, 8), (2, 8), 50), 4)


def test_cost_needs_no_he(monkeypatch):
    """cost() of resnet18-cifar's layers runs no HE (no SEAL context is ever made)."""

    def boom(*a, **k):
        raise AssertionError("cost() made a SEAL context")

    monkeypatch.setattr(sealio.Context, "__init__", boom)
    shapes = [
        ((1, 3, 32, 32), (64, 3, 3, 3), 1, 1),
        ((1, 64, 32, 32), (64, 64, 3, 3), 1, 1),
        ((1, 64, 32, 32), (128, 64, 3, 3), 2, 1),
        ((1, 64, 32, 32), (128, 64, 1, 1), 2, 0),
        ((1, 512, 4, 4), (512, 512, 3, 3), 1, 1),
    ]
    for ell in (16, 20, 24):
        for xs, ws, st_, pd in shapes:
            c = he.cost(LinearSig("conv2d", xs, ws, ell, (st_, st_), (pd, pd), key="x"), 4)
            assert c.offline_bits > 0 and c.online_bits == 0


def test_prepared_weights_serve_several_inferences():
    sig = LinearSig("conv2d", (1, 4, 5, 5), (6, 4, 3, 3), 20, (1, 1), (1, 1), key="p")
    pl = plan(sig, 4)
    g = torch.Generator().manual_seed(5)
    w = _weights(g, sig.w_shape, 4, "mixed")
    masks = [ring.uniform(g, sig.x_shape, 20) for _ in range(2)]

    def f0(p):
        keys = he.setup(p, [pl.params])
        prep = he.PreparedWeights(sig, 4, w, keys)
        other = LinearSig("conv2d", (1, 4, 5, 5), (6, 4, 3, 3), 21, (1, 1), (1, 1), key="p")
        with pytest.raises(PrivQuantError, match="another layer"):
            he.server(p, other, 4, prep, keys)
        return [he.server(p, sig, 4, prep, keys) for _ in masks]

    def f1(p):
        keys = he.setup(p, [pl.params])
        return [he.client(p, sig, 4, a, keys) for a in masks]

    res = simulate(f0, f1, None, timeout=120)
    for s, y, a in zip(res.results[0], res.results[1], masks):
        assert torch.equal(ring.reduce(s + y, 20), ring_lin(sig, w, a))
    assert not torch.equal(res.results[0][0], res.results[0][1])  # fresh masks S each time
