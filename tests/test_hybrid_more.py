"""Hybrid retrieval across the framework adapters, the evaluation command, and the embedded store against Weaviate."""

from __future__ import annotations

import asyncio
import json

import pytest

from dual_encoder.errors import ConfigurationError
from dual_encoder.hybrid import DEFAULT_WEIGHT, KeywordIndexedStore, hybrid_search

PETS = {
    "cats": ("Cats purr when they are content and knead soft blankets.", {"group": "animals"}),
    "dogs": ("Dogs bark at strangers and wag their tails at friends.", {"group": "animals"}),
    "bark": ("Tree bark protects the trunk from insects and fire.", {"group": "plants"}),
    "puppy": ("A puppy learns not to bark by being rewarded for quiet.", {"group": "animals"}),
    "tides": ("Tides are caused by the Moon's gravity pulling on the oceans.", {"group": "sea"}),
    "coral": ("Corals bleach when the water stays too warm for weeks.", {"group": "sea"}),
    "bread": ("A sourdough starter needs flour and water every day.", {"group": "food"}),
    "stars": ("Stars shine because of nuclear fusion in their cores.", {"group": "space"}),
}
QUERIES = ["barking dogs", "why does the sea rise and fall", "sourdough flour", "the of and", "fusion"]


@pytest.fixture(scope="module")
def embeddings():
    from langchain_dual_encoder import DualEncoderEmbeddings

    return DualEncoderEmbeddings({"model": "all-MiniLM-L6-v2"}, progress_bar=False)


@pytest.fixture(scope="module")
def pets_vectorstore(embeddings):
    from langchain_dual_encoder import DualEncoderVectorStore

    vectorstore = DualEncoderVectorStore.embedded(embeddings)
    vectorstore.add_texts([t for t, _ in PETS.values()], [m for _, m in PETS.values()], ids=list(PETS))
    return vectorstore


def _ids_and_scores(pairs):
    return [document.id for document, _ in pairs], [score for _, score in pairs]


# ------------------------------------------------------------------------------- LangChain on the embedded store
@pytest.mark.parametrize("fusion, alpha", [("weighted", DEFAULT_WEIGHT), ("weighted", 0.7), ("rrf", 0.5)])
def test_langchain_hybrid_equals_core_and_haystack_on_the_embedded_store(pets_vectorstore, minilm, fusion, alpha):
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderHybridRetriever
    from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore

    store = pets_vectorstore.store
    document_store = EmbeddedDocumentStore()
    document_store.store = store
    haystack = DualEncoderHybridRetriever(document_store=document_store, top_k=5, fusion=fusion, weight=alpha)
    for query in QUERIES:
        core = hybrid_search(minilm, store, query, top_k=5, fusion=fusion, weight=alpha)
        expected_ids = [hit.record.id for hit in core.hits]
        expected_scores = [hit.score for hit in core.hits]
        found, method = pets_vectorstore.similarity_search_with_method(
            query, k=5, hybrid_alpha=alpha, hybrid_fusion=fusion
        )
        assert method == "hybrid"
        assert _ids_and_scores(found) == (expected_ids, expected_scores), query
        found_async = asyncio.run(
            pets_vectorstore.asimilarity_search_with_score(query, k=5, hybrid_alpha=alpha, hybrid_fusion=fusion)
        )
        assert _ids_and_scores(found_async) == (expected_ids, expected_scores), query
        documents = haystack.run(query=query)["documents"]
        assert [d.id for d in documents] == expected_ids and [d.score for d in documents] == expected_scores
        documents_async = asyncio.run(haystack.run_async(query=query))["documents"]
        assert [d.id for d in documents_async] == expected_ids
    # Documents come back with the metadata they were added with, not the stored stamps.
    first = pets_vectorstore.similarity_search("barking dogs", k=1, hybrid_alpha=alpha, hybrid_fusion=fusion)[0]
    assert first.metadata == PETS[first.id][1]


def test_langchain_hybrid_keyword_side_matters_and_filters_apply(pets_vectorstore):
    vector = pets_vectorstore.similarity_search_with_score("bark", k=4)
    bm25 = [hit.record.id for hit in pets_vectorstore.store.keyword_search("bark", top_k=4).hits]
    assert set(bm25) == {"bark", "dogs", "puppy"}  # the documents holding the term (stemmed: "bark", "barking")
    # Weight 0 ranks by the keyword side alone: rank fusion keeps BM25's order, documents without the term last.
    keyword_only = pets_vectorstore.similarity_search_with_score("bark", k=4, hybrid_alpha=0.0, hybrid_fusion="rrf")
    assert [d.id for d, _ in keyword_only[:3]] == bm25 and keyword_only[3][1] == 0.0
    # Min-max fusion gives the best keyword hit 1 and the weakest 0, as Weaviate's relativeScoreFusion does.
    weighted = pets_vectorstore.similarity_search_with_score("bark", k=4, hybrid_alpha=0.0)
    assert weighted[0][0].id == bm25[0] and weighted[0][1] == 1.0
    vector_only = pets_vectorstore.similarity_search_with_score("bark", k=4, hybrid_alpha=1.0)
    assert [d.id for d, _ in vector_only] == [d.id for d, _ in vector]
    sea = pets_vectorstore.similarity_search("bark water", k=5, filter={"group": "sea"}, hybrid_alpha=0.4)
    assert {d.id for d in sea} == {"tides", "coral"}


def test_langchain_retriever_runs_hybrid_on_the_embedded_store(pets_vectorstore):
    from langchain_dual_encoder import DualEncoderRetriever

    retriever = DualEncoderRetriever(vectorstore=pets_vectorstore, k=2, hybrid_alpha=0.3)
    found = retriever.invoke("sourdough flour")
    assert found[0].id == "bread" and found[0].metadata["search_method"] == "hybrid"
    assert [d.id for d in asyncio.run(retriever.ainvoke("sourdough flour"))] == [d.id for d in found]


def test_langchain_hybrid_refusals(pets_vectorstore, embeddings):
    from langchain_dual_encoder import DualEncoderVectorStore

    from dual_encoder.embedded import EmbeddedStore

    class VectorOnlyStore(EmbeddedStore):
        supports_keyword_search = False

    vector_only = DualEncoderVectorStore(embeddings, VectorOnlyStore(None))
    vector_only.add_texts(["Owls hunt at night."], ids=["owl"])
    with pytest.raises(ConfigurationError, match="KeywordIndexedStore"):
        vector_only.similarity_search("owl", hybrid_alpha=0.5)
    wrapped = DualEncoderVectorStore(embeddings, KeywordIndexedStore(vector_only.store))
    assert wrapped.similarity_search("owls", k=1, hybrid_alpha=0.5)[0].id == "owl"
    with pytest.raises(ConfigurationError, match="weight"):
        pets_vectorstore.similarity_search("dog", hybrid_alpha=1.5)
    with pytest.raises(ConfigurationError, match="fusion"):
        pets_vectorstore.similarity_search("dog", hybrid_alpha=0.5, hybrid_fusion="max")
    with pytest.raises(ConfigurationError, match="candidates"):
        pets_vectorstore.similarity_search("dog", hybrid_alpha=0.5, hybrid_candidates=0)
    with pytest.raises(ConfigurationError, match="unknown option"):
        pets_vectorstore.similarity_search("dog", hybrid_alpha=0.5, fusion="rrf")


# ------------------------------------------------------------------------- the embedded store against Weaviate
SCIFACT = "/work/shared/data/scifact"
AGREEMENT_DOCUMENTS = 200
AGREEMENT_QUERIES = 30


def _overlap(first, second, depth):
    """Share of ``first``'s top ``depth`` ids also in ``second``'s top ``depth`` (1.0 when both are empty)."""
    a, b = set(first[:depth]), set(second[:depth])
    return 1.0 if not a and not b else len(a & b) / max(len(a), len(b))


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def scifact_slice(minilm):
    """The first SciFact test queries, every document judged for them and the first corpus documents up to
    ``AGREEMENT_DOCUMENTS``, embedded once: records ready for both stores."""
    from pathlib import Path

    import numpy as np

    from dual_encoder.evaluation import load_beir
    from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY
    from dual_encoder.stores.contract import StoredRecord

    if not Path(SCIFACT, "corpus.jsonl").is_file():
        pytest.skip(f"SciFact is not at {SCIFACT}")
    data = load_beir(SCIFACT, split="test")
    queries = dict(list(data.queries.items())[:AGREEMENT_QUERIES])
    chosen = dict.fromkeys(doc for q in queries for doc in data.qrels[q] if doc in data.corpus)
    for doc_id in data.corpus:
        if len(chosen) >= AGREEMENT_DOCUMENTS:
            break
        chosen.setdefault(doc_id)
    texts = [data.corpus[doc_id].beir_text for doc_id in chosen]
    vectors = minilm.encode_documents(texts, progress_bar=False)
    space = minilm.fingerprint.document_space
    records = [
        StoredRecord(id=doc_id, content=text, meta={DOCUMENT_SPACE_META_KEY: space}, embedding=np.asarray(v))
        for doc_id, text, v in zip(chosen, texts, vectors)
    ]
    return records, queries


@pytest.mark.scifact
def test_embedded_and_weaviate_hybrid_agree(weaviate_server, collection_name, scifact_slice, minilm):
    """The same SciFact documents in the embedded store and in a real Weaviate, top-10 lists compared query by
    query. Weaviate's native hybrid search is our weighted fusion over Weaviate's own BM25 and vector sides; the
    fused lists of the two stores differ only as far as their BM25 differs, which is the stemmer: with
    Weaviate's tokenisation and parameters the embedded keyword index returns Weaviate's top 10."""
    from dual_encoder_weaviate import KEYWORD_CONFIG_LIKE_WEAVIATE, WeaviateStore

    from dual_encoder.embedded import open_embedded_store

    records, queries = scifact_slice
    embedded = open_embedded_store(None)
    embedded.upsert(records)
    weaviate_like = open_embedded_store(None, keyword=KEYWORD_CONFIG_LIKE_WEAVIATE)
    weaviate_like.upsert(records)
    weaviate = WeaviateStore(url=weaviate_server.url, grpc_port=weaviate_server.ports.grpc, collection=collection_name)
    try:
        weaviate.upsert(records)
        assert weaviate.count() == embedded.count() == len(records)
        measured: dict[str, list[float]] = {}

        def record(name, first, second):
            for depth in (5, 10):
                measured.setdefault(f"{name}@{depth}", []).append(_overlap(first, second, depth))

        def ids(result):
            return [hit.record.id for hit in result.hits]

        for text in queries.values():
            vector = minilm.encode_query(text)
            weaviate_bm25 = ids(weaviate.keyword_search(text, top_k=10))
            record("keyword, defaults", ids(embedded.keyword_search(text, top_k=10)), weaviate_bm25)
            record("keyword, Weaviate-like", ids(weaviate_like.keyword_search(text, top_k=10)), weaviate_bm25)
            record(
                "vector",
                ids(embedded.vector_search(vector, top_k=10, exact=True)),
                ids(weaviate.vector_search(vector, top_k=10)),
            )
            native = ids(weaviate.hybrid_search(text, vector, top_k=10, alpha=DEFAULT_WEIGHT))
            record("native vs our fusion of Weaviate's sides", native, ids(hybrid_search(minilm, weaviate, text)))
            record("hybrid, defaults vs native", ids(hybrid_search(minilm, embedded, text)), native)
            record("hybrid, Weaviate-like vs native", ids(hybrid_search(minilm, weaviate_like, text)), native)
        means = {name: round(_mean(values), 3) for name, values in measured.items()}
        print(json.dumps(means, indent=1))
        assert means["vector@10"] >= 0.95, means  # HNSW on a few hundred documents is all but exact
        assert means["native vs our fusion of Weaviate's sides@10"] >= 0.95, means
        assert means["keyword, Weaviate-like@5"] >= 0.9 and means["keyword, Weaviate-like@10"] >= 0.9, means
        assert means["hybrid, Weaviate-like vs native@10"] >= 0.9, means
        # With the defaults the stemmer matches word forms Weaviate's BM25 does not, so the lists differ more.
        assert means["keyword, defaults@10"] < means["keyword, Weaviate-like@10"], means
        assert means["hybrid, defaults vs native@10"] >= 0.7, means
    finally:
        weaviate.delete_all()
        weaviate.close()
