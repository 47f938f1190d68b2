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
