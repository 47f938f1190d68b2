"""faiss::IndexTurboQuant (flat TurboQuant index) behaves like a FAISS flat-codes index."""
import math

import numpy as np
import pytest

import faiss
import faiss_turboquant as ft

L2 = faiss.METRIC_L2
IP = faiss.METRIC_INNER_PRODUCT
METRICS = [L2, IP]
MIDS = ["L2", "IP"]
D = 32
BAD_INPUT = (AssertionError, ValueError, RuntimeError)
# the paper's MSE upper bound for b-bit TurboQuant on unit vectors (Zandieh et al. 2025)
PAPER_BOUND = math.sqrt(3) * math.pi / 2


def gaussian(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype("float32")


def clustered(n, d, seed, nc=16):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((nc, d)) * 1.5
    x = c[rng.integers(nc, size=n)] + rng.standard_normal((n, d))
    x *= rng.uniform(0.5, 2.0, size=(n, 1))
    return x.astype("float32")


XB = clustered(2000, D, 1)
XQ = clustered(30, D, 2)


def unit(n, d, seed):
    x = gaussian(n, d, seed).astype("float64")
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def exact(xb, xq, k, metric):
    gt = faiss.IndexFlat(xb.shape[1], metric)
    gt.add(xb)
    return gt.search(xq, k)


def recall(I, Igt):
    return float(np.mean([len(set(a) & set(b)) / Igt.shape[1] for a, b in zip(I, Igt)]))


def tq(nbits=4, metric=L2, d=D, qjl=0, seed=42, data=None):
    index = ft.IndexTurboQuant(d, nbits, qjl, metric, seed)
    if data is not None:
        index.add(data)
    return index


def stored_codes(index):
    return faiss.vector_to_array(index.codes).reshape(index.ntotal, index.code_size)


def true_dist(xq, xb, metric):
    if metric == IP:
        return xq @ xb.T
    return ((xq[:, None, :].astype("float64") - xb[None, :, :]) ** 2).sum(-1)


# ------------------------------------------------------------------ basics
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_construction(metric):
    index = tq(4, metric)
    assert isinstance(index, faiss.IndexFlatCodes) and isinstance(index, faiss.Index)
    assert index.is_trained and index.ntotal == 0
    assert index.d == D and index.metric_type == metric
    index.train(XB)  # a no-op that must not fail or change anything
    assert index.is_trained and index.ntotal == 0


@pytest.mark.parametrize("d,b,m", [(32, 4, 0), (384, 4, 0), (384, 1, 0), (384, 8, 0),
                                   (7, 3, 0), (1, 1, 0), (100, 3, 0), (384, 3, 384),
                                   (32, 2, 7), (32, 4, 100), (5, 5, 3)])
def test_code_size(d, b, m):
    index = tq(b, L2, d, m)
    expected = math.ceil(d * b / 8) + 8 + ((math.ceil(m / 8) + 4) if m else 0)
    assert index.code_size == expected
    assert index.sa_code_size() == expected
    x = gaussian(13, d, 0)
    index.add(x)
    assert faiss.vector_to_array(index.codes).size == 13 * expected
    assert index.sa_encode(x).shape == (13, expected)


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_search_quality_and_distances(metric):
    index = tq(4, metric, data=XB)
    Dist, I = index.search(XQ, 10)
    assert I.shape == (len(XQ), 10) and Dist.dtype == np.float32 and I.dtype == np.int64
    Igt = exact(XB, XQ, 10, metric)[1]
    assert recall(I, Igt) >= 0.8
    if metric == L2:
        assert np.all(np.diff(Dist, axis=1) >= 0)
    else:
        assert np.all(np.diff(Dist, axis=1) <= 0)
    # returned values estimate the true distance / inner product of the returned ids
    true = np.take_along_axis(true_dist(XQ, XB, metric), I, axis=1)
    scale = np.abs(true).mean()
    assert np.abs(Dist - true).mean() < 0.05 * scale


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_batch_and_single_query_agree(metric):
    index = tq(3, metric, data=XB)
    Db, Ib = index.search(XQ, 10)  # >= 20 queries
    singles = [index.search(XQ[i:i + 1], 10) for i in range(len(XQ))]
    Ds = np.vstack([s[0] for s in singles])
    Is = np.vstack([s[1] for s in singles])
    np.testing.assert_allclose(Db, Ds, rtol=1e-4, atol=1e-4)
    assert (Ib == Is).mean() >= 0.98


# ------------------------------------------------------------------ selectors
def selectors():
    batch_ids = np.array([3, 17, 256, 999, 1000, 1500, 1999, 5, 64, 700] * 2 + [1234])
    return [
        ("batch", lambda: faiss.IDSelectorBatch(batch_ids), set(batch_ids.tolist())),
        ("range", lambda: faiss.IDSelectorRange(100, 140), set(range(100, 140))),
        ("range-empty", lambda: faiss.IDSelectorRange(5000, 6000), set()),
    ]


@pytest.mark.parametrize("nq", [5, 30], ids=["single", "batch"])
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
@pytest.mark.parametrize("which", range(3), ids=["batch", "range", "range-empty"])
def test_search_with_id_selector(which, metric, nq):
    _, make_sel, allowed = selectors()[which]
    index = tq(4, metric, data=XB)
    k = 15
    sel = make_sel()
    Dist, I = index.search(XQ[:nq], k, params=faiss.SearchParameters(sel=sel))
    Dall, Iall = index.search(XQ[:nq], index.ntotal)
    for q in range(nq):
        got = [i for i in I[q] if i >= 0]
        assert set(got) <= allowed
        # exactly the best `k` allowed ids of the unrestricted ranking
        expect = [i for i in Iall[q] if i in allowed][:k]
        assert got == expect
        assert len(got) == min(k, len(allowed))
        assert (I[q][len(got):] == -1).all()
        np.testing.assert_allclose(Dist[q][:len(got)], Dall[q][np.isin(Iall[q], got)][:len(got)],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_range_search_matches_search(metric):
    index = tq(4, metric, data=XB)
    xq = XQ[:8]  # same per-query code path as a small search
    Dall, Iall = index.search(xq, index.ntotal)
    radius = float(np.median(Dall[:, 25]))
    lims, Dr, Ir = index.range_search(xq, radius)
    assert lims.shape == (len(xq) + 1,) and lims[-1] == len(Ir)
    total = 0
    for q in range(len(xq)):
        ids = Ir[lims[q]:lims[q + 1]]
        dis = Dr[lims[q]:lims[q + 1]]
        inside = Dall[q] < radius if metric == L2 else Dall[q] > radius
        assert set(ids.tolist()) == set(Iall[q][inside].tolist())
        ref = dict(zip(Iall[q].tolist(), Dall[q].tolist()))
        np.testing.assert_allclose(dis, [ref[i] for i in ids], rtol=1e-5, atol=1e-5)
        total += len(ids)
    assert total > 0
    # with a selector, only selected ids come back
    sel = faiss.IDSelectorRange(0, 1000)
    lims2, _, I2 = index.range_search(xq, radius, params=faiss.SearchParameters(sel=sel))
    assert (I2 < 1000).all()
    assert lims2[-1] == np.isin(Ir, np.arange(1000)).sum()


# ------------------------------------------------------------------ codec access
@pytest.mark.parametrize("qjl", [0, 16])
def test_reconstruct_and_sa_codec(qjl):
    x = XB[:300]
    index = tq(4, IP, qjl=qjl, data=x)
    codes = index.sa_encode(x)
    np.testing.assert_array_equal(codes, stored_codes(index))
    dec = index.sa_decode(codes)
    assert dec.shape == x.shape and dec.dtype == np.float32
    for i in (0, 1, 150, 299):
        np.testing.assert_array_equal(index.reconstruct(i), dec[i])
    np.testing.assert_array_equal(index.reconstruct_n(10, 25), dec[10:35])
    np.testing.assert_array_equal(index.reconstruct_batch(np.array([5, 2, 299])), dec[[5, 2, 299]])
    rel = np.sum((dec - x) ** 2) / np.sum(x ** 2)
    assert rel < 0.02
    # encoding is deterministic and independent of the batch it is in
    np.testing.assert_array_equal(index.sa_encode(x[7:9]), codes[7:9])
    for bad in (300, -1, 10**9):
        with pytest.raises(RuntimeError):
            index.reconstruct(bad)
    with pytest.raises(RuntimeError):
        index.reconstruct_n(290, 20)


def mse_unit(b, d=384, n=2000, qjl=0, scale_search=None):
    x = unit(n, d, 11)
    index = tq(b, L2, d, qjl)
    if scale_search is not None:
        index.tq.scale_search = scale_search
        index.reinit()
    r = index.sa_decode(index.sa_encode(x))
    return float(np.mean(np.sum((r.astype("float64") - x) ** 2, axis=1)))


MSE = {}


def mse_cached(b):
    if b not in MSE:
        MSE[b] = mse_unit(b)
    return MSE[b]


def test_reconstruction_error_decreases_with_bits():
    errs = [mse_cached(b) for b in range(1, 9)]
    for b in range(1, 8):
        # each extra bit should cut the error by about 4x; at least 3x
        assert errs[b] < errs[b - 1] / 3, errs


def test_tq4_mse_on_unit_vectors():
    """Paper: D_mse <= (sqrt(3) pi / 2) 4^-b = 0.0106 for b = 4; the Lloyd-Max quantiser of
    the (near-Gaussian) coordinate law reaches 0.00950 per unit vector, and this codec's
    least-squares rescaled decode a little less (measured 0.0094 at d=384). Bound: 0.0097."""
    err = mse_cached(4)
    assert err <= 0.0097
    assert err <= PAPER_BOUND * 4.0 ** -4
    assert err >= 0.5 * 4.0 ** -4  # a 4-bit code cannot beat the Shannon bound 4^-b by far


@pytest.mark.parametrize("b", range(1, 9))
def test_mse_within_paper_bound(b):
    """Theorem (TurboQuant, MSE): D_mse <= (sqrt(3) pi / 2) 4^-b for every b. A converged
    Lloyd-Max codebook for d=384 gives 2.66 * 4^-7 and 2.68 * 4^-8 (< 2.72), so the bound
    must hold at b = 7 and 8 as well."""
    err = mse_cached(b)
    assert 0.5 * 4.0 ** -b <= err <= PAPER_BOUND * 4.0 ** -b, (b, err * 4 ** b)


def test_codebook_mse_reported_matches_measured():
    """plain nearest-centroid codes (scale_search = 1) reach the codebook's MSE"""
    for b in (2, 4, 6):
        cb = ft.LloydMaxCodebook(384, b)
        assert abs(cb.mse - mse_unit(b, scale_search=1)) < 0.05 * cb.mse


@pytest.mark.parametrize("b, gain", [(2, 0.001), (3, 0.01), (4, 0.04), (5, 0.05), (8, 0.05)])
def test_scale_search_beats_nearest_centroid_mse(b, gain):
    """the per-vector grid-scale search (default 3 passes) picks, per vector, codes closer
    in angle than the nearest centroids. Measured at d=384, 3 passes vs 1: -0.3% (2 bits),
    -1.7% (3), -4.7% (4), -7.0% (5), -6.3% (8); 5 passes a little more."""
    m1, m3, m5 = (mse_unit(b, scale_search=s) for s in (1, 3, 5))
    assert mse_cached(b) == m3  # 3 passes is the default
    assert m3 < (1 - gain) * m1, (m1, m3)
    assert m5 <= m3, (m3, m5)


def test_scale_search_ignored_for_one_bit():
    assert mse_unit(1, scale_search=1) == mse_unit(1, scale_search=5)


@pytest.mark.parametrize("bad", [0, -1, 10, 100])
def test_scale_search_validated(bad):
    index = tq(4, L2, 16, 0)
    index.tq.scale_search = bad
    with pytest.raises(RuntimeError, match="scale_search"):
        index.reinit()


def test_qjl_reduces_inner_product_error():
    """The QJL stage adds an unbiased estimate of <q, residual>; its variance falls as
    1/m, so the inner-product error must shrink with m (and the bias stay small)."""
    x = gaussian(1000, 64, 3)
    q = gaussian(5, 64, 4)
    true = q @ x.T
    rmse = []
    for m in (0, 256, 1024):
        index = tq(3, IP, 64, m, data=x)
        Dist, I = index.search(q, index.ntotal)
        est = np.empty_like(true)
        np.put_along_axis(est, I, Dist, axis=1)
        err = est - true
        rmse.append(float(np.sqrt(np.mean(err ** 2))))
        assert abs(err.mean()) < 0.1 * rmse[-1] + 1e-3
    assert rmse[1] < 0.6 * rmse[0] and rmse[2] < 0.6 * rmse[1], rmse


# ------------------------------------------------------------------ mutation
def test_remove_ids_shifts_like_faiss_flat_codes():
    x = XB[:100]
    index = tq(4, L2, data=x)
    before = index.reconstruct_n(0, 100)
    assert index.remove_ids(np.array([3, 10, 50], dtype="int64")) == 3
    assert index.ntotal == 97
    keep = np.setdiff1d(np.arange(100), [3, 10, 50])
    np.testing.assert_array_equal(index.reconstruct_n(0, 97), before[keep])
    # the vector that was id 51 is now id 48
    assert index.search(x[51:52], 1)[1][0, 0] == 48
    assert index.remove_ids(faiss.IDSelectorRange(90, 200)) == 7
    assert index.ntotal == 90
    assert index.remove_ids(np.array([500, 1000], dtype="int64")) == 0
    assert index.ntotal == 90
    np.testing.assert_array_equal(index.reconstruct_n(0, 90), before[keep][:90])


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_merge_from(metric):
    a = tq(4, metric, data=XB[:1200])
    b = tq(4, metric, data=XB[1200:])
    full = tq(4, metric, data=XB)
    a.merge_from(b)
    assert a.ntotal == len(XB) and b.ntotal == 0
    np.testing.assert_array_equal(stored_codes(a), stored_codes(full))
    Da, Ia = a.search(XQ, 10)
    Df, If = full.search(XQ, 10)
    np.testing.assert_array_equal(Ia, If)
    np.testing.assert_array_equal(Da, Df)


@pytest.mark.parametrize("other", ["bits", "metric", "seed", "qjl", "dim", "flat"])
def test_merge_from_incompatible_raises(other):
    a = tq(4, L2, data=XB[:50])
    make = {
        "bits": lambda: tq(3, L2),
        "metric": lambda: tq(4, IP),
        "seed": lambda: tq(4, L2, seed=7),
        "qjl": lambda: tq(4, L2, qjl=16),
        "dim": lambda: tq(4, L2, d=D + 1),
        "flat": lambda: faiss.IndexFlatL2(D),
    }[other]
    b = make()
    b.add(gaussian(5, b.d, 1))
    with pytest.raises(RuntimeError):
        a.merge_from(b)
    assert a.ntotal == 50 and b.ntotal == 5


def test_reset():
    index = tq(4, IP, data=XB)
    ref = index.search(XQ, 5)
    index.reset()
    assert index.ntotal == 0 and faiss.vector_to_array(index.codes).size == 0
    Dist, I = index.search(XQ, 5)
    assert (I == -1).all()
    index.add(XB)
    np.testing.assert_array_equal(index.search(XQ, 5)[1], ref[1])


# ------------------------------------------------------------------ FAISS conventions
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_k_larger_than_ntotal(metric):
    x = XB[:7]
    index = tq(4, metric, data=x)
    flat = faiss.IndexFlat(D, metric)
    flat.add(x)
    for nq in (3, 25):
        Dist, I = index.search(XQ[:nq], 12)
        Df, If = flat.search(XQ[:nq], 12)
        assert (I[:, 7:] == -1).all()
        np.testing.assert_array_equal(Dist[:, 7:], Df[:, 7:])  # FAISS's sentinel values
        assert all(sorted(row) == list(range(7)) for row in I[:, :7].tolist())
    empty = tq(4, metric)
    Dist, I = empty.search(XQ[:2], 3)
    assert (I == -1).all()


@pytest.mark.parametrize("k", [0, -1])
def test_k_not_positive_raises(k):
    index = tq(4, L2, data=XB[:10])
    with pytest.raises(BAD_INPUT):
        index.search(XQ[:2], k)


def test_wrong_dimension_raises():
    index = tq(4, L2, data=XB[:10])
    bad = gaussian(3, D + 1, 0)
    for call in (lambda: index.add(bad), lambda: index.search(bad, 3),
                 lambda: index.range_search(bad, 1.0), lambda: index.sa_encode(bad),
                 lambda: index.add(gaussian(1, D, 0)[0])):
        with pytest.raises(BAD_INPUT):
            call()
    assert index.ntotal == 10


def test_float64_and_non_contiguous_input_converted():
    a = tq(4, IP, data=XB[:200])
    b = tq(4, IP, data=XB[:200].astype("float64"))
    np.testing.assert_array_equal(stored_codes(a), stored_codes(b))
    wide = np.asfortranarray(np.hstack([XQ, XQ])[:, :D].astype("float64"))
    strided = np.repeat(XQ, 2, axis=0)[::2]
    ref = a.search(XQ, 5)
    for q in (XQ.astype("float64"), wide, strided):
        Dist, I = a.search(q, 5)
        np.testing.assert_array_equal(I, ref[1])
        np.testing.assert_array_equal(Dist, ref[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    index = tq(4, L2, data=XB[:100])
    codes_before = stored_codes(index).copy()
    for n, row in ((3, 1), (1000, 700)):  # small and parallel (blocked) encoding paths
        x = gaussian(n, D, n)
        x[row, 5] = bad
        with pytest.raises(RuntimeError) as e:
            index.add(x)
        assert "NaN" in str(e.value) or "inf" in str(e.value)
        assert index.ntotal == 100
        # a rejected add must leave the index untouched, code buffer included
        raw = faiss.vector_to_array(index.codes)
        assert raw.size == 100 * index.code_size, "stale bytes after a rejected add"
        np.testing.assert_array_equal(stored_codes(index), codes_before)
    for nq in (4, 30):
        q = XQ[:nq].copy()
        q[nq - 1, 0] = bad
        with pytest.raises(RuntimeError):
            index.search(q, 3)
        with pytest.raises(RuntimeError):
            index.range_search(q, 1.0)
    with pytest.raises(RuntimeError):
        index.sa_encode(np.full((2, D), bad, dtype="float32"))


def test_empty_add_and_search():
    index = tq(4, L2, data=XB[:10])
    index.add(np.zeros((0, D), dtype="float32"))
    assert index.ntotal == 10
    Dist, I = index.search(np.zeros((0, D), dtype="float32"), 5)
    assert Dist.shape == (0, 5) and I.shape == (0, 5)


def test_zero_vector():
    index = tq(4, L2)
    x = np.zeros((2, D), dtype="float32")
    x[1, 0] = 1
    index.add(x)
    r = index.reconstruct_n(0, 2)
    assert np.isfinite(r).all()
    np.testing.assert_array_equal(r[0], 0)
    Dist, I = index.search(x, 2)
    assert np.isfinite(Dist).all() and I[0, 0] == 0 and I[1, 0] == 1


@pytest.mark.parametrize("d", [1, 2, 3, 7, 4096])
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_unusual_dimensions(d, metric):
    n = 60 if d == 4096 else 300
    x = gaussian(n, d, d)
    q = gaussian(20, d, d + 1)
    index = tq(4, metric, d=d, data=x)
    assert index.code_size == math.ceil(d * 4 / 8) + 8
    r = index.reconstruct_n(0, n)
    assert np.sum((r - x) ** 2) / np.sum(x ** 2) < 0.012
    Igt = exact(x, q, 5, metric)[1]
    assert recall(index.search(q, 5)[1], Igt) >= 0.8
    if metric == L2:
        assert (index.search(x[:50], 1)[1][:, 0] == np.arange(50)).mean() >= 0.9


# ------------------------------------------------------------------ inside FAISS wrappers
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_index_shards(metric):
    shards = faiss.IndexShards(D, False, True)
    parts = [tq(4, metric), tq(4, metric)]
    for p in parts:
        shards.add_shard(p)
    shards.add(XB)
    assert [p.ntotal for p in parts] == [1000, 1000]
    # sub-indexes handed back by FAISS are downcast to our class
    assert type(faiss.downcast_index(shards.at(1))) is ft.IndexTurboQuant
    full = tq(4, metric, data=XB)
    xq = XQ[:10]
    Ds, Is = shards.search(xq, 10)
    Df, If = full.search(xq, 10)
    np.testing.assert_array_equal(Is, If)
    np.testing.assert_array_equal(Ds, Df)


def test_manual_idmap():
    base = tq(4, IP)
    idmap = faiss.IndexIDMap(base)
    ids = np.arange(len(XB), dtype="int64") * 7 + 1
    idmap.add_with_ids(XB, ids)
    ref = tq(4, IP, data=XB)
    Dist, I = idmap.search(XQ, 10)
    Dr, Ir = ref.search(XQ, 10)
    np.testing.assert_array_equal(I, ids[Ir])
    np.testing.assert_array_equal(Dist, Dr)
    removed = ids[Ir[:, 0]]
    assert idmap.remove_ids(removed) == len(set(removed.tolist()))
    assert not np.isin(idmap.search(XQ, 10)[1], removed).any()


def test_manual_pretransform_random_rotation():
    rr = faiss.RandomRotationMatrix(D, D)
    rr.init(5)
    pt = faiss.IndexPreTransform(rr, tq(4, L2))
    pt.add(XB)
    ref = tq(4, L2, data=rr.apply(XB))
    Dist, I = pt.search(XQ, 10)
    Dr, Ir = ref.search(rr.apply(XQ), 10)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(Dist, Dr, rtol=1e-6)
    assert recall(I, exact(XB, XQ, 10, L2)[1]) >= 0.8


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_manual_refine_flat(metric):
    base = tq(2, metric)
    rf = faiss.IndexRefineFlat(base)
    rf.add(XB)
    rf.k_factor = 8
    Dist, I = rf.search(XQ, 10)
    Igt = exact(XB, XQ, 10, metric)[1]
    assert recall(I, Igt) >= 0.97
    assert recall(I, Igt) > recall(base.search(XQ, 10)[1], Igt)
    true = np.take_along_axis(true_dist(XQ, XB, metric), I, axis=1)
    np.testing.assert_allclose(Dist, true, rtol=1e-4, atol=1e-3)


def test_hnsw_over_turboquant():
    storage = tq(6, L2)
    hnsw = faiss.IndexHNSW(storage, 16)
    hnsw.add(XB[:1000])
    hnsw.hnsw.efSearch = 64
    I = hnsw.search(XQ, 10)[1]
    assert recall(I, exact(XB[:1000], XQ, 10, L2)[1]) >= 0.8
