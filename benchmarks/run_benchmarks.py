#!/usr/bin/env python3
"""Flat-index benchmark: TurboQuant (faiss_turboquant) against FAISS and the peers, in one run.

    .venv/bin/python benchmarks/run_benchmarks.py --embeddings data/glosses-minilm-10k.npz --bits 4 \\
        [--k 10] [--queries N] [--threads T] [--methods LIST] [--output REPORT.md] \\
        [--json RUN.json] [--peers-python PATH]

Reads ``xb`` and ``xq`` from the .npz (float16 or float32; used as float32) and ``gt`` if
present, else computes the exact top-k with FAISS ``IndexFlatIP``.  All methods use inner
product.  For every method it measures (protocol in ``bench_common.py``): compression ratio
(float32 bytes per vector / index bytes per vector, the index as serialized), index size,
recall@k, p50 / p95 single-query latency (one thread, one query per call), batch QPS (all
queries in one call, ``--threads`` threads), add throughput, bytes per vector of the scanned
codes, and, for flat scans, the scan efficiency: code bytes scanned per second at the p50
latency divided by the single-core memory read bandwidth measured at the start of the same
run (``bench_common.measure_read_bandwidth``).

Methods (``--methods``, comma separated; default ``all``; ``--list-methods`` prints them):

* main env (this python: system FAISS 1.7.3 + faiss_turboquant): ``Flat`` (exact float32),
  ``SQ8``, ``SQ4``, ``PQ48``, ``PQ<d>x4fs``, ``TQ1``..``TQ8``, QJL variants ``TQ<b>q<m>``; any
  other key is taken as a factory string for ``faiss_turboquant.index_factory`` with ``+``
  standing for ``,`` (e.g. ``RR384+SQ4``).
* peers env (``--peers-python``, default ``.venv-peers/bin/python`` made by
  ``benchmarks/peers_env.sh``; run as ``benchmarks/peer_runner.py``, JSON over stdout):
  ``f115-RR-SQtqmse<b>``, ``f115-RR-SQtq<b>``, ``f115-RR-EDEN<b>``, ``f115-RR-RaBitQ<b>``,
  ``f115-RR-RaBitQfs<b>``, ``f115-PQ<d>x4fs``, ``f115-RR-PQ<d>x4fs`` (FAISS 1.15.1; ``RR-`` =
  ``RR<d>,`` prefix), ``turbovec<b>``, ``nanoindex3``, ``nanoindex<b>``.  If the peers env is
  absent the table says so on those rows instead of failing.
* groups: ``all``, ``main``, ``peers``, ``tq`` (TQ1..TQ8 + QJL variants), ``faiss`` (main-env
  FAISS methods).
"""
from __future__ import annotations

import os
import sys


if __name__ == "__main__":
    # before numpy / faiss are imported (see thread_env.py)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from thread_env import set_thread_env

    set_thread_env(sys.argv)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(1, REPO)   # faiss_turboquant is built in place at the repo root

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import bench_common as bc  # noqa: E402
import write_results as wr  # noqa: E402

PEER_PREFIXES = ("f115-", "turbovec", "nanoindex")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pq_m(d, target=48):
    for m in range(min(target, d), 0, -1):
        if d % m == 0:
            return m
    return 1


def method_groups(d, bits):
    b = bits
    main_faiss = ["Flat", "SQ8", "SQ4", "PQ%d" % pq_m(d), "PQ%dx4fs" % d]
    tq = ["TQ%d" % i for i in range(1, 9)] + ["TQ%dq%d" % (c, d) for c in (b - 2, b - 1, b) if 1 <= c <= 8]
    peers = ["f115-RR-SQtqmse%d" % b, "f115-RR-SQtq%d" % b, "f115-RR-EDEN%d" % b, "f115-RR-RaBitQ%d" % b,
             "f115-RR-RaBitQfs%d" % b, "f115-PQ%dx4fs" % d, "f115-RR-PQ%dx4fs" % d]
    if 2 <= b <= 4:
        peers.append("turbovec%d" % b)
    peers += ["nanoindex3"] + (["nanoindex%d" % b] if b != 3 else [])
    return {"faiss": main_faiss, "tq": tq, "main": main_faiss + tq, "peers": peers,
            "all": main_faiss + tq + peers}


def resolve_methods(spec, d, bits):
    groups = method_groups(d, bits)
    out = []
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        for m in groups.get(tok, [tok]):
            if m not in out:
                out.append(m)
    return out


def is_peer(key):
    return key.startswith(PEER_PREFIXES)


def main_adapter(key, d, faiss, ftq):
    fac = key.replace("+", ",")
    tq = re.search(r"TQ\d", fac) is not None
    if key == "Flat":
        impl = "FAISS %s IndexFlatIP (exact float32)" % faiss.__version__
    elif tq:
        impl = "faiss_turboquant"
    else:
        impl = "FAISS %s" % faiss.__version__
    ad = bc.FaissAdapter(faiss, key, fac, d, factory_fn=ftq.index_factory,
                         serialize_fn=ftq.serialize_index, env="main")
    ad.impl = impl
    return ad


def peers_impl(key, d, env):
    if key.startswith("f115-"):
        spec = key[5:]
        fac = ("RR%d," % d + spec[3:]) if spec.startswith("RR-") else spec
        return "FAISS %s `%s`" % (env.get("faiss", "1.15"), fac.replace("+", ","))
    if key.startswith("turbovec"):
        return "turbovec %s" % env.get("turbovec", "")
    if key.startswith("nanoindex"):
        return "nanoindex-rag %s%s" % (env.get("nanoindex-rag", ""), " (numba)" if env.get("numba") else " (NumPy)")
    return ""


def run_peers(args, keys, d):
    """Run peer_runner.py in the peers env; returns (env_info, results)."""
    py = args.peers_python
    if not (py and os.path.isfile(py) and os.access(py, os.X_OK)):
        reason = "peers env absent: %s not found; create it with `bash benchmarks/peers_env.sh` (make bench-peers)" % py
        log("[run] " + reason)
        return {"absent": True, "reason": reason}, [
            {"method": k, "env": "peers", "error": reason, "impl": "(peers env)"} for k in keys]
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_runner.py")
    cmd = [py, runner, "--embeddings", args.embeddings, "--methods", ",".join(keys), "--k", str(args.k),
           "--threads", str(args.threads), "--train-size", str(args.train_size),
           "--latency-budget", str(args.latency_budget), "--min-latency-queries", str(args.min_latency_queries),
           "--batch-repeats", str(args.batch_repeats), "--rabitq-qb", str(args.rabitq_qb)]
    if args.queries is not None:
        cmd += ["--queries", str(args.queries)]
    log("[run] peers: %s" % " ".join(cmd))
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.peers_timeout)
        doc = json.loads(p.stdout)
    except Exception as e:
        reason = "peer_runner failed: %s" % (repr(e)[:300])
        log("[run] " + reason)
        return {"absent": True, "reason": reason}, [
            {"method": k, "env": "peers", "error": reason, "impl": "(peers env)"} for k in keys]
    env = doc["env"]
    res = doc["results"]
    for r in res:
        for f in ("labels", "single_labels"):
            if f in r:
                r[f] = np.asarray(r[f], dtype=np.int64)
        r["impl"] = peers_impl(r["method"], d, env)
    return env, res


def main_env_info(faiss, ftq):
    info = {"python": sys.version.split()[0], "numpy": np.__version__, "faiss": faiss.__version__}
    try:
        info["faiss_compile_options"] = faiss.get_compile_options()
    except Exception:
        pass
    try:
        out = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h %cs"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        info["faiss_turboquant"] = "git " + out.stdout.strip()
    except Exception:
        info["faiss_turboquant"] = "?"
    return info


def exact_gt(faiss, xb, xq, k):
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    _, I = index.search(xq, k)
    return I.astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embeddings", required=True, help=".npz with xb, xq (and optionally gt)")
    ap.add_argument("--bits", type=int, default=4, help="bit width of the headline comparison (peers, QJL variants)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=None, help="use the first N queries (default: all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for add and batch search")
    ap.add_argument("--methods", default="all", help="comma-separated method keys or groups (see --list-methods)")
    ap.add_argument("--list-methods", action="store_true")
    ap.add_argument("--output", default=None, help="write a Markdown report (machine description + table)")
    ap.add_argument("--json", default=None, help="write the raw results as JSON (input of write_results.py)")
    ap.add_argument("--peers-python", default=os.path.join(REPO, ".venv-peers", "bin", "python"))
    ap.add_argument("--peers-timeout", type=float, default=7200)
    ap.add_argument("--train-size", type=int, default=50000, help="training sample for methods that train")
    ap.add_argument("--latency-budget", type=float, default=60.0,
                    help="seconds of single-query timing per method (at least --min-latency-queries)")
    ap.add_argument("--min-latency-queries", type=int, default=50)
    ap.add_argument("--batch-repeats", type=int, default=3)
    ap.add_argument("--bandwidth-mb", type=int, default=1024, help="buffer for the read-bandwidth measurement")
    ap.add_argument("--rabitq-qb", type=int, default=8, help="query bits of FAISS 1.15 RaBitQfs (index.qb)")
    args = ap.parse_args()
    args.embeddings = os.path.abspath(args.embeddings)

    machine = wr.machine_info()
    import faiss
    import faiss_turboquant as ftq

    with np.load(args.embeddings) as z:
        d = int(z["xb"].shape[1])
    keys = resolve_methods(args.methods, d, args.bits)
    if args.list_methods:
        for g, ms in method_groups(d, args.bits).items():
            print("%-6s %s" % (g, ",".join(ms)))
        return

    log("[run] loading %s" % args.embeddings)
    xb, xq, gt = bc.load_dataset(args.embeddings, args.queries)
    nb = len(xb)
    faiss.omp_set_num_threads(args.threads)
    gt_source = "stored `gt`"
    if gt is None or gt.shape[1] < args.k:
        t0 = time.perf_counter()
        gt = exact_gt(faiss, xb, xq, args.k)
        gt_source = "exact top-%d by FAISS IndexFlatIP (computed in %.1f s)" % (args.k, time.perf_counter() - t0)
    xtrain = bc.train_sample(xb, args.train_size)

    log("[run] measuring single-core read bandwidth (%d MB buffer)" % args.bandwidth_mb)
    bw = bc.measure_read_bandwidth(args.bandwidth_mb)
    log("[run] bandwidth %.2f GB/s (%s)" % (bw["bytes_per_s"] / 1e9, bw["method"]))

    main_keys = [k for k in keys if not is_peer(k)]
    peer_keys = [k for k in keys if is_peer(k)]
    results = []
    for key in main_keys:
        log("[run] %s" % key)
        ad = main_adapter(key, d, faiss, ftq)
        r = bc.measure(ad, xb, xq, args.k, args.threads, xtrain, args.latency_budget,
                       args.min_latency_queries, args.batch_repeats, log=log)
        r["impl"] = ad.impl
        results.append(r)
        del ad
    env_peers = None
    if peer_keys:
        env_peers, pres = run_peers(args, peer_keys, d)
        results += pres
    faiss.omp_set_num_threads(args.threads)
    for r in results:
        if not r.get("error"):
            bc.finish_metrics(r, gt, args.k, bw["bytes_per_s"])
        r.pop("labels", None)
        r.pop("single_labels", None)
    machine["loadavg_end"] = os.getloadavg()
    run = {
        "kind": "flat",
        "machine": machine,
        "env_main": main_env_info(faiss, ftq),
        "env_peers": env_peers,
        "args": {"bits": args.bits, "k": args.k, "threads": args.threads, "queries": args.queries,
                 "train_size": args.train_size, "latency_budget": args.latency_budget,
                 "batch_repeats": args.batch_repeats, "rabitq_qb": args.rabitq_qb, "methods": keys},
        "dataset": {"path": os.path.relpath(args.embeddings, REPO), "n": nb, "d": d, "nq": len(xq),
                    "gt_source": gt_source},
        "bandwidth": bw,
        "results": results,
    }
    run = bc.to_jsonable(run)
    print(wr.flat_table(run))
    print()
    print(wr.acceptance_issue4(run))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(run, f, indent=1)
        log("[run] wrote %s" % args.json)
    if args.output:
        with open(args.output, "w") as f:
            f.write(wr.render_report([run]))
        log("[run] wrote %s" % args.output)


if __name__ == "__main__":
    main()
