"""NanoIndex under concurrent mixed writes and reads, checked against a single-threaded
replay (issue 5, point 3, store layer).

Design
------
* One store, 2 writer threads and 3 reader threads for a bounded time (about 2.5 s per
  configuration). Writers do add (fresh ids, sometimes a duplicate id, which must raise),
  upsert (existing and new ids) and delete (existing and unknown ids). Readers do
  search with no filter, with filter dicts, with a callable filter, batched and
  single, with k from 1 to 50, and get(ids).
* Write order: writers apply their store call while holding a test-side mutex and read
  ``NanoIndex.version`` before and after it. The version is bumped by the store under its
  own write lock, in the same critical section as the write, so the log, in append
  order, is the order in which writes reached the store, and every write knows the
  version it produced (a failed write or a delete of unknown ids leaves it unchanged).
  The mutex only orders writers among themselves: readers never take it, so they
  contend with writers on the store's reader-writer lock exactly as in production.
  (The store's auto_index also takes the write lock from inside search.)
* Reads: a reader notes ``version`` before (vb) and after (va) its call. The call runs
  under the store's read lock, during which no write can be in progress, so it saw
  the state of exactly one version v with vb <= v <= va (v = vb when vb == va, the
  common case).
* Replay: a fresh store with the same parameters applies the logged writes in order,
  checking each one's outcome (returned ids, delete count, or the exception) and that it
  produces the same version. At each version, every logged read whose interval
  contains it is re-run; the recorded result must equal the replayed one exactly
  (ids, ranks, float scores, text, metadata; the codec is deterministic and internal
  ids follow the write order). A read matching no version of its interval is a torn
  or wrong result and fails the test.
* Power: each configuration must log a minimum number of reads and writes, some exact
  (vb == va) reads, and a probe query whose result changes many times during the run,
  so the check is not vacuous. With the store's read lock disabled (an experiment, not
  part of the suite) the replay flags about 270 of 1,176 reads: 134 raised, 136 returned
  results that match no version.

Each configuration runs in a child process (OMP_NUM_THREADS=1; a crash fails the test
instead of killing pytest). ``python tests/test_store_stress.py CONFIG SECONDS [SEED]``
runs one configuration by hand and prints the JSON summary.
"""
import json
import os
import subprocess
import sys
import threading
import time
import traceback

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DIM = 64
CONFIGS = {
    # default IDMap2,TQ4 store; filters go through IDSelectorBatch / Bitmap
    "flat": dict(dim=DIM, bits=4),
    # IVF with native ids (nprobe escalation under filters) and exact float16 re-rank
    # from the memory-mapped vector file that writers append to
    "ivf_rerank": dict(dim=DIM, bits=4, index_factory="IVF16,TQ4", rerank=True, nprobe=2),
}
N0 = 5000          # initial documents (>= 5000 so that auto_index fires during the run)
NQ = 16            # query pool


def _meta(prefix, idxs, rnd):
    return [{"id": "%s%d" % (prefix, i), "text": "text %s%d r%d" % (prefix, i, rnd),
             "group": i % 7, "year": 2000 + i % 25, "tag": ["a", "b", "c"][i % 3]}
            for i in idxs]


def _vectors(rng, n, Q):
    """Random vectors; about a third are strong neighbours of a pool query, so adds,
    upserts and deletes keep changing the top-k of the queries."""
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    near = rng.random(n) < 0.35
    j = rng.integers(0, len(Q), n)
    x[near] = 2.0 * Q[j[near]] + 0.3 * x[near]
    return x


def _filter_callable(doc):
    return doc["group"] in (1, 2) and doc["tag"] != "c"


FILTERS = [
    None,
    {"group": 3},
    {"year_min": 2010},
    {"$or": [{"group": {"$in": [0, 5]}}, {"tag": "b"}]},
    {"year": {"$lt": 2003}},          # ~12%: small match sets, short results
    {"group": 6, "tag": "a"},
    _filter_callable,
]


def _norm_search(res, single):
    rows = [res] if single else res
    return tuple(tuple((h.rank, h.score, h.id, h.text, json.dumps(h.metadata, sort_keys=True))
                       for h in r) for r in rows)


def _do_read(st, kind, args):
    if kind == "search":
        q, k, f = args
        return _norm_search(st.search(q, k=k, filters=f), q.ndim == 1)
    if kind == "get":
        return json.dumps(st.get(args), sort_keys=True)
    raise AssertionError(kind)


def _do_write(st, kind, args):
    """Outcome of a write, comparable across runs."""
    try:
        if kind == "add":
            return ("ok", st.add(*args))
        if kind == "upsert":
            return ("ok", st.upsert(*args))
        if kind == "delete":
            return ("ok", st.delete(args))
    except ValueError as e:  # duplicate id on add
        return ("ValueError", str(e).split(":")[0])
    raise AssertionError(kind)


def run_stress(config, seconds=2.5, seed=0):
    from faiss_turboquant.store import NanoIndex

    params = CONFIGS[config]
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((NQ, DIM)).astype(np.float32)
    st = NanoIndex(**params)
    wlog = []        # (vb, va, kind, args, outcome), in the order writes reached the store
    wmutex = threading.Lock()
    errors = []

    def write(kind, args):
        with wmutex:
            vb = st.version
            out = _do_write(st, kind, args)
            va = st.version
            wlog.append((vb, va, kind, args, out))

    write("add", (_vectors(rng, N0, Q), _meta("d", range(N0), 0)))
    # ids a writer may touch: initial docs and everything the adders may have created
    probe = Q[0]
    stop = threading.Event()
    deadline = time.monotonic() + seconds

    def writer(t):
        r = np.random.default_rng(seed * 100 + t + 1)
        n_new = 0
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                u = r.random()
                if u < 0.40:   # add fresh ids; 1 in 8 batches carries an existing id
                    n = int(r.integers(1, 40))
                    idxs = list(range(n_new, n_new + n))
                    n_new += n
                    meta = _meta("w%d_" % t, idxs, 0)
                    if r.random() < 0.125:
                        meta[-1]["id"] = "d%d" % r.integers(0, N0)
                    write("add", (_vectors(r, n, Q), meta))
                elif u < 0.70:  # upsert: existing initial docs, own docs, new ids
                    n = int(r.integers(1, 20))
                    pool = [("d", int(r.integers(0, N0))) for _ in range(n)] + \
                           [("w%d_" % t, int(r.integers(0, n_new + 10)))]
                    pool = list(dict.fromkeys(pool))
                    meta = []
                    for p, i in pool:
                        m = _meta(p, [i], int(r.integers(1, 1 << 30)))[0]
                        meta.append(m)
                    write("upsert", (_vectors(r, len(meta), Q), meta))
                else:           # delete: initial, both writers' ids, unknown ids
                    n = int(r.integers(1, 30))
                    ids = ["d%d" % i for i in r.integers(0, N0, n)]
                    ids += ["w%d_%d" % (int(r.integers(0, 2)), int(r.integers(0, 400)))
                            for _ in range(3)]
                    ids.append("nope%d" % r.integers(0, 1000))
                    write("delete", ids)
                time.sleep(0.001 * r.random())
        except Exception:
            errors.append(traceback.format_exc())

    rlogs = [[] for _ in range(3)]

    def reader(t):
        r = np.random.default_rng(seed * 100 + 50 + t)
        log = rlogs[t]
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                u = r.random()
                if u < 0.15:
                    kind, args = "search", (probe, 10, None)
                elif u < 0.85:
                    nq = int(r.choice([1, 1, 3]))
                    qi = r.integers(0, NQ, nq)
                    q = Q[qi[0]] if nq == 1 else Q[qi]
                    k = int(r.choice([1, 5, 10, 10, 50]))
                    f = FILTERS[int(r.integers(0, len(FILTERS)))]
                    kind, args = "search", (q, k, f)
                else:
                    ids = ["d%d" % i for i in r.integers(0, N0, 5)] + \
                          ["w0_%d" % r.integers(0, 200), "w1_%d" % r.integers(0, 200)]
                    kind, args = "get", ids
                vb = st.version
                res = _do_read(st, kind, args)
                va = st.version
                log.append((vb, va, kind, args, res))
        except Exception:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)] + \
              [threading.Thread(target=reader, args=(t,)) for t in range(3)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 60)
    stop.set()
    t_conc = time.monotonic() - t0
    reads = sorted((x for log in rlogs for x in log), key=lambda x: x[0])
    final_version = st.version
    final_ids = st.ids()
    final_probe = _do_read(st, "search", (Q, 20, None))

    # ---------------------------------------------------------- single-threaded replay
    t1 = time.monotonic()
    fresh = NanoIndex(**params)
    mismatches = []
    matched = [False] * len(reads)
    active = []
    nxt = 0
    checked_v = -1
    n_reruns = 0

    def check_reads(v):
        nonlocal nxt, active, n_reruns
        while nxt < len(reads) and reads[nxt][0] <= v:
            active.append(nxt)
            nxt += 1
        keep = []
        for i in active:
            vb, va, kind, args, res = reads[i]
            n_reruns += 1
            if _do_read(fresh, kind, args) == res:
                matched[i] = True
            elif va > v:
                keep.append(i)
            else:
                mismatches.append({"read": i, "kind": kind, "vb": vb, "va": va,
                                   "k": args[1] if kind == "search" else None})
        active = keep

    for vb, va, kind, args, out in wlog:
        if fresh.version != vb:
            mismatches.append({"write_order": [vb, fresh.version]})
            break
        if vb != checked_v:
            check_reads(vb)
            checked_v = vb
        got = _do_write(fresh, kind, args)
        if got != out or fresh.version != va:
            mismatches.append({"write": kind, "vb": vb, "va": va, "replay_va": fresh.version,
                               "outcome": str(out)[:200], "replay": str(got)[:200]})
            break
    check_reads(fresh.version)
    unmatched = [i for i, m in enumerate(matched) if not m]
    if fresh.ids() != final_ids or _do_read(fresh, "search", (Q, 20, None)) != final_probe:
        mismatches.append({"final_state": True})
    t_replay = time.monotonic() - t1

    probe_results = {x[4] for x in reads if x[2] == "search" and x[3][0] is probe}
    kinds = {}
    for _, _, kind, _, out in wlog:
        key = "%s_%s" % (kind, out[0])
        kinds[key] = kinds.get(key, 0) + 1
    return {
        "config": config,
        "errors": errors,
        "mismatches": mismatches[:10],
        "n_mismatches": len(mismatches),
        "unmatched_reads": len(unmatched),
        "writes": len(wlog),
        "write_kinds": kinds,
        "versions": final_version,
        "reads": len(reads),
        "exact_reads": sum(1 for x in reads if x[0] == x[1]),
        "max_interval": max((x[1] - x[0] for x in reads), default=0),
        "searches_filtered": sum(1 for x in reads if x[2] == "search" and x[3][2] is not None),
        "gets": sum(1 for x in reads if x[2] == "get"),
        "distinct_probe_results": len(probe_results),
        "reruns": n_reruns,
        "final_size": len(final_ids),
        "t_concurrent": round(t_conc, 2),
        "t_replay": round(t_replay, 2),
    }


def _run_child(config, seconds, seed):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, os.path.abspath(__file__), config, str(seconds),
                        str(seed)], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=240)
    assert p.returncode == 0, "child exited with %d\n%s" % (p.returncode, p.stderr[-4000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_stress_replay(config):
    seed = int(os.environ.get("TQ_STRESS_SEED", "0"))
    s = _run_child(config, 2.5, seed)
    assert not s["errors"], s["errors"][0]
    assert s["n_mismatches"] == 0 and s["unmatched_reads"] == 0, s
    # the run must have exercised something (numbers on a busy 2-core machine are
    # several times these)
    assert s["writes"] >= 40 and s["versions"] >= 30, s
    assert s["write_kinds"].get("add_ValueError", 0) + s["write_kinds"].get("add_ok", 0) > 5, s
    assert s["write_kinds"].get("delete_ok", 0) > 5 and s["write_kinds"].get("upsert_ok", 0) > 5, s
    assert s["reads"] >= 150 and s["searches_filtered"] >= 50 and s["gets"] >= 10, s
    # reads with vb == va are checked against one version; the others against each
    # version of their (short) interval. The share depends on scheduling alone (70% on an
    # idle machine, 35% next to a benchmark, 7-9% seen in a fresh-clone `make test`), so
    # only an absolute floor is asserted: every read is checked either way.
    assert s["exact_reads"] >= 30 and s["max_interval"] <= 100, s
    assert s["distinct_probe_results"] >= 5, s


def test_version_counter():
    from faiss_turboquant.store import NanoIndex

    rng = np.random.default_rng(1)
    st = NanoIndex(dim=16, bits=4)
    assert st.version == 0
    x = rng.standard_normal((10, 16)).astype(np.float32)
    st.add(x, [{"id": "a%d" % i} for i in range(10)])
    assert st.version == 1
    with pytest.raises(ValueError):          # duplicate id: nothing applied
        st.add(x[:2], [{"id": "b"}, {"id": "a3"}])
    with pytest.raises(ValueError):          # invalid input: nothing applied
        st.add(x[:, :8])
    assert st.version == 1 and len(st) == 10
    st.search(x[0], k=3)
    st.get(["a1"])
    assert st.delete(["zz"]) == 0 and st.version == 1      # no-op delete
    assert st.delete(["a1", "a2", "zz"]) == 2 and st.version == 2
    st.upsert(x[:2], [{"id": "a3"}, {"id": "new"}])
    assert st.version == 3 and len(st) == 9
    with pytest.raises(AttributeError):
        st.version = 7


if __name__ == "__main__":
    cfg, secs = sys.argv[1], float(sys.argv[2])
    sd = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    print(json.dumps(run_stress(cfg, secs, sd)))
