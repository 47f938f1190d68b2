"""Filter dialect -> SQL: each operator, nesting, seed semantics, injection attempts, and
agreement of the SQL compilation with the pure-Python evaluator on random data."""
import json
import random
import sqlite3

import pytest

from faiss_turboquant.filters import compile_filter, fold_expression, matches, field_expressions

DOCS = [
    {"id": "a", "text": "Alpha doc", "source": "ArXiv", "year": 2021, "score": 0.5,
     "tags": ["ml", "nlp"], "flag": True, "nested": {"k": 1}},
    {"id": "b", "text": "beta", "source": "arxiv", "year": 2023, "score": 1.5,
     "tags": ["cv"], "flag": False},
    {"id": "c", "text": "gamma", "source": "web", "year": "2022", "score": None},
    {"id": "d", "text": "delta", "source": "WEB", "year": 2024, "tags": [], "nested": {"k": 2}},
    {"id": "e", "text": "épsilon", "source": "Élan", "year": 2019.0, "time_min": 7},
]


def _db(docs=DOCS):
    conn = sqlite3.connect(":memory:")
    conn.create_function("nx_lower", 1, lambda s: s.lower() if isinstance(s, str) else s,
                         deterministic=True)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, doc_id TEXT UNIQUE NOT NULL, "
                 "text TEXT NOT NULL DEFAULT '', metadata TEXT NOT NULL DEFAULT '{}')")
    for i, d in enumerate(docs):
        meta = {k: v for k, v in d.items() if k not in ("id", "text")}
        conn.execute("INSERT INTO docs VALUES (?, ?, ?, ?)",
                     (i, d["id"], d["text"], json.dumps(meta)))
    return conn


CONN = _db()


def sql_ids(f, conn=CONN):
    c = compile_filter(f)
    if c is None:
        return sorted(r[0] for r in conn.execute("SELECT doc_id FROM docs"))
    return sorted(r[0] for r in conn.execute("SELECT doc_id FROM docs WHERE " + c.where,
                                             c.params))


def py_ids(f, docs=DOCS):
    return sorted(d["id"] for d in docs if matches(f, d))


@pytest.mark.parametrize("f,expected", [
    # seed dialect
    ({"source": "arxiv"}, ["a", "b"]),                       # case-insensitive
    ({"source": "ARXIV", "year_min": 2022}, ["b"]),          # AND + range
    ({"year": 2022}, ["c"]),                                 # 2022 matches "2022"
    ({"year": "2021"}, ["a"]),
    ({"year": [2021, "2022"]}, ["a", "c"]),                  # list = any of
    ({"source": ["web", "nope"]}, ["c", "d"]),
    ({"flag": "TRUE"}, ["a"]),
    ({"flag": True}, ["a"]),
    ({"score": "none"}, ["c"]),                              # JSON null folds to "none"
    ({"missing": ""}, ["a", "b", "c", "d", "e"]),            # missing compares as ""
    ({"source": "nope"}, []),
    ({"year_min": 2021, "year_max": 2023}, ["a", "b"]),      # inclusive; "2022" is a string
    ({"year_max": 2019}, ["e"]),                             # 2019.0 is numeric
    ({"source": "élan"}, ["e"]),                             # unicode folding
    ({"text": "ALPHA DOC"}, ["a"]),                          # reserved columns
    ({"id": ["a", "C"]}, ["a", "c"]),
    ({"nested.k": 2}, ["d"]),
    ({"time_min": {"$eq": 7}}, ["e"]),                       # operator dict: literal field
    ({}, ["a", "b", "c", "d", "e"]),
    # Mongo operators (exact, typed)
    ({"source": {"$eq": "arxiv"}}, ["b"]),
    ({"year": {"$eq": 2022}}, []),
    ({"year": {"$eq": "2022"}}, ["c"]),
    ({"year": {"$eq": 2019}}, ["e"]),                        # 2019 == 2019.0
    ({"flag": {"$eq": True}}, ["a"]),
    ({"flag": {"$eq": 1}}, []),
    ({"score": {"$eq": None}}, ["c", "d", "e"]),             # null or missing
    ({"source": {"$ne": "web"}}, ["a", "b", "d", "e"]),
    ({"score": {"$ne": 0.5}}, ["b", "c", "d", "e"]),         # missing satisfies $ne
    ({"year": {"$gt": 2021}}, ["b", "d"]),
    ({"year": {"$gte": 2021}}, ["a", "b", "d"]),
    ({"year": {"$lt": 2021}}, ["e"]),
    ({"year": {"$lte": 2021}}, ["a", "e"]),
    ({"year": {"$gt": 2020, "$lt": 2024}}, ["a", "b"]),
    ({"source": {"$gte": "a", "$lt": "b"}}, ["b"]),          # binary order: "ArXiv" < "a"
    ({"source": {"$in": ["web", "WEB"]}}, ["c", "d"]),
    ({"year": {"$in": [2021, "2022", None]}}, ["a", "c"]),
    ({"year": {"$in": []}}, []),
    ({"year": {"$nin": [2021, 2023]}}, ["c", "d", "e"]),
    ({"flag": {"$exists": True}}, ["a", "b"]),
    ({"flag": {"$exists": False}}, ["c", "d", "e"]),
    ({"tags": {"$contains": "ml"}}, ["a"]),
    ({"tags": {"$any": ["cv", "nlp"]}}, ["a", "b"]),
    ({"tags": {"$all": ["ml", "nlp"]}}, ["a"]),
    ({"text": {"$text_match": "elt"}}, ["d"]),
    ({"year": {"$not": {"$gt": 2021}}}, ["a", "c", "e"]),
    # logical operators and nesting
    ({"$or": [{"source": "web"}, {"year": {"$lt": 2020}}]}, ["c", "d", "e"]),
    ({"$and": [{"source": "arxiv"}, {"year": {"$gt": 2022}}]}, ["b"]),
    ({"$not": {"source": "arxiv"}}, ["c", "d", "e"]),
    ({"$or": [{"$and": [{"source": "arxiv"}, {"$not": {"year": 2021}}]},
              {"$and": [{"source": "web"}, {"year_min": 2024}]}]}, ["b", "d"]),
    ({"$and": []}, ["a", "b", "c", "d", "e"]),
    ({"$or": []}, []),
    ({"source": "arxiv", "$or": [{"year": 2021}, {"flag": False}]}, ["a", "b"]),
])
def test_operator(f, expected):
    assert sql_ids(f) == expected
    assert py_ids(f) == expected


@pytest.mark.parametrize("f,needle", [
    ({"source\" OR 1=1 --": "x"}, "source"),
    ({"a'b": 1}, "a'b"),
    ({"x); DROP TABLE docs; --": 1}, "DROP"),
    ({"$where": "1=1"}, "$where"),
    ({"year": {"$where": "sleep(1)"}}, "$where"),
    ({"year": {"$regex": ".*"}}, "$regex"),
    ({"$or": [{"$expr": 1}]}, "$expr"),
    ({"year": {"gt": 1}}, "gt"),
    ({"": 1}, "''"),
    ({"a..b": 1}, "a..b"),
    ({"1abc": 1}, "1abc"),
    ({"year": {"$gt": None}}, "bound"),
    ({"year": {"$gt": [1]}}, "bound"),
    ({"year": {"$in": 5}}, "list"),
    ({"year": {"$eq": {"$gt": 1}}}, "$eq"),
    ({"year": {"$gt": float("nan")}}, "non-finite"),
    ({"$and": {"a": 1}}, "$and"),
    ({"$not": [1]}, "dict"),
    ({"year": {}}, "empty"),
    ({"year": {"$exists": "yes"}}, "$exists"),
    ({"year": object()}, "year"),
])
def test_rejected(f, needle):
    with pytest.raises(ValueError) as e:
        compile_filter(f)
    assert needle in str(e.value)
    with pytest.raises(ValueError):
        matches(f, DOCS[0])


def test_values_are_parameters():
    evil = "x' OR '1'='1"
    c = compile_filter({"source": evil, "year": {"$in": [evil]}, "text": {"$text_match": evil}})
    assert evil not in c.where and evil.lower() in c.params
    assert sql_ids({"source": evil}) == []
    assert CONN.execute("SELECT count(*) FROM docs").fetchone()[0] == len(DOCS)


def test_callable_and_none():
    assert compile_filter(None) is None and compile_filter({}) is None
    assert matches(lambda d: d["year"] == 2023, DOCS[1])
    with pytest.raises(TypeError):
        compile_filter(lambda d: True)
    with pytest.raises(ValueError):
        compile_filter(["source"])


def test_expression_index_is_used():
    conn = _db()
    value, _ = field_expressions("source")
    conn.execute('CREATE INDEX ix_v ON docs(%s)' % value)
    conn.execute('CREATE INDEX ix_ci ON docs(%s)' % fold_expression("source"))
    for f, ix in (({"source": "web"}, "ix_ci"), ({"source": {"$eq": "web"}}, "ix_v"),
                  ({"source": {"$gt": "a"}}, "ix_v")):
        c = compile_filter(f)
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM docs WHERE " + c.where, c.params))
        assert ix in plan, (f, plan)


def _random_value(rng):
    return rng.choice([
        rng.randint(-3, 3), rng.choice([0.5, 1.5, 2.0, -1.25]),
        rng.choice(["a", "A", "b", "web", "Web", "2", ""]), True, False, None,
        [rng.choice(["a", "b", 1, 2])], rng.choice([[], ["a", "b"]]),
    ])


def _random_filter(rng, depth=0):
    field = rng.choice(["f", "g", "h"])
    r = rng.random()
    if depth < 3 and r < 0.25:
        op = rng.choice(["$and", "$or", "$not"])
        if op == "$not":
            return {op: _random_filter(rng, depth + 1)}
        return {op: [_random_filter(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
    if r < 0.4:
        v = _random_value(rng)
        if isinstance(v, list):
            v = [x for x in v if not isinstance(x, list)]
        return {field: v}
    if r < 0.5:
        return {field + rng.choice(["_min", "_max"]): rng.choice([0, 1, 1.5, "a", "W"])}
    op = rng.choice(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
                     "$contains", "$any", "$all", "$text_match", "$not"])
    if op in ("$gt", "$gte", "$lt", "$lte"):
        v = rng.choice([0, 1, 1.5, -2, "a", "b", "Web"])
    elif op in ("$in", "$nin", "$any", "$all"):
        v = [rng.choice([1, 2, "a", "A", "web", None, True, 0.5]) for _ in range(rng.randint(0, 3))]
    elif op == "$exists":
        v = rng.random() < 0.5
    elif op == "$text_match":
        v = rng.choice(["a", "e", "W", ""])
    elif op == "$not":
        v = {rng.choice(["$eq", "$gt", "$in"]): rng.choice([1, "a"]) if rng.random() < .7 else [1]}
        if "$in" in v and not isinstance(v["$in"], list):
            v = {"$in": [v["$in"]]}
        if "$in" not in v and isinstance(next(iter(v.values())), list):
            v = {"$eq": 1}
    else:
        v = rng.choice([1, 2, 0.5, "a", "A", "web", None, True, False])
    return {field: {op: v}}


def test_sql_agrees_with_python_on_random_filters():
    rng = random.Random(1234)
    docs = []
    for i in range(200):
        d = {"id": "d%d" % i, "text": rng.choice(["alpha", "Beta", "gamma web"])}
        for key in ("f", "g", "h"):
            if rng.random() < 0.8:
                d[key] = _random_value(rng)
        docs.append(d)
    conn = _db(docs)
    checked = 0
    for _ in range(400):
        f = _random_filter(rng)
        assert sql_ids(f, conn) == py_ids(f, docs), f
        checked += 1
    assert checked == 400
