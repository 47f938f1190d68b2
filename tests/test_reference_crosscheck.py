"""Cross-check of the C++ TurboQuant codec against the independent Numba reference
(faiss_turboquant/reference.py): codes bit for bit, estimated distances, top-k, decoding,
the Lloyd-Max codebook, the rotations and the statistical properties of the estimators.
"""
import functools
import math
import os

import faiss
import numpy as np
import pytest

import faiss_turboquant as ft
from faiss_turboquant import reference as ref

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "glosses-minilm-10k.npz")

NBITS = list(range(1, 9))
DIMS = [384, 100, 37, 1, 2, 3]
METRICS = {"IP": faiss.METRIC_INNER_PRODUCT, "L2": faiss.METRIC_L2}


# ---------------------------------------------------------------------------- data

@pytest.fixture(scope="module", autouse=True)
def one_omp_thread():
    """the machine's cores are shared: run the C++ single-threaded in this module"""
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


@functools.lru_cache(maxsize=None)
def real_data():
    z = np.load(DATA)
    return (np.ascontiguousarray(z["xb"][:500], dtype=np.float32),
            np.ascontiguousarray(z["xq"][:20], dtype=np.float32))


@functools.lru_cache(maxsize=None)
def dataset(d):
    """(base, queries) float32: the real embeddings for d = 384, random data otherwise
    (varied norms, one zero vector, one vector with a single non-zero coordinate)."""
    if d == 384:
        return real_data()
    rng = np.random.default_rng(1000 + d)
    xb = rng.standard_normal((300, d)) * rng.uniform(0.1, 10.0, size=(300, 1))
    xb[7] = 0.0
    xb[11] = 0.0
    xb[11, d // 2] = 3.0
    xq = rng.standard_normal((10, d)) * rng.uniform(0.5, 2.0, size=(10, 1))
    return xb.astype(np.float32), xq.astype(np.float32)


def make_index(d, nbits, qjl_m, metric, seed=42, rotation_kind=0, rounds=3, correction=1):
    idx = ft.IndexTurboQuant(d, nbits, qjl_m, metric, seed)
    if (rotation_kind, rounds, correction) != (0, 3, 1):
        idx.tq.rotation_kind = rotation_kind
        idx.tq.rotation_rounds = rounds
        idx.tq.correction = correction
        idx.reinit()
    return idx


@functools.lru_cache(maxsize=64)
def setup(d, nbits, qjl_m, metric, seed=42, rotation_kind=0, rounds=3, correction=1):
    """index filled with the base vectors, its parameters, C++ and reference codes"""
    idx = make_index(d, nbits, qjl_m, metric, seed, rotation_kind, rounds, correction)
    p = ref.params_from_index(idx)
    xb, xq = dataset(d)
    codes_cpp = idx.sa_encode(xb)
    codes_ref = ref.encode(p, xb)
    idx.add(xb)
    return idx, p, codes_cpp, codes_ref


def all_distances_cpp(idx, xq):
    """(nq x n) C++ estimates in storage order, through index.search with k = ntotal"""
    n = idx.ntotal
    D, I = idx.search(xq, n)
    out = np.empty((len(xq), n), np.float32)
    np.put_along_axis(out, I, D, axis=1)
    assert (np.sort(I, axis=1) == np.arange(n)).all()
    return out


def distance_scale(xb, xq, l2):
    """per-pair scale of the estimated values: ||q|| ||x|| (IP), (||q|| + ||x||)^2 (L2)"""
    nq = np.linalg.norm(xq.astype(np.float64), axis=1)[:, None]
    nx = np.linalg.norm(xb.astype(np.float64), axis=1)[None, :]
    s = (nq + nx) ** 2 if l2 else nq * nx
    return np.maximum(s, 1e-6)


def check_search(idx, p, codes, xb, xq, k=10, rtol=1e-4):
    l2 = idx.metric_type == faiss.METRIC_L2
    assert p.metric_l2 == l2
    scale = distance_scale(xb, xq, l2)
    D_ref = ref.estimate_distance(p, codes, xq)
    D_ref2 = ref.estimate_l2(p, codes, xq[:2]) if l2 else ref.estimate_ip(p, codes, xq[:2])
    np.testing.assert_array_equal(D_ref[:2], D_ref2)
    # every estimate
    D_cpp = all_distances_cpp(idx, xq)
    err = np.abs(D_cpp.astype(np.float64) - D_ref) / scale
    assert err.max() <= rtol, "max relative error %g" % err.max()
    # top-k: same distances rank by rank, ids equal up to ties
    k = min(k, idx.ntotal)
    D, I = idx.search(xq, k)
    Dr, Ir = ref.topk(D_ref, k, l2)
    rows = np.arange(len(xq))[:, None]
    tol = rtol * scale.max(axis=1, keepdims=True)
    assert (np.abs(D - Dr) <= tol).all()
    assert (np.abs(D_ref[rows, I] - D) <= tol).all()
    same = (I == Ir) | (np.abs(D_ref[rows, I] - D_ref[rows, Ir]) <= tol)
    assert same.all(), "top-k ids differ beyond ties"


# ---------------------------------------------------------------------------- main matrix

CASES = [
    pytest.param(d, nbits, metric, qjl, id="d%d-b%d-%s-%s" % (d, nbits, metric, qjl))
    for d in DIMS
    for nbits in NBITS
    for metric in METRICS
    for qjl in ("q0", "qd")
]


def case(d, nbits, metric, qjl):
    return setup(d, nbits, d if qjl == "qd" else 0, METRICS[metric])


@pytest.mark.parametrize("d, nbits, metric, qjl", CASES)
def test_codes_bit_identical(d, nbits, metric, qjl):
    idx, p, codes_cpp, codes_ref = case(d, nbits, metric, qjl)
    assert codes_cpp.shape == codes_ref.shape == (len(dataset(d)[0]), p.code_size)
    assert p.code_size == p.mse_bytes + p.qjl_bytes + 4 * (3 if p.qjl_m else 2)
    np.testing.assert_array_equal(codes_cpp, codes_ref)


@pytest.mark.parametrize("d, nbits, metric, qjl", CASES)
def test_search_matches_reference(d, nbits, metric, qjl):
    idx, p, codes_cpp, codes_ref = case(d, nbits, metric, qjl)
    xb, xq = dataset(d)
    check_search(idx, p, codes_ref, xb, xq)


@pytest.mark.parametrize("d, nbits, metric, qjl", CASES)
def test_decode_matches_reference(d, nbits, metric, qjl):
    idx, p, codes_cpp, codes_ref = case(d, nbits, metric, qjl)
    xb, _ = dataset(d)
    x_cpp = idx.sa_decode(codes_cpp)
    x_ref = ref.decode(p, codes_cpp)
    tol = 1e-4 * np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-3)
    assert (np.abs(x_cpp - x_ref) <= tol).all()


# ---------------------------------------------------------------------------- variants

VARIANTS = [
    # (d, nbits, qjl_m, metric, seed, rounds, correction)
    (100, 2, 0, "IP", 7, 3, 0),
    (100, 4, 100, "L2", 7, 3, 0),
    (37, 3, 0, "L2", 8, 3, 2),
    (37, 5, 37, "IP", 8, 3, 2),
    (384, 4, 384, "IP", 9, 3, 0),
    (384, 2, 0, "L2", 9, 3, 2),
    (100, 3, 203, "IP", 11, 1, 1),   # qjl_m not a multiple of d, > d
    (37, 6, 19, "L2", 12, 5, 1),     # qjl_m < d, 5 rounds
    (3, 2, 48, "IP", 13, 2, 0),      # qjl_m = 16 d (the maximum)
    (384, 1, 1000, "L2", 14, 3, 1),
]


@pytest.mark.parametrize("d, nbits, qjl_m, metric, seed, rounds, correction", VARIANTS)
def test_variants_bit_identical(d, nbits, qjl_m, metric, seed, rounds, correction):
    idx, p, codes_cpp, codes_ref = setup(
        d, nbits, qjl_m, METRICS[metric], seed, 0, rounds, correction)
    assert (p.correction, p.rotation_rounds, p.seed, p.qjl_m) == (correction, rounds, seed, qjl_m)
    assert len(p.qjl_rotations) == -(-qjl_m // d)
    np.testing.assert_array_equal(codes_cpp, codes_ref)
    xb, xq = dataset(d)
    check_search(idx, p, codes_ref, xb, xq)
    x_cpp = idx.sa_decode(codes_cpp)
    tol = 1e-4 * np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-3)
    assert (np.abs(x_cpp - ref.decode(p, codes_cpp)) <= tol).all()


DENSE = [
    (384, 4, 0, "IP"), (384, 8, 384, "L2"), (100, 1, 100, "IP"),
    (100, 6, 0, "L2"), (37, 3, 37, "L2"), (37, 8, 0, "IP"),
]


@pytest.mark.parametrize("d, nbits, qjl_m, metric", DENSE)
def test_dense_rotation_close(d, nbits, qjl_m, metric):
    """rotation_kind = DENSE: C++ rotates with BLAS sgemm, so agreement is to rounding"""
    idx, p, codes_cpp, codes_ref = setup(d, nbits, qjl_m, METRICS[metric], 5, 1, 3, 1)
    assert p.rotation.kind == ref.DENSE and p.rotation.matrix.shape == (d, d)
    M = p.rotation.matrix.astype(np.float64)
    assert np.abs(M @ M.T - np.eye(d)).max() < 1e-5
    c1, b1, f1 = ref.unpack(p, codes_cpp)
    c2, b2, f2 = ref.unpack(p, codes_ref)
    assert (c1 == c2).mean() >= 0.999
    assert (np.abs(c1.astype(int) - c2.astype(int)) <= 1).all()
    if qjl_m:
        assert (b1 == b2).mean() >= 0.999
    # BLAS rounding (~1e-7 of the norm) moves the tiny 8-bit residual norms by more than
    # 1e-4 relative: compare the factors relative to the vector norm instead
    np.testing.assert_allclose(f1, f2, rtol=1e-4, atol=1e-6 * np.abs(f1[:, 0]).max())
    xb, xq = dataset(d)
    check_search(idx, p, codes_cpp, xb, xq)
    x_cpp = idx.sa_decode(codes_cpp)
    tol = 1e-4 * np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-3)
    assert (np.abs(x_cpp - ref.decode(p, codes_cpp)) <= tol).all()


def test_nonfinite_rejected():
    idx, p, _, _ = case(37, 4, "L2", "q0")
    x = np.ones((3, 37), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(ValueError):
        ref.encode(p, x)
    with pytest.raises(RuntimeError):
        idx.sa_encode(x)


# ---------------------------------------------------------------------------- codebook

@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("d", DIMS)
def test_codebook_matches_independent_lloyd_max(d, nbits):
    idx = ft.IndexTurboQuant(d, nbits, 0, faiss.METRIC_L2)
    p = ref.params_from_index(idx)
    cen, bnd, info = ref.lloyd_max_codebook(d, nbits, return_info=True)
    assert info["residual"] < 1e-10  # the reference is a Lloyd fixed point
    assert len(p.centroids) == 1 << nbits and len(p.boundaries) == (1 << nbits) - 1
    assert (np.diff(p.centroids) > 0).all()
    np.testing.assert_array_equal(p.centroids, -p.centroids[::-1])
    err_c = np.abs(p.centroids - cen).max()
    err_b = np.abs(p.boundaries - bnd).max()
    assert err_c <= 1e-5 and err_b <= 1e-5, (
        "C++ Lloyd-Max codebook differs from the converged one: centroids by %.3g, "
        "boundaries by %.3g" % (err_c, err_b))


@pytest.mark.parametrize("d", [1, 2, 3, 37, 384, 4096])
def test_reference_codebook_closed_forms(d):
    # 1 bit: +- sqrt(d) E|t|
    cen, bnd = ref.lloyd_max_codebook(d, 1)
    e_abs = math.sqrt(d) * ref.expected_abs_coordinate(d if d >= 2 else 2)
    np.testing.assert_allclose(cen, [-e_abs, e_abs], rtol=1e-12)
    if d == 3:
        # t is uniform on [-1, 1]: the Lloyd-Max quantiser is the uniform one
        for nbits in (2, 5, 8):
            K = 1 << nbits
            cen, _ = ref.lloyd_max_codebook(3, nbits)
            np.testing.assert_allclose(
                cen, math.sqrt(3) * (2 * np.arange(K) + 1 - K) / K, atol=1e-11)
    if d == 4096:
        # close to N(0, 1): Max's (1960) tables
        cen, _ = ref.lloyd_max_codebook(d, 2)
        np.testing.assert_allclose(cen[2:], [0.4528, 1.510], atol=2e-3)
        cen, _ = ref.lloyd_max_codebook(d, 3)
        np.testing.assert_allclose(cen[4:], [0.2451, 0.7560, 1.344, 2.152], atol=2e-3)


# ---------------------------------------------------------------------------- rotations

def test_mt19937_64_known_answer():
    g = ref.MT19937_64(5489)
    for _ in range(9999):
        g()
    assert g() == 9981545732273789042  # required by the C++ standard


@pytest.mark.parametrize("d, qjl_m, rounds, seed", [
    (384, 384, 3, 42), (100, 250, 3, 5), (37, 37, 1, 2**63 + 11), (3, 7, 4, 0), (1, 1, 3, 42),
])
def test_rotations_from_seed(d, qjl_m, rounds, seed):
    idx = make_index(d, 3, qjl_m, faiss.METRIC_L2, seed, 0, rounds, 1)
    p = ref.params_from_index(idx)
    perms, signs = ref.structured_rotation(d, rounds, seed)
    np.testing.assert_array_equal(p.rotation.perms, perms)
    np.testing.assert_array_equal(p.rotation.signs, signs)
    assert len(p.qjl_rotations) == -(-qjl_m // d)
    for j, rot in enumerate(p.qjl_rotations):
        s = ref.derived_seed(seed, j)
        assert rot.seed == s and rot.kind == ref.STRUCTURED and rot.rounds == rounds
        perms, signs = ref.structured_rotation(d, rounds, s)
        np.testing.assert_array_equal(rot.perms, perms)
        np.testing.assert_array_equal(rot.signs, signs)
        # the same rotation built through the SWIG constructor from the derived seed
        built = ft.TQRotation(d, 0, rounds, s)
        b = ref._read_rotation(ref._addr(built), ref._rotation_layout(built))
        np.testing.assert_array_equal(b.perms, rot.perms)
        np.testing.assert_array_equal(b.signs, rot.signs)
    # qjl_scale = 1 / (m E|s_1|)
    np.testing.assert_allclose(
        p.qjl_scale, 1.0 / (qjl_m * ref.expected_abs_coordinate(d)), rtol=1e-12)


@pytest.mark.parametrize("d", [384, 100, 37, 3, 2, 1])
def test_rotation_apply_bit_identical(d):
    idx = make_index(d, 2, d, faiss.METRIC_L2)
    p = ref.params_from_index(idx)
    x = np.random.default_rng(d).standard_normal((5, d)).astype(np.float32)
    rot_cpp, rot = idx.tq.rotation, p.rotation
    y = np.empty_like(x)
    rot_cpp.apply(len(x), faiss.swig_ptr(x), faiss.swig_ptr(y))
    np.testing.assert_array_equal(y, ref.rotate(rot, x))
    back = np.empty_like(x)
    rot_cpp.apply_transpose(len(x), faiss.swig_ptr(y), faiss.swig_ptr(back))
    np.testing.assert_array_equal(back, ref.rotate(rot, y, transpose=True))
    np.testing.assert_allclose(back, x, atol=1e-5)


# ---------------------------------------------------------------------------- statistics

def correlated_pairs(n, d, cos, rng):
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = rng.standard_normal((n, d))
    z -= (z * x).sum(1, keepdims=True) * x
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    q = cos * x + math.sqrt(1 - cos * cos) * z
    x *= rng.uniform(0.5, 2.0, size=(n, 1))
    return x.astype(np.float32), q.astype(np.float32)


def pair_errors(d, nbits, qjl_m, correction, seeds, n=1500, cos=0.5):
    """estimated - true <q_i, x_i> over independent pairs, one C++ index per seed"""
    errs, trues = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x, q = correlated_pairs(n, d, cos, rng)
        idx = make_index(d, nbits, qjl_m, faiss.METRIC_INNER_PRODUCT, seed, 0, 3, correction)
        idx.add(x)
        dc = idx.get_distance_computer()
        est = np.empty(n)
        for i in range(n):
            dc.set_query(faiss.swig_ptr(q[i]))
            est[i] = dc(i)
        true = (x.astype(np.float64) * q).sum(1)
        errs.append(est - true)
        trues.append(true)
    return np.concatenate(errs), np.concatenate(trues)


def t_stat(err):
    return err.mean() / (err.std() / math.sqrt(len(err)))


@pytest.mark.parametrize("nbits", [1, 2, 3])
@pytest.mark.parametrize("correction", [0, 1, 2])
def test_qjl_estimator_unbiased(nbits, correction):
    d = 128
    err, true = pair_errors(d, nbits, d, correction, seeds=[101, 102, 103, 104])
    assert abs(t_stat(err)) < 4.0, (err.mean(), err.std())
    assert abs(err.mean()) < 0.005 * true.mean()


@pytest.mark.parametrize("nbits", [1, 2, 3])
def test_plain_mse_estimator_is_biased(nbits):
    """power check: without QJL, the paper's plain factor underestimates <q, x>"""
    d = 128
    err, true = pair_errors(d, nbits, 0, 0, seeds=[101, 102])
    assert t_stat(err) < -10


@pytest.mark.parametrize("nbits", [1, 2, 3, 4])
def test_unbiased_correction_small_mean_error(nbits):
    d = 128
    err, true = pair_errors(d, nbits, 0, 1, seeds=[201, 202, 203, 204])
    assert abs(t_stat(err)) < 4.0, (err.mean(), err.std())
    assert abs(err.mean()) < 0.005 * true.mean()
