"""index_factory with the TurboQuant tokens (issues 2 and 3): every composition builds
with the right classes and metric, trains, adds and searches sensibly; malformed
strings raise an error that names the bad token."""
import math
import re

import numpy as np
import pytest

import faiss
import faiss_turboquant as ft
from faiss_turboquant._registration import ORIGINAL

L2 = faiss.METRIC_L2
IP = faiss.METRIC_INNER_PRODUCT
METRICS = [L2, IP]
D = 64  # small stand-in for 384: PCA32 ~ PCA128, RR64 ~ RR384, OPQ16_64 ~ OPQ16_128


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # 2 shared cores: OpenMP spinning under load makes k-means / OPQ training 50x slower
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


def clustered(n, d, seed, nc=32, latent=24):
    """Clustered data in a `latent`-dim subspace (so PCA to d/2 keeps the neighbours),
    with norms spread over [0.5, 2] so that L2 and inner-product neighbours differ."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(123).standard_normal((d, d)))[0][:, :latent]
    centers = np.random.default_rng(7).standard_normal((nc, latent)) * 2
    z = centers[rng.integers(nc, size=n)] + rng.standard_normal((n, latent)) * 0.7
    x = z @ basis.T + 0.05 * rng.standard_normal((n, d))
    x *= rng.uniform(0.5, 2.0, size=(n, 1))
    return np.ascontiguousarray(x, dtype="float32")


XT = clustered(3000, D, 1)
XB = clustered(3000, D, 2)
XQ = clustered(40, D, 3)
IDS = np.arange(len(XB), dtype="int64") * 3 + 1000  # for IDMap compositions


def exact(metric, k=10):
    gt = faiss.IndexFlat(D, metric)
    gt.add(XB)
    return gt.search(XQ, k)


GT = {m: exact(m) for m in METRICS}


def recall(I, Igt):
    k = Igt.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(I, Igt)]))


def code_size(d, b, m=0):
    return math.ceil(d * b / 8) + 8 + (math.ceil(m / 8) + 4 if m else 0)


def cls(obj):
    return type(faiss.downcast_index(obj))


def fast_opq(index):
    """Keep the OPQ composition but make its training cheap."""
    root = faiss.downcast_index(index)
    if isinstance(root, faiss.IndexPreTransform):
        vt = faiss.downcast_VectorTransform(root.chain.at(0))
        if isinstance(vt, faiss.OPQMatrix):
            vt.niter = 4
            vt.niter_pq_0 = 4
            vt.niter_pq = 2


# description -> (leaf path from the root, leaf class, leaf dimension, bits, QJL bits,
#                 root class, extra structural checks, recall bound at 10)
def _no_check(root, metric):
    pass


def _check_refine_flat(root, metric):
    ref = faiss.downcast_index(root.refine_index)
    assert isinstance(ref, faiss.IndexFlat)
    assert ref.metric_type == metric


def _check_refine_sq8(root, metric):
    ref = faiss.downcast_index(root.refine_index)
    assert isinstance(ref, faiss.IndexScalarQuantizer)
    assert ref.sq.qtype == faiss.ScalarQuantizer.QT_8bit


def _check_chain(kind, d_out):
    def check(root, metric):
        assert root.chain.size() == 1
        vt = faiss.downcast_VectorTransform(root.chain.at(0))
        assert isinstance(vt, kind)
        assert vt.d_in == D and vt.d_out == d_out

    return check


FLAT_SPECS = {
    "IDMap,TQ4": (["index"], ft.IndexTurboQuant, D, 4, 0, faiss.IndexIDMap, _no_check, 0.75),
    "IDMap2,TQ4": (["index"], ft.IndexTurboQuant, D, 4, 0, faiss.IndexIDMap2, _no_check, 0.75),
    "PCA32,TQ4": (["index"], ft.IndexTurboQuant, 32, 4, 0, faiss.IndexPreTransform,
                  _check_chain(faiss.PCAMatrix, 32), 0.6),
    "RR64,TQ4": (["index"], ft.IndexTurboQuant, D, 4, 0, faiss.IndexPreTransform,
                 _check_chain(faiss.RandomRotationMatrix, 64), 0.75),
    "OPQ16_64,TQ4": (["index"], ft.IndexTurboQuant, D, 4, 0, faiss.IndexPreTransform,
                     _check_chain(faiss.OPQMatrix, 64), 0.75),
    "TQ4,RFlat": (["base_index"], ft.IndexTurboQuant, D, 4, 0, faiss.IndexRefine,
                  _check_refine_flat, 0.75),
    "TQ4,Refine(SQ8)": (["base_index"], ft.IndexTurboQuant, D, 4, 0, faiss.IndexRefine,
                        _check_refine_sq8, 0.75),
}
for _b in range(1, 9):
    FLAT_SPECS["TQ%d" % _b] = ([], ft.IndexTurboQuant, D, _b, 0, ft.IndexTurboQuant, _no_check,
                               {1: 0.35, 2: 0.5, 3: 0.6}.get(_b, 0.75 if _b < 8 else 0.9))
FLAT_SPECS["TQ3q64"] = ([], ft.IndexTurboQuant, D, 3, 64, ft.IndexTurboQuant, _no_check, 0.5)
FLAT_SPECS["TQ3q384"] = ([], ft.IndexTurboQuant, D, 3, 384, ft.IndexTurboQuant, _no_check, 0.5)
# few QJL bits: unbiased but noisy (std ~ sqrt(pi/2m)), so only a weak bound
FLAT_SPECS["TQ2q7"] = ([], ft.IndexTurboQuant, D, 2, 7, ft.IndexTurboQuant, _no_check, 0.15)

IVF_SPECS = {
    "IVF16,TQ4": ([], D, 4, 0, ft.IndexIVFTurboQuant, _no_check, 0.75),
    "IVF16,TQ4q32": ([], D, 4, 32, ft.IndexIVFTurboQuant, _no_check, 0.6),
    "IDMap,IVF16,TQ4": (["index"], D, 4, 0, faiss.IndexIDMap, _no_check, 0.75),
    "PCA32,IVF16,TQ4": (["index"], 32, 4, 0, faiss.IndexPreTransform,
                        _check_chain(faiss.PCAMatrix, 32), 0.6),
    "OPQ8_32,IVF16,TQ4": (["index"], 32, 4, 0, faiss.IndexPreTransform,
                          _check_chain(faiss.OPQMatrix, 32), 0.6),
    "IVF16_HNSW32,TQ4": ([], D, 4, 0, ft.IndexIVFTurboQuant, _no_check, 0.75),
    "IVF16,TQ4,RFlat": (["base_index"], D, 4, 0, faiss.IndexRefine, _check_refine_flat, 0.75),
    "IVF16,TQ2": ([], D, 2, 0, ft.IndexIVFTurboQuant, _no_check, 0.5),
}


def leaf_of(root, path):
    node = root
    for attr in path:
        node = faiss.downcast_index(getattr(node, attr))
    return node


def build(desc, metric):
    index = ft.index_factory(D, desc, metric)
    fast_opq(index)
    return index


def fill_and_search(index, desc, k=10):
    index.train(XT)
    assert index.is_trained
    if desc.startswith("IDMap"):
        index.add_with_ids(XB, IDS)
    else:
        index.add(XB)
    assert index.ntotal == len(XB)
    return index.search(XQ, k)


def check_ranked(Dist, metric):
    valid = np.isfinite(Dist) & (np.abs(Dist) < 1e30)
    assert valid.all()
    if metric == L2:
        assert np.all(np.diff(Dist, axis=1) >= 0), "L2 distances must be ascending"
    else:
        assert np.all(np.diff(Dist, axis=1) <= 0), "inner products must be descending"


def test_factory_is_registered():
    assert faiss.index_factory is ft.index_factory
    assert faiss.downcast_index is ft.downcast_index


@pytest.mark.parametrize("metric", METRICS, ids=["L2", "IP"])
@pytest.mark.parametrize("desc", sorted(FLAT_SPECS))
def test_flat_compositions(desc, metric):
    path, leaf_cls, d_leaf, bits, qjl, root_cls, extra, bound = FLAT_SPECS[desc]
    index = build(desc, metric)
    root = faiss.downcast_index(index)
    assert type(root) is root_cls
    assert root.metric_type == metric
    assert root.d == D
    leaf = leaf_of(root, path)
    assert type(leaf) is leaf_cls
    assert leaf.metric_type == metric
    assert leaf.d == d_leaf
    assert leaf.tq.nbits == bits
    assert leaf.tq.qjl_m == qjl
    assert leaf.code_size == code_size(d_leaf, bits, qjl)
    assert leaf.is_trained  # TurboQuant itself needs no training
    extra(root, metric)

    Dist, I = fill_and_search(index, desc)
    assert leaf.ntotal == len(XB)
    check_ranked(Dist, metric)
    Igt = GT[metric][1]
    if desc.startswith("IDMap"):
        Igt = IDS[Igt]
        assert np.isin(I, IDS).all()
    r = recall(I, Igt)
    assert r >= bound, "%s recall@10 %.3f < %.2f" % (desc, r, bound)


@pytest.mark.parametrize("metric", METRICS, ids=["L2", "IP"])
@pytest.mark.parametrize("desc", sorted(IVF_SPECS))
def test_ivf_compositions(desc, metric):
    path, d_leaf, bits, qjl, root_cls, extra, bound = IVF_SPECS[desc]
    index = build(desc, metric)
    root = faiss.downcast_index(index)
    assert type(root) is root_cls
    assert root.metric_type == metric
    ivf = leaf_of(root, path)
    assert type(ivf) is ft.IndexIVFTurboQuant
    assert isinstance(ivf, faiss.IndexIVF)
    assert ivf.nlist == 16 and ivf.d == d_leaf
    assert ivf.metric_type == metric
    assert ivf.tq.nbits == bits and ivf.tq.qjl_m == qjl
    assert ivf.code_size == code_size(d_leaf, bits, qjl)
    assert not ivf.is_trained and not index.is_trained
    quantizer = faiss.downcast_index(ivf.quantizer)
    if "HNSW" in desc:
        assert isinstance(quantizer, faiss.IndexHNSWFlat)
    else:
        assert isinstance(quantizer, faiss.IndexFlat)
        assert quantizer.metric_type == metric
    # extract_index_ivf + our downcast find our class inside the composition
    if "RFlat" not in desc:  # FAISS 1.7.3's extract_index_ivf does not look into IndexRefine
        assert type(faiss.downcast_index(faiss.extract_index_ivf(index))) is ft.IndexIVFTurboQuant
    extra(root, metric)

    index.train(XT)
    assert ivf.is_trained and quantizer.ntotal == 16
    ivf.nprobe = 16
    if desc.startswith("IDMap"):
        index.add_with_ids(XB, IDS)
    else:
        index.add(XB)
    assert ivf.ntotal == len(XB)
    Dist, I = index.search(XQ, 10)
    check_ranked(Dist, metric)
    Igt = GT[metric][1]
    if desc.startswith("IDMap"):
        Igt = IDS[Igt]
    r = recall(I, Igt)
    assert r >= bound, "%s recall@10 %.3f < %.2f" % (desc, r, bound)
    # fewer probes: fewer lists visited, so recall cannot be better than exhaustive
    ivf.nprobe = 1
    r1 = recall(index.search(XQ, 10)[1], Igt)
    assert r1 <= r + 1e-9


@pytest.mark.parametrize("metric", METRICS, ids=["L2", "IP"])
def test_metric_changes_the_neighbours(metric):
    """The metric argument is not ignored: results follow the requested metric and
    differ from the other metric's on data with spread-out norms."""
    other = IP if metric == L2 else L2
    assert recall(GT[metric][1], GT[other][1]) < 0.3  # the data separates the metrics
    idx = ft.index_factory(D, "TQ8", metric)
    idx.add(XB)
    I = idx.search(XQ, 10)[1]
    assert recall(I, GT[metric][1]) > 0.9
    assert recall(I, GT[other][1]) < 0.3


def test_refine_flat_reranks_exactly():
    index = ft.index_factory(D, "TQ2,RFlat", L2)
    index.add(XB)
    base = ft.index_factory(D, "TQ2", L2)
    base.add(XB)
    faiss.downcast_index(index).k_factor = 8
    Dist, I = index.search(XQ, 10)
    r_base = recall(base.search(XQ, 10)[1], GT[L2][1])
    r_ref = recall(I, GT[L2][1])
    assert r_ref > r_base + 0.05
    true = np.sum((XQ[:, None, :] - XB[I]) ** 2, axis=2)
    np.testing.assert_allclose(Dist, true, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("desc,n_kind", [("IVF1k,TQ4", 1024), ("IVF2k,TQ4", 2048)])
def test_k_suffix_follows_faiss(desc, n_kind):
    """`k` on n: accepted exactly when FAISS itself accepts it for the Flat codec."""
    try:
        ORIGINAL["index_factory"](D, desc.replace("TQ4", "Flat"))
        faiss_accepts = True
    except RuntimeError:
        faiss_accepts = False
    if faiss_accepts:
        index = ft.index_factory(D, desc)
        assert type(faiss.downcast_index(index)) is ft.IndexIVFTurboQuant
        assert index.nlist == n_kind
    else:
        with pytest.raises(RuntimeError) as e:
            ft.index_factory(D, desc)
        assert desc.split(",")[0] in str(e.value)


def test_strings_without_tq_are_faiss_own():
    for desc, kind in [("Flat", faiss.IndexFlat), ("IVF16,Flat", faiss.IndexIVFFlat),
                       ("IDMap,Flat", faiss.IndexIDMap), ("SQ8", faiss.IndexScalarQuantizer),
                       ("HNSW32", faiss.IndexHNSWFlat), ("PCA32,Flat", faiss.IndexPreTransform)]:
        for metric in METRICS:
            index = ft.index_factory(D, desc, metric)
            assert isinstance(faiss.downcast_index(index), kind), desc
            assert index.metric_type == metric
            assert not ft.swigturboquant.tq_contains_turboquant(index)


def test_factory_through_faiss_name():
    index = faiss.index_factory(D, "IDMap2,TQ5", IP)
    assert type(faiss.downcast_index(index.index)) is ft.IndexTurboQuant
    assert faiss.downcast_index(index.index).tq.nbits == 5


BAD = [
    ("TQ", "TQ"),
    ("TQ9", "TQ9"),
    ("TQ0", "TQ0"),
    ("TQ4q", "TQ4q"),
    ("TQ4x", "TQ4x"),
    ("TQ4q0", "TQ4q0"),
    ("TQ12", "TQ12"),
    ("Foo", "Foo"),
    ("IVF10,TQ4,TQ4", "TQ4"),
    ("IVF16,TQ4x", "TQ4x"),
    ("IDMap,TQ-1", "TQ-1"),
    ("tq4", "tq4"),
]


@pytest.mark.parametrize("desc,token", BAD, ids=[b[0] for b in BAD])
def test_malformed_strings_name_the_bad_token(desc, token):
    with pytest.raises((RuntimeError, ValueError)) as e:
        ft.index_factory(D, desc)
    msg = str(e.value)
    # the token itself, not just a longer word containing it
    assert re.search(r"(^|[^A-Za-z0-9])%s($|[^A-Za-z0-9])" % re.escape(token), msg), msg


def test_two_tq_tokens_message_says_so():
    with pytest.raises(RuntimeError) as e:
        ft.index_factory(D, "IVF10,TQ4,TQ4")
    assert "more than one" in str(e.value)


def test_tq_token_where_only_flat_or_ivf_fits():
    # the TQ codec replaces a Flat or IVF leaf only (HNSW over TQ is built by hand)
    with pytest.raises(RuntimeError):
        ft.index_factory(D, "HNSW32,TQ4")


@pytest.mark.parametrize("metric", [faiss.METRIC_L1, faiss.METRIC_Linf])
def test_unsupported_metric_rejected(metric):
    with pytest.raises((ValueError, RuntimeError)):
        ft.index_factory(D, "TQ4", metric)
    with pytest.raises((ValueError, RuntimeError)):
        ft.index_factory(D, "IVF16,TQ4", metric)


@pytest.mark.parametrize("d", [0, -3, 2.5, True])
def test_bad_dimension_rejected(d):
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        ft.index_factory(d, "TQ4")
