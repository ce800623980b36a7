"""LangChain hybrid search: component scores, MMR over hybrid candidates, the retriever's hybrid options, and the
async methods giving exactly the sync results."""

from __future__ import annotations

import pytest

from dual_encoder.errors import ConfigurationError
from dual_encoder.hybrid import hybrid_search

#: Two near-copies ("dogs", "dogs-again") so that MMR has something to leave out.
BARKS = {
    "dogs": ("Dogs bark at strangers and wag their tails at friends.", {"group": "animals"}),
    "dogs-again": ("Dogs bark at strangers, and they wag their tails at friends.", {"group": "animals"}),
    "puppy": ("A puppy learns not to bark by being rewarded for quiet.", {"group": "animals"}),
    "bark": ("Tree bark protects the trunk from insects and fire.", {"group": "plants"}),
    "cats": ("Cats purr when they are content and knead soft blankets.", {"group": "animals"}),
    "tides": ("Tides are caused by the Moon's gravity pulling on the oceans.", {"group": "sea"}),
    "coral": ("Corals bleach when the water stays too warm for weeks.", {"group": "sea"}),
    "bread": ("A sourdough starter needs flour and water every day.", {"group": "food"}),
}
QUERIES = ["dogs barking at strangers", "why does the sea rise and fall", "sourdough flour", "the of and"]


@pytest.fixture(scope="module")
def embeddings():
    from langchain_dual_encoder import DualEncoderEmbeddings

    return DualEncoderEmbeddings({"model": "all-MiniLM-L6-v2"}, progress_bar=False)


@pytest.fixture(scope="module")
def vectorstore(embeddings):
    from langchain_dual_encoder import DualEncoderVectorStore

    store = DualEncoderVectorStore.embedded(embeddings)
    store.add_texts([t for t, _ in BARKS.values()], [m for _, m in BARKS.values()], ids=list(BARKS))
    return store


@pytest.fixture(scope="module")
def haystack_store(vectorstore):
    """A Haystack document store over the very same core store."""
    from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore

    document_store = EmbeddedDocumentStore()
    document_store.store = vectorstore.store
    return document_store


def _summary(found):
    return [(document.id, score, dict(document.metadata)) for document, score in found]


# ------------------------------------------------------------------------------------------ component scores
@pytest.mark.parametrize("fusion, alpha", [("weighted", 0.4), ("rrf", 0.5), ("weighted", 0.0)])
def test_hybrid_documents_carry_both_component_scores_as_haystack_does(vectorstore, haystack_store, fusion, alpha):
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderHybridRetriever, hybrid_retriever
    from langchain_dual_encoder import vectorstore as langchain_module

    assert (langchain_module.VECTOR_SCORE_KEY, langchain_module.KEYWORD_SCORE_KEY) == (
        hybrid_retriever.VECTOR_SCORE_KEY,
        hybrid_retriever.KEYWORD_SCORE_KEY,
    )
    haystack = DualEncoderHybridRetriever(document_store=haystack_store, top_k=6, fusion=fusion, weight=alpha)
    store = vectorstore.store
    for query in QUERIES:
        found, method = vectorstore.similarity_search_with_method(query, k=6, hybrid_alpha=alpha, hybrid_fusion=fusion)
        assert method == "hybrid"
        expected = haystack.run(query=query)["documents"]
        assert [(d.id, s) for d, s in found] == [(d.id, d.score) for d in expected], query
        for (document, _), reference in zip(found, expected):
            assert document.metadata["vector_score"] == reference.meta["vector_score"]
            assert document.metadata["keyword_score"] == reference.meta["keyword_score"]
            assert document.metadata["group"] == BARKS[document.id][1]["group"]
        # Each component score is that side's own score for the document, or None where it did not return it.
        keyword = {hit.record.id: hit.score for hit in store.keyword_search(query, top_k=100).hits}
        vector = vectorstore.similarity_search_with_score(query, k=len(BARKS), exact=True)
        similarity = {document.id: score for document, score in vector}
        for document, _ in found:
            assert document.metadata["keyword_score"] == keyword.get(document.id)
            assert document.metadata["vector_score"] == pytest.approx(similarity[document.id], abs=1e-6)
    stopwords_only, _ = vectorstore.similarity_search_with_method("the of and", k=3, hybrid_alpha=alpha)
    assert [d.metadata["keyword_score"] for d, _ in stopwords_only] == [None, None, None]


def test_other_searches_keep_exactly_the_metadata_documents_were_added_with(vectorstore):
    for document, _ in vectorstore.similarity_search_with_score("dogs barking", k=4, hybrid_alpha=0.4):
        assert document.metadata == BARKS[document.id][1]
    for document in vectorstore.max_marginal_relevance_search("dogs barking", k=3, hybrid_alpha=0.4):
        assert document.metadata == BARKS[document.id][1]
    plain, method = vectorstore.similarity_search_with_method("dogs barking", k=4)
    assert method == "exact" and all(d.metadata == BARKS[d.id][1] for d, _ in plain)


# ------------------------------------------------------------------------------------------------------- MMR
def test_hybrid_mmr_picks_as_the_haystack_hybrid_retriever_does(vectorstore, haystack_store, minilm):
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderHybridRetriever

    for lambda_mult in (0.3, 0.7):
        haystack = DualEncoderHybridRetriever(
            document_store=haystack_store, top_k=3, fusion="weighted", weight=0.4, mmr_lambda=lambda_mult
        )
        for query in QUERIES:
            # fetch_k covers the whole (eight-document) store, so both pick from the same fused candidates.
            picked = vectorstore.max_marginal_relevance_search(
                query, k=3, fetch_k=20, lambda_mult=lambda_mult, hybrid_alpha=0.4, hybrid_fusion="weighted"
            )
            core = hybrid_search(minilm, vectorstore.store, query, top_k=3, weight=0.4, mmr_lambda=lambda_mult)
            assert [d.id for d in picked] == [d.id for d in haystack.run(query=query)["documents"]], query
            assert [d.id for d in picked] == [hit.record.id for hit in core.hits], query


def test_hybrid_mmr_trades_fused_relevance_for_diversity(vectorstore):
    query = "dogs barking at strangers"
    ranked = [d.id for d in vectorstore.similarity_search(query, k=3, hybrid_alpha=0.4)]
    assert set(ranked[:2]) == {"dogs", "dogs-again"}  # the near-copies lead the fused ranking
    relevance_only = vectorstore.max_marginal_relevance_search(query, k=3, lambda_mult=1.0, hybrid_alpha=0.4)
    assert [d.id for d in relevance_only] == ranked
    diverse = [d.id for d in vectorstore.max_marginal_relevance_search(query, k=3, lambda_mult=0.3, hybrid_alpha=0.4)]
    assert diverse[0] == ranked[0] and diverse[1] not in {"dogs", "dogs-again"}
    # fetch_k bounds the candidates: with two, MMR can only reorder the fused top two.
    assert {
        d.id
        for d in vectorstore.max_marginal_relevance_search(query, k=2, fetch_k=2, lambda_mult=0.0, hybrid_alpha=0.4)
    } == set(ranked[:2])
    # Filters apply to the hybrid candidates.
    sea = vectorstore.max_marginal_relevance_search("water", k=3, filter={"group": "sea"}, hybrid_alpha=0.4)
    assert {d.id for d in sea} == {"tides", "coral"}
    # LangChain's own MMR retriever passes the hybrid options through.
    retriever = vectorstore.as_retriever(
        search_type="mmr", search_kwargs={"k": 3, "fetch_k": 8, "lambda_mult": 0.3, "hybrid_alpha": 0.4}
    )
    assert [d.id for d in retriever.invoke(query)] == diverse


# ------------------------------------------------------------------------------------ the LangChain retriever
def test_retriever_takes_fusion_candidates_and_mmr(vectorstore):
    from langchain_dual_encoder import DualEncoderRetriever

    query = "dogs barking at strangers"
    scores = {}
    for fusion, candidates in (("rrf", 4), ("weighted", 4), ("weighted", None)):
        retriever = DualEncoderRetriever(
            vectorstore=vectorstore, k=3, hybrid_alpha=0.5, hybrid_fusion=fusion, hybrid_candidates=candidates
        )
        expected = vectorstore.similarity_search_with_score(
            query, k=3, hybrid_alpha=0.5, hybrid_fusion=fusion, hybrid_candidates=candidates
        )
        found = retriever.invoke(query)
        assert [(d.id, d.metadata["score"]) for d in found] == [(d.id, s) for d, s in expected], (fusion, candidates)
        assert {d.metadata["search_method"] for d in found} == {"hybrid"}
        assert all("vector_score" in d.metadata and "keyword_score" in d.metadata for d in found)
        scores[fusion, candidates] = [d.metadata["score"] for d in found]
    # Each option changes the result, so none can have been dropped on the way: rank fusion gives scores of
    # about 1 / 60, and fewer candidates per side normalise the weighted scores over other lists.
    assert max(scores["rrf", 4]) < 0.02 < max(scores["weighted", 4])
    assert scores["weighted", 4] != scores["weighted", None]
    mmr = DualEncoderRetriever(vectorstore=vectorstore, k=3, hybrid_alpha=0.4, mmr_lambda=0.3, fetch_k=8)
    picked = mmr.invoke(query)
    assert [d.id for d in picked] == [
        d.id
        for d in vectorstore.max_marginal_relevance_search(query, k=3, fetch_k=8, lambda_mult=0.3, hybrid_alpha=0.4)
    ]
    fused = {d.id: s for d, s in vectorstore.similarity_search_with_score(query, k=8, hybrid_alpha=0.4)}
    assert all(d.metadata["score"] == fused[d.id] for d in picked)  # the score stays the fused one
    vector_mmr = DualEncoderRetriever(vectorstore=vectorstore, k=2, mmr_lambda=0.3).invoke(query)
    assert [d.id for d in vector_mmr] == [
        d.id for d in vectorstore.max_marginal_relevance_search(query, k=2, lambda_mult=0.3)
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"hybrid_alpha": 0.5, "hybrid_fusion": "max"}, "Unknown fusion 'max'"),
        ({"hybrid_alpha": 0.5, "hybrid_candidates": 0}, "candidates must be a positive integer"),
        ({"hybrid_alpha": 1.5}, "weight must be a number from 0"),
        ({"hybrid_alpha": "most"}, "hybrid_alpha must be a number"),
        ({"hybrid_fusion": "rrf"}, "without hybrid_alpha"),
        ({"hybrid_candidates": 10}, "without hybrid_alpha"),
        ({"mmr_lambda": 1.5}, "lambda_mult"),
        ({"fetch_k": 10}, "give mmr_lambda too"),
        ({"mmr_lambda": 0.5, "fetch_k": 0}, "fetch_k must be a positive integer"),
    ],
)
def test_retriever_options_are_checked_when_it_is_built(vectorstore, options, message):
    from langchain_dual_encoder import DualEncoderRetriever

    with pytest.raises(ValueError, match=message):  # pydantic wraps the ConfigurationError, a ValueError
        DualEncoderRetriever(vectorstore=vectorstore, k=3, **options)


def test_misplaced_and_unknown_options_are_refused_before_the_query_is_encoded(vectorstore, embeddings, monkeypatch):
    encoded = []
    original = embeddings.encoder.encode_query
    monkeypatch.setattr(
        embeddings.encoder, "encode_query", lambda text, **kw: encoded.append(text) or original(text, **kw)
    )
    with pytest.raises(ConfigurationError, match="without hybrid_alpha"):
        vectorstore.similarity_search("dogs", hybrid_fusion="rrf")
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) \['mmr_lambda'\]"):
        vectorstore.similarity_search_with_score("dogs", mmr_lambda=0.5)
    with pytest.raises(ConfigurationError, match="weight must be a number from 0"):
        vectorstore.max_marginal_relevance_search("dogs", hybrid_alpha=2.0)
    with pytest.raises(ConfigurationError, match="lambda_mult"):
        vectorstore.max_marginal_relevance_search("dogs", lambda_mult=-0.1, hybrid_alpha=0.4)
    with pytest.raises(ConfigurationError, match="fused scores"):
        vectorstore.similarity_search_with_relevance_scores("dogs", k=2, hybrid_alpha=0.4)
    assert encoded == []


# ------------------------------------------------------------------------------------------- sync and async
async def test_every_async_search_gives_the_sync_results(vectorstore):
    from langchain_dual_encoder import DualEncoderRetriever

    query = "dogs barking at strangers"
    for options in ({}, {"hybrid_alpha": 0.4}, {"hybrid_alpha": 0.6, "hybrid_fusion": "rrf", "hybrid_candidates": 5}):
        assert _summary(await vectorstore.asimilarity_search_with_score(query, 4, **options)) == _summary(
            vectorstore.similarity_search_with_score(query, 4, **options)
        )
        found, method = vectorstore.similarity_search_with_method(query, 4, {"group": "animals"}, **options)
        found_async, method_async = await vectorstore.asimilarity_search_with_method(
            query, 4, {"group": "animals"}, **options
        )
        assert (_summary(found_async), method_async) == (_summary(found), method)
        assert await vectorstore.asimilarity_search(query, 3, **options) == vectorstore.similarity_search(
            query, 3, **options
        )
        assert await vectorstore.amax_marginal_relevance_search(
            query, 3, fetch_k=6, lambda_mult=0.3, **options
        ) == vectorstore.max_marginal_relevance_search(query, 3, fetch_k=6, lambda_mult=0.3, **options)
        retriever = DualEncoderRetriever(vectorstore=vectorstore, k=3, mmr_lambda=0.5, **options)
        assert await retriever.ainvoke(query) == retriever.invoke(query)
    with pytest.raises(ConfigurationError, match="without hybrid_alpha"):
        await vectorstore.asimilarity_search(query, hybrid_fusion="rrf")
