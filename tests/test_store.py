"""NanoIndex: pre-filtered search, persistence (new process, tampering, kill -9),
delete/get/upsert, batch search, re-rank from the memory-mapped file, concurrency."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import faiss_turboquant.store as store_mod
from faiss_turboquant.store import NanoIndex, SearchResult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "glosses-minilm-10k.npz")


@pytest.fixture(scope="module")
def data():
    d = np.load(DATA)
    return {"xb": d["xb"], "xq": d["xq"], "texts": [str(t) for t in d["texts_b"]]}


def _meta(texts, n, offset=0):
    return [{"id": "doc%d" % (offset + i), "text": texts[i], "group": (offset + i) % 100,
             "lang": ["EN", "de", "Fr"][i % 3], "year": 2000 + i % 25} for i in range(n)]


@pytest.fixture(scope="module")
def store5k(data):
    st = NanoIndex(dim=384, bits=4)
    st.add(data["xb"][:5000], _meta(data["texts"], 5000))
    return st


def _ids(results):
    return [r.id for r in results]


def _exact_topk(xb, q, k, allowed=None):
    s = xb.astype(np.float32) @ q.astype(np.float32)
    if allowed is not None:
        mask = np.zeros(len(xb), bool)
        mask[allowed] = True
        s = np.where(mask, s, -np.inf)
    return list(np.argsort(-s, kind="stable")[:k])


# ------------------------------------------------------------------ basics / validation

def test_api_shapes_and_seed_compat(store5k, data):
    assert len(store5k) == store5k.n_vectors == 5000
    r = store5k.search(data["xq"][0], k=5)
    assert isinstance(r, list) and len(r) == 5 and all(isinstance(x, SearchResult) for x in r)
    assert [x.rank for x in r] == list(range(5))
    assert all(a.score >= b.score for a, b in zip(r, r[1:]))
    assert set(r[0].metadata) == {"group", "lang", "year"}  # id and text are not metadata
    assert r[0].text == data["texts"][int(r[0].id[3:])]
    rb = store5k.search(data["xq"][:3], k=4)
    assert len(rb) == 3 and all(len(x) == 4 for x in rb)
    st = store5k.stats()
    for key in ("n_vectors", "dim", "bits", "qjl_m", "memory_mb", "compression_ratio"):
        assert key in st
    assert st["code_bytes_per_vector"] < 384 * 4 / 7


def test_validation(data):
    st = NanoIndex(dim=8)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="dimension 8"):
        st.add(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="empty"):
        st.add(np.zeros((0, 8)))
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        st.add(bad)
    with pytest.raises(ValueError, match="3 entries for 4"):
        st.add(x, [{}] * 3)
    with pytest.raises(TypeError, match="'blob'"):
        st.add(x[:1], [{"blob": object()}])
    with pytest.raises(ValueError, match="'v'"):
        st.add(x[:1], [{"v": float("inf")}])
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        st.add(x[:2], [{"id": "a"}, {"id": "a"}])
    assert len(st) == 0
    assert st.search(x[0], k=3) == [] and st.search(x[:2], k=3) == [[], []]
    ids = st.add(x)
    assert len(ids) == 4 and len(set(ids)) == 4 and all(len(i) == 32 for i in ids)
    with pytest.raises(ValueError, match="already in the store"):
        st.add(x[:1], [{"id": ids[0]}])
    assert len(st) == 4
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            st.search(x[0], k=k)
    with pytest.raises(ValueError, match="dimension"):
        st.search(np.zeros(9), k=1)
    with pytest.raises(ValueError, match="NaN"):
        st.search(np.full(8, np.inf), k=1)
    with pytest.raises(ValueError, match=r"\$where"):
        st.search(x[0], filters={"$where": "1"})
    with pytest.raises(ValueError, match="field name"):
        st.search(x[0], filters={"a\"b": 1})
    with pytest.raises(ValueError):
        NanoIndex(dim=8, metric="hamming")
    with pytest.raises(ValueError):
        NanoIndex(dim=8, bits=9)


def test_metrics(data):
    xb = data["xb"][:500].astype(np.float32) * 3.0
    for metric in ("l2", "cosine"):
        st = NanoIndex(dim=384, metric=metric, bits=8)
        st.add(xb)
        hits = st.search(xb[7], k=3)
        assert hits[0].id == st.search(xb[7], k=1)[0].id
        if metric == "l2":
            assert hits[0].score <= hits[1].score and hits[0].score < 1.0
        else:
            assert abs(hits[0].score - 1.0) < 0.02


# ------------------------------------------------------------------ filters in the store

def test_filters_in_store(store5k, data):
    q = data["xq"][1]
    for f, check in [
        ({"lang": "en"}, lambda m: m["lang"] == "EN"),
        ({"lang": ["DE", "fr"]}, lambda m: m["lang"] in ("de", "Fr")),
        ({"year_min": 2010, "year_max": 2012}, lambda m: 2010 <= m["year"] <= 2012),
        ({"lang": {"$eq": "en"}}, None),
        ({"$or": [{"group": {"$lt": 2}}, {"$and": [{"lang": "fr"}, {"year": {"$gte": 2024}}]}]},
         lambda m: m["group"] < 2 or (m["lang"] == "Fr" and m["year"] >= 2024)),
        ({"$not": {"lang": {"$in": ["EN", "de"]}}}, lambda m: m["lang"] == "Fr"),
        ({"id": "doc42"}, lambda m: m["group"] == 42 and m["year"] == 2017),
    ]:
        hits = store5k.search(q, k=10, filters=f)
        if check is None:
            assert hits == []
            continue
        assert len(hits) >= 1 and all(check(h.metadata) for h in hits), f
    # callable fallback = the same as the equivalent dict filter
    a = store5k.search(q, k=10, filters={"group": {"$in": [3, 4]}})
    b = store5k.search(q, k=10, filters=lambda d: d["group"] in (3, 4) and d["id"].startswith("doc"))
    assert _ids(a) == _ids(b) and len(a) == 10
    with pytest.raises(ZeroDivisionError):
        store5k.search(q, k=1, filters=lambda d: 1 / 0)


def test_one_percent_filter_returns_k_exact_results(store5k, data):
    """group == 7 matches 50 of 5000 documents (1%): every query gets exactly k results,
    all matching, close to exact search restricted to the matching set."""
    xb = data["xb"][:5000].astype(np.float32)
    allowed = np.flatnonzero(np.arange(5000) % 100 == 7)
    k, recalls = 10, []
    qs = data["xq"][:50]
    batch = store5k.search(qs, k=k, filters={"group": 7})
    for q, hits in zip(qs, batch):
        assert len(hits) == k
        assert all(h.metadata["group"] == 7 for h in hits)
        truth = {"doc%d" % i for i in _exact_topk(xb, q, k, allowed)}
        recalls.append(len(truth & set(_ids(hits))) / k)
    assert np.mean(recalls) >= 0.8, np.mean(recalls)
    # fewer matches than k: all of them
    few = store5k.search(qs[0], k=10, filters={"id": {"$in": ["doc1", "doc2", "doc3"]}})
    assert sorted(_ids(few)) == ["doc1", "doc2", "doc3"]


def test_batch_equals_per_query(store5k, data):
    qs = data["xq"][:20]
    for f in (None, {"lang": "de"}):
        batch = store5k.search(qs, k=7, filters=f)
        for q, b in zip(qs, batch):
            single = store5k.search(q, k=7, filters=f)
            assert _ids(single) == _ids(b)
            assert [s.score for s in single] == pytest.approx([x.score for x in b], abs=1e-6)


def test_auto_index_and_index_fields(data, tmp_path):
    st = NanoIndex(dim=384, index_fields=["lang"], auto_index=2)
    st.add(data["xb"][:5000], _meta(data["texts"], 5000))
    q = data["xq"][0]
    for _ in range(2):
        st.search(q, k=5, filters={"year": 2001})
    assert st.stats()["index_fields"] == ["lang", "year"]
    plan = st._conn.execute("EXPLAIN QUERY PLAN SELECT id FROM docs WHERE "
                            "json_extract(metadata, '$.year') = 2001").fetchall()
    assert "ix:year:v" in str(plan)
    before = _ids(st.search(q, k=5, filters={"year": 2001, "lang": "en"}))
    st.save(tmp_path / "s")
    st2 = NanoIndex.load(tmp_path / "s")
    assert st2.stats()["index_fields"] == ["lang", "year"]
    assert _ids(st2.search(q, k=5, filters={"year": 2001, "lang": "en"})) == before


# ------------------------------------------------------------------ delete / get / upsert

def test_delete_get_upsert(data):
    xb = data["xb"][:300].astype(np.float32)
    st = NanoIndex(dim=384, rerank=True)
    st.add(xb, _meta(data["texts"], 300))
    got = st.get(["doc5", "nope", "doc1", "doc5"])
    assert [g["id"] for g in got] == ["doc5", "doc1"]
    assert got[0] == {"id": "doc5", "text": data["texts"][5],
                      "metadata": {"group": 5, "lang": "Fr", "year": 2005}}
    assert st.search(xb[5], k=1)[0].id == "doc5"
    assert st.delete(["doc5", "doc6", "missing"]) == 2 and len(st) == 298
    assert st.delete("doc5") == 0
    assert st.get(["doc5"]) == [] and "doc5" not in st and "doc7" in st
    assert st.ids()[:3] == ["doc0", "doc1", "doc2"] and len(st.ids()) == 298
    assert st.ids({"group": {"$in": [5, 6, 7]}}) == ["doc7", "doc105", "doc106", "doc107",
                                                      "doc205", "doc206", "doc207"]
    assert all(h.id not in ("doc5", "doc6") for h in st.search(xb[5], k=20))
    assert st.search(xb[7], k=1)[0].id == "doc7"  # positions shifted, ids still right
    assert st.search(xb[5], k=5, filters={"id": {"$in": ["doc5", "doc6"]}}) == []
    # upsert: replace doc7 (new vector + metadata), insert doc5 again, add a new id
    ids = st.upsert(xb[[100, 5, 200]], [{"id": "doc7", "text": "seven", "tag": "x"},
                                        {"id": "doc5", "text": "five"}, {"id": "new"}])
    assert ids == ["doc7", "doc5", "new"] and len(st) == 300
    assert st.get(["doc7"]) == [{"id": "doc7", "text": "seven", "metadata": {"tag": "x"}}]
    top = st.search(xb[100], k=2)
    assert {h.id for h in top} == {"doc100", "doc7"}
    assert st.search(xb[5], k=1)[0].id == "doc5"
    np.testing.assert_allclose(st.get_embeddings(["doc7"])[0], xb[100], atol=1e-2)
    with pytest.raises(ValueError, match="duplicate"):
        st.upsert(xb[:2], [{"id": "z"}, {"id": "z"}])
    with pytest.raises(ValueError, match="already"):
        st.add(xb[:1], [{"id": "doc7"}])
    assert len(st) == 300


def test_ivf_factory(data, tmp_path):
    xb = data["xb"][:2000].astype(np.float32)
    st = NanoIndex(dim=384, index_factory="IVF16,TQ4", nprobe=2)
    with pytest.raises(ValueError, match="39\\*nlist = 624"):
        st.add(xb[:100])
    st.add(xb, _meta(data["texts"], 2000))
    hits = st.search(xb[3], k=10, filters={"group": 3})  # 20 docs spread over lists
    assert len(hits) == 10 and all(h.metadata["group"] == 3 for h in hits)
    assert hits[0].id == "doc3"
    assert st.delete(["doc3", "doc4"]) == 2
    st.add(xb[:2], [{"id": "again0"}, {"id": "again1"}])
    assert st.search(xb[5], k=1)[0].id == "doc5"  # FAISS IDMap+IVF would be off by two
    assert st.search(xb[0], k=2)[0].id in ("doc0", "again0")
    st.save(tmp_path / "ivf")
    st2 = NanoIndex.load(tmp_path / "ivf")
    assert _ids(st2.search(xb[9], k=5)) == _ids(st.search(xb[9], k=5))


# ------------------------------------------------------------------ re-rank

def test_rerank_recall_and_memmap(data, tmp_path):
    xb, xq = data["xb"], data["xq"]
    tracemalloc.start()
    st = NanoIndex(dim=384, bits=4, rerank=True, rerank_factor=4)
    base = tracemalloc.get_traced_memory()[0]
    st.add(xb)
    res = st.search(xq, k=10)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    # the float vectors (7.7 MB as float16, 15 MB as float32) are not on the heap
    assert grown < 2_000_000, grown
    vf = st._vf
    assert isinstance(vf.mm, np.memmap) and vf.mm.shape == (10000, 384)
    assert os.path.getsize(vf.path) == 10000 * 384 * 2

    def big_arrays(obj, seen, depth=0):
        if id(obj) in seen or depth > 4:
            return []
        seen.add(id(obj))
        if isinstance(obj, np.memmap):
            return []
        if isinstance(obj, np.ndarray):
            return [obj] if obj.nbytes >= 10000 * 384 else []
        out = []
        items = vars(obj).values() if hasattr(obj, "__dict__") else (
            obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else [])
        for v in items:
            out += big_arrays(v, seen, depth + 1)
        return out

    assert big_arrays(st, set()) == []

    truth = np.argsort(-(xq.astype(np.float32) @ xb.astype(np.float32).T), axis=1)[:, :10]
    # documents were added without ids: the row of each generated id comes from SQLite
    rows = dict(st._conn.execute("SELECT doc_id, id FROM docs").fetchall())
    rec = np.mean([len(set(t.tolist()) & {rows[h.id] for h in r}) / 10
                   for t, r in zip(truth, res)])
    plain = NanoIndex(dim=384, bits=4)
    plain.add(xb)
    rows_p = dict(plain._conn.execute("SELECT doc_id, id FROM docs").fetchall())
    rec_plain = np.mean([len(set(t.tolist()) & {rows_p[h.id] for h in r}) / 10
                         for t, r in zip(truth, plain.search(xq, k=10))])
    assert rec >= 0.99 > rec_plain, (rec, rec_plain)
    # scores are exact inner products with the float16 vectors
    h = res[0][0]
    exact = float(xb[rows[h.id]].astype(np.float32) @ xq[0].astype(np.float32))
    assert h.score == pytest.approx(exact, abs=1e-5)
    # saving shares the file's rows; loading maps them again
    st.save(tmp_path / "rr")
    st2 = NanoIndex.load(tmp_path / "rr")
    assert [_ids(r) for r in st2.search(xq[:5], k=10)] == [_ids(r) for r in res[:5]]
    assert isinstance(st2._vf.mm, np.memmap)


# ------------------------------------------------------------------ persistence

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from faiss_turboquant.store import NanoIndex
    st = NanoIndex.load(sys.argv[1])
    q = np.load(sys.argv[2])
    out = [[[h.id, h.score, h.text, h.metadata] for h in r] for r in st.search(q, k=8)]
    out += [[[h.id, h.score, h.text, h.metadata] for h in st.search(q[0], k=8, filters={"lang": "de"})]]
    print(json.dumps({"n": len(st), "res": out}))
""")


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c"] + args, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, **kw)


def test_save_load_new_process(store5k, data, tmp_path):
    base = tmp_path / "store" / "idx"
    manifest = store5k.save(base)
    assert manifest.endswith("idx.json")
    names = sorted(os.listdir(tmp_path / "store"))
    assert sorted(n.rsplit(".", 1)[-1] for n in names) == ["faiss", "json", "sqlite"]
    qpath = tmp_path / "q.npy"
    q = data["xq"][:6].astype(np.float32)
    np.save(qpath, q)
    p = _run([CHILD, str(base), str(qpath)])
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    want = [[[h.id, h.score, h.text, h.metadata] for h in r] for r in store5k.search(q, k=8)]
    want += [[[h.id, h.score, h.text, h.metadata]
              for h in store5k.search(q[0], k=8, filters={"lang": "de"})]]
    assert got["n"] == 5000 and got["res"] == json.loads(json.dumps(want))
    # directory form and .json form load the same store
    st2 = NanoIndex.load(str(base) + ".json")
    assert len(st2) == 5000 and _ids(st2.search(q[1], k=3)) == _ids(store5k.search(q[1], k=3))
    # a loaded store keeps working incrementally and does not touch the saved files
    before = {n: os.path.getmtime(tmp_path / "store" / n) for n in names}
    st2.add(q[:1], [{"id": "extra"}])
    st2.delete(["doc0"])
    assert {n: os.path.getmtime(tmp_path / "store" / n) for n in names} == before
    assert len(NanoIndex.load(base)) == 5000


def _tamper_cases():
    def manifest_count(d):
        m = json.loads((d / "s.json").read_text())
        m["count"] += 1
        (d / "s.json").write_text(json.dumps(m))

    def manifest_fewer(d):
        m = json.loads((d / "s.json").read_text())
        m["count"] -= 1
        (d / "s.json").write_text(json.dumps(m))

    def faiss_swapped_rehashed(d):
        # a valid index of another store, with a consistent manifest
        import hashlib
        from faiss_turboquant import index_factory, write_index
        p = next(d.glob("s.*.faiss"))
        other = index_factory(384, "IDMap2,TQ4", 0)
        x = np.random.default_rng(1).standard_normal((400, 384)).astype(np.float32)
        other.add_with_ids(x, np.arange(1, 401))
        write_index(other, str(p))
        m = json.loads((d / "s.json").read_text())
        m["files"]["faiss"]["size"] = p.stat().st_size
        m["files"]["faiss"]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        (d / "s.json").write_text(json.dumps(m))

    def manifest_garbage(d):
        (d / "s.json").write_bytes(b"\x80\x04\x95 not json")

    def manifest_traversal(d):
        m = json.loads((d / "s.json").read_text())
        m["files"]["faiss"]["name"] = "../s.x.faiss"
        (d / "s.json").write_text(json.dumps(m))

    def manifest_version(d):
        m = json.loads((d / "s.json").read_text())
        m["version"] = 99
        (d / "s.json").write_text(json.dumps(m))

    def flip(suffix, offset):
        def f(d):
            p = next(d.glob("s.*" + suffix))
            b = bytearray(p.read_bytes())
            b[offset % len(b)] ^= 0x40
            p.write_bytes(bytes(b))
        return f

    def sqlite_trigger_rehashed(d):
        # a consistent manifest (hash recomputed) over a database with an extra trigger
        import hashlib
        p = next(d.glob("s.*.sqlite"))
        c = sqlite3.connect(p)
        c.execute("CREATE TRIGGER t AFTER INSERT ON docs BEGIN DELETE FROM docs; END")
        c.commit()
        c.close()
        m = json.loads((d / "s.json").read_text())
        m["files"]["sqlite"]["size"] = p.stat().st_size
        m["files"]["sqlite"]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        (d / "s.json").write_text(json.dumps(m))

    return {
        "manifest_count": manifest_count, "manifest_fewer": manifest_fewer,
        "faiss_swapped": faiss_swapped_rehashed, "manifest_garbage": manifest_garbage,
        "manifest_traversal": manifest_traversal, "manifest_version": manifest_version,
        "faiss_byte": flip(".faiss", 3000), "sqlite_byte": flip(".sqlite", 5000),
        "vectors_byte": flip(".vectors.f16", 777), "sqlite_trigger": sqlite_trigger_rehashed,
    }


def test_tampered_files_raise(data, tmp_path):
    st = NanoIndex(dim=384, rerank=True)
    st.add(data["xb"][:400], _meta(data["texts"], 400))
    st.save(tmp_path / "orig" / "s")
    for name, tamper in _tamper_cases().items():
        d = tmp_path / name
        shutil.copytree(tmp_path / "orig", d)
        tamper(d)
        with pytest.raises(ValueError):
            NanoIndex.load(d / "s")
    assert len(NanoIndex.load(tmp_path / "orig" / "s")) == 400


KILLER = textwrap.dedent("""
    import sys
    import numpy as np
    from faiss_turboquant.store import NanoIndex
    st = NanoIndex.load(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    i = 0
    while True:
        x = rng.standard_normal((50, st.dim)).astype(np.float32)
        st.upsert(x, [{"id": "u%d" % (j % 300), "round": i} for j in range(i * 50, i * 50 + 50)])
        st.save(sys.argv[1])
        i += 1
        print(i, len(st), flush=True)
""")


def test_kill_during_save_leaves_previous_loadable(data, tmp_path, monkeypatch):
    base = tmp_path / "k"
    st = NanoIndex(dim=384, rerank=True)
    st.add(data["xb"][:1000], _meta(data["texts"], 1000))
    st.save(base)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for trial in range(3):
        p = subprocess.Popen([sys.executable, "-c", KILLER, str(base), str(trial)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=ROOT)
        try:
            first = p.stdout.readline()
            assert first, p.stderr.read()
            time.sleep(0.05 + 0.1 * trial)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        st2 = NanoIndex.load(base)
        assert 1000 <= len(st2) <= 1300
        assert st2.search(data["xq"][0], k=3)
    # the next successful save removes what interrupted saves left behind
    monkeypatch.setattr(store_mod, "_ORPHAN_AGE_S", 0.0)
    st2.save()
    manifest = json.loads((tmp_path / "k.json").read_text())
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["k.json"] + [f["name"] for f in manifest["files"].values()])


# ------------------------------------------------------------------ concurrency

def test_concurrent_searches_while_writing(data):
    xb, xq = data["xb"], data["xq"]
    st = NanoIndex(dim=384)
    st.add(xb[:3000], [{"id": "b%d" % i, "batch": 0} for i in range(3000)])
    qs = xq[:8]
    baseline = [[(h.id, h.score) for h in r] for r in st.search(qs, k=10, filters={"batch": 0})]
    errors, counts = [], [0, 0, 0]

    def reader(t):
        try:
            while not done.is_set():
                for i, q in enumerate(qs):
                    r = st.search(q, k=10, filters={"batch": 0})
                    assert [(h.id, h.score) for h in r] == baseline[i]
                    u = st.search(q, k=10)
                    assert len(u) == 10 and all(a.score >= b.score for a, b in zip(u, u[1:]))
                    counts[t] += 1
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    done = threading.Event()
    threads = [threading.Thread(target=reader, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    try:
        rng = np.random.default_rng(0)
        for b in range(1, 16):
            x = xb[3000 + 100 * (b - 1): 3000 + 100 * b]
            st.add(x, [{"id": "n%d_%d" % (b, i), "batch": b} for i in range(len(x))])
            if b % 3 == 0:
                st.delete(["n%d_%d" % (b, i) for i in rng.choice(100, 30, replace=False)])
            time.sleep(0.01)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert min(counts) > 0
    assert len(st) == 3000 + 1500 - 5 * 30


def test_path_argument_and_codec_options(data, tmp_path):
    xb = data["xb"][:600].astype(np.float32)
    st = NanoIndex(dim=384, bits=3, qjl_m=64, seed=7, rerank=True, path=tmp_path / "p")
    st.add(xb[:300])
    vfile = st.stats()["vector_file"]
    assert os.path.dirname(vfile) == str(tmp_path) and vfile.endswith(".vectors.f16")
    st.save()
    st.add(xb[300:])  # appends past the saved rows of the shared file
    st2 = NanoIndex.load(tmp_path / "p")
    assert len(st2) == 300 and (st2.bits, st2.qjl_m, st2.seed) == (3, 64, 7)
    assert st2.stats()["code_bytes_per_vector"] == st.stats()["code_bytes_per_vector"]
    new = st2.add(xb[300:310])  # the live store holds the file: the loaded one copies on write
    assert st2.stats()["vector_file"] != vfile
    assert st2.search(xb[305], k=1)[0].id == new[5]
    np.testing.assert_allclose(st2.get_embeddings([new[5]])[0], xb[305], atol=1e-2)
    st.save()
    assert len(NanoIndex.load(tmp_path / "p")) == 600
