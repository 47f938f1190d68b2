"""The scan kernels: every SIMD implementation returns the same bits, the 4-bit integer fast
path returns the float path's results, the BLAS batch path the per-query estimates."""
import os

import faiss
import numpy as np
import pytest

import faiss_turboquant as ft
from faiss_turboquant import swigturboquant as sw

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "glosses-minilm-10k.npz")


@pytest.fixture(scope="module")
def real():
    z = np.load(DATA)
    return z["xb"].astype("float32")[:4000], z["xq"].astype("float32")[:100]


@pytest.fixture(autouse=True)
def restore_simd():
    yield
    sw.tq_set_simd_level(-1)


@pytest.mark.parametrize("d", [384, 100, 37, 16, 5])
@pytest.mark.parametrize("nbits", range(1, 9))
@pytest.mark.parametrize("qjl", [0, 19, 64])
def test_simd_levels_bit_identical(d, nbits, qjl):
    rng = np.random.default_rng(d * 10 + nbits)
    xb = rng.standard_normal((301, d)).astype("float32")
    xq = rng.standard_normal((7, d)).astype("float32")
    idx = ft.IndexTurboQuant(d, nbits, qjl, faiss.METRIC_L2)
    idx.use_fast_scan = False
    idx.add(xb)
    results = []
    levels = []
    for level in (0, 1, 2):
        levels.append(sw.tq_set_simd_level(level))
        # single queries take the per-query kernel (a batch would take BLAS)
        results.append(np.vstack([idx.search(q[None], 10)[0] for q in xq]))
    assert levels[0] == 0
    for lvl, r in zip(levels[1:], results[1:]):
        np.testing.assert_array_equal(results[0], r, err_msg="SIMD level %d differs" % lvl)


@pytest.mark.parametrize("nbits", [1, 2, 3, 4])
@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
def test_fast_scan_matches_float_path(real, metric, nbits):
    xb, xq = real
    idx = ft.IndexTurboQuant(xb.shape[1], nbits, 0, metric)
    idx.add(xb)
    idx.use_fast_scan = True
    D1, I1 = idx.search(xq, 10)
    idx.use_fast_scan = False
    idx.batch_search_threshold = 10 ** 9  # per-query float kernel
    D2, I2 = idx.search(xq, 10)
    same = (I1 == I2).all(axis=1)
    # candidates come from 8-bit arithmetic, so a borderline 10th neighbour may differ
    assert same.mean() >= 0.97
    np.testing.assert_array_equal(D1[same], D2[same])  # re-scored with the float kernel


def test_selector_respected_on_4_bits(real):
    xb, xq = real
    idx = ft.IndexTurboQuant(xb.shape[1], 4, 0, faiss.METRIC_INNER_PRODUCT)
    idx.add(xb)
    sel = faiss.IDSelectorRange(100, 200)
    D, I = idx.search(xq[:5], 10, params=faiss.SearchParameters(sel=sel))
    assert ((I >= 100) & (I < 200)).all()


@pytest.mark.parametrize("qjl", [0, 64])
def test_blas_batch_matches_per_query(real, qjl):
    xb, xq = real
    idx = ft.IndexTurboQuant(xb.shape[1], 3, qjl, faiss.METRIC_INNER_PRODUCT)
    idx.add(xb)
    idx.batch_search_threshold = 1
    D1, I1 = idx.search(xq, 10)
    idx.batch_search_threshold = 10 ** 9
    D2, I2 = idx.search(xq, 10)
    same = (I1 == I2).all(axis=1)
    assert same.mean() >= 0.97
    np.testing.assert_allclose(D1[same], D2[same], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", ["flat", "ivf"])
def test_shape_checked_even_under_python_O(cls):
    """Our classes validate shapes with exceptions, not asserts (python -O keeps them)."""
    import subprocess
    import sys

    code = (
        "import faiss, numpy as np, faiss_turboquant as ft\n"
        "i = ft.IndexTurboQuant(8, 4, 0, faiss.METRIC_L2) if %r == 'flat' else "
        "ft.IndexIVFTurboQuant(faiss.IndexFlatL2(8), 8, 2, 4)\n"
        "x = np.random.rand(50, 8).astype('float32'); i.train(x); i.add(x)\n"
        "for m in ('search', 'add', 'range_search'):\n"
        "    args = {'search': (1,), 'add': (), 'range_search': (0.5,)}[m]\n"
        "    try:\n"
        "        getattr(i, m)(np.zeros((1000, 2), 'float32'), *args)\n"
        "        print('NOERROR', m)\n"
        "    except ValueError:\n"
        "        print('ok', m)\n" % cls
    )
    root = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True,
                         cwd=root, env=dict(os.environ, PYTHONPATH=root), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "search", "ok", "add", "ok", "range_search"]


@pytest.mark.parametrize("nq", [1, 3, 16, 17, 70])
@pytest.mark.parametrize("nbits", [1, 2, 3, 4])
def test_fast_scan_groups_equal_single_queries(real, nq, nbits):
    """A batch (from 16 queries: the integer matrix product over panels of 16 queries)
    gives exactly the results of one-by-one scans: the integer sums and the estimator do
    not depend on the grouping."""
    xb, xq = real
    idx = ft.IndexTurboQuant(xb.shape[1], nbits, 0, faiss.METRIC_L2)
    idx.add(xb[:1003])  # not a multiple of any block size
    D, I = idx.search(xq[:nq], 7)
    for j in range(nq):
        Dj, Ij = idx.search(xq[j:j + 1], 7)
        np.testing.assert_array_equal(Ij[0], I[j])
        np.testing.assert_array_equal(Dj[0], D[j])


@pytest.mark.parametrize("d", [384, 130, 37, 8, 1])
@pytest.mark.parametrize("nbits", [1, 2, 3, 4])
@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
@pytest.mark.parametrize("nq", [1, 21])
def test_fast_scan_scalar_reference_identical(d, nbits, metric, nq):
    """The portable integer scan (SIMD level scalar), the AVX2 one (1, 2, 4 bits; batches
    run it per query) and the AVX-512 VNNI one return the same ids and the same distances,
    single queries and batches, for any d (partial 64-byte groups) and any number of codes
    (partial blocks)."""
    rng = np.random.default_rng(d + nbits)
    xb = rng.standard_normal((531, d)).astype("float32")
    xq = rng.standard_normal((nq, d)).astype("float32")
    idx = ft.IndexTurboQuant(d, nbits, 0, metric)
    idx.add(xb)
    out = []
    for level in (0, 1, 2) if nbits != 3 else (0, 2):  # AVX2 has no 3-bit integer scan
        sw.tq_set_simd_level(level)
        out.append(idx.search(xq, 12))
    for other in out[1:]:
        np.testing.assert_array_equal(out[0][1], other[1])
        np.testing.assert_array_equal(out[0][0], other[0])


@pytest.mark.parametrize("d", [384, 130, 128, 37, 8, 1])
@pytest.mark.parametrize("nbits", [1, 2, 3, 4])
def test_query_i8_same_at_every_level(d, nbits):
    """the 8-bit query (stream order, zero padding, bias) prepared by the AVX-512 and AVX2
    paths (4 bits) is byte for byte the portable one, for partial groups too; the search
    results would not show a difference in the candidates, so this compares the query"""
    idx = ft.IndexTurboQuant(d, nbits, 0, faiss.METRIC_L2)
    xq = np.random.default_rng(d * 7 + nbits).standard_normal((6, d)).astype("float32")
    xq[1] *= 1e-3  # small queries: the scale is per query
    xq[2, ::2] = 0
    xq[3] *= 1e-38  # 127 / max overflows: the zero 8-bit query on every path
    xq[4, -1] = np.nan  # not rejected by the IVF scanner: the paths must still agree
    xq[5] = 0
    out = {}
    for level in (0, 1, 2):
        sw.tq_set_simd_level(level)
        rows = []
        for q in xq:
            buf = np.full(d * 8 + 512, 99, dtype=np.uint8)
            bias = sw.tq_query_i8(idx, faiss.swig_ptr(q), faiss.swig_ptr(buf))
            rows.append((bias, buf.view(np.int8)))
        out[level] = rows
    for (b0, r0), (b1, r1), (b2, r2) in zip(out[0], out[1], out[2]):
        assert b0 == b1 == b2
        np.testing.assert_array_equal(r0, r1)
        np.testing.assert_array_equal(r0, r2)
        code_bytes = -(-d * nbits // 8)
        group = 24 if nbits == 3 else 64
        row = -(-code_bytes // group) * 64 * (1 if nbits == 3 else 8 // nbits)
        assert np.all(r0[row:] == 99)  # nothing written past the row
        assert b0 == 128 * int(r0[:row].astype(np.int64).sum())


@pytest.mark.parametrize("nbits", [1, 2, 3, 4])
def test_fast_scan_used_at_avx2_level(real, nbits):
    """at SIMD level AVX2 the integer scan serves 1, 2 and 4 bits (3 bits needs VBMI's byte
    permutes: float kernel); what it returns is the float path's top-k, re-scored"""
    xb, xq = real
    idx = ft.IndexTurboQuant(xb.shape[1], nbits, 0, faiss.METRIC_INNER_PRODUCT)
    idx.add(xb)
    sw.tq_set_simd_level(1)
    assert sw.tq_fast_scan_simd(nbits) == (nbits != 3)
    D, I = idx.search(xq, 10)
    idx.use_fast_scan = False
    Df, If = idx.search(xq, 10)
    same = np.mean([set(a) == set(b) for a, b in zip(I, If)])
    assert same >= 0.97, same
