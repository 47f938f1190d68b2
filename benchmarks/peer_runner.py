#!/usr/bin/env python3
"""Peer measurements, run with the PEERS env's python (``.venv-peers``, made by
``benchmarks/peers_env.sh``: faiss-cpu 1.15.1, numpy 2, turbovec, nanoindex-rag).

``run_benchmarks.py`` runs this script as a subprocess on the same embeddings file and
reads ONE JSON document from its stdout (progress goes to stderr).  The protocol is the
one of ``bench_common.measure``, shared with the main env.

Method keys (``--methods``, comma separated):

* ``f115-<spec>``: a FAISS 1.15 factory string, inner product, trained on the training
  sample.  In ``<spec>`` a leading ``RR-`` stands for the ``RR<d>,`` random-rotation prefix
  (FAISS's TurboQuant SQ types, EDEN and RaBitQ do not rotate by themselves) and ``+``
  stands for ``,``.  E.g. ``f115-RR-SQtqmse4`` = ``RR384,SQtqmse4``, ``f115-PQ384x4fs``.
  For ``RaBitQfs`` the query bits are set on the index (``index.qb = --rabitq-qb``).
* ``turbovec<b>``: ``turbovec.TurboQuantIndex(dim=d, bit_width=b)`` (b in 2..4).
* ``nanoindex<b>``: ``nanoindex.NanoIndex(dim=d, bits=b)`` (qjl_m=64, seed=42, defaults),
  one empty metadata dict per vector (ids are row numbers).

Threads: FAISS via ``omp_set_num_threads``.  turbovec (rayon) and nanoindex (numba /
OpenBLAS) fix their thread pools from environment variables at start-up, so for them the
single-query latency phase runs in a child process of this script started with every
thread variable set to 1; the parent (started with ``--threads`` threads) measures build,
add and batch search.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from thread_env import set_thread_env  # noqa: E402

# thread pools of OpenBLAS / rayon / numba read these at load or first use
set_thread_env(sys.argv, extra=("RAYON_NUM_THREADS", "NUMBA_NUM_THREADS"))

import argparse  # noqa: E402

import numpy as np  # noqa: E402

import bench_common as bc  # noqa: E402

CHILD_SINGLE = ("turbovec", "nanoindex")   # methods whose latency is measured in a 1-thread child


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class TurbovecAdapter(bc.Adapter):
    env = "peers"

    def __init__(self, name, d, bits):
        self.name, self.d, self.bits = name, d, bits
        self.notes = "turbovec %d-bit (rayon threads from RAYON_NUM_THREADS)" % bits

    def build(self, xtrain):
        import turbovec
        self.index = turbovec.TurboQuantIndex(dim=self.d, bit_width=self.bits)

    def add(self, xb):
        self.index.add(np.ascontiguousarray(xb, dtype=np.float32))
        self.index.prepare()

    def search(self, xq, k):
        D, I = self.index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
        return D, np.asarray(I, dtype=np.int64)

    def index_bytes(self):
        return len(self.index.to_bytes())

    def code_bytes(self):
        # bit-packed codes (d*b/8) + one float32 scale per vector (see turbovec's format)
        return self.d * self.bits / 8.0 + 4

    def info(self):
        import turbovec
        return {"library": "turbovec %s" % turbovec.__version__}


class NanoindexAdapter(bc.Adapter):
    env = "peers"

    def __init__(self, name, d, bits):
        self.name, self.d, self.bits = name, d, bits

    def build(self, xtrain):
        from nanoindex import NanoIndex
        self.index = NanoIndex(dim=self.d, bits=self.bits)

    def add(self, xb):
        self.index.add(np.ascontiguousarray(xb, dtype=np.float32), [{} for _ in range(len(xb))])

    @staticmethod
    def _ids(results, k):
        ids = [int(r.id) for r in results][:k]
        return ids + [-1] * (k - len(ids))

    def search(self, xq, k):
        out = self.index.search(np.asarray(xq, dtype=np.float32), k=k)
        I = np.array([self._ids(r, k) for r in out], dtype=np.int64)
        return None, I

    def search_one(self, q, k):
        out = self.index.search(np.asarray(q[0], dtype=np.float32), k=k)
        return None, np.array([self._ids(out, k)], dtype=np.int64)

    def set_threads(self, n):
        try:
            import numba
            numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
        except Exception:
            pass

    def _arrays(self):
        db = self.index._db
        return [db.angles_int, db.radii, db.sign_bits, db.residual_norms]

    def index_bytes(self):
        # what the index really holds per vector in RAM (unpacked int32 angles, int8 signs)
        return sum(a.nbytes for a in self._arrays())

    def code_bytes(self):
        return sum(a.nbytes for a in self._arrays()) / float(self.index.n_vectors)

    def info(self):
        import nanoindex
        from nanoindex.quantization import polar_quant
        st = self.index.stats()
        packed = st["memory_mb"] * 1e6 / max(1, st["n_vectors"]) if st else None
        numba_on = bool(getattr(polar_quant, "_NUMBA_AVAILABLE", False))
        self.notes = ("nanoindex %s, %s path; in-RAM arrays unpacked (%s B/vec), "
                      "stats() claims packed %.0f B/vec (ratio %.1f)"
                      % (nanoindex.__version__, "numba" if numba_on else "NumPy (no numba)",
                         "%.0f" % self.code_bytes(), packed or 0, st.get("compression_ratio", 0)))
        return {"library": "nanoindex-rag %s" % nanoindex.__version__, "numba": numba_on,
                "claimed_packed_bytes_per_vector": packed, "notes": self.notes}


def f115_factory(spec, d):
    rr = spec.startswith("RR-")
    if rr:
        spec = spec[3:]
    fac = spec.replace("+", ",")
    return ("RR%d,%s" % (d, fac)) if rr else fac


def make_adapter(key, d, qb):
    import faiss
    if key.startswith("f115-"):
        fac = f115_factory(key[5:], d)

        def setup(index):
            inner = faiss.downcast_index(index.index) if isinstance(
                faiss.downcast_index(index), faiss.IndexPreTransform) else faiss.downcast_index(index)
            if isinstance(inner, faiss.IndexRaBitQFastScan):
                inner.qb = int(qb)
        note = "faiss %s %s" % (faiss.__version__, fac)
        if "RaBitQfs" in fac:
            note += " (qb=%d)" % qb
        ad = bc.FaissAdapter(faiss, key, fac, d, env="peers", setup=setup, notes=note)
        return ad
    if key.startswith("turbovec"):
        return TurbovecAdapter(key, d, int(key[len("turbovec"):]))
    if key.startswith("nanoindex"):
        return NanoindexAdapter(key, d, int(key[len("nanoindex"):]))
    raise ValueError("unknown peer method %r" % key)


def env_info():
    info = {"python": sys.version.split()[0], "numpy": np.__version__}
    try:
        import faiss
        info["faiss"] = faiss.__version__
        info["faiss_compile_options"] = faiss.get_compile_options()
    except Exception as e:
        info["faiss"] = "unavailable: %r" % e
    for mod, dist in (("turbovec", "turbovec"), ("nanoindex", "nanoindex-rag"), ("numba", "numba")):
        try:
            import importlib.metadata as md
            __import__(mod)
            info[dist] = md.version(dist)
        except Exception:
            info[dist] = None
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--train-size", type=int, default=50000)
    ap.add_argument("--latency-budget", type=float, default=60.0)
    ap.add_argument("--min-latency-queries", type=int, default=50)
    ap.add_argument("--batch-repeats", type=int, default=3)
    ap.add_argument("--rabitq-qb", type=int, default=8)
    ap.add_argument("--phase", choices=("all", "single"), default="all")
    ap.add_argument("--info", action="store_true", help="print the env description and exit")
    args = ap.parse_args()

    if args.info:
        print(json.dumps({"env": env_info()}))
        return
    if not (1 <= args.rabitq_qb <= 8):
        ap.error("--rabitq-qb must be in 1..8 (qb=0 aborts FAISS 1.15's RaBitQfs)")

    xb, xq, _ = bc.load_dataset(args.embeddings, args.queries)
    xtrain = bc.train_sample(xb, args.train_size)
    d = xb.shape[1]
    keys = [m for m in args.methods.split(",") if m]
    results = []
    for key in keys:
        log("[peers] %s (%s)" % (key, args.phase))
        ad = make_adapter(key, d, args.rabitq_qb)
        child = key.startswith(CHILD_SINGLE)
        if args.phase == "single":
            phases = ("build", "single")
        else:
            phases = ("build", "batch") if child else ("build", "batch", "single")
        r = bc.measure(ad, xb, xq, args.k, args.threads, xtrain, args.latency_budget,
                       args.min_latency_queries, args.batch_repeats, phases, log=log)
        del ad
        if child and args.phase == "all" and "error" not in r:
            env = dict(os.environ)
            for v in bc.THREAD_ENV_VARS:
                env[v] = "1"
            cmd = [sys.executable, os.path.abspath(__file__), "--embeddings", args.embeddings,
                   "--methods", key, "--k", str(args.k), "--threads", "1",
                   "--train-size", str(args.train_size), "--latency-budget", str(args.latency_budget),
                   "--min-latency-queries", str(args.min_latency_queries), "--phase", "single"]
            if args.queries is not None:
                cmd += ["--queries", str(args.queries)]
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
            try:
                sub = json.loads(p.stdout)["results"][0]
                for f in ("p50_ms", "p95_ms", "mean_ms", "lat_queries", "single_labels", "error"):
                    if f in sub:
                        r[f] = sub[f]
                r["single_query_process"] = "separate process, all thread env vars = 1"
            except Exception as e:
                r["error"] = "single-query child failed (rc %s): %r" % (p.returncode, e)
        results.append(bc.to_jsonable(r))
    print(json.dumps({"env": env_info(), "results": results}))


if __name__ == "__main__":
    main()
