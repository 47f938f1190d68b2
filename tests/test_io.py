"""FAISS I/O with TurboQuant inside: write_index/read_index (paths), serialize /
deserialize, plain-FAISS compatibility of files without TurboQuant, robustness against
corrupt or truncated files, atomic saving, clone_index."""
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import faiss
import faiss_turboquant as ft
from faiss_turboquant._registration import ORIGINAL

L2 = faiss.METRIC_L2
IP = faiss.METRIC_INNER_PRODUCT
D = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


rng = np.random.default_rng(5)
XT = rng.standard_normal((1200, D)).astype("float32")
XB = rng.standard_normal((800, D)).astype("float32")
XB2 = rng.standard_normal((50, D)).astype("float32")
XQ = rng.standard_normal((30, D)).astype("float32")  # >= 20 queries: the batch path too

COMPOSITIONS = [
    "TQ4", "TQ1", "TQ8", "TQ3q32", "TQ3q100", "IDMap,TQ4", "IDMap2,TQ4", "PCA16,TQ4",
    "RR32,TQ4", "OPQ8_32,TQ4", "TQ4,RFlat", "TQ4,Refine(SQ8)", "IVF16,TQ4", "IVF16,TQ4q16",
    "IDMap,IVF16,TQ4", "IDMap2,IVF16,TQ2", "PCA16,IVF16,TQ4", "OPQ8_16,IVF16,TQ4",
    "IVF16_HNSW32,TQ4", "IVF16,TQ4,RFlat",
]


def fast_opq(index):
    root = faiss.downcast_index(index)
    if isinstance(root, faiss.IndexPreTransform):
        vt = faiss.downcast_VectorTransform(root.chain.at(0))
        if isinstance(vt, faiss.OPQMatrix):
            vt.niter, vt.niter_pq_0, vt.niter_pq = 4, 4, 2


def add(index, desc, x, start=0):
    if desc.startswith("IDMap"):
        index.add_with_ids(x, np.arange(start, start + len(x), dtype="int64") * 7 + 3)
    else:
        index.add(x)


def built(desc, metric=L2, n=len(XB)):
    index = ft.index_factory(D, desc, metric)
    fast_opq(index)
    index.train(XT)
    add(index, desc, XB[:n])
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = 5
    return index


def kind(index):
    """Class name, with FAISS's IndexFlat / IndexFlatL2 / IndexFlatIP (the factory makes
    the first, FAISS's reader the others) counted as one class."""
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexFlat):
        return "IndexFlat(%d)" % node.metric_type
    return type(node).__name__


def tree(index):
    """Class names and key attributes along the chain of wrapped indexes."""
    out = []
    node = faiss.downcast_index(index)
    while node is not None:
        item = [type(node).__name__, node.d, node.ntotal, node.is_trained, node.metric_type]
        nxt = None
        if isinstance(node, (ft.IndexTurboQuant, ft.IndexIVFTurboQuant)):
            tq = node.tq
            item += [tq.nbits, tq.qjl_m, tq.seed, node.code_size]
        if isinstance(node, ft.IndexIVFTurboQuant):
            item += [node.nlist, node.nprobe, bool(node.by_residual),
                     kind(node.quantizer), node.quantizer.ntotal]
        if isinstance(node, faiss.IndexIDMap):
            item.append(faiss.vector_to_array(node.id_map).tolist())
            nxt = node.index
        elif isinstance(node, faiss.IndexPreTransform):
            names = []
            for i in range(node.chain.size()):
                vt = faiss.downcast_VectorTransform(node.chain.at(i))
                # FAISS's own writer stores an OPQMatrix as a plain LinearTransform
                name = "LinearTransform" if isinstance(vt, faiss.OPQMatrix) else type(vt).__name__
                names.append((name, vt.d_in, vt.d_out, vt.is_trained))
            item.append(names)
            nxt = node.index
        elif isinstance(node, faiss.IndexRefine):
            item += [node.k_factor, kind(node.refine_index)]
            nxt = node.base_index
        out.append(item)
        node = faiss.downcast_index(nxt) if nxt is not None else None
    return out


def assert_same_results(a, b, x=XQ, k=10):
    for q in (x, x[:5]):  # batch path and per-query path
        Da, Ia = a.search(q, k)
        Db, Ib = b.search(q, k)
        np.testing.assert_array_equal(Ia, Ib)
        np.testing.assert_array_equal(Da, Db)


@pytest.mark.parametrize("desc", COMPOSITIONS)
def test_round_trips(desc, tmp_path):
    metric = IP if len(desc) % 2 else L2  # both metrics across the list
    index = built(desc, metric)
    if "RFlat" in desc:
        faiss.downcast_index(index).k_factor = 3
    ref_tree = tree(index)
    path = str(tmp_path / "index.faiss")

    faiss.write_index(index, path)
    copies = {
        "path": faiss.read_index(path),
        "ft.serialize": ft.deserialize_index(ft.serialize_index(index)),
        "faiss.serialize": faiss.deserialize_index(faiss.serialize_index(index)),
    }
    with open(path, "rb") as f:
        on_disk = np.frombuffer(f.read(), dtype="uint8")
    np.testing.assert_array_equal(on_disk, faiss.serialize_index(index))
    for how, copy in copies.items():
        assert tree(copy) == ref_tree, how
        assert_same_results(index, copy)
        # the copy is fully functional: adding more gives the same results as the original
    for copy in copies.values():
        add(copy, desc, XB2, start=len(XB))
    add(index, desc, XB2, start=len(XB))
    for copy in copies.values():
        assert_same_results(index, copy)
        # and a copy of the copy is still the same
        assert_same_results(index, ft.deserialize_index(ft.serialize_index(copy)))


# (not IVF_HNSW: FAISS's format does not keep quantizer_trains_alone, so an untrained
# HNSW-quantizer IVF trains differently after a round trip, with Flat codes too)
@pytest.mark.parametrize("desc", ["TQ4", "IVF16,TQ4", "IDMap,IVF16,TQ4", "PCA16,IVF16,TQ4",
                                  "IDMap2,TQ4", "TQ4,RFlat"])
def test_round_trip_of_empty_and_untrained(desc):
    index = ft.index_factory(D, desc, IP)
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    assert tree(copy) == tree(index)
    assert copy.is_trained == index.is_trained
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        # FAISS's format does not keep the k-means parameters (the factory sets niter=10
        # and, for IP, spherical); FAISS's own IVF16,Flat behaves the same
        faiss.extract_index_ivf(copy).cp = ivf.cp
    for idx in (index, copy):
        idx.train(XT)
        add(idx, desc, XB)
    assert_same_results(index, copy)


def test_ivf_direct_map_and_removals_round_trip():
    for dm_type in (faiss.DirectMap.Array, faiss.DirectMap.Hashtable):
        index = built("IVF16,TQ4")
        index.set_direct_map_type(dm_type)
        if dm_type == faiss.DirectMap.Hashtable:
            assert index.remove_ids(np.array([3, 4, 500], dtype="int64")) == 3
        copy = faiss.deserialize_index(faiss.serialize_index(index))
        assert copy.direct_map.type == dm_type
        assert copy.ntotal == index.ntotal
        for i in (0, 7, 799):
            np.testing.assert_array_equal(copy.reconstruct(i), index.reconstruct(i))
        if dm_type == faiss.DirectMap.Hashtable:
            with pytest.raises(RuntimeError):
                copy.reconstruct(3)
        assert_same_results(index, copy)


def test_idmap2_reverse_map_rebuilt():
    index = built("IDMap2,TQ4")
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    for i in (0, 5, 799):
        np.testing.assert_array_equal(copy.reconstruct(i * 7 + 3), index.reconstruct(i * 7 + 3))


def test_nprobe_larger_than_nlist_round_trips():
    """FAISS allows nprobe > nlist (search clamps it); such an index must be saveable."""
    index = built("IVF16,TQ4")
    index.nprobe = 64
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    assert copy.nprobe == 64
    assert_same_results(index, copy)


@pytest.mark.parametrize("desc", ["TQ4", "IDMap,TQ4", "IDMap2,TQ4", "TQ4,RFlat", "PCA16,TQ4",
                                  "IVF16,TQ4", "IDMap,IVF16,TQ4"])
def test_rejected_add_leaves_index_writable(desc):
    """A NaN batch is rejected; the index must then still save and load as it was."""
    index = built(desc, L2, n=100)
    bad = XB[100:103].copy()
    bad[1, 4] = np.nan
    with pytest.raises(RuntimeError):
        add(index, desc, bad, start=100)
    assert index.ntotal == 100
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    assert copy.ntotal == 100
    assert_same_results(index, copy)


def test_manual_compositions_round_trip():
    tq = ft.IndexTurboQuant(D, 4, 0, IP)
    idmap = faiss.IndexIDMap(tq)
    idmap.add_with_ids(XB, np.arange(len(XB), dtype="int64") + 10**12)
    rr = faiss.RandomRotationMatrix(D, D)
    rr.init(3)
    pt = faiss.IndexPreTransform(rr, ft.IndexTurboQuant(D, 3, 0, L2))
    pt.add(XB)
    rf = faiss.IndexRefineFlat(ft.IndexTurboQuant(D, 2, 8, L2))
    rf.add(XB)
    for index in (idmap, pt, rf):
        copy = faiss.deserialize_index(faiss.serialize_index(index))
        assert tree(copy) == tree(index)
        assert_same_results(index, copy)


def test_non_default_seed_round_trips():
    index = ft.IndexTurboQuant(D, 4, 16, IP, 12345)
    index.add(XB)
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    assert copy.tq.seed == 12345
    assert_same_results(index, copy)


# ---------------------------------------------------------------- plain FAISS files
PLAIN = ["Flat", "IVF16,Flat", "HNSW32", "IDMap,Flat", "PCA16,IVF16,SQ8", "SQ8"]


@pytest.mark.parametrize("desc", PLAIN)
def test_files_without_turboquant_are_plain_faiss(desc, tmp_path):
    index = ft.index_factory(D, desc)
    index.train(XT)
    add(index, desc, XB)
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    faiss.write_index(index, ours)
    ORIGINAL["write_index"](index, theirs)
    with open(ours, "rb") as f1, open(theirs, "rb") as f2:
        assert f1.read() == f2.read()
    read_by_faiss = ORIGINAL["read_index"](ours)
    read_by_us = faiss.read_index(theirs)
    assert kind(read_by_us) == kind(index)
    assert_same_results(index, read_by_faiss)
    assert_same_results(index, read_by_us)


def test_original_reader_rejects_turboquant_cleanly(tmp_path):
    path = str(tmp_path / "tq")
    faiss.write_index(built("IVF16,TQ4"), path)
    with pytest.raises(RuntimeError):
        ORIGINAL["read_index"](path)


# ---------------------------------------------------------------- corrupt files
# Run in a child process (with an address-space limit) so that a crash or a runaway
# allocation is reported as a failure instead of taking the test session down.
FUZZ = textwrap.dedent(
    r"""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    import numpy as np, faiss, faiss_turboquant as ft
    faiss.omp_set_num_threads(1)
    mode = sys.argv[1]
    rng = np.random.default_rng(0)
    d = 16
    x = rng.standard_normal((700, d)).astype("float32")
    OK = (RuntimeError, MemoryError, ValueError)

    def make(desc):
        index = ft.index_factory(d, desc)
        index.train(x)
        if desc.startswith("IDMap"):
            index.add_with_ids(x[:40], np.arange(40, dtype="int64") * 5)
        else:
            index.add(x[:40])
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and mode == "flip-all":
            ivf.make_direct_map()
        return ft.serialize_index(index)

    def use(j):  # a valid-looking file: using it must not crash either
        try:
            j.search(x[:3], 5)
            j.search(x[:25], 5)
            if j.ntotal:
                key = int(faiss.vector_to_array(j.id_map)[0]) if hasattr(j, "id_map") else 0
                j.reconstruct(key)
        except (RuntimeError, AssertionError, MemoryError, ValueError):
            pass

    for desc in sys.argv[2:]:
        buf = make(desc)
        n = len(buf)
        raised = loaded = 0
        bad = []
        if mode == "truncate":
            # every offset in the headers, then a spread over the rest of the file
            cuts = sorted(set(range(min(n, 120))) | set(np.linspace(0, n - 1, 150).astype(int)))
            for t in cuts:
                try:
                    ft.deserialize_index(buf[:t])
                    bad.append(int(t))
                except OK:
                    raised += 1
        else:
            if mode == "flip-header":
                positions = range(min(n, 96))
                values = (0x00, 0xFF, 0x80)
            else:
                positions = rng.choice(n, size=min(n, 100), replace=False)
                values = (0xFF, 0x80)
            for p in positions:
                for v in values:
                    b = buf.copy()
                    if b[p] == v:
                        continue
                    b[p] = v
                    try:
                        j = ft.deserialize_index(b)
                    except OK:
                        raised += 1
                        continue
                    loaded += 1
                    use(j)
        print("OK|%s|%d|%d|%d|%s" % (desc, n, raised, loaded, bad[:10]), flush=True)
    """
)

FUZZ_CASES = {
    "truncate": ["TQ4", "TQ3q16", "IVF16,TQ4", "IDMap2,TQ4", "PCA8,TQ4", "TQ4,RFlat",
                 "TQ4,Refine(SQ8)", "IDMap,IVF16,TQ4", "IVF16_HNSW32,TQ4", "IVF16,TQ4,RFlat"],
    "flip-header": ["TQ4", "TQ3q16", "IVF16,TQ4", "IDMap2,TQ4", "IDMap,IVF16,TQ4", "PCA8,TQ4",
                    "TQ4,RFlat", "IVF16,TQ4,RFlat"],
    "flip-all": ["TQ4", "IVF16,TQ4", "IDMap2,TQ4", "IVF16,TQ2q16"],
}


@pytest.mark.parametrize("mode", sorted(FUZZ_CASES))
def test_corrupt_files_raise_never_crash(mode):
    descs = FUZZ_CASES[mode]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", FUZZ, mode] + descs, capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)
    done = [ln.split("|") for ln in proc.stdout.splitlines() if ln.startswith("OK|")]
    assert proc.returncode == 0 and len(done) == len(descs), (
        "child died (rc=%d) after %s: %s"
        % (proc.returncode, [r[1] for r in done], proc.stderr[-2000:]))
    for _, desc, n, raised, loaded, bad in done:
        if mode == "truncate":
            # every strict prefix of the file is an error, never a silently shorter index
            assert bad == "[]", "%s: truncations that loaded: %s" % (desc, bad)
        else:
            assert int(raised) > 0, desc


def test_garbage_and_empty_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    npy = tmp_path / "array.npy"
    np.save(npy, XB)
    for p in (empty, garbage, npy):
        with pytest.raises((RuntimeError, MemoryError, ValueError)):
            faiss.read_index(str(p))
    with pytest.raises((RuntimeError, ValueError)):
        ft.deserialize_index(np.zeros(0, dtype="uint8"))
    with pytest.raises((RuntimeError, ValueError)):
        ft.deserialize_index(np.frombuffer(b"TQFl", dtype="uint8"))
    with pytest.raises((FileNotFoundError, RuntimeError)):
        faiss.read_index(str(tmp_path / "missing"))


def test_truncated_file_on_disk(tmp_path):
    path = str(tmp_path / "x")
    faiss.write_index(built("IDMap,IVF16,TQ4"), path)
    size = os.path.getsize(path)
    for cut in (0, 3, 40, size // 2, size - 1):
        with open(path, "r+b") as f:
            data = f.read()
        p2 = str(tmp_path / ("cut%d" % cut))
        with open(p2, "wb") as f:
            f.write(data[:cut])
        with pytest.raises((RuntimeError, MemoryError, ValueError)):
            faiss.read_index(p2)


# ---------------------------------------------------------------- atomic saving
def test_overwrite_leaves_no_temp_files(tmp_path):
    path = str(tmp_path / "idx.faiss")
    small = built("TQ4", n=10)
    large = built("IVF16,TQ4")
    faiss.write_index(small, path)
    faiss.write_index(large, path)
    faiss.write_index(large, path)
    assert sorted(os.listdir(tmp_path)) == ["idx.faiss"]
    assert_same_results(large, faiss.read_index(path))


def test_failed_write_keeps_old_file_and_no_temp(tmp_path):
    path = str(tmp_path / "idx.faiss")
    good = built("TQ4")
    faiss.write_index(good, path)
    shards = faiss.IndexShards(D, False, True)
    tq = ft.IndexTurboQuant(D, 4)
    shards.add_shard(tq)
    with pytest.raises(RuntimeError):
        faiss.write_index(shards, path)  # no writer for TurboQuant inside IndexShards
    assert sorted(os.listdir(tmp_path)) == ["idx.faiss"]
    assert_same_results(good, faiss.read_index(path))


def test_write_into_missing_directory_raises(tmp_path):
    with pytest.raises(RuntimeError):
        faiss.write_index(built("TQ4", n=10), str(tmp_path / "nodir" / "x.faiss"))
    assert os.listdir(tmp_path) == []


def test_bad_arguments():
    with pytest.raises(TypeError):
        faiss.write_index("not an index", "/tmp/x")
    with pytest.raises(TypeError):
        faiss.write_index(ft.IndexTurboQuant(D, 4), 12)
    with pytest.raises(TypeError):
        faiss.read_index(12)
    with pytest.raises(ValueError):
        ft.deserialize_index(np.zeros((4, 4), dtype="uint8"))


# ---------------------------------------------------------------- clone_index
@pytest.mark.parametrize("desc", ["TQ4", "TQ3q32", "IDMap,TQ4", "IDMap2,TQ4", "PCA16,TQ4",
                                  "TQ4,RFlat", "TQ4,Refine(SQ8)", "IVF16,TQ4", "IDMap,IVF16,TQ4",
                                  "PCA16,IVF16,TQ4", "IVF16_HNSW32,TQ4", "IVF16,TQ4,RFlat"])
def test_clone_is_equal_and_independent(desc):
    index = built(desc, IP)
    clone = faiss.clone_index(index)
    assert tree(clone) == tree(index)
    assert_same_results(index, clone)
    Dref, Iref = index.search(XQ, 10)
    # adding to the clone leaves the original alone and vice versa
    add(clone, desc, XB2, start=len(XB))
    assert index.ntotal == len(XB) and clone.ntotal == len(XB) + len(XB2)
    Dx, Ix = index.search(XQ, 10)
    np.testing.assert_array_equal(Ix, Iref)
    np.testing.assert_array_equal(Dx, Dref)
    add(index, desc, XB2, start=len(XB))
    add(index, desc, XB2[:7], start=len(XB) + len(XB2))
    assert clone.ntotal == len(XB) + len(XB2)
    ivf_a = faiss.try_extract_index_ivf(index)
    ivf_b = faiss.try_extract_index_ivf(clone)
    if ivf_a is not None:
        assert int(ivf_a.quantizer.this) != int(ivf_b.quantizer.this)
        assert int(ivf_a.invlists.this) != int(ivf_b.invlists.this)
    # the clone owns its memory: it survives the original
    Dc, Ic = clone.search(XQ, 10)
    del index, ivf_a
    gc.collect()
    Dc2, Ic2 = clone.search(XQ, 10)
    np.testing.assert_array_equal(Ic, Ic2)
    np.testing.assert_array_equal(Dc, Dc2)


def test_clone_of_plain_faiss_still_works():
    index = ft.index_factory(D, "IVF16,Flat")
    index.train(XT)
    index.add(XB)
    clone = faiss.clone_index(index)
    assert type(clone) is faiss.IndexIVFFlat
    assert_same_results(index, clone)


def test_clone_rejects_non_index():
    with pytest.raises(TypeError):
        faiss.clone_index(np.zeros(3))
