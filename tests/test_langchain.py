"""The LangChain adapter: same encoders, stores, scores and checks as the Haystack side."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from haystack import Document as HaystackDocument
from haystack.document_stores.types import DuplicatePolicy

from dual_encoder.errors import DimensionMismatchError, EmptyTextError, EncoderMismatchError
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever as HaystackRetriever
from haystack_integrations.components.retrievers.dual_encoder import StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore
from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderRetriever, DualEncoderVectorStore

TEXTS = {
    "tides": ("Tides are caused by the Moon's gravity pulling on the oceans.", {"topic": "sea", "year": 2019}),
    "coral": ("Corals bleach when the water stays too warm for weeks.", {"topic": "sea", "year": 2021}),
    "bread": ("A sourdough starter needs flour and water every day.", {"topic": "food", "year": 2020}),
    "stars": ("Stars shine because of nuclear fusion in their cores.", {"topic": "space", "year": 2018}),
    "mars": ("Dry river valleys show that water once flowed on Mars.", {"topic": "space", "year": 2022}),
}
QUESTIONS = ["What pulls the oceans?", "how to bake bread", "is there water on other planets"]


@pytest.fixture(scope="module")
def embeddings():
    return DualEncoderEmbeddings("all-MiniLM-L6-v2")


def add_all(vectorstore):
    vectorstore.add_texts([t for t, _ in TEXTS.values()], [m for _, m in TEXTS.values()], ids=list(TEXTS))


def index_with_haystack(store):
    documents = [HaystackDocument(id=i, content=t, meta=m) for i, (t, m) in TEXTS.items()]
    store.write_documents(DualEncoderDocumentEmbedder(progress_bar=False).run(documents=documents)["documents"],
                          policy=DuplicatePolicy.OVERWRITE)


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
def test_empty_or_none_text_is_refused(embeddings, bad):
    with pytest.raises(EmptyTextError):
        embeddings.embed_query(bad)
    with pytest.raises(EmptyTextError):
        embeddings.embed_documents(["fine", bad])
    with pytest.raises(ValueError, match="Text 1"):
        DualEncoderVectorStore(embeddings, EmbeddedDocumentStore()).add_texts(["fine", bad])


def compare_sides(haystack_store, langchain_store):
    haystack = HaystackRetriever(retriever=StoreEmbeddingRetriever(document_store=haystack_store), top_k=10)
    for question in QUESTIONS:
        expected = [(d.id, d.score) for d in haystack.run(query=question)["documents"]]
        got = [(d.id, s) for d, s in langchain_store.similarity_search_with_score(question, k=10)]
        assert [i for i, _ in got] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)


def test_haystack_index_searched_from_langchain_and_back_embedded(embeddings):
    store = EmbeddedDocumentStore()
    index_with_haystack(store)
    compare_sides(store, DualEncoderVectorStore(embeddings, store))
    other = EmbeddedDocumentStore()
    add_all(DualEncoderVectorStore(embeddings, other))
    compare_sides(other, DualEncoderVectorStore(embeddings, other))
    assert {d.id for d in other.filter_documents()} == set(TEXTS)


def test_haystack_index_searched_from_langchain_and_back_weaviate(embeddings, weaviate_env, collection_name):
    store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields={"topic": "text", "year": "int"})
    index_with_haystack(store)
    compare_sides(store, DualEncoderVectorStore(embeddings, store))
    other = DualEncoderWeaviateDocumentStore(collection_name=collection_name + "Lc", meta_fields={"topic": "text", "year": "int"})
    add_all(DualEncoderVectorStore(embeddings, other))
    compare_sides(other, DualEncoderVectorStore(embeddings, other))


def test_filters_and_scores_through_the_retriever(embeddings):
    vectorstore = DualEncoderVectorStore(embeddings, EmbeddedDocumentStore())
    add_all(vectorstore)
    found = DualEncoderRetriever(vectorstore=vectorstore, k=5, filter={"topic": "space"}).invoke("water on planets")
    assert [d.id for d in found] == ["mars", "stars"] and found[0].metadata["score"] > found[1].metadata["score"]
    haystack_syntax = {"field": "meta.year", "operator": ">=", "value": 2021}
    assert {d.id for d in vectorstore.similarity_search("water", k=5, filter=haystack_syntax)} == {"coral", "mars"}
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        DualEncoderRetriever(vectorstore=vectorstore, k=0)


def test_vector_search_by_default_hybrid_only_when_asked(embeddings, weaviate_env, collection_name):
    store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields={"topic": "text", "year": "int"})
    vectorstore = DualEncoderVectorStore(embeddings, store)
    add_all(vectorstore)
    plain = vectorstore.similarity_search_with_score("sourdough flour", k=5)
    vector = store.embedding_retrieval(embeddings.embed_query("sourdough flour"), top_k=5)
    assert [(d.id, s) for d, s in plain] == [(d.id, d.score) for d in vector]
    hybrid = vectorstore.similarity_search_with_score("sourdough flour", k=5, hybrid_alpha=0.3)
    assert hybrid[0][0].id == "bread" and [s for _, s in hybrid] != [s for _, s in plain]
    with pytest.raises(ValueError, match="hybrid search"):
        DualEncoderVectorStore(embeddings, EmbeddedDocumentStore()).similarity_search("x", hybrid_alpha=0.5)


def test_mismatched_encoder_and_dimension_are_refused(embeddings, other_space_model_dir):
    store = EmbeddedDocumentStore()
    add_all(DualEncoderVectorStore(embeddings, store))
    with pytest.raises(EncoderMismatchError):
        DualEncoderVectorStore(DualEncoderEmbeddings(str(other_space_model_dir)), store).similarity_search("tides")
    with pytest.raises(DimensionMismatchError):
        DualEncoderVectorStore(embeddings, store).similarity_search_by_vector([0.1] * 8)


def test_re_adding_unchanged_texts_with_their_ids_encodes_only_the_changed_ones(monkeypatch):
    embeddings = DualEncoderEmbeddings("all-MiniLM-L6-v2")
    vectorstore = DualEncoderVectorStore(embeddings, EmbeddedDocumentStore())
    add_all(vectorstore)
    before = {doc.id: doc.embedding for doc in vectorstore.document_store.filter_documents()}
    encoded = []
    original = embeddings.encoder.encode_documents
    monkeypatch.setattr(
        embeddings.encoder, "encode_documents", lambda texts, **kw: encoded.extend(texts) or original(texts, **kw)
    )
    texts = [t for t, _ in TEXTS.values()]
    texts[1] = "Corals bleach in marine heatwaves."
    vectorstore.add_texts(texts, [m for _, m in TEXTS.values()], ids=list(TEXTS))
    assert encoded == ["Corals bleach in marine heatwaves."]
    after = {doc.id: doc.embedding for doc in vectorstore.document_store.filter_documents()}
    assert after["tides"] == pytest.approx(before["tides"], abs=1e-6)
    assert after["coral"] != pytest.approx(before["coral"], abs=1e-3)
    vectorstore.add_texts(["Brand new text."])  # no ids: new random ids, encoded without a lookup
    assert encoded[-1] == "Brand new text."


def test_unreachable_weaviate_and_refused_objects(embeddings, weaviate_env, collection_name):
    from dual_encoder.weaviate_server import free_port
    from haystack_integrations.document_stores.dual_encoder.weaviate_store import PartialWriteError, WeaviateUnavailableError

    down = DualEncoderWeaviateDocumentStore(url=f"http://127.0.0.1:{free_port()}", grpc_port=free_port(), timeout=2)
    with pytest.raises(WeaviateUnavailableError, match="Cannot use Weaviate"):
        DualEncoderVectorStore(embeddings, down).add_texts(["hello"])
    with pytest.raises(WeaviateUnavailableError, match="Cannot use Weaviate"):  # the unchanged-text lookup
        DualEncoderVectorStore(embeddings, down).add_texts(["hello"], ids=["greeting"])
    store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields={"year": "int"})
    with pytest.raises(PartialWriteError) as error:
        DualEncoderVectorStore(embeddings, store).add_texts(["ok", "bad"], [{"year": 1}, {"year": "nope"}], ids=["a", "b"])
    assert list(error.value.failed) == ["b"]


async def test_async_matches_sync(embeddings):
    vectorstore = DualEncoderVectorStore(embeddings, EmbeddedDocumentStore())
    await vectorstore.aadd_texts([t for t, _ in TEXTS.values()], [m for _, m in TEXTS.values()], ids=list(TEXTS))
    assert await embeddings.aembed_query("tides") == embeddings.embed_query("tides")
    assert await embeddings.aembed_documents(["a b"]) == embeddings.embed_documents(["a b"])
    sync = [(d.id, s) for d, s in vectorstore.similarity_search_with_score("water", k=3)]
    asynchronous = [(d.id, s) for d, s in await vectorstore.asimilarity_search_with_score("water", k=3)]
    assert sync == asynchronous
    retriever = DualEncoderRetriever(vectorstore=vectorstore, k=3)
    assert [d.id for d in await retriever.ainvoke("water")] == [d.id for d in retriever.invoke("water")]


def test_rag_example_builds_the_prompt_from_retrieved_passages():
    path = Path(__file__).resolve().parents[1] / "examples" / "langchain_rag.py"
    spec = importlib.util.spec_from_file_location("langchain_rag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompt_stage, chain = module.build_chain()
    prompt = prompt_stage.invoke("How does a heat pump warm a house?").to_string()
    assert "[heat-pumps]" in prompt.split("Question:")[0].splitlines()[1]
    assert chain.invoke("How does a heat pump warm a house?") == "(the LLM's answer would appear here)"
