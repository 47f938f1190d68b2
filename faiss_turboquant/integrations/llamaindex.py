"""LlamaIndex vector store over :class:`faiss_turboquant.store.NanoIndex`.

Drop-in for ``nanoindex.integrations.llamaindex.NanoVectorStore``
(``NanoVectorStore(dim=..., bits=4, qjl_m=...)``, ``persist`` / ``from_persist_path``), plus
incremental ``add``, ``delete`` by ref_doc_id, ``delete_nodes``, ``get_nodes``, ``clear``
and real ``MetadataFilters`` (all operators, AND / OR / NOT, nesting) evaluated by
``NanoIndex`` before the vector search (pre-filtering: ``similarity_top_k`` results come
back whenever that many nodes match).

    from llama_index.core import StorageContext, VectorStoreIndex
    from faiss_turboquant.integrations.llamaindex import NanoVectorStore

    store = NanoVectorStore()                     # dim taken from the first node
    ctx = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(docs, storage_context=ctx)
    index.as_retriever(similarity_top_k=5, filters=MetadataFilters(...)).retrieve("...")

Nodes are stored whole (``stores_text=True``): text, metadata and relationships come back
from the store, so the docstore is not needed. Similarities are cosine when
``normalize=True`` (default), raw inner products otherwise.

Filter translation (LlamaIndex -> NanoIndex Mongo dialect, run in SQL): ``EQ NE GT GTE
LT LTE IN NIN CONTAINS ANY ALL TEXT_MATCH`` map to ``$eq $ne $gt $gte $lt $lte $in $nin
$contains $any $all $text_match`` (typed, exact comparisons; ``CONTAINS`` / ``ANY`` /
``ALL`` test the elements of a list field) and AND / OR / NOT to ``$and`` / ``$or`` /
``$not`` + ``$or`` (NOT = none of the filters match, as in LlamaIndex's reference
implementation). ``TEXT_MATCH_INSENSITIVE`` and ``IS_EMPTY`` (missing, null, ``""`` or
``[]``) have no form in the dialect; a filter tree that uses one of them is passed to
``NanoIndex`` as a Python predicate over the node's metadata instead (correct, but
evaluated row by row).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode, MetadataMode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "faiss_turboquant.integrations.llamaindex needs llama-index-core: "
        "pip install 'faiss_turboquant[llamaindex]'"
    ) from exc

from ..store import NanoIndex
from . import escape_filter, escape_metadata, escape_path, unescape_metadata

__all__ = ["NanoVectorStore", "metadata_filters_to_dict", "metadata_filters_to_predicate"]

_CONFIG_SUFFIX = ".llamaindex.json"
_FORMAT = 1

_SQL_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.CONTAINS: "$contains",
    FilterOperator.ANY: "$any",
    FilterOperator.ALL: "$all",
    FilterOperator.TEXT_MATCH: "$text_match",
}


# ----------------------------------------------------------------------------- filters
def _needs_predicate(filters: MetadataFilters) -> bool:
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            if _needs_predicate(f):
                return True
        elif f.operator not in _SQL_OPS:
            return True
    return False


def metadata_filters_to_dict(filters: MetadataFilters) -> dict:
    """``MetadataFilters`` -> NanoIndex Mongo-style filter over user metadata keys.

    Raises ``ValueError`` for operators without a Mongo form (see module doc)."""
    parts: list[dict] = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            if f.filters:
                parts.append(metadata_filters_to_dict(f))
            continue
        op = _SQL_OPS.get(f.operator)
        if op is None:
            raise ValueError(f"operator {f.operator.value!r} has no Mongo-style form")
        value = f.value
        if op in ("$in", "$nin", "$any", "$all") and not isinstance(value, (list, tuple)):
            value = [value]
        parts.append({f.key: {op: value}})
    condition = filters.condition or FilterCondition.AND
    if not parts:
        return {}
    if condition == FilterCondition.AND:
        return parts[0] if len(parts) == 1 else {"$and": parts}
    if condition == FilterCondition.OR:
        return parts[0] if len(parts) == 1 else {"$or": parts}
    if condition == FilterCondition.NOT:
        return {"$not": parts[0] if len(parts) == 1 else {"$or": parts}}
    raise ValueError(f"unsupported filter condition {condition!r}")


def _match_one(f: MetadataFilter, metadata: Mapping[str, Any]) -> bool:
    value = metadata.get(f.key)
    op = f.operator
    if op == FilterOperator.IS_EMPTY:
        return value is None or value == "" or value == []
    if value is None:
        return op in (FilterOperator.NE, FilterOperator.NIN)
    try:
        if op == FilterOperator.EQ:
            return value == f.value
        if op == FilterOperator.NE:
            return value != f.value
        if op == FilterOperator.GT:
            return value > f.value
        if op == FilterOperator.GTE:
            return value >= f.value
        if op == FilterOperator.LT:
            return value < f.value
        if op == FilterOperator.LTE:
            return value <= f.value
        if op == FilterOperator.IN:
            return value in f.value
        if op == FilterOperator.NIN:
            return value not in f.value
        if op == FilterOperator.CONTAINS:
            return isinstance(value, (list, tuple, str)) and f.value in value
        if op == FilterOperator.ANY:
            return isinstance(value, (list, tuple)) and any(v in value for v in f.value)
        if op == FilterOperator.ALL:
            return isinstance(value, (list, tuple)) and all(v in value for v in f.value)
        if op == FilterOperator.TEXT_MATCH:
            return isinstance(value, str) and str(f.value) in value
        if op == FilterOperator.TEXT_MATCH_INSENSITIVE:
            return isinstance(value, str) and str(f.value).lower() in value.lower()
    except TypeError:  # e.g. "abc" > 3
        return False
    raise ValueError(f"unsupported filter operator {op!r}")


def metadata_filters_to_predicate(filters: MetadataFilters) -> Callable[[Mapping[str, Any]], bool]:
    """``MetadataFilters`` -> Python predicate over a (user) metadata dict. Supports every
    LlamaIndex operator and nesting; used when the Mongo form is not enough."""

    def evaluate(fs: MetadataFilters, metadata: Mapping[str, Any]) -> bool:
        results = (
            evaluate(f, metadata) if isinstance(f, MetadataFilters) else _match_one(f, metadata)
            for f in fs.filters
        )
        condition = fs.condition or FilterCondition.AND
        if condition == FilterCondition.AND:
            return all(results)
        if condition == FilterCondition.OR:
            return any(results)
        if condition == FilterCondition.NOT:
            return not any(results)
        raise ValueError(f"unsupported filter condition {condition!r}")

    def predicate(metadata: Mapping[str, Any]) -> bool:
        return evaluate(filters, metadata)

    return predicate


def _and(*parts: Any) -> Any:
    parts = [p for p in parts if p]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    if any(callable(p) for p in parts):
        preds = [p if callable(p) else _dict_predicate(p) for p in parts]
        return lambda m: all(p(m) for p in preds)
    return {"$and": list(parts)}


def _dict_predicate(flt: dict) -> Callable[[Mapping[str, Any]], bool]:
    """A NanoIndex filter dict as a predicate over the store's document dict, so that it
    can be ANDed with a predicate filter."""
    from ..filters import matches

    return lambda doc: matches(flt, doc)


# ------------------------------------------------------------------------------- store
class NanoVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store backed by a TurboQuant ``NanoIndex``.

    Args:
        dim: vector dimension; ``None`` (default) takes it from the first node added.
        bits, qjl_m, seed, index_factory, rerank, rerank_factor, path, index_fields, nprobe:
            ``NanoIndex`` options (``index_fields``: metadata fields to give SQLite
            indexes, e.g. ``["ref_doc_id"]``).
        normalize: L2-normalise node and query embeddings (cosine similarity).
        index: wrap an existing ``NanoIndex`` instead of creating one.
    """

    stores_text: bool = True
    flat_metadata: bool = False

    dim: Optional[int] = None
    bits: int = 4
    qjl_m: int = 0
    seed: int = 42
    index_factory: Optional[str] = None
    rerank: bool = False
    rerank_factor: int = 4
    path: Optional[str] = None
    index_fields: Optional[List[str]] = None
    nprobe: Optional[int] = None
    normalize: bool = True

    _index: Any = PrivateAttr(default=None)

    def __init__(
        self,
        dim: Optional[int] = None,
        bits: int = 4,
        qjl_m: int = 0,
        *,
        index: Optional[NanoIndex] = None,
        **kwargs: Any,
    ) -> None:
        if index is not None and dim is None:
            dim = getattr(index, "dim", None)
        super().__init__(dim=dim, bits=bits, qjl_m=qjl_m, **kwargs)
        self._index = index

    @classmethod
    def class_name(cls) -> str:
        return "NanoVectorStore"

    @property
    def client(self) -> Any:
        """The underlying ``NanoIndex`` (``None`` until the first add)."""
        return self._index

    # -------------------------------------------------------------------- helpers
    def _index_kwargs(self) -> dict:
        return dict(bits=self.bits, qjl_m=self.qjl_m, seed=self.seed, metric="ip",
                    index_factory=self.index_factory, rerank=self.rerank,
                    rerank_factor=self.rerank_factor, path=self.path,
                    index_fields=[escape_path(f) for f in self.index_fields or []],
                    nprobe=self.nprobe)

    def _ensure_index(self, dim: int) -> NanoIndex:
        if self._index is None:
            if self.dim is not None and self.dim != dim:
                raise ValueError(f"node embeddings have dim {dim}, store was created with dim={self.dim}")
            self.dim = dim
            self._index = NanoIndex(dim=dim, **self._index_kwargs())
        return self._index

    def _prepare(self, vectors: Any) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _empty(self) -> bool:
        return self._index is None or len(self._index) == 0

    @staticmethod
    def _store_filter(filters: Optional[MetadataFilters]) -> Any:
        """MetadataFilters -> what NanoIndex.search accepts (escaped keys)."""
        if filters is None or not filters.filters:
            return None
        if _needs_predicate(filters):
            return escape_filter(metadata_filters_to_predicate(filters))
        return escape_filter(metadata_filters_to_dict(filters)) or None

    def _to_node(self, rec_id: str, text: str, metadata: Optional[Mapping[str, Any]]) -> BaseNode:
        meta = unescape_metadata(metadata)
        try:
            node = metadata_dict_to_node(meta, text=text)
        except ValueError:  # a record written by plain NanoIndex.add, not by this store
            from llama_index.core.schema import TextNode

            node = TextNode(text=text or "", id_=rec_id, metadata=meta)
        node.embedding = None
        return node

    def _matching_ids(self, flt: Any) -> List[str]:
        """Ids of every document that passes ``flt`` (``None``: all documents)."""
        if self._empty():
            return []
        index = self._index
        ids = getattr(index, "ids", None)
        if callable(ids):
            return list(ids(filters=flt))
        # NanoIndex has no public id listing: a pre-filtered search with k = size
        # returns every matching id.
        dim = int(index.dim)
        probe = np.full(dim, 1.0 / np.sqrt(dim), dtype=np.float32)
        return [h.id for h in index.search(probe, k=len(index), filters=flt)]

    # ---------------------------------------------------------------------- write
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Add nodes with embeddings; a node id that is already stored is replaced."""
        nodes = list(nodes)
        if not nodes:
            return []
        vectors = self._prepare([node.get_embedding() for node in nodes])
        last = {node.node_id: pos for pos, node in enumerate(nodes)}
        keep = sorted(last.values())
        records = []
        for pos in keep:
            node = nodes[pos]
            meta = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
            records.append({
                **escape_metadata(meta),
                "id": node.node_id,
                "text": node.get_content(metadata_mode=MetadataMode.NONE),
            })
        self._ensure_index(vectors.shape[1]).upsert(vectors[keep], records)
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose source document is ``ref_doc_id``."""
        ids = self._matching_ids(escape_filter({"ref_doc_id": {"$eq": ref_doc_id}}))
        if ids:
            self._index.delete(ids)

    def delete_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
        **delete_kwargs: Any,
    ) -> None:
        ids = [n.node_id for n in self.get_nodes(node_ids, filters)] if filters else node_ids
        if ids and self._index is not None:
            self._index.delete(list(ids))

    def clear(self) -> None:
        ids = self._matching_ids(None)
        if ids:
            self._index.delete(ids)

    # ----------------------------------------------------------------------- read
    def get_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
    ) -> List[BaseNode]:
        if self._empty():
            return []
        if node_ids is None:
            node_ids = self._matching_ids(self._store_filter(filters))
            filters = None
        records = self._index.get(list(node_ids))
        if filters is not None and filters.filters:
            allowed = set(self._matching_ids(self._store_filter(filters)))
            records = [r for r in records if r["id"] in allowed]
        by_id = {r["id"]: r for r in records}
        return [
            self._to_node(i, by_id[i].get("text", ""), by_id[i].get("metadata"))
            for i in dict.fromkeys(node_ids)
            if i in by_id
        ]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise ValueError(f"NanoVectorStore supports only the default query mode, got {query.mode}")
        if query.query_embedding is None:
            raise ValueError("NanoVectorStore.query needs query.query_embedding")
        if self._empty() or query.similarity_top_k <= 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])

        flt = self._store_filter(query.filters)
        if query.doc_ids:
            flt = _and(flt, escape_filter({"ref_doc_id": {"$in": list(query.doc_ids)}}))
        if query.node_ids:
            # "id" is NanoIndex's document-id column (added after escaping user keys)
            flt = _and(flt, {"id": {"$in": [str(i) for i in query.node_ids]}})

        q = self._prepare(query.query_embedding).reshape(-1)
        hits = self._index.search(q, k=int(query.similarity_top_k), filters=flt)
        return VectorStoreQueryResult(
            nodes=[self._to_node(h.id, h.text, h.metadata) for h in hits],
            similarities=[float(h.score) for h in hits],
            ids=[h.id for h in hits],
        )

    # ---------------------------------------------------------------- persistence
    def _config(self) -> dict:
        return {
            "format": _FORMAT,
            "empty": self._index is None,
            "params": {k: getattr(self, k) for k in (
                "dim", "bits", "qjl_m", "seed", "index_factory", "rerank", "rerank_factor",
                "index_fields", "nprobe", "normalize", "flat_metadata")},
        }

    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Save to ``persist_path`` (``NanoIndex.save``) plus ``<persist_path>.llamaindex.json``.
        Nothing is pickled."""
        if fs is not None:
            raise NotImplementedError("NanoVectorStore persists to the local file system only")
        path = Path(persist_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._index is not None:
            self._index.save(path)
        tmp = Path(str(path) + _CONFIG_SUFFIX + ".tmp")
        tmp.write_text(json.dumps(self._config(), indent=1))
        os.replace(tmp, str(path) + _CONFIG_SUFFIX)

    @classmethod
    def from_persist_path(cls, persist_path: str, fs: Any = None, **kwargs: Any) -> "NanoVectorStore":
        if fs is not None:
            raise NotImplementedError("NanoVectorStore persists to the local file system only")
        config_path = Path(str(persist_path) + _CONFIG_SUFFIX)
        params: dict = {}
        empty = False
        if config_path.exists():
            config = json.loads(config_path.read_text())
            if not isinstance(config, dict) or config.get("format") != _FORMAT:
                raise ValueError(f"{config_path}: unsupported settings file")
            params = dict(config.get("params") or {})
            empty = bool(config.get("empty"))
        params.update(kwargs)
        index = None if empty else NanoIndex.load(persist_path)
        return cls(index=index, **params)
