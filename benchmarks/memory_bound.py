#!/usr/bin/env python3
"""Peak memory while adding N vectors (issue 5, point 5): is peak RSS close to the final
code size plus one batch, with no float32 copy of the collection?

    .venv/bin/python benchmarks/memory_bound.py [--n 1000000] [--d 384] [--batch 10000] \\
        [--cases flat,ivf,store] [--json benchmarks/results/memory_bound.json]

Every case runs in a fresh child process (``--child CASE``):

1. build the index: (a) ``flat``: ``IndexTurboQuant(d, 4, 0, METRIC_INNER_PRODUCT)``;
   (b) ``ivf``: ``IVF1024,TQ4`` (inner product) trained on 50,000 vectors; (c) ``store``:
   ``NanoIndex(dim=d, bits=4)`` (IDMap2,TQ4 + SQLite) with small metadata per document;
2. ``gc.collect()``, then reset the peak-RSS counter (``echo 5 > /proc/self/clear_refs``,
   Linux >= 4.0), so that training and imports are not counted, and read the baseline
   ``VmRSS``;
3. add N vectors in batches: each batch of standard-normal float32 vectors is generated
   just before its ``add`` and dropped after it, so the float32 collection never exists
   whole (one batch of d=384 is 15.4 MB);
4. read ``VmHWM`` (peak RSS since the reset) and ``VmRSS``.

Reported per case: code bytes (ntotal * code_size; for the store also the FAISS id
structures), peak RSS growth (VmHWM - baseline), retained growth (VmRSS - baseline),
the ratio peak growth / code bytes, and the bound "codes + one batch + constant" with the
constant it takes (peak growth - codes - one batch).

Where the excess comes from (flat index): FAISS ``IndexFlatCodes::add`` grows a
``std::vector<uint8_t>`` with ``resize``; libstdc++ doubles the capacity, and during the
reallocation the old buffer (S bytes) and the touched part of the new one (S + batch codes)
are both resident. With batches of b vectors the last reallocation before N happens at
S = 2^j * b codes (largest 2^j * b < N), so the peak is about (2^(j+1) + 1) * b * code_size
+ the batch + encoding buffers: 1.29 x the codes at N = 1M, 1.65 x at N = 200k. The
untouched tail of the new capacity is not resident, so it does not count in RSS.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("%s not in /proc/self/status" % key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vector_growth_peak(n: int, batch: int, code_size: int) -> int:
    """Resident bytes of the code vector at its worst moment while adding n vectors in
    batches (libstdc++ capacity doubling; the new buffer is touched up to the new size)."""
    size = cap = 0
    peak = 0
    while size < n:
        new = min(n, size + batch)
        if new > cap:
            cap = max(new, 2 * size)
            peak = max(peak, size + new)          # old buffer + touched part of the new
        size = new
        peak = max(peak, size)
    return peak * code_size


def child(case: str, n: int, d: int, batch: int, seed: int = 0) -> dict:
    import numpy as np
    import faiss
    import faiss_turboquant as ft

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if case == "flat":
        index = ft.IndexTurboQuant(d, 4, 0, faiss.METRIC_INNER_PRODUCT)
        add = index.add
    elif case == "ivf":
        index = ft.index_factory(d, "IVF1024,TQ4", faiss.METRIC_INNER_PRODUCT)
        xt = rng.standard_normal((50000, d), dtype=np.float32)
        index.train(xt)
        del xt
        add = index.add
    elif case == "store":
        from faiss_turboquant.store import NanoIndex
        index = NanoIndex(dim=d, bits=4)
        counter = [0]

        def add(x):
            i0 = counter[0]
            index.add(x, [{"id": "doc%d" % i, "g": i % 10} for i in range(i0, i0 + len(x))])
            counter[0] = i0 + len(x)
    else:
        raise ValueError(case)
    t_build = time.perf_counter() - t0
    gc.collect()
    reset = _reset_peak()
    base = _status("VmRSS")
    hwm_before = _status("VmHWM")

    t0 = time.perf_counter()
    done = 0
    while done < n:
        m = min(batch, n - done)
        x = rng.standard_normal((m, d), dtype=np.float32)
        add(x)
        del x
        done += m
    t_add = time.perf_counter() - t0
    gc.collect()
    peak, rss = _status("VmHWM"), _status("VmRSS")

    extra = {}
    if case == "flat":
        ntotal, code_size = int(index.ntotal), int(index.code_size)
        index_bytes = ntotal * code_size
    elif case == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ntotal, code_size = int(index.ntotal), int(ivf.code_size)
        index_bytes = ntotal * (code_size + 8)          # codes + 8-byte ids in the lists
    else:
        from faiss_turboquant.store import _find_tq
        ntotal = len(index)
        code_size = int(_find_tq(index._index).code_size)
        # IDMap2: id_map (8 B) + rev_map (unordered_map node ~32 B + bucket 8 B)
        index_bytes = ntotal * (code_size + 8 + 40)
        st = index.stats()
        extra["sqlite_bytes_on_disk"] = st["sqlite_bytes"]
    code_bytes = ntotal * code_size
    batch_bytes = batch * d * 4
    growth = peak - base
    return dict(
        case=case, n=ntotal, d=d, batch=batch, code_size=code_size,
        code_bytes=code_bytes, index_bytes_est=index_bytes, batch_bytes=batch_bytes,
        float32_bytes=ntotal * d * 4,
        baseline_rss=base, peak_rss=peak, final_rss=rss, hwm_reset=reset,
        hwm_before_add=hwm_before,
        peak_growth=growth, retained_growth=rss - base,
        ratio_peak_to_codes=growth / code_bytes,
        constant_over_codes_plus_batch=growth - code_bytes - batch_bytes,
        constant_over_index_plus_batch=growth - index_bytes - batch_bytes,
        vector_doubling_peak=vector_growth_peak(ntotal, batch, code_size),
        t_build_s=round(t_build, 2), t_add_s=round(t_add, 2), **extra)


def run_case(case: str, n: int, d: int = 384, batch: int = 10000, timeout: float = 1800,
             env_extra: dict | None = None) -> dict:
    """Run one case in a fresh interpreter and return its measurements."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case,
                        "--n", str(n), "--d", str(d), "--batch", str(batch)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("case %s exited with %d:\n%s" % (case, p.returncode, p.stderr[-3000:]))
    return json.loads(p.stdout.strip().splitlines()[-1])


def _mb(b):
    return "%.1f" % (b / 1e6)


def report(rows) -> str:
    out = ["| case | N | code B/vec | codes MB | index MB (est.) | peak growth MB | "
           "retained MB | peak / codes | peak - codes - batch MB | vector-doubling peak MB "
           "| float32 copy MB | add s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| %s | %d | %d | %s | %s | %s | %s | %.2f | %s | %s | %s | %.1f |" % (
            r["case"], r["n"], r["code_size"], _mb(r["code_bytes"]), _mb(r["index_bytes_est"]),
            _mb(r["peak_growth"]), _mb(r["retained_growth"]), r["ratio_peak_to_codes"],
            _mb(r["constant_over_codes_plus_batch"]), _mb(r["vector_doubling_peak"]),
            _mb(r["float32_bytes"]), r["t_add_s"]))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--cases", default="flat,ivf,store")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.n, a.d, a.batch)))
        return
    rows = []
    for case in a.cases.split(","):
        r = run_case(case, a.n, a.d, a.batch)
        rows.append(r)
        print("%s: peak growth %s MB for %s MB of codes (%.2f x), add %.1f s"
              % (case, _mb(r["peak_growth"]), _mb(r["code_bytes"]),
                 r["ratio_peak_to_codes"], r["t_add_s"]), file=sys.stderr, flush=True)
    print(report(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
