"""Shared measurement code for the benchmark harness.

Imported both by ``run_benchmarks.py`` / ``bench_ivf.py`` (main env: system FAISS 1.7.3,
numpy 1.x) and by ``peer_runner.py`` (peers env: faiss-cpu 1.15.1, numpy 2.x), so it only
needs numpy and the standard library; FAISS is passed in where it is used.

Protocol of one method (``measure``), identical in both environments:

* build + train on ``xtrain`` (a fixed sample of the base, see ``train_sample``), timed;
* add all base vectors in one call with ``threads`` threads -> add throughput (vectors/s);
* batch search: all queries in one call with ``threads`` threads, after a warm-up call on a
  few queries, repeated ``batch_repeats`` times (once if a call takes > 10 s); the BEST wall
  time gives the batch QPS (best-of-N: least disturbed by other load); the labels of that
  call give recall@k against the exact ground truth;
* single-query latency: one thread, one query per call (``xq[i:i+1]``), ``perf_counter_ns``
  around the search call only, after 5 warm-up queries; queries in order until all are done
  or ``latency_budget`` seconds have been spent (at least ``min_latency_queries``); p50 and
  p95 over the timed queries;
* sizes: ``index_bytes`` (the serialized index, or what the library actually holds) and
  ``code_bytes`` (bytes per vector in the scanned code array).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
import traceback

import numpy as np

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "RAYON_NUM_THREADS", "NUMBA_NUM_THREADS")


# ----------------------------------------------------------------------------- data

def load_dataset(path, n_queries=None):
    """xb, xq as C-contiguous float32 (the files store float16), gt (int64) or None."""
    with np.load(path) as z:
        xb = np.ascontiguousarray(z["xb"], dtype=np.float32)
        xq = np.ascontiguousarray(z["xq"], dtype=np.float32)
        gt = np.ascontiguousarray(z["gt"], dtype=np.int64) if "gt" in z.files else None
    if n_queries is not None and n_queries < len(xq):
        xq = xq[:n_queries].copy()
        if gt is not None:
            gt = gt[:n_queries]
    return xb, xq, gt


def train_sample(xb, n, seed=1234):
    """A fixed random sample of the base used to train every method that needs training."""
    if n is None or n >= len(xb):
        return xb
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(xb), size=n, replace=False))
    return np.ascontiguousarray(xb[idx])


def recall_at_k(labels, gt, k):
    """Mean over queries of |top-k returned  intersect  exact top-k| / k."""
    labels = np.asarray(labels)[:, :k]
    gt = np.asarray(gt)[:, :k]
    hits = 0
    for a, b in zip(labels, gt):
        hits += len(np.intersect1d(a[a >= 0], b, assume_unique=False))
    return hits / float(k * len(gt))


# ----------------------------------------------------------------------------- bandwidth

def measure_read_bandwidth(size_mb=1024, repeats=5):
    """Single-core memory READ bandwidth, measured in this process.

    A ``size_mb`` buffer (default 1 GiB, far larger than any cache) is filled with the byte
    0x01 (real, written pages: an untouched ``np.zeros`` buffer would map every page to the
    one shared zero page and "read" from cache).  Two C-speed, single-threaded, purely
    read-bound passes over it are timed, best of ``repeats`` each:

    * ``memchr`` (glibc, via ctypes) looking for the absent byte 0x02: glibc's SIMD memchr
      must read every byte and does almost no work per byte;
    * ``numpy.add.reduce`` over the buffer viewed as uint64 (integer adds, vectorised, one
      thread; a float32 ``np.sum`` is NOT used: its pairwise summation is compute-bound at
      about half the memory bandwidth).

    The bandwidth is the larger of the two (the best rate at which one core reads memory).
    Returns a dict with bytes/s and each method's rate."""
    n = int(size_mb) << 20
    buf = np.empty(n, dtype=np.uint8)
    buf.fill(1)
    out = {"buffer_bytes": n, "repeats": repeats}
    rates = {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        memchr = libc.memchr
        memchr.restype = ctypes.c_void_p
        memchr.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
        p = buf.ctypes.data
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = memchr(p, 2, n)
            best = min(best, time.perf_counter() - t0)
            assert r is None
        rates["memchr"] = n / best
    except Exception as e:  # pragma: no cover - platform without glibc
        out["memchr_error"] = repr(e)
    u = buf.view(np.uint64)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.add.reduce(u)
        best = min(best, time.perf_counter() - t0)
    rates["numpy_u64_sum"] = n / best
    del buf, u
    out["methods_bytes_per_s"] = rates
    out["bytes_per_s"] = max(rates.values())
    out["method"] = max(rates, key=rates.get)
    return out


# ----------------------------------------------------------------------------- measuring

class Adapter:
    """What ``measure`` needs from one method. Subclasses implement build/add/search."""
    name = "?"
    env = "main"
    flat_scan = True          # a full scan of the code array per query (scan efficiency)
    notes = ""

    def build(self, xtrain):      # create the index and train it
        raise NotImplementedError

    def add(self, xb):
        raise NotImplementedError

    def search(self, xq, k):      # -> (D, I) with I int64 (nq, k)
        raise NotImplementedError

    def search_one(self, q, k):   # q is (1, d)
        return self.search(q, k)

    def set_threads(self, n):
        pass

    def index_bytes(self):
        raise NotImplementedError

    def code_bytes(self):         # per vector
        raise NotImplementedError

    def info(self):
        return {}


def _t():
    return time.perf_counter()


def measure(ad, xb, xq, k, threads, xtrain, latency_budget=60.0, min_latency_queries=50,
            batch_repeats=3, phases=("build", "batch", "single"), log=None):
    """Run the protocol of the module docstring on one adapter; returns a dict (JSON-able).
    ``phases`` may drop "batch" or "single" (the peers env measures single-query latency of
    libraries whose thread pools are fixed at start-up in a separate 1-thread process)."""
    log = log or (lambda *a: None)
    nb, d = xb.shape
    res = {"method": ad.name, "env": ad.env, "n": int(nb), "d": int(d), "nq": int(len(xq)),
           "k": int(k), "threads": int(threads), "flat_scan": bool(ad.flat_scan)}
    step = "build"
    try:
        ad.set_threads(threads)
        t0 = _t()
        ad.build(xtrain)
        res["train_s"] = _t() - t0
        step = "add"
        t0 = _t()
        ad.add(xb)
        add_s = _t() - t0
        res["add_s"] = add_s
        res["add_vps"] = nb / add_s if add_s > 0 else None
        res["index_bytes"] = int(ad.index_bytes())
        res["code_bytes"] = float(ad.code_bytes())
        res["bytes_per_vector_total"] = res["index_bytes"] / nb
        res["compression"] = 4.0 * d / res["bytes_per_vector_total"]
        log("  %s: trained %.2fs, added %d in %.2fs" % (ad.name, res["train_s"], nb, add_s))
        if "batch" in phases:
            step = "batch search"
            ad.set_threads(threads)
            ad.search(xq[: min(len(xq), 16)], k)             # warm-up
            best, labels, reps = float("inf"), None, 0
            for _ in range(max(1, batch_repeats)):
                t0 = _t()
                _, I = ad.search(xq, k)
                dt = _t() - t0
                reps += 1
                if dt < best:
                    best, labels = dt, np.asarray(I)
                if dt > 10.0:
                    break
            res["batch_s"] = best
            res["batch_repeats"] = reps
            res["qps"] = len(xq) / best
            res["labels"] = labels.astype(np.int64)
            log("  %s: batch %d queries %.3fs (%.0f QPS)" % (ad.name, len(xq), best, res["qps"]))
        if "single" in phases:
            step = "single-query search"
            ad.set_threads(1)
            for i in range(min(5, len(xq))):
                ad.search_one(xq[i:i + 1], k)
            lat = []
            t_start = _t()
            single_labels = []
            for i in range(len(xq)):
                q = xq[i:i + 1]
                t0 = time.perf_counter_ns()
                _, I = ad.search_one(q, k)
                lat.append((time.perf_counter_ns() - t0) * 1e-6)
                single_labels.append(np.asarray(I).reshape(-1)[:k])
                if len(lat) >= min_latency_queries and _t() - t_start > latency_budget:
                    break
            lat = np.array(lat)
            res["lat_queries"] = int(len(lat))
            res["p50_ms"] = float(np.percentile(lat, 50))
            res["p95_ms"] = float(np.percentile(lat, 95))
            res["mean_ms"] = float(lat.mean())
            res["single_labels"] = np.array(single_labels, dtype=np.int64)
            log("  %s: single-query p50 %.3f ms over %d queries" % (ad.name, res["p50_ms"], len(lat)))
        step = "info"
        res.update(ad.info())
    except Exception as e:
        res["error"] = "%s failed: %s: %s" % (step, type(e).__name__, str(e).strip().splitlines()[-1][:300] if str(e).strip() else "")
        res["traceback"] = traceback.format_exc()
        log("  %s: ERROR %s" % (ad.name, res["error"]))
    if ad.notes:
        res["notes"] = ad.notes
    return res


def finish_metrics(res, gt, k, bandwidth):
    """Recall from labels, scan efficiency from p50 and the measured bandwidth; drops the
    label arrays (not JSON material)."""
    labels = res.pop("labels", None)
    single = res.pop("single_labels", None)
    if labels is not None and gt is not None:
        res["recall"] = recall_at_k(labels, gt, k)
    elif single is not None and gt is not None:
        res["recall"] = recall_at_k(single, gt[: len(single)], k)
    if single is not None and labels is not None and len(single):
        res["single_batch_agree"] = float(np.mean(
            [len(np.intersect1d(a, b)) / float(k) for a, b in zip(single, labels[: len(single)])]))
    if res.get("flat_scan") and res.get("p50_ms") and res.get("code_bytes") and bandwidth:
        scanned = res["n"] * res["code_bytes"]
        res["scan_bytes_per_s"] = scanned / (res["p50_ms"] * 1e-3)
        res["scan_efficiency"] = res["scan_bytes_per_s"] / bandwidth
    return res


def to_jsonable(o):
    if isinstance(o, dict):
        return {k: to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o


# ----------------------------------------------------------------------------- FAISS adapters

def faiss_code_bytes(faiss, index):
    """Bytes per vector of the code array (sa_code_size, else code_size, looking through
    IndexPreTransform / IndexRefine wrappers)."""
    try:
        return float(index.sa_code_size())
    except Exception:
        pass
    idx = faiss.downcast_index(index)
    for attr in ("index", "base_index"):
        inner = getattr(idx, attr, None)
        if inner is not None:
            return faiss_code_bytes(faiss, inner)
    cs = getattr(idx, "code_size", None)
    if cs is not None:
        return float(cs)
    raise RuntimeError("cannot tell the code size of %s" % type(idx).__name__)


class FaissAdapter(Adapter):
    """A FAISS (or faiss_turboquant) index built from a factory string, inner product."""

    def __init__(self, faiss, name, factory, d, factory_fn=None, serialize_fn=None, env="main",
                 setup=None, notes=""):
        self.faiss = faiss
        self.name = name
        self.factory = factory
        self.d = d
        self.factory_fn = factory_fn or faiss.index_factory
        self.serialize_fn = serialize_fn or faiss.serialize_index
        self.env = env
        self.setup = setup
        self.notes = notes
        self.index = None

    def build(self, xtrain):
        self.index = self.factory_fn(self.d, self.factory, self.faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            self.index.train(xtrain)
        if self.setup is not None:
            self.setup(self.index)

    def add(self, xb):
        self.index.add(xb)

    def search(self, xq, k):
        return self.index.search(xq, k)

    def set_threads(self, n):
        self.faiss.omp_set_num_threads(int(n))

    def index_bytes(self):
        return len(self.serialize_fn(self.index))

    def code_bytes(self):
        return faiss_code_bytes(self.faiss, self.index)

    def info(self):
        return {"factory": self.factory, "class": type(self.faiss.downcast_index(self.index)).__name__}
