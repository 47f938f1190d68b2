"""Seed corpus for the index-reader fuzzers: small, valid serialized indexes.

    python tests/fuzz/make_corpus.py [OUTDIR]        (default: build/fuzz-corpus)

Every seed is built deterministically (fixed RNG seeds) with few vectors and small d so
files stay a few KB; the corpus is generated, never committed. `seeds()` returns the
same data as {name: bytes} for in-process use (tests/fuzz/mutate.py).
"""
import os
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(ROOT, "build", "fuzz-corpus")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# (name, d, factory string, metric, n vectors, extra set-up)
SPECS = [
    ("tq1_d8", 8, "TQ1", "L2", 12, None),
    ("tq4_d16", 16, "TQ4", "L2", 10, None),
    ("tq4_d24_ip", 24, "TQ4", "IP", 6, None),
    ("tq8_d8", 8, "TQ8", "L2", 5, None),
    ("tq3q64_d32", 32, "TQ3q64", "L2", 6, None),
    ("tq2q8_d8", 8, "TQ2q8", "IP", 6, None),
    ("tq4_d16_empty", 16, "TQ4", "L2", 0, None),
    ("ivf8_tq4_d16_dmarray", 16, "IVF8,TQ4", "L2", 20, "dm_array"),
    ("ivf4_tq4_d16_dmhash", 16, "IVF4,TQ4", "L2", 12, "dm_hash"),
    ("ivf4_tq2_d8_nomap_ip", 8, "IVF4,TQ2", "IP", 12, None),
    ("ivf4_tq3q16_d8_noresid", 8, "IVF4,TQ3q16", "L2", 12, "no_residual"),
    ("ivf4_tq4_d8_empty", 8, "IVF4,TQ4", "L2", 0, None),
    ("idmap_tq4_d16", 16, "IDMap,TQ4", "L2", 8, "ids"),
    ("idmap2_tq4_d16", 16, "IDMap2,TQ4", "L2", 8, "ids"),
    ("idmap_ivf4_tq4_d8", 8, "IDMap,IVF4,TQ4", "L2", 10, "ids"),
    ("pca16_tq4_d32", 32, "PCA16,TQ4", "L2", 40, None),
    ("pca8_ivf4_tq4_d16", 16, "PCA8,IVF4,TQ4", "L2", 30, None),
    ("tq4_rflat_d16", 16, "TQ4,RFlat", "L2", 8, None),
    ("ivf4hnsw_tq4_d8", 8, "IVF4_HNSW4,TQ4", "L2", 12, None),
    ("tq4_refine_sq8_d8", 8, "TQ4,Refine(SQ8)", "L2", 12, None),
    ("tq4_d64", 64, "TQ4", "L2", 4, None),
    # FAISS transform blocks inside our TQPt (parsed by our reader in FAISS's layout)
    ("l2norm_tq4_d16", 16, "L2norm,TQ4", "IP", 8, None),
    ("itq_tq4_d16", 16, "ITQ16,TQ4", "L2", 40, None),
    ("pad24_tq4_d16", 16, "Pad24,TQ4", "L2", 8, None),
    # FAISS-only files (no TurboQuant): flat and IDMap layouts parsed by our reader, IVF
    # by FAISS 1.7.3's through the push-back reader
    ("faiss_flat_d8", 8, "Flat", "L2", 6, None),
    ("faiss_ivf4_flat_d8", 8, "IVF4,Flat", "L2", 12, None),
    ("faiss_idmap_flat_d8", 8, "IDMap,Flat", "L2", 6, "ids"),
    ("faiss_idmap2_flat_ip_d8", 8, "IDMap2,Flat", "IP", 6, "ids"),
    ("faiss_hnsw4_d8", 8, "HNSW4", "L2", 12, None),
    ("faiss_sq8_d8", 8, "SQ8", "L2", 12, None),
]


def _build(d, desc, metric, n, extra):
    import faiss
    import faiss_turboquant as ft

    rng = np.random.default_rng(1234 + d + n)
    m = faiss.METRIC_INNER_PRODUCT if metric == "IP" else faiss.METRIC_L2
    idx = ft.index_factory(d, desc, m)
    train = rng.standard_normal((max(4 * n, 64), d)).astype("float32")
    x = rng.standard_normal((n, d)).astype("float32")
    ivf = None
    try:
        ivf = faiss.extract_index_ivf(idx)
    except Exception:
        ivf = None
    if ivf is not None and extra == "no_residual":
        ivf.by_residual = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx.train(train)
    if ivf is not None and extra == "dm_array":
        ivf.set_direct_map_type(faiss.DirectMap.Array)
    if ivf is not None and extra == "dm_hash":
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    if n:
        if extra == "ids" or extra == "dm_hash":
            idx.add_with_ids(x, (np.arange(n, dtype="int64") * 7 + 3))
        else:
            idx.add(x)
    return idx


def seeds():
    """{name: bytes} of every seed."""
    import faiss_turboquant as ft

    out = {}
    for name, d, desc, metric, n, extra in SPECS:
        idx = _build(d, desc, metric, n, extra)
        out[name] = ft.serialize_index(idx).tobytes()
    return out


def main(argv):
    outdir = argv[1] if len(argv) > 1 else DEFAULT_OUT
    os.makedirs(outdir, exist_ok=True)
    total = 0
    for name, data in seeds().items():
        with open(os.path.join(outdir, name + ".idx"), "wb") as f:
            f.write(data)
        total += len(data)
    print("wrote %d seeds (%d bytes) to %s" % (len(SPECS), total, outdir))


if __name__ == "__main__":
    main(sys.argv)
