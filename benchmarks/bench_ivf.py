#!/usr/bin/env python3
"""IVF benchmark (issue 3, point 4): recall@k against QPS over an nprobe sweep for
``IVF<n>,TQ<b>`` next to FAISS ``IVF<n>,SQ4``, ``IVF<n>,SQ8``, ``IVF<n>,PQ<d>x4fs`` and
``IVF<n>,Flat``, all with the SAME coarse quantizer, single-threaded and with all cores,
on real embeddings and (``--synthetic N``) on an N-vector synthetic set shaped like them.

    .venv/bin/python benchmarks/bench_ivf.py --embeddings benchmarks/data/glosses-100k.npz \\
        [--synthetic 1000000] [--nprobes 1,4,16,64] [--bits 4] [--threads T] [--queries N] \\
        [--json benchmarks/results/ivf.json] [--output REPORT.md]

Protocol, per dataset (inner product throughout):

* exact ground truth: FAISS ``IndexFlatIP`` top-k;
* coarse quantizer: spherical k-means (``faiss.Kmeans``, ``--kmeans-iter`` iterations, at most
  ``--kmeans-points-per-centroid`` x nlist training points, seed fixed) trained ONCE; its
  centroids are copied into the (flat, inner-product) coarse quantizer of every index
  before ``train()``, so FAISS skips coarse training ("IVF quantizer does not need
  training") and only the codec is trained (SQ ranges, PQ codebooks; TurboQuant needs none),
  on a fixed sample of the base;
* add: all base vectors in one call, all threads (``--threads``), timed;
* search: for every nprobe, all queries in one call, with 1 thread and with ``--threads``
  threads, best wall time of ``--batch-repeats`` -> QPS; recall@k from the labels;
* issue-3 checks: (a) at equal nprobe, recall(IVF,TQ<b>) against recall(flat TQ<b>) x
  recall(IVF,Flat) (flat TQ<b> measured on the same data and queries), tolerance 0.02, and
  against recall(IVF,SQ4); (b) add time of IVF,TQ<b> against IVF,SQ8 on the same data.

Synthetic set (``make_synthetic``): a Gaussian mixture fitted to the real base.  L2 k-means
with ``--synth-clusters`` clusters (default 1024) gives the component means (the cluster means) and weights
(cluster sizes); the residuals x - mean give one pooled residual covariance S (d x d, full
rank for the 100k set); component c gets covariance s_c^2 * S, where s_c^2 = (mean squared
residual norm of cluster c) / trace(S), times ``--synth-noise-scale``^2 (default 1).  A sample
is mean_c + s_c * L z (L = Cholesky of S, z standard normal), then L2-normalised like the real
embeddings.  Queries for the synthetic set are the REAL queries.  The run prints shape
statistics (norms before normalisation, mean cosine to the nearest centroid, the top-1 /
top-10 query similarities) for the real and the synthetic sets side by side.
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
    sys.path.insert(1, REPO)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import bench_common as bc  # noqa: E402
import write_results as wr  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def auto_nlist(n):
    """Power of two nearest to 4 sqrt(n) (100k -> 1024, 1M -> 4096)."""
    target = 4.0 * np.sqrt(n)
    return int(2 ** round(np.log2(target)))


def kmeans(faiss, x, k, niter, max_ppc, spherical, seed=123):
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=spherical,
                      max_points_per_centroid=max_ppc, verbose=False)
    km.train(x)
    return km


# ----------------------------------------------------------------------------- synthetic set

def make_synthetic(faiss, xb, n, clusters=256, noise_scale=1.0, seed=7, chunk=100000):
    """Gaussian mixture fitted to xb (see module docstring). Returns (x float32 (n, d), info)."""
    t0 = time.perf_counter()
    d = xb.shape[1]
    km = kmeans(faiss, xb, clusters, 20, 1 << 30, spherical=False, seed=seed)
    _, a = km.index.search(xb, 1)
    a = a.ravel()
    # cluster means (not the k-means output, which FAISS may have computed on a subsample)
    counts = np.bincount(a, minlength=clusters).astype(np.float64)
    means = np.zeros((clusters, d), np.float64)
    np.add.at(means, a, xb)
    keep = counts > 0
    means[keep] /= counts[keep, None]
    res = xb - means[a].astype(np.float32)
    S = (res.T.astype(np.float64) @ res.astype(np.float64)) / len(xb)
    trS = np.trace(S)
    sq = np.einsum("ij,ij->i", res, res).astype(np.float64)
    per = np.zeros(clusters)
    np.add.at(per, a, sq)
    per[keep] /= counts[keep]
    scale = np.sqrt(per / trS) * noise_scale
    L = np.linalg.cholesky(S + 1e-9 * trS / d * np.eye(d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    comp = rng.choice(clusters, size=n, p=counts / counts.sum())
    out = np.empty((n, d), np.float32)
    raw_norms = np.empty(n, np.float32)
    means32 = means.astype(np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = rng.standard_normal((e - s, d), dtype=np.float32)
        c = comp[s:e]
        y = means32[c] + (z @ L.T) * scale[c, None].astype(np.float32)
        nr = np.linalg.norm(y, axis=1)
        raw_norms[s:e] = nr
        out[s:e] = y / nr[:, None]
    info = {"clusters": clusters, "noise_scale": noise_scale, "seed": seed,
            "raw_norm_mean": float(raw_norms.mean()), "raw_norm_std": float(raw_norms.std()),
            "residual_trace": float(trS), "fit_and_sample_s": time.perf_counter() - t0}
    return out, info


def shape_stats(faiss, xb, xq, gt_D, rng_seed=0, pairs=20000):
    """A few statistics to compare a real and a synthetic set."""
    rng = np.random.default_rng(rng_seed)
    i = rng.integers(0, len(xb), pairs)
    j = rng.integers(0, len(xb), pairs)
    pair_cos = np.einsum("ij,ij->i", xb[i], xb[j])
    return {"mean_pair_cos": float(pair_cos.mean()), "std_pair_cos": float(pair_cos.std()),
            "query_top1_ip": float(gt_D[:, 0].mean()), "query_top10_ip": float(gt_D[:, -1].mean())}


# ----------------------------------------------------------------------------- IVF run

def run_dataset(args, faiss, ftq, label, xb, xq, description, extra=None):
    n, d = xb.shape
    k = args.k
    T = args.threads
    b = args.bits
    faiss.omp_set_num_threads(T)
    log("[ivf] %s: exact ground truth" % label)
    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    gtD, gt = flat.search(xq, k)
    del flat
    stats = shape_stats(faiss, xb, xq, gtD)
    nlist = args.nlist or auto_nlist(n)
    log("[ivf] %s: coarse quantizer, %d lists" % (label, nlist))
    t0 = time.perf_counter()
    km = kmeans(faiss, xb, nlist, args.kmeans_iter, args.kmeans_points_per_centroid, spherical=True)
    q_train_s = time.perf_counter() - t0
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    del km
    # the coarse assignment is part of every index's add; timed once alone for reference
    cq = faiss.IndexFlatIP(d)
    cq.add(centroids)
    t0 = time.perf_counter()
    cq.search(xb, 1)
    assign_s = time.perf_counter() - t0
    del cq
    xtrain = bc.train_sample(xb, args.train_size)
    nprobes = [p for p in args.nprobes if p <= nlist]
    codecs = [c.replace("{d}", str(d)).replace("{b}", str(b)) for c in args.codecs.split(",") if c]
    methods = []
    for codec in codecs:
        name = "IVF%d,%s" % (nlist, codec)
        m = {"name": name, "codec": codec}
        methods.append(m)
        log("[ivf] %s: %s" % (label, name))
        try:
            index = ftq.index_factory(d, name, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(index)
            ivf.quantizer.add(centroids)
            faiss.omp_set_num_threads(T)
            t0 = time.perf_counter()
            index.train(xtrain)
            m["train_s"] = time.perf_counter() - t0
            assert ivf.quantizer.ntotal == nlist
            t0 = time.perf_counter()
            index.add(xb)
            m["add_s"] = time.perf_counter() - t0
            m["add_vps"] = n / m["add_s"]
            m["code_bytes"] = float(ivf.code_size)
            m["class"] = type(faiss.downcast_index(index)).__name__
            log("  trained %.1fs, added in %.2fs" % (m["train_s"], m["add_s"]))
            pts = []
            for nprobe in nprobes:
                ivf.nprobe = nprobe
                for t in sorted({1, T}):
                    faiss.omp_set_num_threads(t)
                    index.search(xq[:16], k)
                    best, lab, reps = float("inf"), None, 0
                    for _ in range(max(1, args.batch_repeats)):
                        t0 = time.perf_counter()
                        _, I = index.search(xq, k)
                        dt = time.perf_counter() - t0
                        reps += 1
                        if dt < best:
                            best, lab = dt, I
                        if dt > 10.0:
                            break
                    r = bc.recall_at_k(lab, gt, k)
                    pts.append({"nprobe": nprobe, "threads": t, "recall": r, "qps": len(xq) / best,
                                "seconds": best})
                    log("  nprobe %4d, %d thr: recall %.4f, %.0f QPS" % (nprobe, t, r, len(xq) / best))
            m["points"] = pts
            del index
        except Exception as e:
            m["error"] = "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[-1][:300] if str(e).strip() else "")
            log("  ERROR " + m["error"])
    faiss.omp_set_num_threads(T)

    run = {"kind": "ivf", "dataset": {"label": label, "n": n, "d": d, "nq": len(xq), "description": description,
                                      "shape": stats},
           "k": k, "nlist": nlist, "nprobes": nprobes, "threads": T, "batch_repeats": args.batch_repeats,
           "quantizer": "IndexFlatIP over %d spherical k-means centroids (%d iterations, <= %d points/centroid)"
                        % (nlist, args.kmeans_iter, args.kmeans_points_per_centroid),
           "quantizer_train_s": q_train_s, "assign_s": assign_s, "methods": methods}
    if extra:
        run["dataset"].update(extra)

    by = {m["codec"]: m for m in methods if not m.get("error")}
    tq_key = "TQ%d" % b
    if tq_key in by and "Flat" in by:
        log("[ivf] %s: flat %s for the composition check" % (label, tq_key))
        fidx = ftq.index_factory(d, tq_key, faiss.METRIC_INNER_PRODUCT)
        fidx.add(xb)
        nqf = len(xq) if args.flat_queries is None else min(args.flat_queries, len(xq))
        _, I = fidx.search(xq[:nqf], k)
        del fidx
        flat_rec = bc.recall_at_k(I, gt[:nqf], k)
        rows = []
        for nprobe in nprobes:
            def rec(codec):
                if codec not in by:
                    return None
                p = [p for p in by[codec]["points"] if p["nprobe"] == nprobe and p["threads"] == T]
                return p[0]["recall"] if p else None
            rf, rt, rs = rec("Flat"), rec(tq_key), rec("SQ4")
            rows.append({"nprobe": nprobe, "ivf_flat": rf, "ivf_tq": rt, "ivf_sq4": rs,
                         "product": flat_rec * rf, "diff": rt - flat_rec * rf})
        run["composition"] = {"bits": b, "flat_recall": flat_rec, "flat_queries": nqf, "rows": rows}
    if tq_key in by and "SQ8" in by:
        run["add_check"] = {"tq": "IVF%d,%s" % (nlist, tq_key), "tq_s": by[tq_key]["add_s"],
                            "sq8": "IVF%d,SQ8" % nlist, "sq8_s": by["SQ8"]["add_s"]}
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embeddings", required=True, help="real embeddings .npz (xb, xq)")
    ap.add_argument("--synthetic", type=int, default=0, help="also run on N synthetic vectors shaped like xb (0: no)")
    ap.add_argument("--skip-real", action="store_true", help="only the synthetic run")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--flat-queries", type=int, default=None,
                    help="queries used for the flat TQ recall of the composition check (default: all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--nlist", type=int, default=0, help="0: power of two nearest to 4 sqrt(n)")
    ap.add_argument("--nprobes", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--codecs", default="Flat,SQ8,SQ4,PQ{d}x4fs,TQ{b}",
                    help="codecs after IVF<n>, ({d} = dimension, {b} = --bits)")
    ap.add_argument("--train-size", type=int, default=50000, help="codec training sample")
    ap.add_argument("--kmeans-iter", type=int, default=20)
    ap.add_argument("--kmeans-points-per-centroid", type=int, default=64)
    ap.add_argument("--batch-repeats", type=int, default=3)
    ap.add_argument("--synth-clusters", type=int, default=1024)
    ap.add_argument("--synth-noise-scale", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    args.nprobes = [int(x) for x in args.nprobes.split(",") if x]
    args.embeddings = os.path.abspath(args.embeddings)

    machine = wr.machine_info()
    import faiss
    import faiss_turboquant as ftq
    faiss.omp_set_num_threads(args.threads)
    xb, xq, _ = bc.load_dataset(args.embeddings, args.queries)
    rel = os.path.relpath(args.embeddings, REPO)
    runs = []
    if not args.skip_real:
        runs.append(run_dataset(args, faiss, ftq, "real embeddings `%s`" % rel, xb, xq,
                                "Real sentence embeddings (%s)." % rel))
    if args.synthetic:
        log("[ivf] synthetic set: %d vectors" % args.synthetic)
        xs, info = make_synthetic(faiss, xb, args.synthetic, args.synth_clusters, args.synth_noise_scale)
        real_stats = runs[0]["dataset"]["shape"] if runs else None
        del xb
        desc = ("Synthetic: %d vectors from a Gaussian mixture fitted to `%s` (%d L2 k-means components, "
                "pooled residual covariance scaled per component, noise scale %.2f, L2-normalised; "
                "fit+sample %.0f s); queries are the real queries. See bench_ivf.py." % (
                    args.synthetic, rel, info["clusters"], info["noise_scale"], info["fit_and_sample_s"]))
        run = run_dataset(args, faiss, ftq, "synthetic %s" % ("%dM" % (args.synthetic // 10**6)
                                                            if args.synthetic % 10**6 == 0 else str(args.synthetic)),
                          xs, xq, desc, extra={"synthetic": info, "real_shape": real_stats})
        runs.append(run)
        del xs
    machine["loadavg_end"] = os.getloadavg()
    env_main = {"python": sys.version.split()[0], "numpy": np.__version__, "faiss": faiss.__version__,
                "faiss_compile_options": faiss.get_compile_options()}
    for r in runs:
        r["machine"] = machine
        r["env_main"] = env_main
    runs = bc.to_jsonable(runs)
    for r in runs:
        print(wr.render_ivf(r))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
        log("[ivf] wrote %s" % args.json)
    if args.output:
        with open(args.output, "w") as f:
            f.write(wr.render_report(runs, "IVF benchmark"))
        log("[ivf] wrote %s" % args.output)


if __name__ == "__main__":
    main()
