"""The Haystack components: embedders, the text retriever, serialization, async, bad input."""

import logging

import numpy as np
import pytest
from haystack import Document
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.errors import FilterError
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder, DualEncoderTextEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

from dual_encoder.config import EncoderConfig
from dual_encoder.errors import DimensionMismatchError, EncoderMismatchError
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY
from dual_encoder.models import shared_model_count

DOCS = [
    Document(
        id="tides",
        content="Tides are caused by the Moon's gravity pulling on the oceans.",
        meta={"topic": "sea", "year": 2020},
    ),
    Document(
        id="bread", content="A sourdough starter needs flour and water every day.", meta={"topic": "food", "year": 2021}
    ),
    Document(
        id="stars",
        content="Stars shine because of nuclear fusion in their cores.",
        meta={"topic": "space", "year": 2022},
    ),
]


@pytest.fixture(scope="module")
def embedded_docs():
    return DualEncoderDocumentEmbedder(progress_bar=False).run(documents=DOCS)["documents"]


@pytest.fixture
def store(tmp_path, embedded_docs):
    store = EmbeddedDocumentStore(path=str(tmp_path / "store"))
    store.write_documents(embedded_docs)
    return store


def retriever_for(store, encoder="all-MiniLM-L6-v2", **kwargs):
    return DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store), encoder=encoder, **kwargs)


# --------------------------------------------------------------------------------------------- embedders
def test_document_embedder_adds_embedding_and_fingerprint(embedded_docs, minilm):
    assert [d.id for d in embedded_docs] == [d.id for d in DOCS]
    for original, document in zip(DOCS, embedded_docs):
        assert len(document.embedding) == 384
        assert document.meta[DOCUMENT_SPACE_META_KEY] == minilm.fingerprint.document_space
        assert document.meta["topic"] == original.meta["topic"]
        np.testing.assert_allclose(document.embedding, minilm.encode_documents([original.content])[0], atol=1e-6)


def test_meta_fields_are_embedded_with_the_content(minilm):
    embedder = DualEncoderDocumentEmbedder(
        meta_fields_to_embed=["topic", "year"], embedding_separator=" | ", progress_bar=False
    )
    document = embedder.run(documents=[DOCS[0]])["documents"][0]
    expected = minilm.encode_documents([f"sea | 2020 | {DOCS[0].content}"])[0]
    np.testing.assert_allclose(document.embedding, expected, atol=1e-6)


def test_non_text_meta_field_is_refused_before_any_encoding():
    embedder = DualEncoderDocumentEmbedder(meta_fields_to_embed=["authors"], progress_bar=False)
    documents = [DOCS[0], Document(id="bad", content="x", meta={"authors": ["a", "b"]})]
    with pytest.raises(ValueError, match="Document 'bad': meta field 'authors'.*holds a list"):
        embedder.run(documents=documents)


def test_input_that_is_not_a_list_of_documents_is_refused():
    embedder = DualEncoderDocumentEmbedder(progress_bar=False)
    with pytest.raises(TypeError, match="list of Documents"):
        embedder.run(documents="not documents")  # type: ignore[arg-type]


def test_documents_without_text_are_kept_and_reported(caplog):
    embedder = DualEncoderDocumentEmbedder(progress_bar=False)
    documents = [Document(id="none", content=None), Document(id="blank", content="  \n "), DOCS[1]]
    with caplog.at_level(logging.WARNING, logger="dual_encoder"):
        result = embedder.run(documents=documents)["documents"]
    assert [d.id for d in result] == ["none", "blank", "bread"]
    assert result[0].embedding is None and result[1].embedding is None and result[2].embedding is not None
    assert any("2 document(s) have no text" in r.getMessage() and "'none'" in r.getMessage() for r in caplog.records)


def test_unchanged_documents_are_not_encoded_again(embedded_docs, monkeypatch):
    from dataclasses import replace

    embedder = DualEncoderDocumentEmbedder(progress_bar=False)
    embedder.warm_up()
    encoded = []
    original = embedder.encoder.encode_documents
    monkeypatch.setattr(
        embedder.encoder, "encode_documents", lambda texts, **kw: encoded.extend(texts) or original(texts, **kw)
    )
    changed = replace(embedded_docs[1], content="A sourdough starter needs rye flour.")
    result = embedder.run(documents=[embedded_docs[0], changed, DOCS[2]])["documents"]
    assert encoded == ["A sourdough starter needs rye flour.", DOCS[2].content]
    assert result[0] is embedded_docs[0]
    assert result[1].meta[EMBEDDED_INPUT_META_KEY] != embedded_docs[1].meta[EMBEDDED_INPUT_META_KEY]


def _counting_encoder_calls(embedder, monkeypatch) -> list[str]:
    embedder.warm_up()
    encoded: list[str] = []
    original = embedder.encoder.encode_documents
    monkeypatch.setattr(
        embedder.encoder, "encode_documents", lambda texts, **kw: encoded.extend(texts) or original(texts, **kw)
    )
    return encoded


@pytest.mark.parametrize("store_kind", ["embedded", "in-memory"])
def test_documents_fresh_from_a_converter_reuse_stored_embeddings(store_kind, tmp_path, embedded_docs, monkeypatch):
    from dataclasses import replace

    if store_kind == "embedded":
        store = EmbeddedDocumentStore(path=str(tmp_path / "store"))
    else:
        store = InMemoryDocumentStore(index=f"reuse-{tmp_path.name}")
    store.write_documents(embedded_docs)
    embedder = DualEncoderDocumentEmbedder(progress_bar=False, document_store=store)
    encoded = _counting_encoder_calls(embedder, monkeypatch)
    edited = replace(DOCS[1], content="A sourdough starter needs rye flour.")
    new = Document(id="comets", content="Comets grow tails when they come close to the Sun.")
    # As a converter would emit them: same ids, no embeddings, no fingerprint meta.
    result = embedder.run(documents=[DOCS[0], edited, DOCS[2], new])["documents"]
    assert encoded == [edited.content, new.content]
    np.testing.assert_allclose(result[0].embedding, embedded_docs[0].embedding, atol=1e-6)
    np.testing.assert_allclose(result[2].embedding, embedded_docs[2].embedding, atol=1e-6)
    assert result[0].meta == embedded_docs[0].meta
    assert result[1].meta[EMBEDDED_INPUT_META_KEY] != embedded_docs[1].meta[EMBEDDED_INPUT_META_KEY]
    assert all(doc.embedding is not None for doc in result)


def test_stored_embeddings_of_another_encoder_are_not_reused(
    tmp_path, other_space_model_dir, embedded_docs, monkeypatch
):
    store = EmbeddedDocumentStore(path=str(tmp_path / "store"))
    store.write_documents(embedded_docs)
    embedder = DualEncoderDocumentEmbedder(encoder=str(other_space_model_dir), progress_bar=False, document_store=store)
    encoded = _counting_encoder_calls(embedder, monkeypatch)
    result = embedder.run(documents=DOCS)["documents"]
    assert encoded == [doc.content for doc in DOCS]
    assert result[0].meta[DOCUMENT_SPACE_META_KEY] != embedded_docs[0].meta[DOCUMENT_SPACE_META_KEY]


def test_an_unreadable_document_store_fails_before_encoding(monkeypatch):
    from dual_encoder.errors import DualEncoderError

    class UnreachableStore(InMemoryDocumentStore):
        def filter_documents(self, filters=None):
            raise ConnectionError("connection refused")

    embedder = DualEncoderDocumentEmbedder(progress_bar=False, document_store=UnreachableStore())
    encoded = _counting_encoder_calls(embedder, monkeypatch)
    with pytest.raises(DualEncoderError, match="could not read the stored versions of 3 document.*connection refused"):
        embedder.run(documents=DOCS)
    assert encoded == []


def test_text_embedder_uses_the_query_tower(asymmetric_model_dir):
    from dual_encoder.encoder import DualEncoder

    embedder = DualEncoderTextEmbedder(encoder=str(asymmetric_model_dir))
    embedding = embedder.run(text="What causes tides?")["embedding"]
    encoder = DualEncoder(str(asymmetric_model_dir))
    np.testing.assert_allclose(embedding, encoder.encode_query("What causes tides?"), atol=1e-6)
    assert not np.allclose(embedding, encoder.encode_documents(["What causes tides?"])[0], atol=1e-3)


@pytest.mark.parametrize("text", ["", "   "])
def test_text_embedder_refuses_empty_queries(text):
    with pytest.raises(ValueError, match="empty or whitespace"):
        DualEncoderTextEmbedder().run(text=text)


def test_siamese_query_and_document_embedders_share_one_model():
    before = shared_model_count()
    query_side = DualEncoderTextEmbedder(encoder={"model": "all-MiniLM-L6-v2", "query_prompt": "q: "})
    document_side = DualEncoderDocumentEmbedder(encoder={"model": "all-MiniLM-L6-v2", "document_prompt": "d: "})
    query_side.warm_up()
    document_side.warm_up()
    assert query_side.encoder.model is document_side.encoder.model
    assert shared_model_count() <= max(before, 1)


# ---------------------------------------------------------------------------------------------- retriever
def test_retriever_finds_the_relevant_document(store):
    documents = retriever_for(store).run(query="Why does the sea level rise and fall?", top_k=2)["documents"]
    assert [d.id for d in documents][0] == "tides" and len(documents) == 2
    assert documents[0].score > documents[1].score


def test_retriever_applies_filters(store):
    documents = retriever_for(store).run(
        query="Why does the sea level rise and fall?",
        filters={"field": "meta.year", "operator": ">=", "value": 2021},
    )["documents"]
    assert {d.id for d in documents} == {"bread", "stars"}


def test_unknown_filter_operator_is_refused(store):
    with pytest.raises(FilterError, match="Unknown comparison operator 'like'"):
        retriever_for(store).run(query="tides", filters={"field": "meta.topic", "operator": "like", "value": "s"})


@pytest.mark.parametrize("top_k", [0, -1])
def test_non_positive_top_k_is_refused(store, top_k):
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        retriever_for(store).run(query="tides", top_k=top_k)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        retriever_for(store, top_k=top_k)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        StoreEmbeddingRetriever(document_store=store, top_k=top_k)


def test_whitespace_query_is_refused(store):
    with pytest.raises(ValueError, match="empty or whitespace"):
        retriever_for(store).run(query="  ")


def test_other_encoder_is_refused_before_searching(store, other_space_model_dir, minilm):
    retriever = retriever_for(store, encoder=str(other_space_model_dir))
    with pytest.raises(EncoderMismatchError) as error:
        retriever.run(query="tides")
    assert minilm.fingerprint.document_space in str(error.value)
    assert retriever.encoder.fingerprint.document_space in str(error.value)


def test_light_query_tower_is_accepted_on_the_same_index(store, asymmetric_model_dir):
    documents = retriever_for(store, encoder=str(asymmetric_model_dir)).run(query="What makes tides?")["documents"]
    assert documents[0].id == "tides"


def test_dimension_mismatch_is_refused(tmp_path):
    store = EmbeddedDocumentStore(path=str(tmp_path))
    store.write_documents([Document(id="x", content="x", embedding=[0.1] * 768)])
    with pytest.raises(DimensionMismatchError, match="768-d.*384-d"):
        retriever_for(store).run(query="tides")


def test_any_store_works_and_document_fingerprints_are_checked(embedded_docs, other_space_model_dir):
    memory = InMemoryDocumentStore()
    memory.write_documents(embedded_docs)
    retriever = DualEncoderRetriever(retriever=InMemoryEmbeddingRetriever(document_store=memory), top_k=1)
    assert retriever.run(query="What makes tides?")["documents"][0].id == "tides"
    mismatched = DualEncoderRetriever(
        retriever=InMemoryEmbeddingRetriever(document_store=memory), encoder=str(other_space_model_dir)
    )
    with pytest.raises(EncoderMismatchError, match="the retrieved documents"):
        mismatched.run(query="What makes tides?")


async def test_async_matches_sync(store, embedded_docs):
    retriever = retriever_for(store, top_k=3)
    sync = retriever.run(query="fusion in stars")["documents"]
    asynchronous = (await retriever.run_async(query="fusion in stars"))["documents"]
    assert [(d.id, d.score) for d in sync] == [(d.id, d.score) for d in asynchronous]
    text = DualEncoderTextEmbedder()
    assert (await text.run_async(text="fusion"))["embedding"] == text.run(text="fusion")["embedding"]
    embedder = DualEncoderDocumentEmbedder(progress_bar=False)
    assert [d.embedding for d in (await embedder.run_async(documents=DOCS))["documents"]] == [
        d.embedding for d in embedded_docs
    ]


def test_run_and_run_async_have_identical_signatures():
    import inspect

    for component in (
        DualEncoderDocumentEmbedder,
        DualEncoderTextEmbedder,
        DualEncoderRetriever,
        StoreEmbeddingRetriever,
    ):
        assert inspect.signature(component.run) == inspect.signature(component.run_async)


def test_warm_up_is_idempotent(store):
    retriever = retriever_for(store)
    retriever.warm_up()
    model, fingerprint = retriever.encoder.model, retriever.encoder.fingerprint
    retriever.warm_up()
    assert retriever.encoder.model is model and retriever.encoder.fingerprint is fingerprint


# ---------------------------------------------------------------------------------------- serialization
ENCODER = {
    "model": "all-MiniLM-L6-v2",
    "query_prompt": "q: ",
    "document_prompt": "d: ",
    "normalize": True,
    "similarity": "cosine",
    "max_seq_length": 128,
    "batch_size": 7,
    "device": "cpu",
    "trust_remote_code": False,
    "backend": "torch",
}
#: ENCODER as components serialize it: every value given, and the defaults of any parameter it leaves out.
SERIALIZED_ENCODER = EncoderConfig.coerce(ENCODER).to_dict()


def test_serialized_encoder_keeps_every_given_value():
    assert ENCODER.items() <= SERIALIZED_ENCODER.items()
    assert EncoderConfig.from_dict(SERIALIZED_ENCODER).to_dict() == SERIALIZED_ENCODER


def test_document_embedder_round_trips_every_parameter():
    component = DualEncoderDocumentEmbedder(
        encoder=ENCODER, meta_fields_to_embed=["title"], embedding_separator=" ", progress_bar=False
    )
    data = component.to_dict()
    assert data["init_parameters"] == {
        "encoder": SERIALIZED_ENCODER,
        "meta_fields_to_embed": ["title"],
        "embedding_separator": " ",
        "progress_bar": False,
        "document_store": None,
    }
    assert DualEncoderDocumentEmbedder.from_dict(data).to_dict() == data


def test_document_embedder_round_trips_its_document_store(tmp_path):
    component = DualEncoderDocumentEmbedder(document_store=EmbeddedDocumentStore(path=str(tmp_path)))
    data = component.to_dict()
    assert data["init_parameters"]["document_store"]["init_parameters"]["path"] == str(tmp_path)
    restored = DualEncoderDocumentEmbedder.from_dict(data)
    assert isinstance(restored.document_store, EmbeddedDocumentStore) and restored.to_dict() == data
    with pytest.raises(TypeError, match="document_store must be a Haystack document store"):
        DualEncoderDocumentEmbedder(document_store="my-index")


def test_text_embedder_round_trips_every_parameter():
    data = DualEncoderTextEmbedder(encoder=ENCODER).to_dict()
    assert data["init_parameters"] == {"encoder": SERIALIZED_ENCODER}
    assert DualEncoderTextEmbedder.from_dict(data).to_dict() == data


def test_retriever_round_trips_every_parameter(tmp_path):
    store = EmbeddedDocumentStore(path=str(tmp_path), similarity="cosine")
    inner = StoreEmbeddingRetriever(
        document_store=store,
        filters={"field": "meta.a", "operator": "==", "value": 1},
        top_k=4,
        filter_policy="merge",
        return_embedding=True,
    )
    component = DualEncoderRetriever(retriever=inner, encoder=ENCODER, top_k=5)
    data = component.to_dict()
    restored = DualEncoderRetriever.from_dict(data)
    assert restored.to_dict() == data
    assert restored.top_k == 5 and restored.encoder_config.to_dict() == SERIALIZED_ENCODER
    assert restored.retriever.filter_policy.value == "merge" and restored.retriever.return_embedding is True
    assert restored.retriever.document_store.path == str(tmp_path)
