"""LangChain NanoVectorStore: the langchain-tests standard suite plus our own checks."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from faiss_turboquant.integrations.langchain import NanoVectorStore  # noqa: E402


class TestNanoVectorStoreStandard(VectorStoreIntegrationTests):
    """The standard suite from PyPI ``langchain-tests`` (sync and async)."""

    @pytest.fixture()
    def vectorstore(self):
        store = NanoVectorStore(embedding=self.get_embeddings())
        try:
            yield store
        finally:
            store.delete()


# --------------------------------------------------------------------------- own tests
class TopicEmbeddings(Embeddings):
    """Deterministic 16-d embeddings: one axis per topic word plus a little text noise.

    Texts sharing a topic are near-duplicates; texts of different topics are orthogonal,
    which makes MMR's behaviour predictable.
    """

    TOPICS = ["cat", "dog", "car", "bird"]
    DIM = 16

    def _embed(self, text: str) -> list[float]:
        v = np.zeros(self.DIM, dtype=np.float64)
        for i, topic in enumerate(self.TOPICS):
            if topic in text.lower():
                v[i] = 1.0
        rng = np.random.default_rng(sum(map(ord, text)) % (2**32))
        v[len(self.TOPICS):] = 0.02 * rng.standard_normal(self.DIM - len(self.TOPICS))
        return (v / np.linalg.norm(v)).tolist()

    def embed_documents(self, texts):
        return [self._embed(t) for t in texts]

    def embed_query(self, text):
        return self._embed(text)


TEXTS = [
    "cat sleeps on the sofa", "a cat chases a mouse", "the cat purrs",
    "dog barks at night", "the dog fetches the ball",
    "car on the highway", "red car in the garage",
    "bird sings at dawn", "cat and dog play together",
]
METAS = [
    {"animal": True, "year": 2019, "kind": "Pet", "id": 10},
    {"animal": True, "year": 2020, "kind": "pet", "id": 11},
    {"animal": True, "year": 2021, "kind": "pet", "id": 12},
    {"animal": True, "year": 2018, "kind": "pet", "id": 13},
    {"animal": True, "year": 2022, "kind": "pet", "id": 14},
    {"animal": False, "year": 2020, "kind": "vehicle", "id": 15},
    {"animal": False, "year": 2023, "kind": "vehicle", "id": 16},
    {"animal": True, "year": 2021, "kind": "wild", "id": 17},
    {"animal": True, "year": 2024, "kind": "pet", "id": 18},
]


@pytest.fixture()
def store():
    return NanoVectorStore.from_texts(TEXTS, TopicEmbeddings(), metadatas=METAS,
                                      ids=[f"d{i}" for i in range(len(TEXTS))])


def test_filters_mongo_and_seed_dialect(store):
    docs = store.similarity_search("cat", k=9, filter={"year": {"$gte": 2021}})
    assert docs and all(d.metadata["year"] >= 2021 for d in docs)
    assert {d.id for d in docs} == {"d2", "d4", "d6", "d7", "d8"}

    docs = store.similarity_search("car", k=9, filter={"kind": {"$in": ["vehicle", "wild"]}})
    assert {d.id for d in docs} == {"d5", "d6", "d7"}

    docs = store.similarity_search("cat", k=9, filter={"$or": [{"year": 2018}, {"kind": {"$eq": "wild"}}]})
    assert {d.id for d in docs} == {"d3", "d7"}

    docs = store.similarity_search("cat", k=9, filter={"$not": {"animal": {"$eq": True}}})
    assert {d.id for d in docs} == {"d5", "d6"}

    # nanoindex-rag dialect: ranges with _min/_max, list = any of
    docs = store.similarity_search("dog", k=9, filter={"year_min": 2020, "year_max": 2021, "kind": ["pet", "wild"]})
    assert {d.id for d in docs} == {"d1", "d2", "d7"}

    # a user metadata key called "id" is not confused with the document id
    docs = store.similarity_search("dog", k=9, filter={"id": {"$gt": 16}})
    assert {d.id for d in docs} == {"d7", "d8"}
    assert {d.metadata["id"] for d in docs} == {17, 18}

    # a Python callable sees the user's metadata (NanoIndex's callable fallback)
    docs = store.similarity_search("dog", k=9, filter=lambda m: m["id"] % 5 == 0 and m["animal"])
    assert {d.id for d in docs} == {"d0"}

    # pre-filtering: k results come back when enough documents match
    docs = store.similarity_search("car", k=3, filter={"kind": {"$eq": "pet"}})
    assert len(docs) == 3 and all(d.metadata["kind"].lower() == "pet" for d in docs)


def test_filter_on_vector_and_score_search(store):
    vec = TopicEmbeddings().embed_query("dog")
    hits = store.similarity_search_with_score_by_vector(vec, k=2, filter={"animal": {"$eq": True}})
    assert [d.id for d, _ in hits][:1] in (["d3"], ["d4"])
    assert hits[0][1] >= hits[1][1]
    docs = store.similarity_search_by_vector(vec, k=2, filter={"year": {"$lt": 2019}})
    assert [d.id for d in docs] == ["d3"]


def test_mmr_is_more_diverse_than_similarity(store):
    plain = store.similarity_search("cat", k=3)
    assert all("cat" in d.page_content for d in plain)
    mmr = store.max_marginal_relevance_search("cat", k=3, fetch_k=9, lambda_mult=0.3)
    assert len(mmr) == 3
    assert "cat" in mmr[0].page_content
    topics = {t for d in mmr for t in TopicEmbeddings.TOPICS if t in d.page_content}
    assert len(topics) >= 3, [d.page_content for d in mmr]
    by_vector = store.max_marginal_relevance_search_by_vector(
        TopicEmbeddings().embed_query("cat"), k=3, fetch_k=9, lambda_mult=0.3)
    assert [d.id for d in by_vector] == [d.id for d in mmr]
    # MMR honours filters
    mmr_f = store.max_marginal_relevance_search("cat", k=3, fetch_k=9, filter={"animal": {"$eq": False}})
    assert {d.id for d in mmr_f} == {"d5", "d6"}
    retr = store.as_retriever(search_type="mmr", search_kwargs={"k": 3, "fetch_k": 9, "lambda_mult": 0.3})
    assert [d.id for d in retr.invoke("cat")] == [d.id for d in mmr]


def test_retriever_score_threshold(store):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # relevance scores must stay inside [0, 1]
        scored = store.similarity_search_with_relevance_scores("bird", k=9)
    assert scored[0][0].id == "d7" and scored[0][1] > 0.9
    assert all(0.0 <= s <= 1.0 for _, s in scored)
    retr = store.as_retriever(search_type="similarity_score_threshold",
                              search_kwargs={"k": 5, "score_threshold": 0.8})
    docs = retr.invoke("bird")
    assert [d.id for d in docs] == ["d7"]
    retr = store.as_retriever(search_kwargs={"k": 2, "filter": {"kind": {"$eq": "vehicle"}}})
    assert {d.id for d in retr.invoke("bird")} == {"d5", "d6"}


def test_upsert_delete_get(store):
    assert [d.id for d in store.get_by_ids(["d8", "nope", "d0"])] == ["d8", "d0"]
    store.add_texts(["bird on a wire"], [{"kind": "wild"}], ids=["d0"])
    (doc,) = store.get_by_ids(["d0"])
    assert doc.page_content == "bird on a wire" and doc.metadata == {"kind": "wild"}
    store.delete(["d0", "d1", "missing"])
    assert store.get_by_ids(["d0", "d1"]) == []
    assert len(store.similarity_search("cat", k=20)) == len(TEXTS) - 2
    docs = store.add_documents([Document(page_content="dog house", metadata={"text": "x"}, id="new")])
    assert docs == ["new"]
    assert store.get_by_ids(["new"])[0].metadata == {"text": "x"}


async def test_async_variants(store):
    docs = await store.asimilarity_search("dog", k=2, filter={"kind": {"$eq": "pet"}})
    assert len(docs) == 2
    mmr = await store.amax_marginal_relevance_search("cat", k=2, fetch_k=9)
    assert len(mmr) == 2
    retr = store.as_retriever(search_type="similarity_score_threshold",
                              search_kwargs={"score_threshold": 0.9})
    assert [d.id for d in await retr.ainvoke("bird")] == ["d7"]


def test_save_local_load_local_round_trip(store, tmp_path):
    queries = ["cat", "dog", "car", "bird"]
    before = [store.similarity_search_with_score(q, k=4, filter={"year": {"$gte": 2019}}) for q in queries]
    store.save_local(tmp_path / "lc")
    loaded = NanoVectorStore.load_local(tmp_path / "lc", TopicEmbeddings())
    after = [loaded.similarity_search_with_score(q, k=4, filter={"year": {"$gte": 2019}}) for q in queries]
    assert [[d for d, _ in r] for r in after] == [[d for d, _ in r] for r in before]
    for ra, rb in zip(after, before):
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], rtol=1e-5, atol=1e-6)
    assert loaded.get_by_ids(["d3"])[0].metadata == METAS[3]
    # the loaded store keeps working incrementally
    loaded.add_texts(["dog in the rain"], ids=["x1"])
    assert loaded.similarity_search("dog in the rain", k=1)[0].id == "x1"


def test_load_local_in_new_process(store, tmp_path):
    store.save_local(tmp_path / "lc")
    expected = [d.id for d in store.similarity_search("dog", k=4)]
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from tests.test_langchain_store import TopicEmbeddings\n"
        "from faiss_turboquant.integrations.langchain import NanoVectorStore\n"
        "s = NanoVectorStore.load_local(%r, TopicEmbeddings())\n"
        "print(','.join(d.id for d in s.similarity_search('dog', k=4)))\n"
    ) % (str(__import__("pathlib").Path(__file__).resolve().parents[1]), str(tmp_path / "lc"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(",") == expected


def test_empty_store_and_peer_constructor_shape(tmp_path):
    emb = TopicEmbeddings()
    store = NanoVectorStore(emb)
    assert store.similarity_search("cat") == []
    assert store.max_marginal_relevance_search("cat") == []
    assert store.get_by_ids(["a"]) == []
    store.delete(["a"])
    store.save_local(tmp_path / "empty")
    again = NanoVectorStore.load_local(tmp_path / "empty", emb)
    assert again.similarity_search("cat") == []
    # nanoindex-rag shape: NanoVectorStore(embedding, index) with an existing NanoIndex
    from faiss_turboquant.store import NanoIndex

    idx = NanoIndex(dim=TopicEmbeddings.DIM, bits=4, index_fields=["n"])
    s2 = NanoVectorStore(emb, idx)
    s2.add_texts(["cat one", "car two"], [{"n": 1}, {"n": 2}])
    assert s2.similarity_search("car", k=1)[0].metadata == {"n": 2}
    assert len(idx) == 2
    assert [d.page_content for d in s2.similarity_search("cat", k=2, filter={"n": {"$gte": 2}})] == ["car two"]
    # NanoIndex options through the store; index_fields names user keys (escaped for "id")
    s3 = NanoVectorStore(emb, bits=3, index_fields=["id", "kind"])
    s3.add_texts(TEXTS, METAS)
    assert s3.index.bits == 3
    assert {d.metadata["id"] for d in s3.similarity_search("cat", k=9, filter={"id": {"$lt": 12}})} == {10, 11}
