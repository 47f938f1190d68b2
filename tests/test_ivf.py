"""faiss::IndexIVFTurboQuant behaves like any other FAISS IVF index (issue 3)."""
import os

import numpy as np
import pytest

import faiss
import faiss_turboquant as ft

L2 = faiss.METRIC_L2
IP = faiss.METRIC_INNER_PRODUCT
METRICS = [L2, IP]
MIDS = ["L2", "IP"]
D = 32
NLIST = 16
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "data", "glosses-minilm-10k.npz")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # k-means under OpenMP on 2 shared, loaded cores is very slow; 1 thread is steady
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


def clustered(n, seed, nc=24):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((nc, D)) * 2
    x = c[rng.integers(nc, size=n)] + 0.6 * rng.standard_normal((n, D))
    x *= rng.uniform(0.7, 1.5, size=(n, 1))
    return x.astype("float32")


XT = clustered(2000, 1)
XB = clustered(3000, 2)
XQ = clustered(25, 3)


def exact(xb, xq, k, metric):
    gt = faiss.IndexFlat(xb.shape[1], metric)
    gt.add(xb)
    return gt.search(xq, k)


GT = {m: exact(XB, XQ, 10, m)[1] for m in METRICS}


def recall(I, Igt):
    return float(np.mean([len(set(a) & set(b)) / Igt.shape[1] for a, b in zip(I, Igt)]))


_TRAINED = {}


def trained(metric=L2, desc="IVF16,TQ4", by_residual=True):
    """A trained, empty index (k-means once per configuration, then cloned)."""
    key = (metric, desc)
    if key not in _TRAINED:
        index = ft.index_factory(D, desc, metric)
        index.train(XT)
        _TRAINED[key] = index
    index = faiss.clone_index(_TRAINED[key])
    ivf_of(index).by_residual = by_residual
    return index


def filled(metric=L2, desc="IVF16,TQ4", by_residual=True, nprobe=NLIST):
    index = trained(metric, desc, by_residual)
    if desc.startswith("IDMap"):
        index.add_with_ids(XB, np.arange(len(XB), dtype="int64"))
    else:
        index.add(XB)
    ivf_of(index).nprobe = nprobe
    return index


def ivf_of(index):
    root = faiss.downcast_index(index)
    if isinstance(root, faiss.IndexRefine):  # FAISS 1.7.3's extract_index_ivf stops there
        root = faiss.downcast_index(root.base_index)
    return faiss.downcast_index(faiss.extract_index_ivf(root))


def list_content(index):
    il = index.invlists
    out = {}
    for l in range(il.nlist):
        n = il.list_size(l)
        ids = faiss.rev_swig_ptr(il.get_ids(l), n).copy() if n else np.zeros(0, "int64")
        codes = (faiss.rev_swig_ptr(il.get_codes(l), n * il.code_size).copy()
                 .reshape(n, il.code_size) if n else np.zeros((0, il.code_size), "uint8"))
        out[l] = (ids, codes)
    return out


def centroids(index):
    q = index.quantizer
    return q.reconstruct_n(0, q.ntotal)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_train_only_trains_the_coarse_quantizer(metric):
    index = ft.index_factory(D, "IVF16,TQ4", metric)
    assert type(index) is ft.IndexIVFTurboQuant
    assert not index.is_trained and index.quantizer.ntotal == 0
    with pytest.raises(RuntimeError):
        index.add(XB[:10])
    codec_before = (index.tq.nbits, index.tq.qjl_m, index.tq.seed, index.code_size)
    index.train(XT)
    assert index.is_trained and index.quantizer.is_trained
    assert index.quantizer.ntotal == NLIST
    assert index.ntotal == 0
    assert all(index.invlists.list_size(l) == 0 for l in range(NLIST))
    assert (index.tq.nbits, index.tq.qjl_m, index.tq.seed, index.code_size) == codec_before
    # the coarse quantizer is trained exactly as FAISS trains IVF16,Flat's
    ref = ft.index_factory(D, "IVF16,Flat", metric)
    ref.train(XT)
    np.testing.assert_array_equal(centroids(index), centroids(ref))


@pytest.mark.parametrize("by_residual", [True, False], ids=["residual", "raw"])
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_codes_are_the_data_oblivious_codec(metric, by_residual):
    """Nothing but the coarse quantizer is learnt: the codes in the lists are the flat
    TurboQuant codes of x (or of x - centroid)."""
    index = filled(metric, by_residual=by_residual)
    flat = ft.IndexTurboQuant(D, 4, 0, metric)
    cent = centroids(index)
    seen = 0
    for l, (ids, codes) in list_content(index).items():
        x = XB[ids] - cent[l] if by_residual else XB[ids]
        if len(ids):
            np.testing.assert_array_equal(codes, flat.sa_encode(np.ascontiguousarray(x)))
        seen += len(ids)
    assert seen == len(XB)


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_codes_of_a_large_add_span_encoder_blocks(metric):
    """the encoder works in blocks of 4096 vectors with reused buffers: an add and an
    sa_encode (list number + code) of 9000 vectors give every vector its own codec code"""
    xb = clustered(9000, 7)
    index = faiss.clone_index(trained(metric))
    index.add(xb)
    flat = ft.IndexTurboQuant(D, 4, 0, metric)
    cent = centroids(index)
    seen = 0
    for l, (ids, codes) in list_content(index).items():
        if len(ids):
            x = np.ascontiguousarray(xb[ids] - cent[l])
            np.testing.assert_array_equal(codes, flat.sa_encode(x))
        seen += len(ids)
    assert seen == len(xb)
    sa = index.sa_encode(xb)
    assign = faiss.downcast_index(index.quantizer).search(xb, 1)[1].ravel()
    coarse = sa.shape[1] - flat.code_size
    np.testing.assert_array_equal(
        sa[:, coarse:], flat.sa_encode(np.ascontiguousarray(xb - cent[assign])))


# ------------------------------------------------------------------ nprobe and params
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_nprobe_attribute(metric):
    index = filled(metric, nprobe=1)
    assert index.nprobe == 1
    Dist, I = index.search(XQ, 10)
    # with nprobe=1 every result lies in the query's nearest list
    _, nearest = index.quantizer.search(XQ, 1)
    lists = {l: set(ids.tolist()) for l, (ids, _) in list_content(index).items()}
    for q in range(len(XQ)):
        assert set(I[q][I[q] >= 0].tolist()) <= lists[int(nearest[q, 0])]
    r1 = recall(I, GT[metric])
    index.nprobe = NLIST
    r_all = recall(index.search(XQ, 10)[1], GT[metric])
    assert r_all >= 0.75 and r_all >= r1


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_search_parameters_ivf(metric):
    index = filled(metric, nprobe=1)
    ref = filled(metric, nprobe=4)
    Dr, Ir = ref.search(XQ, 10)
    Dp, Ip = index.search(XQ, 10, params=faiss.SearchParametersIVF(nprobe=4))
    np.testing.assert_array_equal(Ip, Ir)
    np.testing.assert_array_equal(Dp, Dr)
    assert index.nprobe == 1  # the parameter object does not change the index

    Dall, Iall = ref.search(XQ, len(XB))  # full ranking over the same 4 lists
    for sel, allowed in ((faiss.IDSelectorRange(0, 700), set(range(700))),
                         (faiss.IDSelectorBatch(np.arange(0, 3000, 7)), set(range(0, 3000, 7)))):
        Ds, Is = index.search(XQ, 10, params=faiss.SearchParametersIVF(nprobe=4, sel=sel))
        for q in range(len(XQ)):
            got = [i for i in Is[q] if i >= 0]
            assert set(got) <= allowed
            expect = [i for i in Iall[q] if i in allowed][:10]
            assert got == expect


@pytest.mark.parametrize("desc", ["IVF16,TQ4", "IDMap,IVF16,TQ4", "IDMap2,IVF16,TQ4",
                                  "PCA16,IVF16,TQ4", "IVF16,TQ4,RFlat"])
def test_parameter_space_nprobe(desc):
    index = filled(IP, desc, nprobe=1)
    faiss.ParameterSpace().set_index_parameter(index, "nprobe", 4)
    ivf = ivf_of(index)
    assert type(ivf) is ft.IndexIVFTurboQuant
    assert ivf.nprobe == 4
    ref = filled(IP, desc, nprobe=4)
    np.testing.assert_array_equal(index.search(XQ, 10)[1], ref.search(XQ, 10)[1])


@pytest.mark.parametrize("desc", ["IVF16,TQ4", "IDMap,IVF16,TQ4", "IDMap2,IVF16,TQ4",
                                  "PCA16,IVF16,TQ4", "OPQ8_32,IVF16,TQ4"])
def test_extract_index_ivf_and_downcast(desc):
    index = ft.index_factory(D, desc)
    ivf = faiss.extract_index_ivf(index)
    assert isinstance(ivf, faiss.IndexIVF)
    ours = faiss.downcast_index(ivf)
    assert type(ours) is ft.IndexIVFTurboQuant
    assert ours.tq.nbits == 4
    ours.nprobe = 7  # a view of the same C++ object
    assert faiss.extract_index_ivf(index).nprobe == 7


@pytest.mark.parametrize("fast", [True, False])
def test_ip_residual_offset_independent_of_coarse_distances(fast):
    """inner product with residuals: the list offset <q, c> comes from the rotated
    centroids, not from the coarse distances the caller passes (FAISS's contrib
    ivf_tools passes zeros or uninitialised memory), and a quantizer that is not a flat
    index (an IDMap2 over the same centroids) gives the same results"""
    base = trained(IP)
    direct = faiss.clone_index(base)
    q = faiss.IndexIDMap2(faiss.IndexFlat(D, IP))
    q.add_with_ids(centroids(base), np.arange(NLIST, dtype="int64"))
    other = ft.IndexIVFTurboQuant(q, D, NLIST, 4, 0, IP)
    other.is_trained = True
    for index in (direct, other):
        ivf_of(index).use_fast_scan = fast
        index.add(XB)
        index.nprobe = 4
    Dd, Id = direct.search(XQ, 10)
    Do, Io = other.search(XQ, 10)
    np.testing.assert_array_equal(Id, Io)
    np.testing.assert_array_equal(Dd, Do)
    Dq, Iq = faiss.downcast_index(direct.quantizer).search(XQ, 4)
    for placeholder in (np.zeros_like(Dq), np.full_like(Dq, 1e6)):
        Dp, Ip = search_preassigned(direct, XQ, 10, Iq, placeholder)
        np.testing.assert_array_equal(Ip, Id)
        np.testing.assert_array_equal(Dp, Dd)
    try:
        from faiss.contrib import ivf_tools
    except ImportError:
        return
    if hasattr(ivf_tools, "search_preassigned"):
        Dc, Ic = ivf_tools.search_preassigned(direct, XQ, 10, Iq)
        np.testing.assert_array_equal(Ic, Id)


def search_preassigned(index, xq, k, assign, coarse_dis):
    """IndexIVF::search_preassigned through FAISS's raw SWIG signature (FAISS 1.7.3 has no
    numpy wrapper for it)"""
    n = len(xq)
    D = np.empty((n, k), dtype="float32")
    I = np.empty((n, k), dtype="int64")
    assign = np.ascontiguousarray(assign, dtype="int64")
    coarse_dis = np.ascontiguousarray(coarse_dis, dtype="float32")
    index.search_preassigned(n, faiss.swig_ptr(xq), k, faiss.swig_ptr(assign),
                             faiss.swig_ptr(coarse_dis), faiss.swig_ptr(D),
                             faiss.swig_ptr(I), False)
    return D, I


def test_search_preassigned_same_as_search():
    """FAISS's search_preassigned reaches the same scan as search (the index's C++
    override checks first that the lists can be scanned, then runs IndexIVF's)"""
    index = filled(IP, nprobe=4)
    Dq, Iq = faiss.downcast_index(index.quantizer).search(XQ, 4)
    D, I = search_preassigned(index, XQ, 10, Iq, Dq)
    Ds, Is = index.search(XQ, 10)
    np.testing.assert_array_equal(I, Is)
    np.testing.assert_array_equal(D, Ds)


def test_search_preassigned_rejects_invalid_lists():
    """a list number outside [-1, nlist) in the caller's assign array is a clear error
    (FAISS 1.7.3 throws it inside an OpenMP region, which aborted the process); -1 is
    an unused probe"""
    index = filled(IP, nprobe=2)
    Dq, Iq = faiss.downcast_index(index.quantizer).search(XQ, 2)
    for bad in (NLIST, NLIST + 100, -2):
        assign = Iq.copy()
        assign[3, 1] = bad
        with pytest.raises(RuntimeError, match="invalid list number"):
            search_preassigned(index, XQ, 5, assign, Dq)
    assign = Iq.copy()
    assign[:, 1] = -1
    D, I = search_preassigned(index, XQ, 5, assign, Dq)
    index.nprobe = 1
    np.testing.assert_array_equal(I, index.search(XQ, 5)[1])


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_quantizer_without_reconstruct_is_a_clear_error(metric):
    """an IndexIDMap quantizer cannot reconstruct its centroids (FAISS runs reconstruct_n in
    an OpenMP region, so its exception used to abort the process): the index is built,
    residual encoding raises a clear error, and by_residual = False works"""
    base = trained(metric)
    q = faiss.IndexIDMap(faiss.IndexFlat(D, metric))
    q.add_with_ids(centroids(base), np.arange(NLIST, dtype="int64"))
    index = ft.IndexIVFTurboQuant(q, D, NLIST, 4, 0, metric)
    index.is_trained = True
    with pytest.raises(RuntimeError, match="cannot reconstruct"):
        index.add(XB)
    assert index.ntotal == 0
    Dq, Iq = q.search(XQ, 4)
    for search in (lambda: index.search(XQ, 5), lambda: index.range_search(XQ, 1.0),
                   lambda: search_preassigned(index, XQ, 5, Iq, Dq)):
        with pytest.raises(RuntimeError, match="cannot reconstruct"):
            search()
    index.by_residual = False
    index.add(XB)
    index.nprobe = NLIST
    I = index.search(XQ, 10)[1]
    assert recall(I, GT[metric]) >= 0.75
    index.by_residual = True  # the codes are not residuals now, but searching must not abort
    for search in (lambda: index.search(XQ, 5), lambda: index.range_search(XQ, 1.0)):
        with pytest.raises(RuntimeError, match="cannot reconstruct"):
            search()


# ------------------------------------------------------------------ shards
@pytest.mark.parametrize("how", ["clone", "same-centroids"])
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_index_shards(metric, how):
    base = trained(metric)
    if how == "clone":
        parts = [faiss.clone_index(base), faiss.clone_index(base)]
    else:
        parts = []
        for _ in range(2):
            q = faiss.IndexFlat(D, metric)
            q.add(centroids(base))
            part = ft.IndexIVFTurboQuant(q, D, NLIST, 4, 0, metric)
            part.is_trained = True  # the coarse quantizer is already filled
            parts.append(part)
    full = faiss.clone_index(base)
    full.add(XB)
    shards = faiss.IndexShards(D, False, True)
    for p in parts:
        p.nprobe = 3
        shards.add_shard(p)
    shards.add(XB)
    assert [p.ntotal for p in parts] == [1500, 1500]
    assert type(faiss.downcast_index(shards.at(0))) is ft.IndexIVFTurboQuant
    full.nprobe = 3
    Ds, Is = shards.search(XQ, 10)
    Df, If = full.search(XQ, 10)
    np.testing.assert_array_equal(Is, If)
    np.testing.assert_array_equal(Ds, Df)


# ------------------------------------------------------------------ inverted lists
def test_invlists_access():
    index = filled(L2, nprobe=4)
    il = index.invlists
    assert isinstance(il, faiss.InvertedLists)
    assert il.nlist == NLIST and il.code_size == index.code_size
    content = list_content(index)
    sizes = [len(ids) for ids, _ in content.values()]
    assert sum(sizes) == index.ntotal == len(XB)
    all_ids = np.concatenate([ids for ids, _ in content.values()])
    np.testing.assert_array_equal(np.sort(all_ids), np.arange(len(XB)))
    # each vector sits in the list of its nearest centroid
    _, assign = index.quantizer.search(XB, 1)
    for l, (ids, _) in content.items():
        assert (assign[ids, 0] == l).all()
    # through a wrapper too
    wrapped = filled(L2, "IDMap,IVF16,TQ4")
    il2 = faiss.extract_index_ivf(wrapped).invlists
    assert sum(il2.list_size(l) for l in range(NLIST)) == len(XB)


# ------------------------------------------------------------------ range search
@pytest.mark.parametrize("by_residual", [True, False], ids=["residual", "raw"])
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_range_search(metric, by_residual):
    index = filled(metric, by_residual=by_residual, nprobe=NLIST)
    xq = XQ[:8]
    Dall, Iall = index.search(xq, len(XB))
    radius = float(np.median(Dall[:, 30]))
    lims, Dr, Ir = index.range_search(xq, radius)
    assert lims[-1] > 0
    for q in range(len(xq)):
        ids = Ir[lims[q]:lims[q + 1]]
        inside = Dall[q] < radius if metric == L2 else Dall[q] > radius
        assert set(ids.tolist()) == set(Iall[q][inside].tolist())
        ref = dict(zip(Iall[q].tolist(), Dall[q].tolist()))
        np.testing.assert_allclose(Dr[lims[q]:lims[q + 1]], [ref[i] for i in ids],
                                   rtol=1e-5, atol=1e-5)
    # selector and fewer probes: only selected ids from the probed lists
    params = faiss.SearchParametersIVF(nprobe=2, sel=faiss.IDSelectorRange(0, 1500))
    lims2, _, I2 = index.range_search(xq, radius, params=params)
    assert (I2 < 1500).all() and lims2[-1] <= lims[-1]
    _, probed = index.quantizer.search(xq, 2)
    lists = {l: set(ids.tolist()) for l, (ids, _) in list_content(index).items()}
    for q in range(len(xq)):
        allowed = lists[int(probed[q, 0])] | lists[int(probed[q, 1])]
        assert set(I2[lims2[q]:lims2[q + 1]].tolist()) <= allowed


# ------------------------------------------------------------------ mutation
def test_remove_ids_keeps_other_ids():
    index = filled(L2, nprobe=NLIST)
    removed = np.arange(0, 3000, 3, dtype="int64")
    assert index.remove_ids(removed) == len(removed)
    assert index.ntotal == len(XB) - len(removed)
    I = index.search(XB[:30], 5)[1]
    assert not np.isin(I, removed).any()
    # ids are stored, not positions: survivors keep theirs
    for i in (1, 2, 4, 5, 29):
        assert index.search(XB[i:i + 1], 1)[1][0, 0] == i
    survivors = [i for i in range(2000, 3000) if i % 3]
    assert index.remove_ids(faiss.IDSelectorRange(2000, 3000)) == len(survivors)
    assert index.remove_ids(removed) == 0
    assert sum(index.invlists.list_size(l) for l in range(NLIST)) == index.ntotal


def test_merge_from():
    a = trained(L2)
    b = trained(L2)
    a.add_with_ids(XB[:1000], np.arange(1000, dtype="int64"))
    b.add_with_ids(XB[1000:], np.arange(1000, 3000, dtype="int64"))
    a.merge_from(b, 0)
    assert a.ntotal == 3000 and b.ntotal == 0
    full = filled(L2, nprobe=5)
    a.nprobe = 5
    Da, Ia = a.search(XQ, 10)
    Df, If = full.search(XQ, 10)
    np.testing.assert_array_equal(Ia, If)
    np.testing.assert_array_equal(Da, Df)
    # add_id shifts the ids of the merged vectors
    c = trained(L2)
    c.add(XB[:10])
    d = trained(L2)
    d.add(XB[10:20])
    c.merge_from(d, 10)
    c.nprobe = NLIST
    assert (c.search(XB[:20], 1)[1][:, 0] == np.arange(20)).mean() >= 0.9


@pytest.mark.parametrize("other", ["bits", "by_residual", "qjl", "flat_codes"])
def test_merge_incompatible_raises(other):
    a = filled(L2, nprobe=2)
    if other == "bits":
        b = trained(L2, "IVF16,TQ3")
    elif other == "by_residual":
        b = trained(L2, by_residual=False)
    elif other == "qjl":
        b = trained(L2, "IVF16,TQ4q16")
    else:
        b = ft.index_factory(D, "IVF16,Flat")
        b.train(XT)
    b.add(XB[:20])
    with pytest.raises(RuntimeError):
        a.merge_from(b, 0)
    assert a.ntotal == len(XB) and b.ntotal == 20


# ------------------------------------------------------------------ reconstruction
@pytest.mark.parametrize("by_residual", [True, False], ids=["residual", "raw"])
def test_direct_map_reconstruct(by_residual):
    index = filled(IP, by_residual=by_residual)
    with pytest.raises(RuntimeError):
        index.reconstruct(0)
    index.make_direct_map()
    dec = index.sa_decode(index.sa_encode(XB[:50]))
    for i in (0, 7, 49):
        np.testing.assert_array_equal(index.reconstruct(i), dec[i])
    np.testing.assert_array_equal(index.reconstruct_n(0, 50), dec)
    rel = np.sum((dec - XB[:50]) ** 2) / np.sum(XB[:50] ** 2)
    assert rel < 0.02
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    np.testing.assert_array_equal(index.reconstruct(7), dec[7])
    with pytest.raises(RuntimeError):
        index.reconstruct(len(XB) + 5)


def test_sa_encode_decode():
    res = filled(L2, by_residual=True)
    raw = filled(L2, by_residual=False)
    for index in (res, raw):
        assert index.sa_code_size() == index.code_size + 1  # 1 byte of list number
        codes = index.sa_encode(XB)
        assert codes.shape == (len(XB), index.sa_code_size())
        _, assign = index.quantizer.search(XB, 1)
        np.testing.assert_array_equal(codes[:, 0], assign[:, 0])  # list number first
    errs = []
    for index in (res, raw):
        dec = index.sa_decode(index.sa_encode(XB))
        errs.append(np.sum((dec - XB) ** 2) / np.sum(XB ** 2))
    # on clustered data the residual is much shorter than the vector
    assert errs[0] < 0.5 * errs[1] and errs[1] < 0.02, errs


# ------------------------------------------------------------------ variants
@pytest.mark.parametrize("by_residual", [True, False], ids=["residual", "raw"])
@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_by_residual_and_metric(metric, by_residual):
    index = filled(metric, by_residual=by_residual, nprobe=NLIST)
    assert bool(index.by_residual) == by_residual
    Dist, I = index.search(XQ, 10)
    assert recall(I, GT[metric]) >= 0.8
    if metric == L2:
        assert np.all(np.diff(Dist, axis=1) >= 0)
        true = ((XQ[:, None, :] - XB[I]) ** 2).sum(-1)
    else:
        assert np.all(np.diff(Dist, axis=1) <= 0)
        true = np.einsum("qd,qkd->qk", XQ, XB[I])
    assert np.abs(Dist - true).mean() < 0.1 * np.abs(true).mean()
    # every list probed: raw codes are the flat index's codes, so the recall is the flat
    # TurboQuant index's; residual codes are finer, so the recall is not lower
    flat = ft.IndexTurboQuant(D, 4, 0, metric)
    flat.add(XB)
    r_flat = recall(flat.search(XQ, 10)[1], GT[metric])
    if by_residual:
        assert recall(I, GT[metric]) >= r_flat - 0.02
    else:
        assert abs(recall(I, GT[metric]) - r_flat) <= 0.01


@pytest.mark.parametrize("metric", METRICS, ids=MIDS)
def test_qjl_variant(metric):
    index = filled(metric, "IVF16,TQ3q64", nprobe=NLIST)
    assert index.tq.qjl_m == 64
    assert index.code_size == 12 + 8 + 8 + 4
    assert recall(index.search(XQ, 10)[1], GT[metric]) >= 0.6
    index.make_direct_map()
    rel = np.sum((index.reconstruct_n(0, 100) - XB[:100]) ** 2) / np.sum(XB[:100] ** 2)
    assert rel < 0.05


def test_k_larger_than_results():
    index = filled(L2, nprobe=1)
    Dist, I = index.search(XQ[:3], len(XB))
    sizes = [index.invlists.list_size(int(l)) for l in index.quantizer.search(XQ[:3], 1)[1][:, 0]]
    for q in range(3):
        assert (I[q, :sizes[q]] >= 0).all() and (I[q, sizes[q]:] == -1).all()


def test_non_finite_input():
    index = filled(L2, nprobe=4)
    before = {l: ids.copy() for l, (ids, _) in list_content(index).items()}
    bad = XB[:5].copy()
    bad[2, 3] = np.nan
    with pytest.raises(RuntimeError):
        index.add(bad)
    assert index.ntotal == len(XB)
    for l, (ids, _) in list_content(index).items():
        np.testing.assert_array_equal(ids, before[l])
    with pytest.raises(RuntimeError):
        index.sa_encode(bad)
    # a NaN query: rejected, or (as FAISS's IVF indexes do) no results for that query only
    q = XQ[:4].copy()
    q[1, 0] = np.inf
    try:
        Dist, I = index.search(q, 5)
    except RuntimeError:
        return
    assert (I[1] == -1).all()
    np.testing.assert_array_equal(I[[0, 2, 3]], index.search(XQ[[0, 2, 3]], 5)[1])


# ------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def real():
    z = np.load(DATA)
    xb = z["xb"].astype("float32")
    xq = z["xq"].astype("float32")
    gt = faiss.IndexFlatIP(xb.shape[1])
    gt.add(xb)
    return xb, xq, gt.search(xq, 10)[1]


def test_real_data_recall_matches_flat(real):
    xb, xq, Igt = real
    d = xb.shape[1]
    flat = ft.index_factory(d, "TQ4", IP)
    flat.add(xb)
    r_flat = recall(flat.search(xq, 10)[1], Igt)

    ivf = ft.index_factory(d, "IVF64,TQ4", IP)
    ivf.train(xb)
    ivf.add(xb)
    ivf.nprobe = 64
    r_all = recall(ivf.search(xq, 10)[1], Igt)
    assert abs(r_all - r_flat) <= 0.01, (r_all, r_flat)

    # partitioning and quantisation losses compose, nothing else is lost; and TQ4 beats
    # SQ4 at (nearly) equal bytes per vector, behind the same coarse quantizer
    ivf_flat = ft.index_factory(d, "IVF64,Flat", IP)
    ivf_sq4 = ft.index_factory(d, "IVF64,SQ4", IP)
    for other in (ivf_flat, ivf_sq4):
        other.quantizer.add(centroids(ivf))  # the same coarse quantizer:
        other.train(xb)  # k-means is skipped, SQ4 trains its ranges
        np.testing.assert_array_equal(centroids(other), centroids(ivf))
        other.add(xb)
    for nprobe in (4, 16):
        for i in (ivf, ivf_flat, ivf_sq4):
            i.nprobe = nprobe
        r_tq = recall(ivf.search(xq, 10)[1], Igt)
        r_part = recall(ivf_flat.search(xq, 10)[1], Igt)
        r_sq4 = recall(ivf_sq4.search(xq, 10)[1], Igt)
        assert r_tq >= r_flat * r_part - 0.02, (nprobe, r_tq, r_flat, r_part)
        assert r_tq >= r_sq4, (nprobe, r_tq, r_sq4)


def _real_ivf(metric, by_residual, nbits):
    z = np.load(DATA)
    xb = np.ascontiguousarray(z["xb"][:4000], dtype="float32")
    xq = np.ascontiguousarray(z["xq"][:60], dtype="float32")
    index = ft.index_factory(xb.shape[1], "IVF32,TQ%d" % nbits, metric)
    index.train(xb)
    ivf_of(index).by_residual = by_residual
    index.add(xb)
    ivf_of(index).nprobe = 8
    return index, xq


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("by_residual", [True, False])
@pytest.mark.parametrize("nbits", [2, 4])
def test_fast_scan_in_lists_matches_float_scan(metric, by_residual, nbits):
    """the integer scan of the flat index inside the lists, candidates re-scored with the
    float kernel: the top-10 of the float scan for nearly every query, with float-kernel
    distances; and the same bits at every SIMD level (scalar, AVX2, AVX-512)"""
    from faiss_turboquant import swigturboquant as sw
    index, xq = _real_ivf(metric, by_residual, nbits)
    ivf = ivf_of(index)
    assert ivf.use_fast_scan
    D, I = index.search(xq, 10)
    ivf.use_fast_scan = False
    Df, If = index.search(xq, 10)
    same = np.mean([set(a) == set(b) for a, b in zip(I, If)])
    assert same >= 0.95, same
    rows = [i for i in range(len(xq)) if (I[i] == If[i]).all()]
    np.testing.assert_array_equal(D[rows], Df[rows])
    ivf.use_fast_scan = True
    try:
        for level in (0, 1):
            sw.tq_set_simd_level(level)
            Dl, Il = index.search(xq, 10)
            np.testing.assert_array_equal(Il, I)
            np.testing.assert_array_equal(Dl, D)
    finally:
        sw.tq_set_simd_level(-1)


def test_fast_scan_in_lists_not_used_with_a_selector():
    index, xq = _real_ivf(IP, True, 4)
    ivf = ivf_of(index)
    sel = faiss.IDSelectorRange(0, 2000)
    params = faiss.SearchParametersIVF(sel=sel, nprobe=8)
    D, I = index.search(xq, 10, params=params)
    assert ((I >= 0) & (I < 2000)).all()
    ivf.use_fast_scan = False
    Df, If = index.search(xq, 10, params=params)
    np.testing.assert_array_equal(I, If)
    np.testing.assert_array_equal(D, Df)
