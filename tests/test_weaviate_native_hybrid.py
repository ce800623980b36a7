"""Weaviate's native hybrid query through the Haystack hybrid retriever (``native_hybrid=True``), against the real
Weaviate node the test session starts (``weaviate_server`` in conftest.py): the same documents as the store's own
hybrid search, both fusion types, filters, tenants, MMR, YAML, sync and async, the refusals, and on SciFact how
far Weaviate's fusion agrees with ours over the same collection."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from haystack import Document, Pipeline
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderHybridRetriever
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore

from dual_encoder.errors import ConfigurationError
from dual_encoder.hybrid import DEFAULT_WEIGHT
from dual_encoder.native_hybrid import native_hybrid_search
from dual_encoder.stores.contract import NativeHybridUnsupportedError

TEXTS = {
    "dogs": ("Dogs bark at strangers and wag their tails at friends.", "animals"),
    "puppy": ("A puppy learns not to bark by being rewarded for quiet.", "animals"),
    "cats": ("Cats purr when they are content and knead soft blankets.", "animals"),
    "bark": ("Tree bark protects the trunk from insects and fire.", "plants"),
    "tides": ("Tides are caused by the Moon's gravity pulling on the oceans.", "sea"),
    "coral": ("Corals bleach when the water stays too warm for weeks.", "sea"),
    "bread": ("A sourdough starter needs flour and water every day.", "food"),
    "stars": ("Stars shine because of nuclear fusion in their cores.", "space"),
}
QUERIES = ["dogs barking at strangers", "why does the sea rise and fall", "sourdough flour", "the of and"]
ANIMALS = {"field": "meta.group", "operator": "==", "value": "animals"}


@pytest.fixture(scope="module")
def embedded_documents():
    documents = [Document(id=key, content=text, meta={"group": group}) for key, (text, group) in TEXTS.items()]
    return DualEncoderDocumentEmbedder(progress_bar=False).run(documents=documents)["documents"]


def written_store(name: str, documents: list[Document]) -> DualEncoderWeaviateDocumentStore:
    store = DualEncoderWeaviateDocumentStore(collection_name=name, meta_fields={"group": "text"})
    store.write_documents(documents, policy=DuplicatePolicy.OVERWRITE)
    return store


def native(store: DualEncoderWeaviateDocumentStore, **options) -> DualEncoderHybridRetriever:
    return DualEncoderHybridRetriever(document_store=store, native_hybrid=True, **options)


def summary(documents: list[Document]) -> list[tuple]:
    return [(d.id, d.score, d.meta.get("vector_score"), d.meta.get("keyword_score")) for d in documents]


# ------------------------------------------------------------------------------------------------ refusals
def test_stores_without_native_hybrid_and_options_it_decides_are_refused_at_init(minilm):
    from dual_encoder.embedded import open_embedded_store

    with pytest.raises(NativeHybridUnsupportedError, match=r"native_hybrid=True needs .*Drop native_hybrid"):
        native(EmbeddedDocumentStore())
    assert not DualEncoderHybridRetriever(document_store=EmbeddedDocumentStore()).native_hybrid
    weaviate = DualEncoderWeaviateDocumentStore(url="http://127.0.0.1:1", collection_name="NeverConnected")
    with pytest.raises(ConfigurationError, match="rrf_k=30 applies to our fusion only"):
        native(weaviate, rrf_k=30)
    with pytest.raises(ConfigurationError, match="exact=True applies to our fusion"):
        native(weaviate, exact=True)
    with pytest.raises(ConfigurationError, match="candidates=50 sets our fusion's lists"):
        native(weaviate, candidates=50)
    with pytest.raises(ConfigurationError, match="Unknown fusion"):
        native(weaviate, fusion="max")
    assert native(weaviate, candidates=50, mmr_lambda=0.5).native_hybrid  # candidates size MMR's pool
    # The core: the contract refuses a store without the capability (after checking the arguments), and
    # native_hybrid_search does so before encoding the query.
    embedded = open_embedded_store(None)
    with pytest.raises(ConfigurationError, match="Unknown fusion"):
        embedded.native_hybrid_search("dogs", [0.1] * 384, weight=0.5, fusion="max")
    with pytest.raises(NativeHybridUnsupportedError, match="hybrid_search"):
        embedded.native_hybrid_search("dogs", [0.1] * 384, weight=0.5, fusion="weighted")
    with pytest.raises(NativeHybridUnsupportedError, match="supports_native_hybrid_search"):
        native_hybrid_search(minilm, embedded, "dogs")


def test_the_option_is_serialised():
    weaviate = DualEncoderWeaviateDocumentStore(url="http://127.0.0.1:1", collection_name="NeverConnected")
    retriever = native(weaviate, fusion="rrf", weight=0.7, top_k=4)
    data = retriever.to_dict()
    assert data["init_parameters"]["native_hybrid"] is True
    clone = DualEncoderHybridRetriever.from_dict(data)
    assert (clone.native_hybrid, clone.fusion, clone.weight, clone.top_k) == (True, "rrf", 0.7, 4)
    assert DualEncoderHybridRetriever(document_store=weaviate).to_dict()["init_parameters"]["native_hybrid"] is False


# ------------------------------------------------------------------------------------- on the Weaviate node
async def test_the_component_returns_weaviates_own_hybrid_ranking(
    weaviate_env, collection_name, embedded_documents, minilm
):
    store = written_store(collection_name, embedded_documents)
    core = store.store
    assert core.supports_native_hybrid_search
    try:
        for fusion in ("weighted", "rrf"):
            retriever = native(store, top_k=5, fusion=fusion, weight=0.4)
            for query in QUERIES:
                vector = minilm.encode_query(query)
                found = retriever.run(query=query)["documents"]
                direct = core.native_hybrid_search(query, vector, top_k=5, weight=0.4, fusion=fusion)
                assert direct.method == "hybrid"
                assert [d.id for d in found] == [hit.record.id for hit in direct.hits], (fusion, query)
                np.testing.assert_allclose([d.score for d in found], [hit.score for hit in direct.hits], atol=1e-6)
                # Weaviate reports only the fused score: the similarity is computed from the returned embedding.
                similarity = {h.record.id: h.score for h in core.vector_search(vector, top_k=10, exact=True).hits}
                for document in found:
                    assert document.meta["vector_score"] == pytest.approx(similarity[document.id], abs=1e-5)
                    assert document.meta["keyword_score"] is None
                    assert document.meta["group"] == TEXTS[document.id][1]
                found_async = (await retriever.run_async(query=query))["documents"]
                assert summary(found_async) == summary(found), (fusion, query)
        # The two fusion types are Weaviate's two: rank fusion gives scores near 1/60, relative scores up to 1.
        rrf = native(store, top_k=3, fusion="rrf", weight=0.5).run(query=QUERIES[0])["documents"]
        weighted = native(store, top_k=3, fusion="weighted", weight=0.5).run(query=QUERIES[0])["documents"]
        assert max(d.score for d in rrf) < 0.05 < max(d.score for d in weighted)
        # The weight is Weaviate's alpha: 1 is the vector ranking, 0 puts the best BM25 hit first.
        query = "dogs barking at strangers"
        vector_order = [h.record.id for h in core.vector_search(minilm.encode_query(query), top_k=5).hits]
        vector_only = native(store, top_k=5, fusion="rrf", weight=1.0).run(query=query)["documents"]
        assert [d.id for d in vector_only] == vector_order
        bm25_first = core.keyword_search("tree bark", top_k=1).hits[0].record.id
        assert native(store, top_k=1, weight=0.0).run(query="tree bark")["documents"][0].id == bm25_first == "bark"
    finally:
        store.close()


async def test_filters_and_mmr_apply_to_the_native_search(weaviate_env, collection_name, embedded_documents, minilm):
    store = written_store(collection_name, embedded_documents)
    animals = {key for key, (_, group) in TEXTS.items() if group == "animals"}
    try:
        for fusion in ("weighted", "rrf"):
            retriever = native(store, top_k=5, fusion=fusion, weight=0.4, filters=ANIMALS)
            for query in QUERIES:
                found = retriever.run(query=query)["documents"]
                assert {d.id for d in found} == animals, (fusion, query)  # all three, and only them
                direct = store.store.native_hybrid_search(
                    query, minilm.encode_query(query), top_k=5, filters=ANIMALS, weight=0.4, fusion=fusion
                )
                assert [d.id for d in found] == [hit.record.id for hit in direct.hits]
                assert summary((await retriever.run_async(query=query))["documents"]) == summary(found)
            # Run-time filters replace the default ones, as on every retriever.
            sea = retriever.run(query="water", filters={"field": "meta.group", "operator": "==", "value": "sea"})
            assert {d.id for d in sea["documents"]} == {"tides", "coral"}
        # MMR re-ranks the native candidates: relevance alone keeps Weaviate's order, diversity changes it.
        query = "dogs barking at strangers"
        pool = store.store.native_hybrid_search(
            query, minilm.encode_query(query), top_k=100, weight=0.4, fusion="weighted"
        )
        kept = native(store, top_k=4, weight=0.4, mmr_lambda=1.0).run(query=query)["documents"]
        assert [d.id for d in kept] == [hit.record.id for hit in pool.hits[:4]]
        diverse = native(store, top_k=4, weight=0.4, mmr_lambda=0.0, candidates=8).run(query=query)["documents"]
        eight = store.store.native_hybrid_search(
            query, minilm.encode_query(query), top_k=8, weight=0.4, fusion="weighted"
        )
        assert diverse[0].id == eight.hits[0].record.id and [d.id for d in diverse] != [d.id for d in kept]
        scores = {hit.record.id: hit.score for hit in eight.hits}
        assert all(d.score == pytest.approx(scores[d.id], abs=1e-6) for d in diverse)  # the score stays Weaviate's
    finally:
        store.close()


async def test_native_hybrid_searches_one_tenant(weaviate_env, collection_name, embedded_documents):
    """Both tenants hold the same texts under their own ids: a search that leaked would return the other's ids."""
    store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, multi_tenancy=True)
    try:
        for tenant in ("alpha", "beta"):
            renamed = [
                Document(id=f"{tenant}-{d.id}", content=d.content, meta=d.meta, embedding=d.embedding)
                for d in embedded_documents
            ]
            writer = store.with_tenant(tenant)
            writer.write_documents(renamed, policy=DuplicatePolicy.OVERWRITE)
            writer.close()
        retriever = native(store, top_k=8, tenant="alpha")
        found = {}
        for tenant in ("alpha", "beta"):
            documents = retriever.run(query=QUERIES[0], tenant=tenant)["documents"]
            assert {d.id for d in documents} == {f"{tenant}-{key}" for key in TEXTS}
            assert summary((await retriever.run_async(query=QUERIES[0], tenant=tenant))["documents"]) == summary(
                documents
            )
            found[tenant] = documents
        assert [d.id.split("-", 1)[1] for d in found["alpha"]] == [d.id.split("-", 1)[1] for d in found["beta"]]
        assert [d.id for d in retriever.run(query=QUERIES[0])["documents"]] == [d.id for d in found["alpha"]]
    finally:
        store.close()


def test_a_yaml_pipeline_keeps_native_hybrid(weaviate_env, collection_name, embedded_documents):
    store = written_store(collection_name, embedded_documents)
    pipeline = Pipeline()
    pipeline.add_component("hybrid", native(store, top_k=3, fusion="rrf", weight=0.6, filters=ANIMALS))
    text = pipeline.dumps()
    assert "native_hybrid: true" in text and weaviate_env.url not in text  # the URL stays an env-var reference
    loaded = Pipeline.loads(text)
    component = loaded.get_component("hybrid")
    assert isinstance(component, DualEncoderHybridRetriever) and component.native_hybrid
    expected = pipeline.run({"hybrid": {"query": QUERIES[0]}})["hybrid"]["documents"]
    assert summary(loaded.run({"hybrid": {"query": QUERIES[0]}})["hybrid"]["documents"]) == summary(expected)
    loaded.get_component("hybrid").close()
    store.close()


# ----------------------------------------------------------------------------- SciFact: native against ours
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
SLICE_QUERIES = 30
SLICE_DOCUMENTS = 200


def _overlap(first: list[str], second: list[str], depth: int = 10) -> float:
    a, b = set(first[:depth]), set(second[:depth])
    return 1.0 if not a and not b else len(a & b) / max(len(a), len(b))


@pytest.mark.scifact
def test_native_fusion_against_ours_on_the_same_scifact_collection(weaviate_env, collection_name, minilm):
    """The first SciFact test queries over their judged documents plus the first corpus documents (up to 200), in
    one Weaviate collection: Weaviate's fusion (``native_hybrid=True``) against ours over Weaviate's own BM25 and
    vector lists, top 10 compared query by query for both fusion types, without and with a filter."""
    from dual_encoder.evaluation import load_beir
    from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY
    from dual_encoder.stores.contract import StoredRecord

    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact is not at {SCIFACT}")
    data = load_beir(SCIFACT, split="test")
    queries = list(data.queries.values())[:SLICE_QUERIES]
    chosen = dict.fromkeys(
        doc for q in list(data.queries)[:SLICE_QUERIES] for doc in data.qrels[q] if doc in data.corpus
    )
    for doc_id in data.corpus:
        if len(chosen) >= SLICE_DOCUMENTS:
            break
        chosen.setdefault(doc_id)
    texts = [data.corpus[doc_id].beir_text for doc_id in chosen]
    vectors = minilm.encode_documents(texts, progress_bar=False)
    space = minilm.fingerprint.document_space
    records = [
        StoredRecord(id=doc_id, content=text, meta={DOCUMENT_SPACE_META_KEY: space, "half": i % 2}, embedding=v)
        for i, (doc_id, text, v) in enumerate(zip(chosen, texts, np.asarray(vectors, dtype=np.float32)))
    ]
    store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields={"half": "int"})
    try:
        store.store.upsert(records)
        half = {"field": "meta.half", "operator": "==", "value": 0}
        even_ids = {record.id for record in records if record.meta["half"] == 0}
        measured: dict[str, list[float]] = {}
        timings: dict[str, list[float]] = {"native": [], "ours": []}
        for fusion in ("weighted", "rrf"):
            for name, filters in (("", None), (", filtered", half)):
                ours = DualEncoderHybridRetriever(
                    document_store=store, fusion=fusion, weight=DEFAULT_WEIGHT, filters=filters
                )
                theirs = native(store, fusion=fusion, weight=DEFAULT_WEIGHT, filters=filters)
                for text in queries:
                    started = time.perf_counter()
                    native_ids = [d.id for d in theirs.run(query=text)["documents"]]
                    timings["native"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    our_documents = ours.run(query=text)["documents"]
                    timings["ours"].append(time.perf_counter() - started)
                    measured.setdefault(f"{fusion}{name}", []).append(
                        _overlap(native_ids, [d.id for d in our_documents])
                    )
                    if filters:  # both honour the filter
                        assert set(native_ids) | {d.id for d in our_documents} <= even_ids
        means = {name: round(statistics.fmean(values), 3) for name, values in measured.items()}
        medians_ms = {name: round(1000 * statistics.median(values), 2) for name, values in timings.items()}
        print(json.dumps({"top10_overlap": means, "median_ms": medians_ms, "load": os.getloadavg()}, indent=1))
        # relativeScoreFusion is our weighted fusion: the same top 10 wherever the candidate lists agree.
        assert means["weighted"] >= 0.9 and means["weighted, filtered"] >= 0.9, means
        # rankedFusion is reciprocal-rank fusion: the same top 10 too, though Weaviate picks its own candidates.
        assert means["rrf"] >= 0.9 and means["rrf, filtered"] >= 0.9, means
    finally:
        store.store.delete_all()
        store.close()
