"""LangChain vector store over :class:`faiss_turboquant.store.NanoIndex`.

Drop-in for ``nanoindex.integrations.langchain.NanoVectorStore`` (same class name,
``NanoVectorStore(embedding, index)``, ``from_texts(..., bits=, qjl_m=)``,
``save_local`` / ``load_local``) plus what the nanoindex-rag store lacks: incremental
``add_texts`` / ``add_documents`` with ids (adding an existing id replaces it),
``delete``, ``get_by_ids``, ``similarity_search_by_vector``, MMR, relevance scores and
therefore every ``as_retriever`` search type. Async variants come from LangChain.

    from faiss_turboquant.integrations.langchain import NanoVectorStore
    store = NanoVectorStore.from_texts(texts, embeddings, metadatas=metas)
    store.similarity_search("query", k=4, filter={"year": {"$gte": 2020}})

Scores: with ``distance_strategy="cosine"`` (the default) vectors are L2-normalised on
both sides and ``similarity_search_with_score`` returns the (approximate) cosine
similarity, higher is better; the relevance score used by
``similarity_search_with_relevance_scores`` and the ``similarity_score_threshold``
retriever is that cosine clipped to [0, 1] (LangChain's ``1 - cosine distance``).
With ``distance_strategy="max_inner_product"`` vectors are stored as given, the score is
the raw inner product and the relevance score is ``sigmoid(score)``.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "faiss_turboquant.integrations.langchain needs langchain-core: "
        "pip install 'faiss_turboquant[langchain]'"
    ) from exc

from ..store import NanoIndex
from . import escape_filter, escape_metadata, escape_path, unescape_metadata

__all__ = ["NanoVectorStore", "DistanceStrategy"]


class DistanceStrategy:
    COSINE = "cosine"
    MAX_INNER_PRODUCT = "max_inner_product"


_STRATEGIES = (DistanceStrategy.COSINE, DistanceStrategy.MAX_INNER_PRODUCT)
_CONFIG_SUFFIX = ".langchain.json"
_FORMAT = 1
# NanoIndex constructor arguments a caller may pass through NanoVectorStore / from_texts.
_INDEX_KWARGS = ("bits", "qjl_m", "seed", "index_factory", "rerank", "rerank_factor", "path",
                 "index_fields", "nprobe")


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class NanoVectorStore(VectorStore):
    """LangChain ``VectorStore`` backed by a TurboQuant ``NanoIndex``.

    Args:
        embedding: the LangChain ``Embeddings`` used for texts and queries.
        index: an existing ``NanoIndex``. When omitted, one is created on the first add
            with ``dim`` taken from the first embedding and ``index_kwargs``
            (``bits``, ``qjl_m``, ``seed``, ``index_factory``, ``rerank``,
            ``rerank_factor``, ``path``, ``index_fields``, ``nprobe``).
        distance_strategy: ``"cosine"`` (normalise, default) or ``"max_inner_product"``.
        relevance_score_fn: overrides the relevance mapping described in the module doc.
    """

    def __init__(
        self,
        embedding: Embeddings,
        index: NanoIndex | None = None,
        *,
        distance_strategy: str = DistanceStrategy.COSINE,
        relevance_score_fn: Callable[[float], float] | None = None,
        **index_kwargs: Any,
    ) -> None:
        if distance_strategy not in _STRATEGIES:
            raise ValueError(f"distance_strategy must be one of {_STRATEGIES}, got {distance_strategy!r}")
        unknown = set(index_kwargs) - set(_INDEX_KWARGS) - {"dim"}
        if unknown:
            raise TypeError(f"unexpected arguments: {sorted(unknown)}")
        self.embedding = embedding
        self.index = index
        self.distance_strategy = distance_strategy
        self.override_relevance_score_fn = relevance_score_fn
        self._index_kwargs = dict(index_kwargs)

    # ------------------------------------------------------------------ helpers
    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def _prepare(self, vectors: Any) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if self.distance_strategy == DistanceStrategy.COSINE:
            x = _normalize(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _ensure_index(self, dim: int) -> NanoIndex:
        if self.index is None:
            kwargs = dict(self._index_kwargs)
            want = kwargs.pop("dim", None)
            if want is not None and int(want) != dim:
                raise ValueError(f"embedding has dim {dim}, store was configured with dim={want}")
            if kwargs.get("index_fields"):
                kwargs["index_fields"] = [escape_path(f) for f in kwargs["index_fields"]]
            self.index = NanoIndex(dim=dim, metric="ip", **kwargs)
        return self.index

    def _is_empty(self) -> bool:
        return self.index is None or len(self.index) == 0

    @staticmethod
    def _to_document(rec_id: str, text: str, metadata: dict | None) -> Document:
        return Document(id=rec_id, page_content=text or "", metadata=unescape_metadata(metadata))

    def _search(self, vector: Sequence[float], k: int, filter: Any) -> list:
        if self._is_empty() or k <= 0:
            return []
        q = self._prepare(vector).reshape(-1)
        return self.index.search(q, k=int(k), filters=escape_filter(filter))

    @staticmethod
    def _pop_filter(kwargs: dict) -> Any:
        flt = kwargs.pop("filter", None)
        alt = kwargs.pop("filters", None)
        return flt if flt is not None else alt

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add texts. An id that is already stored is replaced (upsert)."""
        texts = list(texts)
        if not texts:
            return []
        return self.add_embeddings(
            list(zip(texts, self.embedding.embed_documents(texts))), metadatas, ids=ids
        )

    def add_embeddings(
        self,
        text_embeddings: Iterable[tuple[str, Sequence[float]]],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add pre-computed ``(text, embedding)`` pairs (same id semantics as ``add_texts``)."""
        pairs = list(text_embeddings)
        if not pairs:
            return []
        n = len(pairs)
        metadatas = list(metadatas) if metadatas is not None else [{}] * n
        if len(metadatas) != n:
            raise ValueError(f"{len(metadatas)} metadatas for {n} texts")
        ids = list(ids) if ids is not None else [None] * n
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} texts")
        ids = [str(i) if i is not None and i != "" else uuid.uuid4().hex for i in ids]

        # Within one call the last occurrence of an id wins.
        last = {doc_id: pos for pos, doc_id in enumerate(ids)}
        keep = sorted(last.values())
        vectors = self._prepare([pairs[p][1] for p in keep])
        records = [
            {**escape_metadata(metadatas[p]), "id": ids[p], "text": pairs[p][0]} for p in keep
        ]
        index = self._ensure_index(vectors.shape[1])
        index.upsert(vectors, records)
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by id (missing ids are ignored). ``ids=None`` deletes everything."""
        if ids is None:
            if self.index is not None and len(self.index):
                self.index.delete(self._all_ids())
            return True
        if self.index is None or not ids:
            return True
        self.index.delete([str(i) for i in ids])
        return True

    def _all_ids(self) -> list[str]:
        index = self.index
        ids = getattr(index, "ids", None)
        if callable(ids):
            return list(ids())
        # NanoIndex has no public id listing: a search with k = size returns every id.
        probe = np.full(int(index.dim), 1.0 / math.sqrt(int(index.dim)), dtype=np.float32)
        return [h.id for h in index.search(probe, k=len(index))]

    # ------------------------------------------------------------------ reading
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if self.index is None or not ids:
            return []
        wanted = [str(i) for i in ids]
        by_id = {rec["id"]: rec for rec in self.index.get(wanted)}
        return [
            self._to_document(i, by_id[i].get("text", ""), by_id[i].get("metadata"))
            for i in dict.fromkeys(wanted)
            if i in by_id
        ]

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: Any = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        flt = filter if filter is not None else kwargs.pop("filters", None)
        return [
            (self._to_document(r.id, r.text, r.metadata), float(r.score))
            for r in self._search(embedding, k, flt)
        ]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Any = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents with their similarity (cosine or inner product; higher is better)."""
        flt = filter if filter is not None else kwargs.pop("filters", None)
        if self._is_empty():
            return []
        return self.similarity_search_with_score_by_vector(
            self.embedding.embed_query(query), k, filter=flt
        )

    def similarity_search(
        self, query: str, k: int = 4, filter: Any = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Any = None, **kwargs: Any
    ) -> list[Document]:
        return [
            doc
            for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter, **kwargs)
        ]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self.override_relevance_score_fn is not None:
            return self.override_relevance_score_fn
        if getattr(self.index, "metric", "ip") == "l2":
            # a NanoIndex(metric="l2") passed in: scores are squared distances, which
            # for unit vectors are 2 - 2 * cosine
            return _squared_l2_relevance
        if self.distance_strategy == DistanceStrategy.COSINE:
            return _cosine_relevance
        return _sigmoid_relevance

    # ---------------------------------------------------------------------- MMR
    def _candidate_vectors(self, results: list) -> np.ndarray:
        """Vectors of search candidates, for MMR: ``NanoIndex.get_embeddings`` (exact
        float16 copies with ``rerank=True``, else the TurboQuant reconstruction)."""
        getter = getattr(self.index, "get_embeddings", None)
        if getter is not None:
            try:
                return self._prepare(getter([r.id for r in results]))
            except (RuntimeError, KeyError):  # IVF without re-rank keeps no vectors
                pass
        # Fallback: re-embed the candidate texts (exact, costs fetch_k embeddings).
        return self._prepare(self.embedding.embed_documents([r.text for r in results]))

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Any = None,
        **kwargs: Any,
    ) -> list[Document]:
        flt = filter if filter is not None else kwargs.pop("filters", None)
        results = self._search(embedding, max(fetch_k, k), flt)
        if not results:
            return []
        vectors = self._candidate_vectors(results)
        query = self._prepare(embedding).reshape(-1)
        chosen = maximal_marginal_relevance(query, list(vectors), lambda_mult=lambda_mult, k=k)
        return [self._to_document(results[i].id, results[i].text, results[i].metadata) for i in chosen]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Any = None,
        **kwargs: Any,
    ) -> list[Document]:
        flt = filter if filter is not None else kwargs.pop("filters", None)
        if self._is_empty():
            return []
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, filter=flt
        )

    # ------------------------------------------------------------- construction
    @classmethod
    def _split_kwargs(cls, kwargs: dict) -> tuple[dict, dict]:
        index_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _INDEX_KWARGS or k == "dim"}
        store_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in ("distance_strategy", "relevance_score_fn")
        }
        return index_kwargs, store_kwargs

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> "NanoVectorStore":
        """Build a store from texts. ``bits``, ``qjl_m``, ``seed``, ``index_factory``,
        ``rerank``, ``rerank_factor``, ``path``, ``index_fields``, ``nprobe`` go to
        ``NanoIndex``; ``distance_strategy``
        and ``relevance_score_fn`` to the store."""
        index_kwargs, store_kwargs = cls._split_kwargs(kwargs)
        store = cls(embedding, **store_kwargs, **index_kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def from_embeddings(
        cls,
        text_embeddings: list[tuple[str, list[float]]],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> "NanoVectorStore":
        index_kwargs, store_kwargs = cls._split_kwargs(kwargs)
        store = cls(embedding, **store_kwargs, **index_kwargs)
        store.add_embeddings(text_embeddings, metadatas, ids=ids)
        return store

    # ---------------------------------------------------------------- persistence
    def save_local(self, folder_path: str | os.PathLike, index_name: str = "index") -> None:
        """Write ``NanoIndex.save(folder/index_name)`` plus a small JSON settings file.

        Nothing is pickled: ``load_local`` reads JSON, SQLite and FAISS index files only.
        """
        folder = Path(folder_path)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format": _FORMAT,
            "distance_strategy": self.distance_strategy,
            "key_prefix": "_u_",
            "empty": self.index is None,
            "index_kwargs": {k: v for k, v in self._index_kwargs.items() if k != "path"},
        }
        if self.index is not None:
            self.index.save(folder / index_name)
        tmp = folder / (index_name + _CONFIG_SUFFIX + ".tmp")
        tmp.write_text(json.dumps(config, indent=1))
        os.replace(tmp, folder / (index_name + _CONFIG_SUFFIX))

    @classmethod
    def load_local(
        cls,
        folder_path: str | os.PathLike,
        embeddings: Embeddings,
        index_name: str = "index",
        *,
        allow_dangerous_deserialization: bool = False,
        **kwargs: Any,
    ) -> "NanoVectorStore":
        """Load a store written by ``save_local``. Safe by construction (no pickle), so
        ``allow_dangerous_deserialization`` is accepted for API compatibility and ignored."""
        folder = Path(folder_path)
        config_path = folder / (index_name + _CONFIG_SUFFIX)
        config: dict[str, Any] = {}
        if config_path.exists():
            config = json.loads(config_path.read_text())
            if not isinstance(config, dict) or config.get("format") != _FORMAT:
                raise ValueError(f"{config_path}: unsupported settings file")
        strategy = kwargs.pop("distance_strategy", config.get("distance_strategy", DistanceStrategy.COSINE))
        index_kwargs = dict(config.get("index_kwargs") or {})
        index = None if config.get("empty") else NanoIndex.load(folder / index_name)
        return cls(embeddings, index, distance_strategy=strategy, **index_kwargs, **kwargs)


def _cosine_relevance(score: float) -> float:
    return min(1.0, max(0.0, float(score)))


def _squared_l2_relevance(distance: float) -> float:
    return min(1.0, max(0.0, 1.0 - float(distance) / 2.0))


def _sigmoid_relevance(score: float) -> float:
    s = float(score)
    if s >= 0:
        return 1.0 / (1.0 + math.exp(-s))
    e = math.exp(s)
    return e / (1.0 + e)
