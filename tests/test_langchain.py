"""The LangChain adapter: same encoders, stores, scores and checks as the Haystack side, through the store contract."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from haystack import Document as HaystackDocument
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever as HaystackRetriever
from haystack_integrations.components.retrievers.dual_encoder import StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore
from langchain_core.documents import Document
from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderRetriever, DualEncoderVectorStore
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

from dual_encoder.embedded import open_embedded_store
from dual_encoder.errors import (
    ConfigurationError,
    DimensionMismatchError,
    EmptyTextError,
    EncoderMismatchError,
    FilterError,
)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = {
    "tides": ("Tides are caused by the Moon's gravity pulling on the oceans.", {"topic": "sea", "year": 2019}),
    "coral": ("Corals bleach when the water stays too warm for weeks.", {"topic": "sea", "year": 2021}),
    "bread": ("A sourdough starter needs flour and water every day.", {"topic": "food", "year": 2020}),
    "stars": ("Stars shine because of nuclear fusion in their cores.", {"topic": "space", "year": 2018}),
    "mars": ("Dry river valleys show that water once flowed on Mars.", {"topic": "space", "year": 2022}),
}
QUESTIONS = ["What pulls the oceans?", "how to bake bread", "is there water on other planets"]
WEAVIATE_META = {"topic": "text", "year": "int"}


@pytest.fixture(scope="module")
def embeddings():
    return DualEncoderEmbeddings("all-MiniLM-L6-v2")


@pytest.fixture
def vectorstore(embeddings):
    vectorstore = DualEncoderVectorStore.embedded(embeddings)
    add_all(vectorstore)
    return vectorstore


@pytest.fixture
def closing():
    """Closes the Weaviate stores a test opens (their clients hold connections)."""
    opened = []
    yield lambda store: opened.append(store) or store
    for store in opened:
        store.close()


def add_all(vectorstore):
    vectorstore.add_texts([t for t, _ in TEXTS.values()], [m for _, m in TEXTS.values()], ids=list(TEXTS))


def index_with_haystack(document_store):
    documents = [HaystackDocument(id=i, content=t, meta=m) for i, (t, m) in TEXTS.items()]
    embedded = DualEncoderDocumentEmbedder(progress_bar=False).run(documents=documents)["documents"]
    document_store.write_documents(embedded, policy=DuplicatePolicy.OVERWRITE)


def test_asymmetric_roles_differ_and_siamese_roles_agree(asymmetric_model_dir, embeddings):
    text = "Tides are caused by the Moon."
    asymmetric = DualEncoderEmbeddings(str(asymmetric_model_dir))
    assert not np.allclose(asymmetric.embed_query(text), asymmetric.embed_documents([text])[0], atol=1e-3)
    np.testing.assert_allclose(embeddings.embed_query(text), embeddings.embed_documents([text])[0], atol=1e-6)


def test_shares_the_model_with_haystack(embeddings):
    embedder = DualEncoderDocumentEmbedder()
    embedder.warm_up()
    assert embeddings.encoder.model is embedder.encoder.model


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_or_none_text_is_refused_before_anything_is_stored(embeddings, bad):
    with pytest.raises(EmptyTextError):
        embeddings.embed_query(bad)
    with pytest.raises(EmptyTextError):
        embeddings.embed_documents(["fine", bad])
    vectorstore = DualEncoderVectorStore.embedded(embeddings)
    with pytest.raises(ValueError, match="Text 1"):
        vectorstore.add_texts(["fine", bad])
    assert vectorstore.store.count() == 0


def test_stores_are_typed_by_the_contract(embeddings):
    store = open_embedded_store(None)
    assert DualEncoderVectorStore(embeddings, store).store is store
    haystack_store = EmbeddedDocumentStore()  # one of ours: its contract store is used
    assert DualEncoderVectorStore(embeddings, haystack_store).store is haystack_store.store
    with pytest.raises(ConfigurationError, match="must be a dual_encoder Store"):
        DualEncoderVectorStore(embeddings, InMemoryDocumentStore())
    with pytest.raises(ConfigurationError, match="DualEncoderEmbeddings"):
        DualEncoderVectorStore(object(), store)  # type: ignore[arg-type]


def test_the_package_imports_no_haystack(embeddings, tmp_path):
    """In a fresh interpreter where importing Haystack fails, the adapter indexes and searches an embedded store
    on disk, with the same results as this process, and takes a Weaviate store."""
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys

        BLOCKED = {"haystack", "haystack_integrations"}
        attempts = []

        class NoHaystack(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    attempts.append(name)
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
                return None

        sys.meta_path.insert(0, NoHaystack())
        from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderRetriever, DualEncoderVectorStore

        texts, path, question = json.loads(sys.argv[1])
        vectorstore = DualEncoderVectorStore.embedded(DualEncoderEmbeddings("all-MiniLM-L6-v2"), path=path)
        vectorstore.add_texts([t for t, _ in texts.values()], [m for _, m in texts.values()], ids=list(texts))
        found = vectorstore.similarity_search_with_score(question, k=5, filter={"topic": "sea"})
        retrieved = DualEncoderRetriever(vectorstore=vectorstore, k=2).invoke(question)
        from dual_encoder_weaviate import WeaviateStore  # connects lazily: nothing is contacted here

        DualEncoderVectorStore(vectorstore.embeddings, WeaviateStore(url="http://127.0.0.1:9", collection="Unused"))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({"found": [[d.id, s] for d, s in found], "retrieved": [d.id for d in retrieved],
                          "attempts": attempts, "loaded": loaded}))
        """
    )
    question = QUESTIONS[0]
    argument = json.dumps([TEXTS, str(tmp_path / "index"), question])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, argument], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [] and report["loaded"] == []
    in_memory = DualEncoderVectorStore.embedded(embeddings)
    add_all(in_memory)
    expected = in_memory.similarity_search_with_score(question, k=5, filter={"topic": "sea"})
    assert [i for i, _ in report["found"]] == [d.id for d, _ in expected] == ["tides", "coral"]
    np.testing.assert_allclose([s for _, s in report["found"]], [s for _, s in expected], atol=1e-6)
    assert report["retrieved"][0] == "tides"
    # What the other process wrote to disk is there when this one opens the directory.
    reopened = DualEncoderVectorStore.embedded(embeddings, path=str(tmp_path / "index"))
    assert reopened.store.count() == len(TEXTS)
    found = reopened.similarity_search_with_score(question, k=5, filter={"topic": "sea"})
    assert [(d.id, s) for d, s in found] == [tuple(pair) for pair in report["found"]]


def compare_sides(haystack_store, vectorstore):
    haystack = HaystackRetriever(retriever=StoreEmbeddingRetriever(document_store=haystack_store), top_k=10)
    for question in QUESTIONS:
        expected = [(d.id, d.score) for d in haystack.run(query=question)["documents"]]
        got = [(d.id, s) for d, s in vectorstore.similarity_search_with_score(question, k=10)]
        assert len(got) == len(TEXTS)
        assert [i for i, _ in got] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)


def test_haystack_index_searched_from_langchain_and_back_embedded(embeddings):
    indexed_by_haystack = EmbeddedDocumentStore()
    index_with_haystack(indexed_by_haystack)
    compare_sides(indexed_by_haystack, DualEncoderVectorStore(embeddings, indexed_by_haystack))
    compare_sides(indexed_by_haystack, DualEncoderVectorStore(embeddings, indexed_by_haystack.store))
    indexed_by_langchain = EmbeddedDocumentStore()
    add_all(DualEncoderVectorStore(embeddings, indexed_by_langchain.store))
    compare_sides(indexed_by_langchain, DualEncoderVectorStore(embeddings, indexed_by_langchain))
    # Both sides stamp and store the same documents: same ids, meta and embeddings.
    one = {d.id: d for d in indexed_by_haystack.filter_documents()}
    other = {d.id: d for d in indexed_by_langchain.filter_documents()}
    assert set(one) == set(other) == set(TEXTS)
    for doc_id, document in one.items():
        assert other[doc_id].meta == document.meta and other[doc_id].content == document.content
        np.testing.assert_allclose(other[doc_id].embedding, document.embedding, atol=1e-6)


def test_haystack_index_searched_from_langchain_and_back_weaviate(embeddings, weaviate_env, collection_name, closing):
    indexed_by_haystack = closing(
        DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields=WEAVIATE_META)
    )
    index_with_haystack(indexed_by_haystack)
    compare_sides(indexed_by_haystack, DualEncoderVectorStore(embeddings, indexed_by_haystack))
    indexed_by_langchain = closing(
        DualEncoderWeaviateDocumentStore(collection_name=collection_name + "Lc", meta_fields=WEAVIATE_META)
    )
    add_all(DualEncoderVectorStore(embeddings, indexed_by_langchain))
    compare_sides(indexed_by_langchain, DualEncoderVectorStore(embeddings, indexed_by_langchain))
    # The embedded store and Weaviate give the same scores for the same documents and questions.
    embedded = DualEncoderVectorStore.embedded(embeddings)
    add_all(embedded)
    on_weaviate = DualEncoderVectorStore(embeddings, indexed_by_langchain)
    for question in QUESTIONS:
        a = embedded.similarity_search_with_score(question, k=5)
        b = on_weaviate.similarity_search_with_score(question, k=5)
        assert [d.id for d, _ in a] == [d.id for d, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


def test_filters_scores_and_search_method_through_the_retriever(vectorstore):
    found = DualEncoderRetriever(vectorstore=vectorstore, k=5, filter={"topic": "space"}).invoke("water on planets")
    assert [d.id for d in found] == ["mars", "stars"] and found[0].metadata["score"] > found[1].metadata["score"]
    assert {d.metadata["search_method"] for d in found} == {"exact"}
    assert found[0].metadata["topic"] == "space" and found[0].page_content == TEXTS["mars"][0]
    haystack_syntax = {"field": "meta.year", "operator": ">=", "value": 2021}
    assert {d.id for d in vectorstore.similarity_search("water", k=5, filter=haystack_syntax)} == {"coral", "mars"}
    two_keys = {"topic": "sea", "year": 2021}
    assert [d.id for d in vectorstore.similarity_search("water", k=5, filter=two_keys)] == ["coral"]
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        DualEncoderRetriever(vectorstore=vectorstore, k=0)


def test_exact_or_approximate_search_is_chosen_and_reported(vectorstore):
    exact, method = vectorstore.similarity_search_with_method("water", k=3, exact=True)
    assert method == "exact"
    approximate = DualEncoderRetriever(vectorstore=vectorstore, k=3, exact=False).invoke("water")
    assert {d.metadata["search_method"] for d in approximate} == {"approximate"}
    assert [d.id for d in approximate] == [d.id for d, _ in exact]  # five documents: the index misses none


def test_bad_k_and_filters_are_refused_before_the_query_is_encoded(vectorstore, embeddings, monkeypatch):
    encoded = []
    original = embeddings.encoder.encode_query
    monkeypatch.setattr(
        embeddings.encoder, "encode_query", lambda text, **kw: encoded.append(text) or original(text, **kw)
    )
    with pytest.raises(ConfigurationError, match="top_k"):
        vectorstore.similarity_search("water", k=0)
    with pytest.raises(FilterError):
        vectorstore.similarity_search("water", filter={"field": "meta.year", "operator": "~", "value": 1})
    with pytest.raises(ConfigurationError, match="weight must be a number from 0"):
        vectorstore.similarity_search("water", hybrid_alpha=1.5)  # hybrid options are checked first too
    assert encoded == []


def test_search_by_vector_matches_search_by_text(vectorstore, embeddings):
    question = QUESTIONS[2]
    by_text = vectorstore.similarity_search_with_score(question, k=3, filter={"topic": "space"})
    vector = embeddings.embed_query(question)
    by_vector = vectorstore.similarity_search_by_vector_with_score(vector, k=3, filter={"topic": "space"})
    assert [(d.id, s) for d, s in by_text] == [(d.id, s) for d, s in by_vector]
    assert [d.id for d in vectorstore.similarity_search_by_vector(vector, k=3)] == [
        d.id for d, _ in vectorstore.similarity_search_with_score(question, k=3)
    ]


def test_mmr_trades_similarity_for_diversity(vectorstore, embeddings):
    near_copy = "The Moon's gravity pulls on the oceans and causes the tides."
    vectorstore.add_texts([near_copy], [{"topic": "sea", "year": 2023}], ids=["tides-again"])
    question = "What pulls the oceans?"
    by_similarity = [d.id for d in vectorstore.similarity_search(question, k=2)]
    assert set(by_similarity) == {"tides", "tides-again"}
    same = vectorstore.max_marginal_relevance_search(question, k=2, fetch_k=6, lambda_mult=1.0)
    assert [d.id for d in same] == by_similarity
    diverse = vectorstore.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 6, "lambda_mult": 0.3})
    picked = [d.id for d in diverse.invoke(question)]
    assert picked[0] == by_similarity[0] and picked[1] not in {"tides", "tides-again"}
    by_vector = vectorstore.max_marginal_relevance_search_by_vector(
        embeddings.embed_query(question), k=2, fetch_k=6, lambda_mult=0.3, filter={"topic": "sea"}
    )
    assert [d.id for d in by_vector] == [by_similarity[0], "coral"]
    with pytest.raises(ConfigurationError, match="lambda_mult"):
        vectorstore.max_marginal_relevance_search(question, lambda_mult=2.0)
    with pytest.raises(ConfigurationError, match="fetch_k"):
        vectorstore.max_marginal_relevance_search(question, fetch_k=0)


def test_unknown_search_options_are_refused_not_ignored(vectorstore):
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) \['filters'\]"):
        vectorstore.similarity_search("water", k=2, filters={"topic": "sea"})
    with pytest.raises(ConfigurationError, match="top_k"):
        vectorstore.similarity_search_by_vector([0.1] * 384, k=2, top_k=3)


def test_mismatched_encoder_and_dimension_are_refused(embeddings, other_space_model_dir, vectorstore):
    other = DualEncoderEmbeddings(str(other_space_model_dir))
    with pytest.raises(EncoderMismatchError):
        DualEncoderVectorStore(other, vectorstore.store).similarity_search("tides")
    with pytest.raises(EncoderMismatchError):  # and before anything is encoded or written
        DualEncoderVectorStore(other, vectorstore.store).add_texts(["Another space."], ids=["other"])
    assert vectorstore.store.count() == len(TEXTS)
    with pytest.raises(DimensionMismatchError):
        vectorstore.similarity_search_by_vector([0.1] * 8)


def test_re_adding_unchanged_texts_encodes_and_writes_only_the_changed_ones(monkeypatch):
    embeddings = DualEncoderEmbeddings("all-MiniLM-L6-v2")
    vectorstore = DualEncoderVectorStore.embedded(embeddings)
    add_all(vectorstore)
    before = {d.id: d for d in vectorstore.store.list()}
    encoded, written = [], []
    original_encode = embeddings.encoder.encode_documents
    original_write = vectorstore.store._write

    def encode(texts, **kwargs):
        encoded.extend(texts)
        return original_encode(texts, **kwargs)

    def write(records, policy):  # what reaches the storage engine, after the contract's unchanged check
        written.extend(record.id for record in records)
        return original_write(records, policy)

    monkeypatch.setattr(embeddings.encoder, "encode_documents", encode)
    monkeypatch.setattr(vectorstore.store, "_write", write)
    texts = [t for t, _ in TEXTS.values()]
    texts[1] = "Corals bleach in marine heatwaves."
    vectorstore.add_texts(texts, [m for _, m in TEXTS.values()], ids=list(TEXTS))
    assert encoded == ["Corals bleach in marine heatwaves."] and written == ["coral"]
    after = {d.id: d for d in vectorstore.store.list()}
    np.testing.assert_array_equal(after["tides"].embedding, before["tides"].embedding)
    assert not np.allclose(after["coral"].embedding, before["coral"].embedding, atol=1e-3)
    assert after["coral"].content == "Corals bleach in marine heatwaves."
    metadatas = [m for _, m in TEXTS.values()]
    metadatas[0] = {**metadatas[0], "year": 2020}  # meta changed, text not: stored embedding reused, rewritten
    vectorstore.add_texts(texts, metadatas, ids=list(TEXTS))
    assert len(encoded) == 1 and written[1:] == ["tides"]
    assert vectorstore.get_by_ids(["tides"])[0].metadata["year"] == 2020
    vectorstore.add_texts(["Brand new text."])  # no ids: a new random id, encoded without a lookup
    assert encoded[-1] == "Brand new text." and vectorstore.store.count() == len(TEXTS) + 1


def test_add_documents_uses_their_ids(embeddings):
    vectorstore = DualEncoderVectorStore.embedded(embeddings)
    documents = [Document(id=i, page_content=t, metadata=m) for i, (t, m) in TEXTS.items()]
    assert vectorstore.add_documents(documents) == list(TEXTS)
    assert vectorstore.add_documents([Document(page_content="No id given.")])[0] not in TEXTS
    assert vectorstore.store.count() == len(TEXTS) + 1


def test_get_by_ids_and_delete(vectorstore):
    found = vectorstore.get_by_ids(["mars", "missing", "tides"])
    assert [d.id for d in found] == ["mars", "tides"]
    assert found[0].page_content == TEXTS["mars"][0] and found[0].metadata == TEXTS["mars"][1]
    stored = vectorstore.store.stored_versions(["mars"])["mars"]  # the store keeps the encoder's stamps
    assert stored.meta["encoder_fingerprint"] == vectorstore.embeddings.fingerprint.document_space
    assert vectorstore.delete(["mars", "missing"]) is True
    assert vectorstore.get_by_ids(["mars"]) == [] and vectorstore.store.count() == len(TEXTS) - 1
    assert "mars" not in [d.id for d in vectorstore.similarity_search("water on Mars", k=10)]
    assert vectorstore.delete(None) is True  # LangChain's contract: no ids means everything
    assert vectorstore.store.count() == 0 and vectorstore.similarity_search("water", k=3) == []


def test_relevance_scores_follow_the_store_similarity(vectorstore, embeddings):
    scored = vectorstore.similarity_search_with_score("What pulls the oceans?", k=5)
    relevant = vectorstore.similarity_search_with_relevance_scores("What pulls the oceans?", k=5)
    assert [d.id for d, _ in relevant] == [d.id for d, _ in scored]
    np.testing.assert_allclose([r for _, r in relevant], [(s + 1) / 2 for _, s in scored], atol=1e-7)
    threshold = (scored[1][1] + 1) / 2 - 1e-6
    kept = vectorstore.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"k": 5, "score_threshold": threshold}
    ).invoke("What pulls the oceans?")
    assert [d.id for d in kept] == [d.id for d, _ in scored[:2]]
    dot = DualEncoderVectorStore.embedded(
        DualEncoderEmbeddings({"model": "all-MiniLM-L6-v2", "similarity": "dot"}), similarity="dot"
    )
    add_all(dot)
    top = dot.similarity_search_with_score("What pulls the oceans?", k=1)[0]
    assert top[0].id == scored[0][0].id and top[1] == pytest.approx(scored[0][1], abs=1e-5)  # normalised model
    with pytest.raises(ConfigurationError, match="need a cosine store"):
        dot.similarity_search_with_relevance_scores("What pulls the oceans?", k=5)


def test_from_texts_builds_an_in_memory_store(embeddings):
    texts = [t for t, _ in TEXTS.values()]
    vectorstore = DualEncoderVectorStore.from_texts(texts, embeddings, [m for _, m in TEXTS.values()], ids=list(TEXTS))
    assert vectorstore.similarity_search("What pulls the oceans?", k=1)[0].id == "tides"
    haystack_store = EmbeddedDocumentStore()
    DualEncoderVectorStore.from_texts(texts, embeddings, ids=list(TEXTS), document_store=haystack_store)
    assert haystack_store.count_documents() == len(TEXTS)


def test_vector_search_by_default_hybrid_only_when_asked(embeddings, weaviate_env, collection_name, closing):
    from dual_encoder_weaviate import WeaviateStore

    store = closing(WeaviateStore(collection=collection_name, meta_fields=WEAVIATE_META))  # no Haystack wrapper
    vectorstore = DualEncoderVectorStore(embeddings, store)
    add_all(vectorstore)
    plain, method = vectorstore.similarity_search_with_method("sourdough flour", k=5)
    direct = store.vector_search(embeddings.embed_query("sourdough flour"), top_k=5)
    assert method == direct.method and [d.id for d, _ in plain] == [hit.record.id for hit in direct.hits]
    np.testing.assert_allclose([s for _, s in plain], [hit.score for hit in direct.hits], atol=1e-6)
    hybrid, method = vectorstore.similarity_search_with_method("sourdough flour", k=5, hybrid_alpha=0.3)
    assert method == "hybrid" and hybrid[0][0].id == "bread" and [s for _, s in hybrid] != [s for _, s in plain]
    filtered = vectorstore.similarity_search_with_score("water", k=5, filter={"topic": "sea"}, hybrid_alpha=0.5)
    assert {d.id for d, _ in filtered} == {"tides", "coral"}
    found = DualEncoderRetriever(vectorstore=vectorstore, k=2, hybrid_alpha=0.3).invoke("sourdough flour")
    assert found[0].id == "bread" and found[0].metadata["search_method"] == "hybrid"


def test_unreachable_weaviate_and_refused_objects(embeddings, weaviate_env, collection_name, closing):
    from dual_encoder_weaviate.errors import PartialWriteError, WeaviateUnavailableError
    from dual_encoder_weaviate.server import free_port

    down = closing(
        DualEncoderWeaviateDocumentStore(url=f"http://127.0.0.1:{free_port()}", grpc_port=free_port(), timeout=2)
    )
    with pytest.raises(WeaviateUnavailableError, match="Cannot use Weaviate"):
        DualEncoderVectorStore(embeddings, down).add_texts(["hello"])
    with pytest.raises(WeaviateUnavailableError, match="Cannot use Weaviate"):  # the unchanged-text lookup
        DualEncoderVectorStore(embeddings, down).add_texts(["hello"], ids=["greeting"])
    document_store = closing(
        DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields={"year": "int"})
    )
    with pytest.raises(PartialWriteError) as error:
        DualEncoderVectorStore(embeddings, document_store).add_texts(
            ["ok", "bad"], [{"year": 1}, {"year": "nope"}], ids=["a", "b"]
        )
    assert list(error.value.failed) == ["b"]


async def test_async_matches_sync(embeddings):
    vectorstore = DualEncoderVectorStore.embedded(embeddings)
    await vectorstore.aadd_texts([t for t, _ in TEXTS.values()], [m for _, m in TEXTS.values()], ids=list(TEXTS))
    assert await embeddings.aembed_query("tides") == embeddings.embed_query("tides")
    assert await embeddings.aembed_documents(["a b"]) == embeddings.embed_documents(["a b"])
    sync = [(d.id, s) for d, s in vectorstore.similarity_search_with_score("water", k=3, filter={"topic": "sea"})]
    asynchronous = await vectorstore.asimilarity_search_with_score("water", k=3, filter={"topic": "sea"})
    assert sync == [(d.id, s) for d, s in asynchronous]
    assert [d.id for d in await vectorstore.asimilarity_search("water", k=3)] == [
        d.id for d in vectorstore.similarity_search("water", k=3)
    ]
    vector = embeddings.embed_query("water")
    assert await vectorstore.asimilarity_search_by_vector(vector, k=3) == vectorstore.similarity_search_by_vector(
        vector, k=3
    )
    assert await vectorstore.asimilarity_search_with_relevance_scores(
        "water", k=3
    ) == vectorstore.similarity_search_with_relevance_scores("water", k=3)
    retriever = DualEncoderRetriever(vectorstore=vectorstore, k=3)
    assert await retriever.ainvoke("water") == retriever.invoke("water")
    assert [d.id for d in await vectorstore.aget_by_ids(["mars", "tides"])] == ["mars", "tides"]
    await vectorstore.aadd_documents([Document(id="extra", page_content="An extra passage about water.")])
    assert await vectorstore.adelete(["extra", "mars"]) is True
    assert vectorstore.store.count() == len(TEXTS) - 1
    await vectorstore.adelete()
    assert vectorstore.store.count() == 0


def test_rag_example_builds_the_prompt_from_retrieved_passages(tmp_path):
    spec = importlib.util.spec_from_file_location("langchain_rag", ROOT / "examples" / "langchain_rag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompt_stage, chain = module.build_chain(store_path=str(tmp_path / "rag-index"))
    prompt = prompt_stage.invoke("How does a heat pump warm a house?").to_string()
    assert "[heat-pumps]" in prompt.split("Question:")[0].splitlines()[1]
    assert chain.invoke("How does a heat pump warm a house?") == "(the LLM's answer would appear here)"


class TestLangChainStandardTestsEmbedded(VectorStoreIntegrationTests):
    """LangChain's own ``VectorStore`` tests (langchain-tests) on the embedded store."""

    @staticmethod
    def get_embeddings() -> DualEncoderEmbeddings:
        return DualEncoderEmbeddings("all-MiniLM-L6-v2")

    @pytest.fixture
    def vectorstore(self):
        return DualEncoderVectorStore.embedded(self.get_embeddings())


class TestLangChainStandardTestsWeaviate(VectorStoreIntegrationTests):
    """LangChain's own ``VectorStore`` tests on the Weaviate store (each test on a new collection)."""

    @staticmethod
    def get_embeddings() -> DualEncoderEmbeddings:
        return DualEncoderEmbeddings("all-MiniLM-L6-v2")

    @pytest.fixture
    def vectorstore(self, weaviate_env, collection_name):
        from dual_encoder_weaviate import WeaviateStore

        store = WeaviateStore(collection=collection_name)
        yield DualEncoderVectorStore(self.get_embeddings(), store)
        store.close()


class TestLangChainStandardEmbeddingsTests(EmbeddingsIntegrationTests):
    """LangChain's own ``Embeddings`` tests (langchain-tests) on ``DualEncoderEmbeddings``."""

    @property
    def embeddings_class(self) -> type[DualEncoderEmbeddings]:
        return DualEncoderEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"encoder": "all-MiniLM-L6-v2"}


@pytest.fixture(scope="module")
def standard_vectorstore() -> DualEncoderVectorStore:
    vectorstore = DualEncoderVectorStore.embedded(DualEncoderEmbeddings("all-MiniLM-L6-v2"))
    vectorstore.add_texts([text for text, _ in TEXTS.values()], ids=list(TEXTS))
    return vectorstore


class TestLangChainStandardRetrieverTests(RetrieversIntegrationTests):
    """LangChain's own ``BaseRetriever`` tests on ``DualEncoderRetriever`` over an embedded store."""

    @pytest.fixture(autouse=True)
    def _vectorstore(self, standard_vectorstore: DualEncoderVectorStore) -> None:
        self._standard_vectorstore = standard_vectorstore

    @property
    def retriever_constructor(self) -> type[DualEncoderRetriever]:
        return DualEncoderRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"vectorstore": self._standard_vectorstore}

    @property
    def retriever_query_example(self) -> str:
        return "What causes tides?"
