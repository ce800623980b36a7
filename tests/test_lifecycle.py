"""Closing: ``Pipeline.close()`` / ``close_async()`` reach every store this package's components hold and release
its connection (Weaviate's client) or files (the embedded store's database, vector file and lock); closing twice is
harmless, a closed store refuses use with an error that names the way out, and running the pipeline again reopens it.
"""

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from haystack import Pipeline
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
from haystack.components.writers import DocumentWriter
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import (
    DualEncoderHybridRetriever,
    DualEncoderKeywordRetriever,
    DualEncoderRetriever,
    StoreEmbeddingRetriever,
)
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore

from dual_encoder.embedded import open_embedded_store
from dual_encoder.stores import StoredRecord
from dual_encoder.stores.contract import StoreClosedError

QUESTION = "Why do we have summer and winter?"
PROC_FD = Path("/proc/self/fd")


def descriptors_under(folder: Path) -> list[str]:
    """Paths under ``folder`` that this process holds open file descriptors on."""
    if not PROC_FD.is_dir():
        pytest.skip("needs /proc/self/fd (Linux) to see open file descriptors")
    found = []
    for entry in PROC_FD.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:  # the descriptor closed while listing
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def ranked(result: dict) -> list[tuple[str, float]]:
    return [(document.id, document.score) for document in result["retriever"]["documents"]]


def ask(pipeline: Pipeline) -> dict:
    return pipeline.run(
        {"retriever": {"query": QUESTION}, "prompt_builder": {"question": QUESTION}}, include_outputs_from={"retriever"}
    )


# ------------------------------------------------------------------------------------------- embedded store
def test_pipeline_close_releases_the_embedded_store_files_and_a_rerun_reopens_them(
    tmp_path, builders, index_sample_corpus
):
    path = tmp_path / "index"
    indexing = index_sample_corpus(path)
    query = builders.build_query_pipeline(str(path))
    before = ranked(ask(query))
    assert before[0][0] == "seasons"
    held = descriptors_under(path)
    assert any(name.endswith("store.sqlite") for name in held), held

    # Both pipelines' stores are one store in this process: closing the indexing pipeline releases the files,
    # and the query pipeline (not closed) reopens them on its next run.
    indexing.close()
    assert descriptors_under(path) == []
    writer_store = indexing.get_component("writer").document_store
    assert writer_store.closed
    with pytest.raises(StoreClosedError, match=r"is closed.*warm_up\(\)"):
        writer_store.count_documents()
    assert ranked(ask(query)) == before

    query.close()
    query.close()  # closing twice is harmless
    assert descriptors_under(path) == []
    query_store = query.get_component("retriever").retriever.document_store
    with pytest.raises(StoreClosedError, match="EmbeddedDocumentStore"):
        query_store.embedding_retrieval([0.1] * 384)

    # Running a closed pipeline again warms its components up, which reopens the store (as Haystack's own
    # components recreate their clients).
    assert ranked(ask(query)) == before
    assert not query_store.closed
    asyncio.run(query.close_async())
    assert query_store.closed and descriptors_under(path) == []


def test_async_pipeline_runs_and_closes_like_the_sync_one(tmp_path, builders, embedded_samples):
    path = tmp_path / "index"
    store = EmbeddedDocumentStore(path=str(path))
    store.write_documents(embedded_samples, policy=DuplicatePolicy.OVERWRITE)
    query = builders.build_query_pipeline(str(path))
    expected = ranked(ask(query))

    async def run_then_close():
        result = await query.run_async(
            {"retriever": {"query": QUESTION}, "prompt_builder": {"question": QUESTION}},
            include_outputs_from={"retriever"},
        )
        await query.close_async()
        await store.close_async()
        return result

    assert ranked(asyncio.run(run_then_close())) == expected
    assert descriptors_under(path) == []


def test_hybrid_and_keyword_retrievers_close_their_store(tmp_path, embedded_samples):
    path = tmp_path / "index"
    store = EmbeddedDocumentStore(path=str(path))
    store.write_documents(embedded_samples, policy=DuplicatePolicy.OVERWRITE)
    for retriever in (
        DualEncoderHybridRetriever(document_store=store, encoder={"model": "all-MiniLM-L6-v2"}, top_k=3),
        DualEncoderKeywordRetriever(document_store=store, top_k=3),
    ):
        pipeline = Pipeline()
        pipeline.add_component("retriever", retriever)
        first = pipeline.run({"retriever": {"query": "seasons summer winter"}})["retriever"]["documents"]
        assert first and first[0].id == "seasons"
        assert descriptors_under(path)
        pipeline.close()
        assert store.closed and descriptors_under(path) == [], type(retriever).__name__
        with pytest.raises(StoreClosedError):
            retriever.run(query="seasons")  # used directly, without the pipeline's warm-up
        again = pipeline.run({"retriever": {"query": "seasons summer winter"}})["retriever"]["documents"]
        assert [(d.id, d.score) for d in again] == [(d.id, d.score) for d in first]


def test_the_embedder_closes_the_store_it_reads_and_foreign_retrievers_need_no_close(tmp_path, embedded_samples):
    path = tmp_path / "index"
    store = EmbeddedDocumentStore(path=str(path))
    indexing = Pipeline()
    indexing.add_component(
        "embedder",
        DualEncoderDocumentEmbedder(meta_fields_to_embed=["title"], progress_bar=False, document_store=store),
    )
    store.write_documents(embedded_samples[:3], policy=DuplicatePolicy.OVERWRITE)
    assert indexing.run({"embedder": {"documents": embedded_samples[:3]}})["embedder"]["documents"]
    indexing.close()
    assert store.closed and descriptors_under(path) == []

    # A wrapped retriever without close (Haystack's in-memory one) is left alone; its store holds nothing to release.
    memory = InMemoryDocumentStore()
    DocumentWriter(document_store=memory).run(documents=embedded_samples)
    pipeline = Pipeline()
    pipeline.add_component(
        "retriever", DualEncoderRetriever(retriever=InMemoryEmbeddingRetriever(document_store=memory), top_k=2)
    )
    pipeline.close()
    asyncio.run(pipeline.close_async())
    assert pipeline.run({"retriever": {"query": QUESTION}})["retriever"]["documents"][0].id == "seasons"


def test_the_core_store_reopens_after_close_so_other_openers_keep_working(tmp_path):
    path = tmp_path / "index"
    core = open_embedded_store(path)
    core.upsert([StoredRecord(id="a", content="x", embedding=np.ones(4, np.float32))])
    core.close()
    core.close()
    assert descriptors_under(path) == []
    assert core.count() == 1  # the contract: a core store reopens on its next use
    asyncio.run(core.close_async())
    assert descriptors_under(path) == []


# ------------------------------------------------------------------------------------------------ LangChain
def test_langchain_vector_store_closes_its_store(tmp_path):
    from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderVectorStore

    path = tmp_path / "index"
    vectorstore = DualEncoderVectorStore.embedded(DualEncoderEmbeddings("all-MiniLM-L6-v2"), path=str(path))
    vectorstore.add_texts(["Tides are caused by the Moon."], ids=["tides"])
    assert vectorstore.similarity_search("What causes tides?", k=1)[0].id == "tides"
    assert descriptors_under(path)
    vectorstore.close()
    vectorstore.close()
    assert descriptors_under(path) == []
    with pytest.raises(StoreClosedError, match="Create a new DualEncoderVectorStore"):
        vectorstore.similarity_search("What causes tides?", k=1)
    asyncio.run(vectorstore.aclose())


# ------------------------------------------------------------------------------------------------- Weaviate
def _weaviate_query_pipeline(store: DualEncoderWeaviateDocumentStore, builders) -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_component(
        "retriever",
        DualEncoderRetriever(
            retriever=StoreEmbeddingRetriever(document_store=store), encoder=builders.ENCODER, top_k=3
        ),
    )
    return pipeline


def test_pipeline_close_closes_the_weaviate_client(weaviate_env, collection_name, builders, embedded_samples):
    store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields={"title": "text"})
    indexing = Pipeline()
    indexing.add_component("writer", DocumentWriter(document_store=store, policy=DuplicatePolicy.OVERWRITE))
    assert indexing.run({"writer": {"documents": embedded_samples}})["writer"]["documents_written"] == 30
    query = _weaviate_query_pipeline(store, builders)
    before = [(d.id, d.score) for d in query.run({"retriever": {"query": QUESTION}})["retriever"]["documents"]]
    assert before[0][0] == "seasons"
    client = store.client
    assert client.is_connected()

    query.close()
    assert not client.is_connected()
    query.close()
    indexing.close()  # the writer closes the same store again: harmless
    with pytest.raises(StoreClosedError, match=f"Weaviate collection '{collection_name}'"):
        store.count_documents()
    with pytest.raises(StoreClosedError):
        _ = store.client

    again = [(d.id, d.score) for d in query.run({"retriever": {"query": QUESTION}})["retriever"]["documents"]]
    assert again == before
    reconnected = store.client
    assert reconnected is not client and reconnected.is_connected()
    asyncio.run(query.close_async())
    assert not reconnected.is_connected()


def test_weaviate_hybrid_and_langchain_close_their_clients(
    weaviate_server, weaviate_env, collection_name, embedded_samples
):
    from dual_encoder_weaviate import WeaviateStore
    from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderVectorStore

    store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields={"title": "text"})
    store.write_documents(embedded_samples, policy=DuplicatePolicy.OVERWRITE)
    pipeline = Pipeline()
    pipeline.add_component("hybrid", DualEncoderHybridRetriever(document_store=store, top_k=3))
    pipeline.add_component("keyword", DualEncoderKeywordRetriever(document_store=store, top_k=3))
    result = pipeline.run({"hybrid": {"query": QUESTION}, "keyword": {"query": "seasons"}})
    assert len(result["hybrid"]["documents"]) == 3 and result["keyword"]["documents"]
    client = store.client
    pipeline.close()
    assert not client.is_connected()

    core = WeaviateStore(url=weaviate_server.url, grpc_port=weaviate_server.ports.grpc, collection=collection_name)
    vectorstore = DualEncoderVectorStore(DualEncoderEmbeddings("all-MiniLM-L6-v2"), core)
    assert vectorstore.similarity_search(QUESTION, k=1)[0].id == "seasons"
    client = core.client
    asyncio.run(vectorstore.aclose())
    assert not client.is_connected()
    vectorstore.close()
    with pytest.raises(StoreClosedError):
        vectorstore.similarity_search(QUESTION, k=1)
    # The core store follows the contract: closing twice is harmless and the next call connects again.
    core.close()
    assert core.count() == 30
    core.close()
