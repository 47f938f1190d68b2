"""`make demo`: TurboQuant on the bundled real sentence embeddings.

Builds TQ indexes through faiss.index_factory over data/glosses-minilm-10k.npz (10,000
all-MiniLM-L6-v2 embeddings of WordNet glosses; 500 held-out example sentences as
queries), searches them, and prints recall@10 against exact inner-product search, bytes
per vector and compression ratio, next to FAISS's own scalar quantizers on the same data.
"""
import argparse
import os
import time

import faiss
import numpy as np

import faiss_turboquant  # noqa: F401  (registers TQ with faiss.index_factory)

DEFAULT_DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "glosses-minilm-10k.npz"
)


def recall_at_k(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)

    z = np.load(args.data)
    xb = z["xb"].astype("float32")
    xq = z["xq"].astype("float32")
    n, d = xb.shape
    k = args.k
    print(f"data: {os.path.basename(args.data)}: {n} base vectors, {len(xq)} queries, d={d}")

    exact = faiss.IndexFlatIP(d)
    exact.add(xb)
    _, gt = exact.search(xq, k)

    rows = []
    for desc in ["TQ4", "TQ2", "TQ3", "TQ8", "TQ3q%d" % d, "SQ4", "SQ8"]:
        index = faiss.index_factory(d, desc, faiss.METRIC_INNER_PRODUCT)
        index.train(xb)
        t0 = time.perf_counter()
        index.add(xb)
        t_add = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, found = index.search(xq, k)
        t_search = time.perf_counter() - t0
        bpv = index.sa_code_size()
        rows.append((desc, recall_at_k(found, gt), bpv, 4.0 * d / bpv, t_add, t_search))

    print()
    print(f"{'index':10s} {'recall@%d' % k:>10s} {'bytes/vec':>10s} {'compression':>12s}"
          f" {'add s':>7s} {'search s':>9s}")
    for desc, rec, bpv, ratio, t_add, t_search in rows:
        origin = "FAISS" if desc.startswith("SQ") else "ours"
        print(f"{desc:10s} {rec:10.4f} {bpv:10d} {ratio:11.2f}x {t_add:7.3f} {t_search:9.3f}"
              f"   ({origin})")
    tq4 = rows[0]
    print()
    print(f"TQ4: recall@{k} {tq4[1]:.4f} at {tq4[2]} bytes per vector "
          f"({tq4[3]:.2f}x smaller than float32), no training.")


if __name__ == "__main__":
    main()
