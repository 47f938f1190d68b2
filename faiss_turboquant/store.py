"""NanoIndex: a RAG-facing document store over a TurboQuant FAISS index.

Drop-in for ``nanoindex.NanoIndex`` (nanoindex-rag 0.1.1): same constructor arguments,
``add`` / ``search`` / ``save`` / ``load`` / ``stats`` / ``n_vectors``, the same
``SearchResult`` and filter dialect, plus incremental add, ``delete`` / ``get`` /
``upsert`` / ``len()``, Mongo-style filters, pre-filtering, crash-safe pickle-free
persistence and an optional exact re-rank from a memory-mapped float16 file.

Layout
------
* vectors: a C++ FAISS index built by :func:`faiss_turboquant.index_factory`
  (``IDMap2,TQ<b>[q<m>]`` by default; an IVF factory string is used as is, with FAISS's
  own ``add_with_ids``). The FAISS int64 label of a vector is the SQLite
  ``INTEGER PRIMARY KEY`` of its document row. Scores always come from the C++ search.
* documents: SQLite (stdlib ``sqlite3``) table
  ``docs(id INTEGER PRIMARY KEY, doc_id TEXT UNIQUE NOT NULL, text, metadata JSON)``;
  filters compile to parameterised SQL (:mod:`faiss_turboquant.filters`), the matching
  ids reach FAISS as an ``IDSelector`` (true pre-filtering).
* re-rank (``rerank=True``): original vectors as float16 in an append-only
  memory-mapped file whose row ``i`` is document ``id = i``.

Thread safety: a reader-writer lock; any number of ``search`` / ``get`` / ``save`` /
``stats`` calls run concurrently, ``add`` / ``upsert`` / ``delete`` run alone. The one
SQLite connection is shared (``check_same_thread=False``) and each statement is
serialised by a mutex.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import faiss
import numpy as np

from . import filters as _filters
from .factory import index_factory as _tq_index_factory
from .io import read_index as _read_index, write_index as _write_index
from .casting import downcast_index as _downcast

try:  # advisory lock on the vector file (POSIX); without it the store still works
    import fcntl as _fcntl
except ImportError:  # pragma: no cover
    _fcntl = None

__all__ = ["NanoIndex", "SearchResult"]

FORMAT = "faiss_turboquant.NanoIndex"
FORMAT_VERSION = 1
_MANIFEST_MAX_BYTES = 1 << 20
_SQL_CHUNK = 500
_METRICS = {"ip": "ip", "inner_product": "ip", "l2": "l2", "cosine": "cosine"}
_FILE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")
_FACTORY_RE = re.compile(r"^[A-Za-z0-9_,.()\-]{1,200}$")
_F16_MAX = 65504.0
_AUTO_INDEX_MIN_DOCS = 5000
_ORPHAN_AGE_S = 60.0

_SCHEMA_DOCS = (
    "CREATE TABLE docs (id INTEGER PRIMARY KEY, doc_id TEXT UNIQUE NOT NULL, "
    "text TEXT NOT NULL DEFAULT '', metadata TEXT NOT NULL DEFAULT '{}')"
)
_SCHEMA_META = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


@dataclass
class SearchResult:
    """One hit. ``rank`` starts at 0; ``score`` is the inner product (metric "ip" /
    "cosine", higher is better) or the squared L2 distance (metric "l2", lower is
    better); ``metadata`` holds every key of the document's dict except id and text."""

    rank: int
    score: float
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

class _RWLock:
    """Writer-preferring reader-writer lock (not re-entrant)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _sha256_file(path: str, nbytes: int | None = None) -> str:
    h = hashlib.sha256()
    remaining = nbytes
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            want = 1 << 20 if remaining is None else min(1 << 20, remaining)
            buf = f.read(want)
            if not buf:
                break
            h.update(buf)
            if remaining is not None:
                remaining -= len(buf)
    if remaining:
        raise ValueError("%s is shorter than its manifest says" % path)
    return h.hexdigest()


def _lower(s):
    return s.lower() if isinstance(s, str) else s


def _connect(path: str) -> sqlite3.Connection:
    # trusted_schema stays ON here: the working database only ever holds our own schema
    # (a loaded file is checked object by object against it before it is copied in),
    # and SQLite needs it ON for json_extract() in expression indexes.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=MEMORY")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.create_function("nx_lower", 1, _lower, deterministic=True)
    return conn


def _index_sql(field_name: str) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) pairs for a filtered field: one on the value
    (ranges, $eq, $in) and one on the case-folded key of the seed's equality."""
    value, _ = _filters.field_expressions(field_name)
    fold = _filters.fold_expression(field_name)
    return [
        ("ix:%s:v" % field_name, 'CREATE INDEX "ix:%s:v" ON docs(%s)' % (field_name, value)),
        ("ix:%s:ci" % field_name, 'CREATE INDEX "ix:%s:ci" ON docs(%s)' % (field_name, fold)),
    ]


def _norm_sql(s: str | None) -> str:
    return " ".join((s or "").split())


def _resolve_base(path) -> str:
    """Base path (without extension) of a saved store: a directory means
    `<dir>/index`, a `.json` manifest path means its stem."""
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not p:
        raise ValueError("empty path")
    if p.endswith(os.sep) or os.path.isdir(p):
        return os.path.join(p, "index")
    if p.endswith(".json"):
        return p[: -len(".json")]
    return p


def _chunks(seq: Sequence, n: int = _SQL_CHUNK):
    for i in range(0, len(seq), n):
        yield seq[i: i + n]


class _VectorFile:
    """Append-only float16 matrix in a file, read through np.memmap. Row i belongs to
    document id i; rows are never rewritten once committed, so a saved store can share
    the file with the live one (the manifest records the row count and a hash)."""

    def __init__(self, path: str, dim: int, rows: int, create: bool, temp: bool):
        self.path = path
        self.dim = dim
        self.temp = temp
        self.f = open(path, "w+b" if create else "r+b")
        self.locked = False
        if not create:
            size = os.fstat(self.f.fileno()).st_size
            if size < rows * dim * 2:
                self.f.close()
                raise ValueError("vector file %s holds fewer rows than the manifest" % path)
        self.rows = rows
        self.mm = None
        self._remap()

    def _remap(self):
        if self.rows:
            self.mm = np.memmap(self.f, dtype=np.float16, mode="r", shape=(self.rows, self.dim))
        else:
            self.mm = None

    def try_lock(self) -> bool:
        if self.locked or _fcntl is None:
            self.locked = True
            return True
        try:
            _fcntl.flock(self.f.fileno(), _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except OSError:
            return False
        self.locked = True
        return True

    def write_rows(self, start: int, x16: np.ndarray) -> None:
        if start > self.rows:
            raise RuntimeError("vector file: gap before row %d" % start)
        data = np.ascontiguousarray(x16, dtype=np.float16)
        os.pwrite(self.f.fileno(), data.tobytes(), start * self.dim * 2)
        self.rows = start + len(data)
        self._remap()

    def truncate_rows(self, rows: int) -> None:
        self.rows = rows
        self._remap()

    def unlinked(self) -> bool:
        try:
            st = os.fstat(self.f.fileno())
            st2 = os.stat(self.path)
        except OSError:
            return True
        return st.st_nlink == 0 or (st.st_ino, st.st_dev) != (st2.st_ino, st2.st_dev)

    def copy_to(self, dst: str) -> None:
        nbytes = self.rows * self.dim * 2
        tmp = dst + ".tmp-" + secrets.token_hex(4)
        try:
            with open(tmp, "wb") as out:
                self.f.seek(0)
                remaining = nbytes
                while remaining > 0:
                    buf = self.f.read(min(1 << 22, remaining))
                    if not buf:
                        raise RuntimeError("vector file truncated while copying")
                    out.write(buf)
                    remaining -= len(buf)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def close(self):
        self.mm = None
        with contextlib.suppress(Exception):
            self.f.close()


class _Resources:
    """What must be released when a NanoIndex goes away (no reference to it)."""

    def __init__(self):
        self.conn = None
        self.vf = None
        self.tmpdir = None
        self.old_vfs: list = []

    def close(self):
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        for vf in [self.vf] + self.old_vfs:
            if vf is not None:
                vf.close()
        self.vf = None
        self.old_vfs = []
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def _find_tq(index):
    """The TurboQuant-bearing index (has `.tq`) inside a small index tree, or None."""
    seen = 0
    cur = _downcast(index)
    while cur is not None and seen < 8:
        seen += 1
        if hasattr(cur, "tq"):
            return cur
        if isinstance(cur, faiss.IndexIDMap) or isinstance(cur, faiss.IndexIDMap2) or \
                isinstance(cur, faiss.IndexPreTransform):
            cur = _downcast(cur.index)
        elif isinstance(cur, faiss.IndexRefine):
            cur = _downcast(cur.base_index)
        else:
            return None
    return None


# --------------------------------------------------------------------------- store

class NanoIndex:
    """Compressed vector store with documents, metadata filters and persistence.

    Parameters
    ----------
    dim, bits, qjl_m, seed:
        TurboQuant codec: ``bits`` per coordinate (1..8), ``qjl_m`` QJL residual sign
        bits (0 = none), ``seed`` of the random rotation.
    metric:
        ``"ip"`` (inner product, the default, as nanoindex), ``"cosine"`` (vectors and
        queries are L2-normalised, then inner product) or ``"l2"`` (squared distance,
        lower is better).
    index_factory:
        optional FAISS factory string for the vector index, e.g. ``"IVF1024,TQ4"`` for
        large collections (trained on the first ``add`` of >= 39*nlist vectors, or
        with :meth:`train`). Default: ``"TQ{bits}"`` (+ ``"q{qjl_m}"``) wrapped in IDMap2.
    rerank, rerank_factor:
        with ``rerank=True`` the original vectors are kept as float16 in a
        memory-mapped file and the top ``rerank_factor * k`` compressed candidates
        are re-scored exactly.
    path:
        where :meth:`save` writes by default (and where the vector file of a re-ranking
        store lives; a temporary directory until then).
    index_fields:
        metadata fields to create SQLite expression indexes for (see
        :meth:`create_index`).
    auto_index:
        create those indexes automatically for a field once filters have used it this
        many times on a store of at least 5000 documents (None: never).
    nprobe:
        IVF lists visited per query (default ``max(8, nlist // 32)``, capped at nlist).
    """

    def __init__(
        self,
        dim: int = 384,
        bits: int = 4,
        qjl_m: int = 0,
        seed: int = 42,
        metric: str = "ip",
        index_factory: str | None = None,
        rerank: bool = False,
        rerank_factor: int = 4,
        path: str | os.PathLike | None = None,
        *,
        index_fields: Iterable[str] | None = None,
        auto_index: int | None = 3,
        nprobe: int | None = None,
    ):
        params = self._check_params(
            dict(dim=dim, bits=bits, qjl_m=qjl_m, seed=seed, metric=metric,
                 index_factory=index_factory, rerank=rerank, rerank_factor=rerank_factor,
                 nprobe=nprobe, index_fields=list(index_fields or []),
                 auto_index=auto_index))
        self._init_common(params, None if path is None else _resolve_base(path))
        index, kind = self._build_index(params)
        self._set_index(index, kind)
        if kind == "ivf" and params["nprobe"] is None:
            self.nprobe = min(self._ivf.nlist, max(8, self._ivf.nlist // 32))
        with self._db_lock:
            c = self._conn
            c.execute(_SCHEMA_DOCS)
            c.execute(_SCHEMA_META)
            c.execute("INSERT INTO meta VALUES ('next_id', '0')")
        self._next_id = 0
        for f in params["index_fields"]:
            self._create_index_locked(f)
        if self.rerank:
            self._open_new_vector_file()

    # ---------------------------------------------------------------- construction

    @staticmethod
    def _check_params(p: dict) -> dict:
        def posint(name, lo, hi):
            v = p[name]
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError("%s must be an integer in [%d, %d], got %r" % (name, lo, hi, v))
            p[name] = int(v)

        posint("dim", 1, 1 << 16)
        posint("bits", 1, 8)
        posint("qjl_m", 0, 1 << 16)
        posint("seed", 0, (1 << 63) - 1)
        posint("rerank_factor", 1, 10000)
        if p["nprobe"] is not None:
            posint("nprobe", 1, 1 << 24)
        if p["auto_index"] is not None:
            posint("auto_index", 1, 1 << 30)
        m = p["metric"]
        if not isinstance(m, str) or m.lower() not in _METRICS:
            raise ValueError("metric must be one of 'ip', 'cosine', 'l2', got %r" % (m,))
        p["metric"] = _METRICS[m.lower()]
        if not isinstance(p["rerank"], bool):
            raise ValueError("rerank must be True or False, got %r" % (p["rerank"],))
        fs = p["index_factory"]
        if fs is not None:
            if not isinstance(fs, str) or not _FACTORY_RE.match(fs):
                raise ValueError("index_factory must be a FAISS factory string, got %r" % (fs,))
            fs = re.sub(r"^IDMap2?,", "", fs)
            if not fs:
                raise ValueError("index_factory: empty factory string")
            p["index_factory"] = fs
        fields = []
        for f in p["index_fields"]:
            _filters.validate_field(f)
            if f not in fields:
                fields.append(f)
        p["index_fields"] = fields
        return p

    def _init_common(self, params: dict, base: str | None):
        self.dim = params["dim"]
        self.bits = params["bits"]
        self.qjl_m = params["qjl_m"]
        self.seed = params["seed"]
        self.metric = params["metric"]
        self.index_factory = params["index_factory"]
        self.rerank = params["rerank"]
        self.rerank_factor = params["rerank_factor"]
        self.nprobe = params["nprobe"]
        self.auto_index = params["auto_index"]
        self._field_uses: dict[str, int] = {}
        self._analyzed_at = 0
        self.path = base
        self._index_fields: list[str] = []
        self._lock = _RWLock()
        self._db_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._idarr = None
        self._version = 0
        self._res = _Resources()
        self._res.tmpdir = tempfile.mkdtemp(prefix="nanoindex-")
        self._finalizer = weakref.finalize(self, self._res.close)
        self._conn = _connect(os.path.join(self._res.tmpdir, "work.sqlite"))
        self._res.conn = self._conn

    @property
    def _vf(self) -> _VectorFile | None:
        return self._res.vf

    def _faiss_metric(self):
        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def _build_index(self, p: dict):
        metric = self._faiss_metric()
        if p["index_factory"] is None:
            desc = "TQ%d" % p["bits"] + ("q%d" % p["qjl_m"] if p["qjl_m"] else "")
            index = _tq_index_factory(p["dim"], "IDMap2," + desc, metric)
            kind = "idmap"
        else:
            desc = p["index_factory"]
            try:
                probe = _tq_index_factory(p["dim"], desc, metric)
            except Exception as e:
                raise ValueError("index_factory %r: %s" % (desc, e)) from None
            if faiss.try_extract_index_ivf(probe) is not None:
                # FAISS's IDMap over an IVF breaks after remove_ids (the IVF keeps
                # sequential labels): IVF indexes store our ids natively instead.
                index, kind = probe, "ivf"
            else:
                index = _tq_index_factory(p["dim"], "IDMap2," + desc, metric)
                kind = "idmap"
        if p["seed"] != 42:
            tq = _find_tq(index)
            if tq is None:
                raise ValueError("seed: no TurboQuant codec in index_factory %r" % (desc,))
            tq.tq.seed = p["seed"]
            tq.reinit()
        return index, kind

    def _set_index(self, index, kind: str):
        self._owner = index  # downcast views do not own the C++ object: keep this one
        self._index = index if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVF)) \
            else _downcast(index)
        self._kind = kind
        if kind == "idmap":
            self._inner = _downcast(self._index.index)
            self._ivf = None
        else:
            self._inner = None
            ivf = faiss.try_extract_index_ivf(self._index)
            self._ivf = _downcast(ivf)
        self._idarr = None

    def _open_new_vector_file(self, rows_from: _VectorFile | None = None):
        """A fresh vector file next to self.path (or in the temp dir)."""
        if self.path is not None:
            d = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(d, exist_ok=True)
            name = "%s.%s.vectors.f16" % (os.path.basename(self.path), secrets.token_hex(6))
            fpath, temp = os.path.join(d, name), False
        else:
            fpath = os.path.join(self._res.tmpdir, "vectors-%s.f16" % secrets.token_hex(4))
            temp = True
        if rows_from is not None:
            rows_from.copy_to(fpath)
            vf = _VectorFile(fpath, self.dim, rows_from.rows, create=False, temp=temp)
        else:
            vf = _VectorFile(fpath, self.dim, 0, create=True, temp=temp)
        vf.try_lock()
        self._swap_vector_file(vf)

    def _swap_vector_file(self, vf: _VectorFile):
        old = self._res.vf
        self._res.vf = vf
        if old is not None:
            # searches may still read the old mapping: close it with the store
            old.mm = None
            self._res.old_vfs.append(old)
            if old.temp:
                with contextlib.suppress(OSError):
                    os.unlink(old.path)

    # ---------------------------------------------------------------- validation

    def _check_vectors(self, embeddings, what="embeddings") -> np.ndarray:
        if embeddings is None:
            raise ValueError("%s: expected an array, got None" % what)
        a = np.asarray(embeddings)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.floating)
                                     or np.issubdtype(a.dtype, np.integer)):
            raise ValueError("%s must be a numeric array, got dtype %s" % (what, a.dtype))
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise ValueError("%s must be 1-D (one vector) or 2-D (n, %d), got shape %s"
                             % (what, self.dim, a.shape))
        if a.shape[0] == 0:
            raise ValueError("%s: empty batch" % what)
        if a.shape[1] != self.dim:
            raise ValueError("%s: expected dimension %d, got %d" % (what, self.dim, a.shape[1]))
        a = np.ascontiguousarray(a, dtype=np.float32)
        finite = np.isfinite(a).all(axis=1)
        if not finite.all():
            raise ValueError("%s: row %d has NaN or infinite values"
                             % (what, int(np.flatnonzero(~finite)[0])))
        if self.metric == "cosine":
            norms = np.linalg.norm(a, axis=1, keepdims=True)
            if (norms == 0).any():
                raise ValueError("%s: row %d is a zero vector (metric 'cosine')"
                                 % (what, int(np.flatnonzero(norms[:, 0] == 0)[0])))
            a = a / norms
        return a

    @staticmethod
    def _check_k(k) -> int:
        if not isinstance(k, numbers.Integral) or isinstance(k, bool):
            raise ValueError("k must be a positive integer, got %r" % (k,))
        if k <= 0:
            raise ValueError("k must be a positive integer, got %d" % k)
        return int(k)

    @staticmethod
    def _check_doc_id(v, i) -> str:
        if isinstance(v, str):
            if not v:
                raise ValueError("metadata[%d]['id'] is an empty string" % i)
            return v
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return str(int(v))
        raise TypeError("metadata[%d]['id'] must be a str, got %s" % (i, type(v).__name__))

    def _prepare_records(self, metadata, n: int) -> list[tuple[str, str, str]]:
        if metadata is None:
            metadata = [{}] * n
        elif isinstance(metadata, Mapping):
            if n != 1:
                raise ValueError("metadata: expected a list of %d dicts, got one dict" % n)
            metadata = [metadata]
        else:
            metadata = list(metadata)
        if len(metadata) != n:
            raise ValueError("metadata has %d entries for %d vectors" % (len(metadata), n))
        recs = []
        seen = set()
        dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                 separators=(",", ":")).encode
        for i, m in enumerate(metadata):
            if m is None:
                m = {}
            if type(m) is not dict and not isinstance(m, Mapping):
                raise TypeError("metadata[%d] must be a dict, got %s" % (i, type(m).__name__))
            doc_id = m.get("id")
            doc_id = uuid.uuid4().hex if doc_id is None else self._check_doc_id(doc_id, i)
            if doc_id in seen:
                raise ValueError("duplicate id %r in the batch" % doc_id)
            seen.add(doc_id)
            text = m.get("text")
            if text is None:
                text = ""
            elif not isinstance(text, str):
                raise TypeError("metadata[%d]['text'] must be a str, got %s"
                                % (i, type(text).__name__))
            rest = {}
            for key, v in m.items():
                if key == "id" or key == "text":
                    continue
                if type(key) is not str and not isinstance(key, str):
                    raise TypeError("metadata[%d]: keys must be str, got %r" % (i, key))
                rest[key] = v
            try:
                js = dumps(rest)
            except (TypeError, ValueError):
                for key, v in rest.items():
                    try:
                        dumps(v)
                    except TypeError as e:
                        raise TypeError("metadata[%d][%r] is not JSON-serialisable: %s"
                                        % (i, key, e)) from None
                    except ValueError as e:
                        raise ValueError("metadata[%d][%r] is not valid JSON: %s"
                                         % (i, key, e)) from None
                raise
            recs.append((doc_id, text, js))
        return recs

    @staticmethod
    def _check_id_list(ids) -> list[str]:
        if isinstance(ids, str):
            ids = [ids]
        out = []
        for v in ids:
            if isinstance(v, numbers.Integral) and not isinstance(v, bool):
                v = str(int(v))
            if not isinstance(v, str):
                raise TypeError("ids must be strings, got %s" % type(v).__name__)
            out.append(v)
        return out

    # ---------------------------------------------------------------- SQL helpers

    def _sql(self, sql: str, params=()) -> list:
        with self._db_lock:
            return self._conn.execute(sql, params).fetchall()

    def _rows_by_doc_ids(self, doc_ids: list[str], cols: str) -> list:
        out = []
        for chunk in _chunks(doc_ids):
            q = "SELECT %s FROM docs WHERE doc_id IN (%s)" % (cols, ",".join("?" * len(chunk)))
            out.extend(self._conn.execute(q, chunk).fetchall())
        return out

    # ---------------------------------------------------------------- indexes

    def create_index(self, field_name: str) -> None:
        """Create SQLite expression indexes for filters on a metadata field (persisted
        with the store). Worth it for fields filtered often on large collections."""
        _filters.validate_field(field_name)
        with self._lock.write():
            self._create_index_locked(field_name)

    def _create_index_locked(self, f: str):
        if f in self._index_fields or f in ("id", "text"):
            return
        with self._db_lock:
            for _, sql in _index_sql(f):
                self._conn.execute(sql)
        self._index_fields.append(f)
        self._analyze_locked()

    def _analyze_locked(self):
        """Refresh SQLite's statistics so that it picks the most selective index."""
        if self._index_fields:
            with self._db_lock:
                self._conn.execute("ANALYZE")
        self._analyzed_at = len(self)

    # ---------------------------------------------------------------- write path

    def train(self, embeddings) -> None:
        """Train the index (IVF coarse quantizer, or a pre-transform) on sample vectors.
        The default TurboQuant index needs no training."""
        x = self._check_vectors(embeddings)
        with self._lock.write():
            if not self._index.is_trained:
                self._train_locked(x, explicit=True)

    def _train_locked(self, x: np.ndarray, explicit: bool = False):
        if self._ivf is not None:
            need = 39 * self._ivf.nlist
            if len(x) < need and not explicit:
                raise ValueError(
                    "index_factory %r is untrained and needs at least 39*nlist = %d vectors "
                    "to train; the first add has %d. Add a larger first batch, call "
                    "train() with a sample, or use a smaller nlist"
                    % (self.index_factory, need, len(x)))
            if len(x) < self._ivf.nlist:
                raise ValueError("train: %d vectors for %d IVF lists" % (len(x), self._ivf.nlist))
        try:
            self._index.train(x)
        except RuntimeError as e:
            raise ValueError("training index_factory %r failed: %s"
                             % (self.index_factory, e)) from None

    def add(self, embeddings, metadata: list[dict] | None = None) -> list[str]:
        """Append documents. ``metadata[i]`` may hold ``"id"`` (str; a uuid4 hex is
        generated when absent) and ``"text"``; every other key is JSON metadata.
        Returns the ids. An id already in the store or twice in the batch raises
        ValueError (use :meth:`upsert` to replace)."""
        x = self._check_vectors(embeddings)
        recs = self._prepare_records(metadata, len(x))
        with self._lock.write():
            self._write_locked(x, recs, replace=False)
        return [r[0] for r in recs]

    def upsert(self, embeddings, metadata: list[dict]) -> list[str]:
        """Insert or replace documents by id (a replaced document gets its new vector,
        text and metadata). Returns the ids."""
        x = self._check_vectors(embeddings)
        recs = self._prepare_records(metadata, len(x))
        with self._lock.write():
            self._write_locked(x, recs, replace=True)
        return [r[0] for r in recs]

    def _write_locked(self, x: np.ndarray, recs, replace: bool):
        if not self._index.is_trained:
            self._train_locked(x)
        if self.rerank:
            amax = float(np.abs(x).max())
            if amax > _F16_MAX:
                raise ValueError("rerank keeps float16 vectors; a value of magnitude %g "
                                 "exceeds the float16 range" % amax)
        n = len(x)
        start = self._next_id
        ids = np.arange(start, start + n, dtype=np.int64)
        conn = self._conn
        with self._db_lock:
            conn.execute("BEGIN")
            try:
                old = []
                if replace:
                    old = [r[0] for r in self._rows_by_doc_ids([r[0] for r in recs], "id")]
                    for chunk in _chunks(old):
                        conn.execute("DELETE FROM docs WHERE id IN (%s)"
                                     % ",".join("?" * len(chunk)), chunk)
                try:
                    conn.executemany(
                        "INSERT INTO docs (id, doc_id, text, metadata) VALUES (?, ?, ?, ?)",
                        ((int(i), r[0], r[1], r[2]) for i, r in zip(ids, recs)))
                except sqlite3.IntegrityError:
                    conn.execute("ROLLBACK")
                    dup = [r[0] for r in self._rows_by_doc_ids([r[0] for r in recs], "doc_id")]
                    raise ValueError(
                        "id(s) already in the store: %s (use upsert() to replace)"
                        % ", ".join(repr(d) for d in dup[:5])) from None
                conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(start + n),))
                if self.rerank:
                    self._ensure_vector_file_writable()
                    self._vf.write_rows(start, x.astype(np.float16))
                self._index.add_with_ids(x, ids)
                try:
                    if old:
                        self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(old, np.int64)))
                except BaseException:
                    self._index.remove_ids(faiss.IDSelectorBatch(ids))
                    raise
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if self.rerank and self._vf is not None and self._vf.rows > start:
                    self._vf.truncate_rows(start)
                self._idarr = None
                raise
        self._next_id = start + n
        self._idarr = None
        self._version += 1
        if self._index_fields and len(self) >= 2 * max(self._analyzed_at, 500):
            self._analyze_locked()

    def _ensure_vector_file_writable(self):
        vf = self._vf
        if vf is None:
            self._open_new_vector_file()
            return
        size = os.fstat(vf.f.fileno()).st_size
        if size > self._next_id * self.dim * 2 or not vf.try_lock():
            # rows past ours (another store appended to this shared file, maybe saved
            # them) or another store holds the file: copy on write
            self._open_new_vector_file(rows_from=vf)

    def delete(self, ids) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were
        deleted."""
        doc_ids = self._check_id_list(ids)
        if not doc_ids:
            return 0
        with self._lock.write():
            conn = self._conn
            with self._db_lock:
                rows = [r[0] for r in self._rows_by_doc_ids(list(dict.fromkeys(doc_ids)), "id")]
                if not rows:
                    return 0
                conn.execute("BEGIN")
                try:
                    for chunk in _chunks(rows):
                        conn.execute("DELETE FROM docs WHERE id IN (%s)"
                                     % ",".join("?" * len(chunk)), chunk)
                    removed = self._index.remove_ids(
                        faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64)))
                    if removed != len(rows):
                        raise RuntimeError("FAISS removed %d of %d vectors" % (removed, len(rows)))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._idarr = None
                self._version += 1
            return len(rows)

    # ---------------------------------------------------------------- read path

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def version(self) -> int:
        """Number of writes (``add`` / ``upsert`` / ``delete`` that changed the store)
        applied since this object was created or loaded. It is bumped under the write
        lock, in the same critical section as the write, so a read (``search``, ``get``)
        that finds the same value before and after the call saw exactly that state."""
        return self._version

    @property
    def n_vectors(self) -> int:
        """Number of documents (nanoindex compatibility)."""
        return len(self)

    def __contains__(self, doc_id) -> bool:
        if not isinstance(doc_id, str):
            return False
        with self._lock.read():
            return bool(self._sql("SELECT 1 FROM docs WHERE doc_id = ?", (doc_id,)))

    def get(self, ids) -> list[dict]:
        """Documents by id, as ``{"id", "text", "metadata"}`` dicts in the order asked
        (unknown ids are skipped, repeated ids returned once)."""
        doc_ids = list(dict.fromkeys(self._check_id_list(ids)))
        with self._lock.read():
            with self._db_lock:
                rows = self._rows_by_doc_ids(doc_ids, "doc_id, text, metadata")
        found = {r[0]: r for r in rows}
        return [{"id": d, "text": found[d][1], "metadata": json.loads(found[d][2])}
                for d in doc_ids if d in found]

    def ids(self, filters: Mapping | Callable | None = None) -> list[str]:
        """Ids of all documents, or of those matching ``filters``, in insertion order."""
        with self._lock.read():
            if filters is None or (isinstance(filters, Mapping) and not filters):
                rows = self._sql("SELECT doc_id FROM docs ORDER BY id")
                return [r[0] for r in rows]
            match, _ = self._matching_ids(filters)
            match = np.sort(match).tolist()
            out = []
            with self._db_lock:
                for chunk in _chunks(match):
                    out.extend(r[0] for r in self._conn.execute(
                        "SELECT doc_id FROM docs WHERE id IN (%s) ORDER BY id"
                        % ",".join("?" * len(chunk)), chunk))
            return out

    def get_embeddings(self, ids) -> np.ndarray:
        """Vectors of documents by id (float32, shape (len(ids), dim)): the exact stored
        float16 vectors with ``rerank=True``, else the TurboQuant reconstruction.
        Unknown ids raise KeyError."""
        doc_ids = self._check_id_list(ids)
        with self._lock.read():
            with self._db_lock:
                rows = dict((r[0], r[1]) for r in self._rows_by_doc_ids(
                    list(dict.fromkeys(doc_ids)), "doc_id, id"))
            missing = [d for d in doc_ids if d not in rows]
            if missing:
                raise KeyError("unknown id(s): %s" % ", ".join(map(repr, missing[:5])))
            iids = np.array([rows[d] for d in doc_ids], dtype=np.int64)
            out = np.empty((len(iids), self.dim), dtype=np.float32)
            if self.rerank and self._vf is not None:
                out[:] = self._vf.mm[iids]
                return out
            if self._kind == "ivf" and self._ivf.direct_map.type == faiss.DirectMap.NoMap:
                raise RuntimeError("get_embeddings on an IVF store needs rerank=True")
            for j, i in enumerate(iids):
                out[j] = self._index.reconstruct(int(i))
        return out

    def _id_array(self) -> np.ndarray:
        arr = self._idarr
        if arr is None:
            with self._cache_lock:
                arr = self._idarr
                if arr is None:
                    arr = faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
                    if len(arr) > 1 and not (arr[1:] > arr[:-1]).all():
                        raise RuntimeError("NanoIndex: FAISS id map is not increasing")
                    self._idarr = arr
        return arr

    def _note_fields(self, fields) -> list:
        """Count filter uses per field; fields that should get an index now."""
        if self.auto_index is None or len(self) < _AUTO_INDEX_MIN_DOCS:
            return []
        out = []
        with self._cache_lock:
            for f in fields:
                if f in self._index_fields:
                    continue
                c = self._field_uses.get(f, 0) + 1
                self._field_uses[f] = c
                if c == self.auto_index:
                    out.append(f)
        return out

    def _matching_ids(self, flt):
        """(int ids of the documents matching a filter, fields it reads)."""
        if callable(flt) and not isinstance(flt, Mapping):
            keep = []
            with self._db_lock:
                cur = self._conn.execute("SELECT id, doc_id, text, metadata FROM docs")
                for iid, doc_id, text, meta in cur:
                    doc = {"id": doc_id, "text": text}
                    doc.update(json.loads(meta))
                    if flt(doc):
                        keep.append(iid)
            return np.asarray(keep, dtype=np.int64), ()
        compiled = _filters.compile_filter(flt)
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT id FROM docs WHERE %s" % compiled.where,
                compiled.params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), \
            compiled.fields

    @staticmethod
    def _selector(values: np.ndarray, universe: int):
        """An IDSelector over `values` (< universe); keep the returned tuple alive
        during the search (the bitmap is not copied)."""
        if len(values) * 64 >= universe:
            mask = np.zeros(universe, dtype=bool)
            mask[values] = True
            bits = np.packbits(mask, bitorder="little")
            return faiss.IDSelectorBitmap(universe, faiss.swig_ptr(bits)), bits
        return faiss.IDSelectorBatch(values), None

    def _faiss_search(self, q: np.ndarray, kk: int, match: np.ndarray | None):
        """(D, I) with I = document int ids, -1 padded."""
        if self._kind == "idmap":
            if match is None:
                return self._index.search(q, kk)
            idarr = self._id_array()
            pos = np.searchsorted(idarr, match)
            if len(pos) and (pos.max() >= len(idarr) or not (idarr[pos] == match).all()):
                raise RuntimeError("NanoIndex: SQLite and FAISS ids disagree")
            sel, keep = self._selector(pos, len(idarr))
            params = faiss.SearchParameters()
            params.sel = sel
            D, P = self._inner.search(q, kk, params=params)
            del keep
            I = np.where(P >= 0, idarr[np.clip(P, 0, None)], -1)
            return D, I
        # IVF: our ids are the IVF's own labels
        sel = keep = None
        if match is not None:
            sel, keep = self._selector(match, self._next_id)
        nlist = self._ivf.nlist
        nprobe = min(self.nprobe or 1, nlist)
        expected = min(kk, len(self) if match is None else len(match))
        D = I = None
        rows = np.arange(len(q))
        while True:
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            if sel is not None:
                params.sel = sel
            d, i = self._index.search(q[rows], kk, params=params)
            if D is None:
                D, I = d, i
            else:
                D[rows], I[rows] = d, i
            short = (I[rows] >= 0).sum(axis=1) < expected
            if not short.any() or nprobe >= nlist:
                break
            rows = rows[short]
            nprobe = min(nlist, nprobe * 4)
        del keep
        return D, I

    def _rerank(self, q: np.ndarray, I: np.ndarray, k: int):
        mm = self._vf.mm
        nq = len(q)
        outD = np.zeros((nq, k), dtype=np.float32)
        outI = np.full((nq, k), -1, dtype=np.int64)
        for r in range(nq):
            cand = I[r][I[r] >= 0]
            if not len(cand):
                continue
            v = np.asarray(mm[cand], dtype=np.float32)
            if self.metric == "l2":
                diff = v - q[r]
                s = np.einsum("ij,ij->i", diff, diff)
                order = np.argsort(s, kind="stable")[:k]
            else:
                # einsum, not BLAS: a 40x384 product is too small to pay for BLAS threads
                s = np.einsum("ij,j->i", v, q[r])
                order = np.argsort(-s, kind="stable")[:k]
            outD[r, : len(order)] = s[order]
            outI[r, : len(order)] = cand[order]
        return outD, outI

    def search(self, query, k: int = 10, filters: Mapping | Callable | None = None):
        """Top-k documents for one query vector (-> ``list[SearchResult]``) or for
        each row of a matrix (-> ``list[list[SearchResult]]``, one FAISS call).

        ``filters``: a filter dict (see :mod:`faiss_turboquant.filters`) or a callable
        ``f(doc) -> bool`` over ``{"id", "text", **metadata}``. Filtering happens
        before the vector search (FAISS ``IDSelector``), so ``k`` results come back
        whenever at least ``k`` documents match."""
        single = np.ndim(query) == 1
        q = self._check_vectors(query, "query")
        k = self._check_k(k)
        if filters is not None and not callable(filters) and not isinstance(filters, Mapping):
            raise ValueError("filters must be a dict or a callable, got %s"
                             % type(filters).__name__)
        new_indexes = []
        with self._lock.read():
            n = len(self)
            match = None
            if n and filters is not None and (callable(filters) or filters):
                match, used = self._matching_ids(filters)
                new_indexes = self._note_fields(used)
            if n == 0 or (match is not None and len(match) == 0):
                res = [[] for _ in range(len(q))]
            else:
                res = self._search_locked(q, k, match)
        if new_indexes:
            with self._lock.write():
                for f in new_indexes:
                    self._create_index_locked(f)
        return res[0] if single else res

    def _search_locked(self, q, k, match):
        """Search under the read lock; `match` = int ids allowed (None: all)."""
        avail = len(self) if match is None else len(match)
        kk = min(k * self.rerank_factor if self.rerank else k, avail)
        D, I = self._faiss_search(q, kk, match)
        if self.rerank:
            D, I = self._rerank(q, I, min(k, avail))
        return self._materialise(D, I)

    def _materialise(self, D: np.ndarray, I: np.ndarray) -> list[list[SearchResult]]:
        uniq = np.unique(I[I >= 0]).tolist()
        docs = {}
        with self._db_lock:
            for chunk in _chunks(uniq):
                for iid, doc_id, text, meta in self._conn.execute(
                        "SELECT id, doc_id, text, metadata FROM docs WHERE id IN (%s)"
                        % ",".join("?" * len(chunk)), chunk):
                    docs[iid] = (doc_id, text, meta)
        out = []
        for drow, irow in zip(D, I):
            hits = []
            for d, i in zip(drow.tolist(), irow.tolist()):
                if i < 0:
                    continue
                doc = docs.get(i)
                if doc is None:
                    raise RuntimeError("NanoIndex: FAISS returned id %d with no document" % i)
                hits.append(SearchResult(len(hits), float(d), doc[0], doc[1], json.loads(doc[2])))
            out.append(hits)
        return out

    # ---------------------------------------------------------------- stats

    def stats(self) -> dict:
        """Sizes and parameters (nanoindex keys n_vectors, dim, bits, qjl_m, memory_mb,
        compression_ratio, plus more). memory_mb counts what the FAISS index holds in
        RAM (codes + id map); documents live in SQLite and re-rank vectors in a file."""
        with self._lock.read():
            n = len(self)
            tq = _find_tq(self._index)
            code = int(tq.code_size) if tq is not None else None
            per_vec = (code or 0) + 8 + (8 if self._kind == "idmap" else 0)
            if self._kind == "idmap":
                per_vec += 32  # IDMap2 reverse map (hash table), approximate
            with self._db_lock:
                pc, ps = self._conn.execute("PRAGMA page_count").fetchone()[0], \
                    self._conn.execute("PRAGMA page_size").fetchone()[0]
            st = {
                "n_vectors": n,
                "dim": self.dim,
                "bits": int(tq.tq.nbits) if tq is not None else self.bits,
                "qjl_m": int(tq.tq.qjl_m) if tq is not None else self.qjl_m,
                "seed": self.seed,
                "metric": self.metric,
                "index_factory": self.index_factory,
                "index_type": type(self._index).__name__,
                "code_bytes_per_vector": code,
                "memory_mb": n * per_vec / 1e6,
                "compression_ratio": (4.0 * self.dim / code) if code else None,
                "sqlite_bytes": pc * ps,
                "rerank": self.rerank,
                "rerank_factor": self.rerank_factor,
                "vector_file": self._vf.path if self._vf is not None else None,
                "vector_file_rows": self._vf.rows if self._vf is not None else 0,
                "index_fields": list(self._index_fields),
                "path": self.path,
            }
            if self._ivf is not None:
                st["nlist"] = int(self._ivf.nlist)
                st["nprobe"] = self.nprobe
        return st

    def __repr__(self):
        return "NanoIndex(dim=%d, bits=%d, metric=%r, n=%d%s)" % (
            self.dim, self.bits, self.metric, len(self), ", rerank" if self.rerank else "")

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Release the SQLite connection, the vector file and the working directory."""
        with self._lock.write():
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike | None = None) -> str:
        """Save to ``path`` (a base path, a ``.json`` manifest path or a directory;
        default: the store's path). Writes ``<base>.json`` (manifest) and the data
        files it names, ``<base>.<token>.faiss``, ``<base>.<token>.sqlite`` and, with
        re-rank, ``<base>.<token>.vectors.f16``. Every file goes to a temporary name,
        is fsynced and renamed; the manifest is renamed last, so a crash at any point
        leaves the previous save loadable. Returns the manifest path. Searches keep
        running during a save; writers wait."""
        if path is None:
            if self.path is None:
                raise ValueError("save: no path given and the store has none")
            base = self.path
        else:
            base = _resolve_base(path)
        base = os.path.abspath(base)
        directory, bn = os.path.split(base)
        if not _FILE_RE.match(bn + ".json"):
            raise ValueError("save: unsupported file name %r" % bn)
        os.makedirs(directory, exist_ok=True)
        with self._save_lock, self._lock.read():
            manifest_path = self._save_locked(directory, bn)
        if self.path is None:
            self.path = base
        return manifest_path

    def _save_locked(self, directory: str, bn: str) -> str:
        manifest_path = os.path.join(directory, bn + ".json")
        previous = set()
        try:
            with open(manifest_path, "rb") as f:
                old = json.loads(f.read(_MANIFEST_MAX_BYTES))
            for v in (old.get("files") or {}).values():
                if isinstance(v, dict) and isinstance(v.get("name"), str) \
                        and _FILE_RE.match(v["name"]) and v["name"].startswith(bn + "."):
                    previous.add(v["name"])
        except (OSError, ValueError, AttributeError):
            pass
        token = secrets.token_hex(6)
        files = {}
        created = []
        try:
            # FAISS index (write_index itself writes a temp file, fsyncs and renames)
            fname = "%s.%s.faiss" % (bn, token)
            fpath = os.path.join(directory, fname)
            created.append(fpath)
            _write_index(self._index, fpath)
            files["faiss"] = {"name": fname, "size": os.path.getsize(fpath),
                              "sha256": _sha256_file(fpath)}
            # SQLite through the backup API
            sname = "%s.%s.sqlite" % (bn, token)
            spath = os.path.join(directory, sname)
            tmp = spath + ".tmp"
            created += [tmp, spath]
            dst = sqlite3.connect(tmp)
            try:
                with self._db_lock:
                    self._conn.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
            _fsync_path(tmp)
            os.replace(tmp, spath)
            files["sqlite"] = {"name": sname, "size": os.path.getsize(spath),
                               "sha256": _sha256_file(spath)}
            # re-rank vectors: share the live file when it already sits here
            if self.rerank:
                files["vectors"] = self._save_vectors(directory, bn, token, created)
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "kind": self._kind,
                "params": {
                    "dim": self.dim, "bits": self.bits, "qjl_m": self.qjl_m,
                    "seed": self.seed, "metric": self.metric,
                    "index_factory": self.index_factory, "rerank": self.rerank,
                    "rerank_factor": self.rerank_factor, "nprobe": self.nprobe,
                    "auto_index": self.auto_index,
                    "index_fields": list(self._index_fields),
                },
                "count": len(self),
                "next_id": self._next_id,
                "files": files,
                "saved_at": time.time(),
            }
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            tmp = manifest_path + ".tmp-" + token
            created.append(tmp)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, manifest_path)  # the commit point
            _fsync_path(directory, directory=True)
        except BaseException:
            for p in created:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise
        # the previous generation is no longer referenced; leftovers of interrupted
        # saves (older than a minute, so never another saver's work in progress) go too
        keep = {v["name"] for v in files.values()}
        for name in previous - keep:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        orphan = re.compile(r"^%s\.(json\.tmp-[0-9a-f]+|[0-9a-f]{12}\.(faiss|sqlite|vectors\.f16)"
                            r"(\.tmp(-[0-9a-f]+)?)?(-journal)?)$" % re.escape(bn))
        live = os.path.basename(self._vf.path) if self._vf is not None else None
        now = time.time()
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                if name in keep or name == live or not orphan.match(name):
                    continue
                fp = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    if now - os.path.getmtime(fp) > _ORPHAN_AGE_S:
                        os.unlink(fp)
        return manifest_path

    def _save_vectors(self, directory, bn, token, created) -> dict:
        vf = self._vf
        if vf is None:
            self._open_new_vector_file()
            vf = self._vf
        here = (os.path.dirname(os.path.abspath(vf.path)) == directory
                and os.path.basename(vf.path).startswith(bn + ".")
                and os.path.basename(vf.path).endswith(".vectors.f16")
                and not vf.temp and not vf.unlinked())
        if here:
            os.fsync(vf.f.fileno())
            vpath = vf.path
        else:
            vpath = os.path.join(directory, "%s.%s.vectors.f16" % (bn, token))
            created.append(vpath)
            vf.copy_to(vpath)
            if vf.temp:  # adopt the saved copy: later adds append next to the store
                nvf = _VectorFile(vpath, self.dim, vf.rows, create=False, temp=False)
                nvf.try_lock()
                self._swap_vector_file(nvf)
                created.remove(vpath)
        nbytes = vf.rows * self.dim * 2
        return {"name": os.path.basename(vpath), "rows": vf.rows,
                "sha256": _sha256_file(vpath, nbytes)}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NanoIndex":
        """Load a saved store (base path, ``.json`` manifest path or directory). The
        manifest is JSON and every data file is checked against its size and SHA-256
        before it is parsed; nothing is unpickled or executed. Any mismatch raises
        ValueError. The SQLite file is copied into a private working database; the
        saved files are never modified by later adds (re-rank vectors are appended
        past the saved rows)."""
        base = os.path.abspath(_resolve_base(path))
        manifest_path = base + ".json"
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(manifest_path)

        def read_manifest():
            with open(manifest_path, "rb") as f:
                return f.read(_MANIFEST_MAX_BYTES + 1)

        raw = read_manifest()
        for attempt in range(3):
            try:
                return cls._load_once(base, raw)
            except (ValueError, OSError):
                # a concurrent save may have replaced the manifest and removed the
                # files we were reading: retry with the new manifest
                try:
                    again = read_manifest()
                except OSError:
                    again = raw
                if attempt == 2 or again == raw:
                    raise
                raw = again

    @classmethod
    def _load_once(cls, base: str, raw: bytes) -> "NanoIndex":
        directory, bn = os.path.split(base)
        manifest_path = base + ".json"
        if len(raw) > _MANIFEST_MAX_BYTES:
            raise ValueError("manifest %s is too large" % manifest_path)
        try:
            m = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError("manifest %s is not valid JSON: %s" % (manifest_path, e)) from None
        p, files, count, next_id, kind = cls._check_manifest(m, bn)

        def data_path(key):
            return os.path.join(directory, files[key]["name"])

        for key in ("faiss", "sqlite"):
            fp = data_path(key)
            if not os.path.isfile(fp):
                raise ValueError("saved store is missing %s" % fp)
            if os.path.getsize(fp) != files[key]["size"] or \
                    _sha256_file(fp) != files[key]["sha256"]:
                raise ValueError("%s does not match the manifest (size or SHA-256): "
                                 "tampered or from another save" % fp)
        if p["rerank"]:
            v = files["vectors"]
            fp = data_path("vectors")
            if not os.path.isfile(fp):
                raise ValueError("saved store is missing %s" % fp)
            nbytes = v["rows"] * p["dim"] * 2
            if os.path.getsize(fp) < nbytes or _sha256_file(fp, nbytes) != v["sha256"]:
                raise ValueError("%s does not match the manifest (size or SHA-256)" % fp)

        self = cls.__new__(cls)
        self._init_common(p, base)
        try:
            self._load_sqlite(data_path("sqlite"), p, count, next_id)
            self._load_faiss(data_path("faiss"), p, kind, count)
            if p["rerank"]:
                self._res.vf = _VectorFile(data_path("vectors"), self.dim,
                                           files["vectors"]["rows"], create=False, temp=False)
                if self._res.vf.rows < next_id:
                    raise ValueError("vector file has fewer rows than documents ids")
        except BaseException:
            self._finalizer()
            raise
        return self

    @staticmethod
    def _check_manifest(m, bn: str):
        def bad(msg):
            return ValueError("invalid NanoIndex manifest: " + msg)

        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise bad("not a %s manifest" % FORMAT)
        if m.get("version") != FORMAT_VERSION:
            raise bad("unsupported format version %r" % (m.get("version"),))
        params = m.get("params")
        if not isinstance(params, dict):
            raise bad("params missing")
        want = {"dim", "bits", "qjl_m", "seed", "metric", "index_factory", "rerank",
                "rerank_factor", "nprobe", "index_fields", "auto_index"}
        if set(params) != want:
            raise bad("params keys %s" % sorted(params))
        if not isinstance(params["index_fields"], list):
            raise bad("index_fields must be a list")
        try:
            p = NanoIndex._check_params(dict(params))
        except (TypeError, ValueError) as e:
            raise bad(str(e)) from None
        if p["index_factory"] != params["index_factory"] or p["metric"] != params["metric"]:
            raise bad("non-canonical params")
        kind = m.get("kind")
        if kind not in ("idmap", "ivf"):
            raise bad("kind %r" % (kind,))
        count, next_id = m.get("count"), m.get("next_id")
        for name, v in (("count", count), ("next_id", next_id)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 1 << 62:
                raise bad("%s %r" % (name, v))
        if count > next_id:
            raise bad("count > next_id")
        files = m.get("files")
        need = {"faiss", "sqlite"} | ({"vectors"} if p["rerank"] else set())
        if not isinstance(files, dict) or set(files) != need:
            raise bad("files must be exactly %s" % sorted(need))
        suffix = {"faiss": ".faiss", "sqlite": ".sqlite", "vectors": ".vectors.f16"}
        for key, v in files.items():
            if not isinstance(v, dict):
                raise bad("files.%s" % key)
            name = v.get("name")
            if not isinstance(name, str) or not _FILE_RE.match(name) or ".." in name \
                    or not name.startswith(bn + ".") or not name.endswith(suffix[key]):
                raise bad("file name %r" % (name,))
            sha = v.get("sha256")
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise bad("files.%s.sha256" % key)
            sizekey = "rows" if key == "vectors" else "size"
            s = v.get(sizekey)
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise bad("files.%s.%s" % (key, sizekey))
        if p["rerank"] and files["vectors"]["rows"] < next_id:
            raise bad("vector rows < next_id")
        return p, files, count, next_id, kind

    def _load_sqlite(self, spath: str, p: dict, count: int, next_id: int):
        try:
            self._load_sqlite_checked(spath, p, count, next_id)
        except sqlite3.DatabaseError as e:
            raise ValueError("sqlite file is not a valid store database: %s" % e) from None

    def _load_sqlite_checked(self, spath: str, p: dict, count: int, next_id: int):
        src = sqlite3.connect(Path(spath).as_uri() + "?mode=ro", uri=True)
        try:
            # reading sqlite_master executes nothing; the schema is compared object by
            # object with ours before the data is used
            try:
                objs = src.execute(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
            except sqlite3.DatabaseError as e:
                raise ValueError("sqlite file is not a valid database: %s" % e) from None
            expected = {("table", "docs"): _SCHEMA_DOCS, ("table", "meta"): _SCHEMA_META,
                        ("index", "sqlite_autoindex_docs_1"): None,
                        ("index", "sqlite_autoindex_meta_1"): None}
            for f in p["index_fields"]:
                for name, sql in _index_sql(f):
                    expected[("index", name)] = sql
            got = {(t, n): s for t, n, _tbl, s in objs}
            if ("table", "sqlite_stat1") in got:  # statistics written by ANALYZE
                expected[("table", "sqlite_stat1")] = "CREATE TABLE sqlite_stat1(tbl,idx,stat)"
            if set(got) != set(expected):
                raise ValueError("sqlite schema does not match the store's: %s"
                                 % sorted(set(got) ^ set(expected)))
            for key, sql in expected.items():
                if _norm_sql(got[key]) != _norm_sql(sql):
                    raise ValueError("sqlite schema object %s differs from the store's" % (key,))
            with self._db_lock:
                src.backup(self._conn)
        finally:
            src.close()
        c = self._conn
        if c.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise ValueError("sqlite file fails its integrity check")
        n, mx = c.execute("SELECT count(*), max(id) FROM docs").fetchone()
        if n != count or (mx is not None and (mx >= next_id or
                                              c.execute("SELECT min(id) FROM docs").fetchone()[0] < 0)):
            raise ValueError("sqlite holds %d documents, the manifest says %d" % (n, count))
        bad = c.execute(
            "SELECT count(*) FROM docs WHERE typeof(doc_id) != 'text' OR doc_id = '' "
            "OR typeof(text) != 'text' OR json_valid(metadata) = 0 "
            "OR json_type(metadata) != 'object'").fetchone()[0]
        if bad:
            raise ValueError("sqlite holds %d malformed document rows" % bad)
        rows = c.execute("SELECT key, value FROM meta").fetchall()
        if rows != [("next_id", str(next_id))]:
            raise ValueError("sqlite meta table does not match the manifest")
        self._next_id = next_id
        self._index_fields = list(p["index_fields"])
        self._analyzed_at = n

    def _load_faiss(self, fpath: str, p: dict, kind: str, count: int):
        try:
            index = _read_index(fpath)
        except RuntimeError as e:
            raise ValueError("faiss file is not a valid index: %s" % e) from None
        owner, index = index, _downcast(index)
        if index.d != p["dim"] or index.metric_type != self._faiss_metric():
            raise ValueError("faiss index dimension/metric do not match the manifest")
        if kind == "idmap":
            if not isinstance(index, faiss.IndexIDMap2):
                raise ValueError("faiss file holds %s, expected IndexIDMap2"
                                 % type(index).__name__)
        elif faiss.try_extract_index_ivf(index) is None:
            raise ValueError("faiss file holds %s, expected an IVF index" % type(index).__name__)
        tq = _find_tq(index)
        if p["index_factory"] is None:
            if tq is None or type(_downcast(index.index)).__name__ != "IndexTurboQuant":
                raise ValueError("faiss file does not hold a TurboQuant index")
            if (tq.tq.nbits, tq.tq.qjl_m) != (p["bits"], p["qjl_m"]):
                raise ValueError("faiss TurboQuant parameters do not match the manifest")
        if tq is not None and int(tq.tq.seed) != p["seed"]:
            raise ValueError("faiss TurboQuant seed does not match the manifest")
        if index.ntotal != count:
            raise ValueError("faiss index holds %d vectors, the manifest says %d"
                             % (index.ntotal, count))
        self._set_index(owner, kind)
        if kind == "idmap":
            ids = self._id_array()
        else:
            invl = self._ivf.invlists
            parts = [faiss.rev_swig_ptr(invl.get_ids(i), invl.list_size(i)).copy()
                     for i in range(self._ivf.nlist) if invl.list_size(i)]
            ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        with self._db_lock:
            rows = self._conn.execute("SELECT id FROM docs ORDER BY id").fetchall()
        sq = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if len(sq) != len(ids) or not np.array_equal(sq, ids):
            raise ValueError("faiss ids and sqlite documents do not match")
