"""BM25 keyword index, fusion, MMR, hybrid search and the Haystack keyword/hybrid retrievers."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from dual_encoder.errors import ConfigurationError, FilterError
from dual_encoder.fusion import FusedHit, fuse, fuse_scores
from dual_encoder.hybrid import KeywordIndexedStore, hybrid_search, require_keyword_search
from dual_encoder.keyword import KeywordConfig, KeywordIndex, KeywordIndexError, tokenize
from dual_encoder.mmr import mmr
from dual_encoder.stores.contract import KeywordSearchUnsupportedError, SearchHit, SearchResult, StoredRecord

CORPUS = [
    "The cat sat on the mat.",
    "Dogs bark loudly at cats and other dogs.",
    "Quantum computers use qubits for computation.",
    "A barking dog never bites, says the proverb.",
    "Vitamin D supplements and bone fracture risk in older adults.",
]


def _index(texts=CORPUS, config=None) -> KeywordIndex:
    index = KeywordIndex(config)
    index.set_rows(np.arange(len(texts)), texts)
    return index


def _reference_bm25(texts, query, config=KeywordConfig()):
    """BM25 (Lucene form) written out directly over the tokenised texts."""
    docs = [tokenize(t, config) for t in texts]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    query_terms = tokenize(query, config)
    dfs = {term: sum(term in d for d in docs) for term in query_terms}
    scores = []
    for doc in docs:
        score = 0.0
        for term in query_terms:
            df = dfs[term]
            tf = doc.count(term)
            if df == 0 or tf == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            score += idf * tf / (tf + config.k1 * (1 - config.b + config.b * len(doc) / avgdl))
        scores.append(score)
    return np.array(scores)


# ------------------------------------------------------------------------------------------- keyword
def test_bm25_ranks_by_the_formula_and_stems():
    index = _index()
    slots, scores = index.search("barking dogs", k=5)
    reference = _reference_bm25(CORPUS, "barking dogs")
    assert slots.tolist() == [i for i in np.argsort(-reference, kind="stable") if reference[i] > 0]
    np.testing.assert_allclose(scores, reference[slots], rtol=1e-5)
    assert set(slots.tolist()) == {1, 3}  # "barking" and "bark", "dogs" and "dog" meet through the stemmer


def test_scores_equal_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    import Stemmer

    texts = CORPUS + ["Cats and dogs, dogs and cats: a study of pets.", "Bone density and vitamin intake."]
    index = _index(texts, KeywordConfig(k1=1.5, b=0.75))
    reference = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    stemmer = Stemmer.Stemmer("english")
    reference.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    for query in ("dogs and cats", "vitamin bone", "quantum"):
        slots, scores = index.search(query, k=len(texts))
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)[0]
        expected = reference.get_scores(tokens)
        np.testing.assert_allclose(scores, expected[slots], rtol=1e-5)
        assert set(slots.tolist()) == set(np.flatnonzero(expected > 0).tolist())


def test_stemming_and_stopwords_are_configurable():
    assert tokenize("The running dogs") == ["run", "dog"]
    assert tokenize("The running dogs", KeywordConfig(stemmer=None)) == ["running", "dogs"]
    assert tokenize("The running dogs", KeywordConfig(stopwords=None)) == ["the", "run", "dog"]
    assert tokenize("The running dogs", KeywordConfig(stopwords=["dogs"], stemmer=None)) == ["the", "running"]
    plain = _index(config=KeywordConfig(stemmer=None))
    assert plain.search("barking", k=5)[0].tolist() == [3]  # "bark" no longer matches
    with pytest.raises(ConfigurationError, match="stemmer"):
        KeywordIndex(KeywordConfig(stemmer="klingon"))
    with pytest.raises(ConfigurationError, match="stopword"):
        KeywordIndex(KeywordConfig(stopwords="klingon"))
    with pytest.raises(ConfigurationError, match="b must be"):
        KeywordConfig(b=2)


def test_stopword_or_punctuation_query_matches_nothing():
    index = _index()
    for query in ("the and of", "?!... ,;", "", "a"):
        slots, scores = index.search(query, k=3)
        assert slots.shape == (0,) and scores.shape == (0,)


def test_non_english_text():
    texts = ["Der schnelle braune Fuchs springt.", "Les chiens aboient.", "Быстрая собака бежит.", "東京は日本の首都"]
    index = _index(texts)
    assert index.search("fuchs", k=2)[0].tolist() == [0]
    assert index.search("собака", k=2)[0].tolist() == [2]
    assert index.search("東京は日本の首都", k=2)[0].tolist() == [3]  # a run of CJK characters is one word
    german = _index(["Die Häuser sind groß.", "Ein Haus am See."], KeywordConfig(stemmer="german", stopwords="de"))
    assert set(german.search("Häusern", k=2)[0].tolist()) == {0, 1}


def test_empty_index_and_bad_k():
    index = KeywordIndex()
    assert index.search("anything", k=5)[0].shape == (0,)
    assert len(index) == 0
    with pytest.raises(ConfigurationError):
        index.search("x", k=0)


def test_updates_and_deletes_are_reflected_exactly():
    index = _index()
    index.set_rows([2], ["Dogs everywhere: dog parks, dog food."])  # overwrite
    index.clear_rows([1, 99])  # 99 never held anything
    texts = {0: CORPUS[0], 2: "Dogs everywhere: dog parks, dog food.", 3: CORPUS[3], 4: CORPUS[4]}
    live = sorted(texts)
    reference = _reference_bm25([texts[s] for s in live], "dog")
    slots, scores = index.search("dog", k=5)
    expected = {live[i]: reference[i] for i in range(len(live)) if reference[i] > 0}
    assert dict(zip(slots.tolist(), scores.tolist())) == pytest.approx(expected, rel=1e-5)
    assert slots[0] == 2 and 1 not in slots.tolist()
    assert len(index) == 4


def test_many_small_writes_merge_and_stay_exact():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    # A large first segment, so that small writes pile up as segments merged among themselves first.
    truth = {slot: " ".join(rng.choice(words, size=10)) for slot in range(400, 3400)}
    index = KeywordIndex(KeywordConfig(stemmer=None, stopwords=None))
    index.set_rows(list(truth), list(truth.values()))
    for step in range(300):
        slots = rng.integers(0, 400, size=8)
        texts = [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in slots]
        index.set_rows(slots, texts)
        truth.update(zip(slots.tolist(), texts))
        assert len(index._segments) <= 10
        if step % 7 == 0:
            gone = rng.integers(0, 500, size=5)
            index.clear_rows(gone)
            for slot in gone.tolist():
                truth.pop(slot, None)
    live = sorted(truth)
    config = KeywordConfig(stemmer=None, stopwords=None)
    for query in ("w1 w2", "w7", "w3 w3 w40"):
        reference = _reference_bm25([truth[s] for s in live], query, config)
        slots, scores = index.search(query, k=len(live))
        expected = {live[i]: reference[i] for i in range(len(live)) if reference[i] > 0}
        assert dict(zip(slots.tolist(), scores.tolist())) == pytest.approx(expected, rel=1e-4)
    assert len(index) == len(truth)


def test_allowed_mask_is_honoured():
    index = _index()
    allowed = np.zeros(5, dtype=bool)
    allowed[3] = True
    assert index.search("dog", k=5, allowed=allowed)[0].tolist() == [3]
    assert index.search("dog", k=5, allowed=np.ones(2, dtype=bool))[0].tolist() == [1]  # beyond the mask: out


def test_persistence_round_trip(tmp_path):
    index = _index(config=KeywordConfig(k1=1.1, b=0.6, stopwords=["cat"]))
    index.set_rows([7], ["A dog in slot seven."])
    index.clear_rows([0])
    index.revision = 42
    index.save(tmp_path / "kw")
    index.save(tmp_path / "kw")  # a second save replaces the first's arrays
    assert len(list((tmp_path / "kw").glob("*.npy"))) == 4
    loaded = KeywordIndex.load(tmp_path / "kw")
    assert loaded.config == index.config and loaded.revision == 42 and len(loaded) == len(index)
    for query in ("dog", "cat mat", "vitamin"):
        a, b = index.search(query, k=10), loaded.search(query, k=10)
        assert a[0].tolist() == b[0].tolist()
        np.testing.assert_allclose(a[1], b[1])
    loaded.set_rows([8], ["another dog"])  # a loaded index keeps taking writes
    assert 8 in loaded.search("dog", k=10)[0].tolist()
    assert "dual_encoder" not in (tmp_path / "kw" / "keyword.json").read_text()  # JSON and .npy only, no pickle


def test_missing_or_damaged_index_is_a_clear_error(tmp_path):
    with pytest.raises(KeywordIndexError, match="No keyword index"):
        KeywordIndex.load(tmp_path)
    _index().save(tmp_path)
    info = json.loads((tmp_path / "keyword.json").read_text())
    info["format"] = 99
    (tmp_path / "keyword.json").write_text(json.dumps(info))
    with pytest.raises(KeywordIndexError, match="format"):
        KeywordIndex.load(tmp_path)


# -------------------------------------------------------------------------------------------- fusion
def test_rrf_math():
    fused = dict(fuse_scores([("a", 0.9), ("b", 0.8)], [("b", 12.0), ("c", 3.0)], method="rrf", weight=0.5))
    assert fused["a"] == pytest.approx(0.5 / 61)
    assert fused["b"] == pytest.approx(0.5 / 62 + 0.5 / 61)
    assert fused["c"] == pytest.approx(0.5 / 62)
    order = [key for key, _ in fuse_scores([("a", 0.9), ("b", 0.8)], [("b", 12.0), ("c", 3.0)])]
    assert order == ["b", "a", "c"]  # a before c: equal fused scores, a has the better vector rank
    keyword_only = fuse_scores([("a", 1.0)], [("c", 1.0)], weight=0.0)
    assert keyword_only[0] == ("c", pytest.approx(1 / 61))


def test_weighted_fusion_math():
    fused = dict(
        fuse_scores([("a", 0.9), ("b", 0.7), ("c", 0.5)], [("c", 10.0), ("a", 5.0)], method="weighted", weight=0.25)
    )
    assert fused["a"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.0)
    assert fused["b"] == pytest.approx(0.25 * 0.5)
    assert fused["c"] == pytest.approx(0.25 * 0.0 + 0.75 * 1.0)
    assert dict(fuse_scores([("a", 0.3)], [], method="weighted", weight=0.5)) == {"a": pytest.approx(0.5)}
    with pytest.raises(ConfigurationError, match="weight"):
        fuse_scores([], [], weight=1.5)
    with pytest.raises(ConfigurationError, match="fusion"):
        fuse_scores([], [], method="max")  # type: ignore[arg-type]


def test_fuse_keeps_both_component_scores():
    record = lambda key: StoredRecord(id=key, content=key)  # noqa: E731
    vector = SearchResult([SearchHit(record("a"), 0.9), SearchHit(record("b"), 0.5)], method="exact")
    keyword = SearchResult([SearchHit(record("b"), 7.5)], method="keyword")
    hits = fuse(vector, keyword, top_k=2)
    assert [h.record.id for h in hits] == ["b", "a"]
    assert hits[0] == FusedHit(hits[0].record, hits[0].score, 0.5, 7.5, 2, 1)
    assert hits[1].keyword_score is None and hits[1].keyword_rank is None and hits[1].vector_rank == 1


# ----------------------------------------------------------------------------------------------- MMR
def test_mmr_prefers_diverse_documents():
    query = np.array([1.0, 0.0, 0.0])
    candidates = np.array([[0.9, 0.1, 0.0], [0.89, 0.11, 0.0], [0.7, 0.0, 0.7]])
    assert mmr(query, candidates, k=2, lambda_=1.0) == [0, 1]
    assert mmr(query, candidates, k=2, lambda_=0.5) == [0, 2]  # the near-duplicate of 0 drops out
    assert mmr(query, candidates, k=5, lambda_=0.5) == [0, 2, 1]
    assert mmr(None, candidates, k=2, lambda_=0.5, relevance=np.array([0.1, 5.0, 4.0])) == [1, 2]
    assert mmr(query, np.zeros((0, 3)), k=3) == []
    with pytest.raises(ConfigurationError, match="lambda"):
        mmr(query, candidates, k=1, lambda_=2.0)


# -------------------------------------------------------------------------------------------- hybrid
def _store_without_keyword_search():
    from dual_encoder.embedded import EmbeddedStore

    class VectorOnlyStore(EmbeddedStore):
        supports_keyword_search = False

    return VectorOnlyStore(None)


@pytest.fixture(scope="module")
def pets_store(minilm):
    from dual_encoder.documents import DocumentInput
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.search import index_documents

    store = KeywordIndexedStore(open_embedded_store(None))
    documents = [
        DocumentInput(id=f"d{i}", content=text, meta={"group": "animals" if i in (0, 1, 3) else "other"})
        for i, text in enumerate(CORPUS)
    ]
    index_documents(minilm, store, documents)
    return store


def test_hybrid_search_fuses_and_filters(pets_store, minilm):
    result = hybrid_search(minilm, pets_store, "barking dogs", top_k=3)
    assert result.hits[0].record.id in {"d1", "d3"}
    assert {h.record.id for h in result.hits[:2]} == {"d1", "d3"}
    both = [h for h in result.hits if h.keyword_score is not None]
    assert both and all(h.vector_score is not None for h in both)
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    other = {"field": "meta.group", "operator": "==", "value": "other"}
    filtered = hybrid_search(minilm, pets_store, "dog", top_k=5, filters=other)
    assert {h.record.id for h in filtered.hits} <= {"d2", "d4"}
    stopwords_only = hybrid_search(minilm, pets_store, "the of and", top_k=2)
    assert len(stopwords_only.hits) == 2 and all(h.keyword_score is None for h in stopwords_only.hits)
    with pytest.raises(FilterError):
        hybrid_search(minilm, pets_store, "dog", filters={"field": "meta.group", "operator": "~"})


def test_hybrid_tracks_writes_and_deletes(minilm):
    from dual_encoder.documents import DocumentInput
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.search import index_documents

    store = KeywordIndexedStore(open_embedded_store(None))
    assert hybrid_search(minilm, store, "anything", top_k=3).hits == []  # empty store
    documents = [DocumentInput(id="x", content="zebra stripes"), DocumentInput(id="y", content="owl")]
    index_documents(minilm, store, documents)
    assert store.keyword_search("zebra", top_k=3).hits[0].record.id == "x"
    store.delete(["x"])
    assert store.keyword_search("zebra", top_k=3).hits == []
    assert [h.record.id for h in hybrid_search(minilm, store, "zebra", top_k=3).hits] == ["y"]


def test_hybrid_mmr_and_refusal(pets_store, minilm):
    plain = hybrid_search(minilm, pets_store, "dog", top_k=3)
    diverse = hybrid_search(minilm, pets_store, "dog", top_k=3, mmr_lambda=0.0)
    assert {h.record.id for h in diverse.hits} != {h.record.id for h in plain.hits} or len(plain.hits) < 3
    assert diverse.hits[0].record.id == plain.hits[0].record.id
    with pytest.raises(KeywordSearchUnsupportedError, match="KeywordIndexedStore"):
        require_keyword_search(_store_without_keyword_search())


# ---------------------------------------------------------------------------------- Haystack retrievers
@pytest.fixture(scope="module")
def haystack_store(pets_store):
    from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore

    document_store = EmbeddedDocumentStore()
    document_store.store = pets_store
    return document_store


def test_haystack_keyword_retriever(haystack_store):
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderKeywordRetriever

    retriever = DualEncoderKeywordRetriever(document_store=haystack_store, top_k=2)
    documents = retriever.run(query="barking dog")["documents"]
    assert {d.id for d in documents} == {"d1", "d3"} and documents[0].score >= documents[1].score > 0
    assert asyncio.run(retriever.run_async(query="barking dog"))["documents"] == documents
    assert retriever.run(query="the")["documents"] == []
    data = retriever.to_dict()
    assert data["init_parameters"]["top_k"] == 2
    restored = DualEncoderKeywordRetriever.from_dict(data)
    assert restored.to_dict() == data
    restored.document_store.store = _store_without_keyword_search()
    with pytest.raises(KeywordSearchUnsupportedError, match="keyword"):
        restored.run(query="dog")


def test_haystack_hybrid_retriever(haystack_store):
    from haystack import Pipeline
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderHybridRetriever

    retriever = DualEncoderHybridRetriever(
        document_store=haystack_store,
        encoder="all-MiniLM-L6-v2",
        top_k=3,
        fusion="weighted",
        weight=0.3,
        candidates=4,
        mmr_lambda=0.7,
    )
    documents = retriever.run(query="barking dogs")["documents"]
    assert len(documents) == 3
    assert all("vector_score" in d.meta and "keyword_score" in d.meta for d in documents)
    assert any(d.meta["keyword_score"] is not None for d in documents)
    assert asyncio.run(retriever.run_async(query="barking dogs"))["documents"] == documents
    data = retriever.to_dict()
    for key, value in {"fusion": "weighted", "weight": 0.3, "candidates": 4, "mmr_lambda": 0.7, "top_k": 3}.items():
        assert data["init_parameters"][key] == value
    assert DualEncoderHybridRetriever.from_dict(data).to_dict() == data
    pipeline = Pipeline()
    pipeline.add_component("retriever", DualEncoderHybridRetriever.from_dict(data))
    assert Pipeline.loads(pipeline.dumps()).to_dict() == pipeline.to_dict()
    with pytest.raises(ValueError, match="fusion"):
        DualEncoderHybridRetriever(document_store=haystack_store, fusion="max")


# ------------------------------------------------------------------------------- the embedded store's own
def test_embedded_store_keyword_search_persists_and_follows_changes(tmp_path):
    from dual_encoder.embedded import EmbeddedStore

    assert EmbeddedStore.supports_keyword_search

    def record(key, text, group="a"):
        vector = np.random.default_rng(len(key)).normal(size=4).astype(np.float32)
        return StoredRecord(id=key, content=text, meta={"group": group}, embedding=vector)

    store = EmbeddedStore(tmp_path / "s")
    store.upsert([record("a", "cats purr"), record("b", "dogs bark at cats", "b"), record("c", "a barking dog")])
    assert [h.record.id for h in store.keyword_search("dog", top_k=5).hits] == ["c", "b"]
    group_b = {"field": "meta.group", "operator": "==", "value": "b"}
    assert [h.record.id for h in store.keyword_search("dog", top_k=5, filters=group_b).hits] == ["b"]
    store.close()
    writer = EmbeddedStore(tmp_path / "s")
    writer.upsert([record("d", "dog dog dog")])
    writer.delete(["c"])
    writer.close()
    reopened = EmbeddedStore(tmp_path / "s")  # the saved index plus the change log since it
    hits = reopened.keyword_search("dog", top_k=5).hits
    assert [h.record.id for h in hits] == ["d", "b"]
    fresh = KeywordIndex()
    fresh.set_rows([0, 1, 2], ["dog dog dog", "dogs bark at cats", "cats purr"])  # what the store holds now
    np.testing.assert_allclose([h.score for h in hits], fresh.search("dog", 5)[1], rtol=1e-5)
    other = EmbeddedStore(tmp_path / "s")  # another instance on the directory follows the writes
    reopened.upsert([record("e", "zebra")])
    assert [h.record.id for h in other.keyword_search("zebra", top_k=5).hits] == ["e"]


def _hybrid_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "hybrid_pipeline.py"
    spec = importlib.util.spec_from_file_location("hybrid_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path.with_name("hybrid_query_pipeline.yaml")


def test_hybrid_yaml_example_matches_its_builder(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    module, yaml_file = _hybrid_example()
    assert yaml.safe_load(yaml_file.read_text()) == module.build_hybrid_query_pipeline().to_dict(), "regenerate it"


def test_hybrid_yaml_example_runs_on_the_embedded_store(tmp_path, monkeypatch):
    from haystack import Pipeline

    monkeypatch.chdir(tmp_path)
    module, yaml_file = _hybrid_example()
    builders = module.build_pipelines
    builders.build_indexing_pipeline().run({"embedder": {"documents": builders.sample_documents()}})
    pipeline = Pipeline.loads(yaml_file.read_text())
    question = "Why do we have summer and winter?"
    result = pipeline.run(
        {"retriever": {"query": question}, "prompt_builder": {"question": question}}, include_outputs_from={"retriever"}
    )
    documents = result["retriever"]["documents"]
    # "seasons" shares no word with the question (bm25s' English stopwords are Lucene's short list), so only
    # the vector side finds it; the keyword side brings in documents that mention winter.
    assert "seasons" in [d.id for d in documents] and len(documents) == 3
    assert all("vector_score" in d.meta and "keyword_score" in d.meta for d in documents)
    assert any(d.meta["keyword_score"] is not None for d in documents)
