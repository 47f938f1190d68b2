"""Inside TurboQuant files, plain flat sub-indexes (IVF coarse quantizers, RFlat
refinement) are written in our own validated format, not FAISS's: a corrupt size field there
must fail before any allocation it claims."""
import struct

import faiss
import numpy as np
import pytest

import faiss_turboquant  # noqa: F401


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
    D1, I1 = index.search(x[:5], 5)
    D2, I2 = back.search(x[:5], 5)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


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
    D1, I1 = index.search(x[:5], 5)
    D2, I2 = back.search(x[:5], 5)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def test_huge_matrix_size_in_transform_fails_without_allocating():
    index, _ = built("PCA8,TQ4")
    blob = bytearray(faiss.serialize_index(index).tobytes())
    pos = blob.index(b"TQvt")
    # fourcc, version, kind u8, d_in, d_out, 3 flags -> A's length at offset 4+4+1+4+4+3
    struct.pack_into("<Q", blob, pos + 20, 1 << 38)
    with pytest.raises(RuntimeError, match="corrupt"):
        faiss.deserialize_index(np.frombuffer(bytes(blob), dtype="uint8"))
