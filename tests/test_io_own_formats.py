"""Inside TurboQuant files, plain flat sub-indexes (IVF coarse quantizers, RFlat
refinement) are written in our own validated format, not FAISS's: a corrupt size field there
must fail before any allocation it claims."""
import struct

import faiss
import numpy as np
import pytest

import faiss_turboquant  # noqa: F401


def assert_same_search(index, back, xq, k):
    """the index read back returns the same ids and the same distances"""
    D1, I1 = index.search(xq, k)
    D2, I2 = back.search(xq, k)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def built(desc, metric=faiss.METRIC_L2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype("float32")
    index = faiss.index_factory(16, desc, metric)
    index.train(x)
    index.add(x)
    return index, x


@pytest.mark.parametrize("desc,metric", [("IVF8,TQ4", faiss.METRIC_L2),
                                         ("IVF8,TQ4", faiss.METRIC_INNER_PRODUCT),
                                         ("TQ4,RFlat", faiss.METRIC_L2)])
def test_flat_children_use_our_format(desc, metric):
    index, x = built(desc, metric)
    blob = faiss.serialize_index(index).tobytes()
    assert b"TQff" in blob and b"IxF2" not in blob and b"IxFI" not in blob
    back = faiss.deserialize_index(np.frombuffer(blob, dtype="uint8"))
    assert_same_search(index, back, x[:5], 5)


def test_huge_size_in_flat_child_fails_without_allocating():
    index, _ = built("IVF8,TQ4")
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = blob.index(b"TQff")
    # header: fourcc, version u32, d i32, ntotal i64 -> claim 2^39 centroids
    struct.pack_into("<q", blob, pos + 12, 1 << 39)
    with pytest.raises(RuntimeError, match="corrupt|truncated"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))


@pytest.mark.parametrize("desc,cls", [("PCA8,TQ4", "PCAMatrix"), ("RR16,TQ4", "RandomRotationMatrix"),
                                      ("OPQ4_16,TQ4", "LinearTransform"),
                                      ("PCA8,IVF8,TQ4", "PCAMatrix")])
def test_linear_transforms_use_our_format(desc, cls):
    faiss.omp_set_num_threads(1)
    index, x = built(desc)
    blob = faiss.serialize_index(index).tobytes()
    assert b"TQvt" in blob
    back = faiss.deserialize_index(np.frombuffer(blob, dtype="uint8"))
    vt = faiss.downcast_VectorTransform(back.chain.at(0))
    assert type(vt).__name__ == cls  # OPQ comes back as its matrix, as with FAISS's reader
    assert_same_search(index, back, x[:5], 5)


def test_huge_matrix_size_in_transform_fails_without_allocating():
    index, _ = built("PCA8,TQ4")
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = blob.index(b"TQvt")
    # fourcc, version, kind u8, d_in, d_out, 3 flags -> A's length at offset 4+4+1+4+4+3
    struct.pack_into("<Q", blob, pos + 20, 1 << 38)
    with pytest.raises(RuntimeError, match="corrupt"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))


# --- FAISS's own layouts, read by our validating reader (FAISS 1.7.3's reader sizes vectors
# from the file before checking the bytes exist, and leaks what it built when it then fails)

def _pretransform(vt, d=16):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, d)).astype("float32")
    tq = faiss_turboquant.IndexTurboQuant(vt.d_out, 4, 0, faiss.METRIC_L2)
    index = faiss.IndexPreTransform(vt, tq)
    index.train(x)
    index.add(x)
    return index, x


@pytest.mark.parametrize("make", [
    lambda: faiss.NormalizationTransform(16, 2.0),
    lambda: faiss.CenteringTransform(16),
    lambda: faiss.RemapDimensionsTransform(16, 24, True),
    lambda: faiss.ITQTransform(16, 16, False),
])
def test_non_linear_transforms_round_trip(make):
    faiss.omp_set_num_threads(1)
    index, x = _pretransform(make())
    blob = faiss.serialize_index(index).tobytes()
    back = faiss.deserialize_index(np.frombuffer(blob, dtype="uint8"))
    a = faiss.downcast_VectorTransform(index.chain.at(0))
    b = faiss.downcast_VectorTransform(back.chain.at(0))
    assert type(a) is type(b) and (b.d_in, b.d_out) == (a.d_in, a.d_out)
    assert_same_search(index, back, x[:5], 5)


def test_huge_vector_in_faiss_transform_fails_without_allocating():
    index, _ = _pretransform(faiss.CenteringTransform(16))
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = blob.index(b"VCnt")
    struct.pack_into("<Q", blob, pos + 4, 50_000_000)  # mean: 200 MB claimed, 64 B present
    with pytest.raises(RuntimeError, match="corrupt|truncated"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))


@pytest.mark.parametrize("make", [
    lambda d: faiss.IndexFlatL2(d),
    lambda d: faiss.IndexFlatIP(d),
    lambda d: faiss.IndexIDMap(faiss.IndexFlatIP(d)),
    lambda d: faiss.IndexIDMap2(faiss.IndexFlatL2(d)),
])
def test_plain_faiss_flat_and_idmap_files_read_by_our_reader(make, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 8)).astype("float32")
    index = make(8)
    if "IDMap" in type(index).__name__:
        index.add_with_ids(x, np.arange(1000, 1050))
    else:
        index.add(x)
    path = str(tmp_path / "plain.faiss")
    faiss.write_index(index, path)
    back = faiss.read_index(path)
    assert type(back).__name__ == type(index).__name__
    assert_same_search(index, back, x[:5], 4)
    if isinstance(back, faiss.IndexIDMap2):
        np.testing.assert_array_equal(back.reconstruct(1003), x[3])


@pytest.mark.parametrize("field_offset,value", [
    (4 + 4 + 8 + 8 + 8 + 1 + 4, 50_000_000),  # float count: 200 MB claimed
    (4 + 4, 1 << 61),                          # ntotal
])
def test_corrupt_plain_flat_fails_without_allocating(field_offset, value):
    index = faiss.IndexFlatL2(8)
    index.add(np.ones((6, 8), "float32"))
    blob = bytearray(faiss.serialize_index(index).tobytes())
    assert blob[:4] == b"IxF2"
    struct.pack_into("<q", blob, field_offset, value)
    with pytest.raises(RuntimeError, match="corrupt|truncated"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))


def test_plain_idmap_with_short_id_map_is_rejected():
    index = faiss.IndexIDMap(faiss.IndexFlatL2(8))
    index.add_with_ids(np.ones((6, 8), "float32"), np.arange(6))
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = len(blob) - 6 * 8 - 8  # the id count precedes the 6 ids at the end
    struct.pack_into("<Q", blob, pos, 3)
    with pytest.raises(RuntimeError, match="corrupt"):
        faiss.deserialize_index(np.frombuffer(bytes(blob[:pos + 8 + 3 * 8]), dtype="uint8"))


@pytest.mark.parametrize("dm", [None, "array", "hash"])
@pytest.mark.parametrize("metric", [faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT])
def test_plain_faiss_ivfflat_read_by_our_reader(dm, metric):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 8)).astype("float32")
    index = faiss.index_factory(8, "IVF4,Flat", metric)
    index.train(x)
    if dm == "array":
        index.set_direct_map_type(faiss.DirectMap.Array)
        index.add(x)
    elif dm == "hash":
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.add_with_ids(x, np.arange(200) * 5 + 1)
    else:
        index.add(x)
    index.nprobe = 3
    back = faiss.deserialize_index(faiss.serialize_index(index))
    assert isinstance(back, faiss.IndexIVFFlat) and back.nprobe == 3
    assert_same_search(index, back, x[:5], 4)
    if dm == "array":
        np.testing.assert_array_equal(back.reconstruct(7), x[7])
    if dm == "hash":
        np.testing.assert_array_equal(back.reconstruct(36), x[7])


def test_corrupt_plain_ivfflat_list_size_fails_without_allocating():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8)).astype("float32")
    index = faiss.index_factory(8, "IVF4,Flat")
    index.train(x)
    index.add(x)
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = blob.index(b"full") + 4 + 8  # the count of sizes, then the first list's size
    struct.pack_into("<Q", blob, pos, 1 << 36)
    with pytest.raises(RuntimeError, match="corrupt"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))


@pytest.mark.parametrize("desc,metric", [("HNSW8", faiss.METRIC_L2),
                                         ("HNSW8", faiss.METRIC_INNER_PRODUCT),
                                         ("IVF16_HNSW8,TQ4", faiss.METRIC_L2),
                                         ("IVF16_HNSW8,Flat", faiss.METRIC_INNER_PRODUCT)])
def test_hnsw_flat_read_by_our_reader(desc, metric):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)).astype("float32")
    index = faiss_turboquant.index_factory(8, desc, metric)
    index.train(x)
    index.add(x)
    back = faiss.deserialize_index(faiss.serialize_index(index))
    assert_same_search(index, back, x[:7], 5)


@pytest.mark.parametrize("what", ["levels", "neighbour", "huge"])
def test_corrupt_hnsw_graph_is_rejected(what):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 8)).astype("float32")
    index = faiss.IndexHNSWFlat(8, 4)
    index.add(x)
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = 4 + 4 + 8 + 8 + 8 + 1 + 4  # after the header: assign_probas
    n_probas = struct.unpack_from("<Q", blob, pos)[0]
    pos += 8 + 8 * n_probas
    n_cum = struct.unpack_from("<Q", blob, pos)[0]
    pos += 8 + 4 * n_cum  # levels: count, then one int per vector
    if what == "levels":
        struct.pack_into("<i", blob, pos + 8 + 4 * 5, 9)
    elif what == "huge":
        struct.pack_into("<Q", blob, pos, 1 << 36)
    else:
        nlev = struct.unpack_from("<Q", blob, pos)[0]
        pos += 8 + 4 * nlev
        noff = struct.unpack_from("<Q", blob, pos)[0]
        pos += 8 + 8 * noff + 8  # neighbours' first entry
        struct.pack_into("<i", blob, pos, 1 << 20)
    with pytest.raises(RuntimeError, match="corrupt"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))


@pytest.mark.parametrize("desc", ["SQ8", "SQ4", "SQ6", "SQfp16",
                                  "TQ4,Refine(SQ8)", "IDMap,SQ8"])
def test_scalar_quantizer_read_by_our_reader(desc):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 8)).astype("float32")
    index = faiss_turboquant.index_factory(8, desc, faiss.METRIC_L2)
    index.train(x)
    if desc.startswith("IDMap"):
        index.add_with_ids(x, np.arange(200) + 7)
    else:
        index.add(x)
    blob = faiss.serialize_index(index)
    assert b"IxSQ" in blob.tobytes()
    back = faiss.deserialize_index(blob)
    assert_same_search(index, back, x[:5], 4)


@pytest.mark.parametrize("what", ["codes", "trained", "qtype"])
def test_corrupt_scalar_quantizer_is_rejected(what):
    index = faiss.index_factory(8, "SQ8")
    x = np.random.default_rng(5).standard_normal((20, 8)).astype("float32")
    index.train(x)
    index.add(x)
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = 4 + 4 + 8 + 8 + 8 + 1 + 4  # qtype, rangestat, arg, d, code_size, trained, codes
    if what == "qtype":
        struct.pack_into("<i", blob, pos, 77)
    elif what == "trained":
        struct.pack_into("<Q", blob, pos + 4 + 4 + 4 + 8 + 8, 1 << 36)
    else:
        struct.pack_into("<Q", blob, pos + 28 + 8 + 16 * 4, 1 << 36)
    with pytest.raises(RuntimeError, match="corrupt"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))


@pytest.mark.parametrize("qtype", ["QT_4bit_uniform", "QT_8bit_uniform", "QT_8bit_direct"])
def test_scalar_quantizer_uniform_and_direct_types(qtype):
    x = np.floor(np.random.default_rng(6).uniform(0, 200, (100, 8))).astype("float32")
    index = faiss.IndexScalarQuantizer(8, getattr(faiss.ScalarQuantizer, qtype))
    index.train(x)
    index.add(x)
    back = faiss.deserialize_index(faiss.serialize_index(index))
    np.testing.assert_array_equal(index.search(x[:3], 3)[1], back.search(x[:3], 3)[1])
