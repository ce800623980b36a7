"""Exact search's quantised first pass (dual_encoder.embedded.quantised): the candidate set always holds the
exact float32 top k (ties included), on random and adversarial data, with and without filters, and the store
keeps the codes current across writes, deletes, reopening and other processes' writes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from dual_encoder.embedded import EmbeddedStore, quantised
from dual_encoder.embedded.quantised import QuantisedVectors
from dual_encoder.embedded.storage import save_arrays_atomically
from dual_encoder.stores.contract import StoredRecord

YEAR_FILTER = {"field": "meta.year", "operator": ">=", "value": 2015}
SOURCE_FILTER = {"field": "meta.source", "operator": "in", "value": ["web", "book"]}


def _reference(matrix: np.ndarray, query: np.ndarray, similarity: str, allowed: np.ndarray) -> np.ndarray:
    """float64 scores of every row (``-inf`` where not allowed), as the store defines them."""
    rows = matrix.astype(np.float64)
    scores = rows @ query.astype(np.float64)
    if similarity == "cosine":
        norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(query.astype(np.float64))
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    return np.where(allowed, scores, -np.inf)


def _must_contain(scores: np.ndarray, k: int, slack: float = 1e-5) -> np.ndarray:
    """Rows any exact top-k must consider: at or within float32 noise of the k-th best score."""
    kth = np.sort(scores)[::-1][k - 1]
    return np.flatnonzero(scores >= kth - slack)


def _query(codes: QuantisedVectors, query: np.ndarray) -> np.ndarray:
    return query / np.linalg.norm(query) if codes.similarity == "cosine" else query


def _check_candidates(codes, matrix, query, k, allowed, *, max_fraction=0.05):
    candidates = codes.candidates(_query(codes, query), k, allowed)
    assert candidates is not None, "the scan should narrow the rows down"
    scores = _reference(matrix, query, codes.similarity, allowed)
    needed = set(_must_contain(scores, k, slack=0.0).tolist())
    missing = needed - set(candidates.tolist())
    assert not missing, f"candidates miss rows of the exact top {k}: {sorted(missing)[:5]}"
    assert allowed[candidates].all(), "a candidate that the mask does not allow"
    # The query's quantisation adds to the codes' own error bound, so the set is a few times k, never most rows.
    assert len(candidates) <= max(4 * k + 16, max_fraction * np.count_nonzero(allowed)), len(candidates)
    return candidates


# ------------------------------------------------------------------------------------------ the module
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_candidates_hold_the_exact_top_k_on_random_data(similarity):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((20_000, 64)).astype(np.float32)
    matrix[::5] *= 3.0  # rows of different lengths: dot and cosine rank them differently
    codes = QuantisedVectors(64, similarity, vectors=lambda slots: matrix[slots])
    codes.set_rows(np.arange(len(matrix)), matrix)
    assert len(codes) == len(matrix) and codes.outliers == 0
    for trial in range(24):
        query = rng.standard_normal(64).astype(np.float32)
        fraction = [1.0, 0.25, 0.02][trial % 3]
        allowed = rng.random(len(matrix)) < fraction
        for k in (1, 10, 50):
            _check_candidates(codes, matrix, query, k, allowed)


def test_the_bound_holds_for_every_row():
    rng = np.random.default_rng(1)
    matrix = (rng.standard_normal((3000, 48)) * rng.uniform(0.01, 5, 48)).astype(np.float32)
    matrix[:, 7] = 0.25  # a constant dimension
    codes = QuantisedVectors(48, "dot", vectors=lambda slots: matrix[slots])
    codes.set_rows(np.arange(len(matrix)), matrix)
    book = codes._book
    signed = book.codes[: len(matrix)].astype(np.int64)  # c - 128
    step = book.width.astype(np.float64) / 255
    decoded = book.lower + (signed + 128.5) * step
    for _ in range(20):
        query = rng.standard_normal(48).astype(np.float32) * rng.uniform(0.1, 10)
        query64 = query.astype(np.float64)
        error = np.abs(matrix.astype(np.float64) @ query64 - decoded @ query64)
        bound = codes.error_bound(query)
        assert error.max() <= bound
        assert bound < 0.05 * np.abs(matrix @ query).max(), "the bound is tight enough to prune"
        # The scan's integer dots: base + s * D is within E_w of the decoded score.
        weights = quantised._QueryWeights.of(book, query64)
        dots = signed @ weights.quantised[0].astype(np.int64)
        base = query64 @ (book.lower + 128.5 * step)
        query_error = np.abs(decoded @ query64 - (base + weights.scale * dots))
        assert query_error.max() <= codes.query_error_bound(query) == weights.error
        assert weights.error < 0.05 * np.abs(matrix @ query).max(), "the query's error is small enough to prune"


def test_ties_at_the_kth_score_are_all_candidates():
    # Integer vectors: every score is exact in float32, and 300 rows tie at the best score.
    rng = np.random.default_rng(2)
    matrix = rng.integers(-3, 4, size=(10_000, 32)).astype(np.float32)
    best = np.full(32, 3, np.float32)
    tied = rng.choice(len(matrix), 300, replace=False)
    matrix[tied] = best
    codes = QuantisedVectors(32, "dot", vectors=lambda slots: matrix[slots])
    codes.set_rows(np.arange(len(matrix)), matrix)
    candidates = codes.candidates(best, 10, np.ones(len(matrix), bool))
    assert candidates is not None and set(tied.tolist()) <= set(candidates.tolist())


def test_near_ties_within_the_bound_fall_back_or_stay_exact():
    # 3,000 rows within a fraction of a quantisation step of each other around the query: the bound cannot
    # separate them, so the candidates must hold all of them (or the scan gives up, never guesses).
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((20_000, 32)).astype(np.float32)
    centre = rng.standard_normal(32).astype(np.float32)
    crowd = rng.choice(len(matrix), 3000, replace=False)
    matrix[crowd] = centre + rng.standard_normal((3000, 32)).astype(np.float32) * 1e-4
    for max_candidates in (64, 8192):
        codes = QuantisedVectors(32, "cosine", vectors=lambda slots: matrix[slots], max_candidates=max_candidates)
        codes.set_rows(np.arange(len(matrix)), matrix)
        allowed = np.ones(len(matrix), bool)
        candidates = codes.candidates(_query(codes, centre), 10, allowed)
        if max_candidates == 64:
            assert candidates is None, "64 rows cannot hold 3,000 near-ties: the caller must scan in float32"
        else:
            assert candidates is not None
            scores = _reference(matrix, centre, "cosine", allowed)
            assert set(_must_contain(scores, 10, slack=0.0).tolist()) <= set(candidates.tolist())


def test_rows_outside_the_ranges_are_always_candidates_and_trigger_a_rebuild():
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((12_000, 32)).astype(np.float32) * 0.1
    codes = QuantisedVectors(32, "dot", vectors=lambda slots: matrix[slots])
    codes.set_rows(np.arange(10_000), matrix[:10_000])
    query = rng.standard_normal(32).astype(np.float32)
    # Far outside the ranges the codes clamp, so the approximate score says nothing: it must still win.
    matrix[10_000] = query * 50
    codes.set_rows(np.array([10_000]), matrix[10_000:10_001])
    assert codes.outliers == 1
    allowed = np.zeros(len(matrix), bool)
    allowed[:10_001] = True
    candidates = _check_candidates(codes, matrix, query, 10, allowed)
    assert 10_000 in candidates
    # Many outliers: the ranges are recomputed from every row and all rows re-encoded.
    matrix[10_001:] *= 30
    codes.set_rows(np.arange(10_001, 12_000), matrix[10_001:])
    assert codes.rebuilds == 1 and codes.outliers == 0
    _check_candidates(codes, matrix, query, 10, np.ones(len(matrix), bool))
    codes.clear_rows(np.array([10_000]))
    allowed = np.ones(len(matrix), bool)
    allowed[10_000] = False
    assert 10_000 not in _check_candidates(codes, matrix, query, 10, allowed)


def test_zero_vectors_and_a_zero_query():
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((5000, 16)).astype(np.float32)
    matrix[:100] = 0
    codes = QuantisedVectors(16, "cosine", vectors=lambda slots: matrix[slots])
    codes.set_rows(np.arange(len(matrix)), matrix)
    allowed = np.ones(len(matrix), bool)
    _check_candidates(codes, matrix, rng.standard_normal(16).astype(np.float32), 10, allowed)
    # Every score is 0 for a zero query: all rows tie, so nothing can be pruned.
    everything = codes.candidates(np.zeros(16, np.float32), 10, allowed)
    assert everything is None or len(everything) == len(matrix)


def test_allowed_rows_without_codes_are_refused():
    matrix = np.random.default_rng(6).standard_normal((2000, 8)).astype(np.float32)
    codes = QuantisedVectors(8, "dot")
    codes.set_rows(np.arange(1000), matrix[:1000])
    codes.clear_rows(np.array([3]))
    allowed = np.zeros(1500, bool)
    allowed[:1000] = True
    with pytest.raises(ValueError, match="hold no code"):
        codes.candidates(matrix[0], 10, allowed)
    allowed[3] = False
    assert codes.candidates(matrix[0], 10, allowed) is not None
    allowed[1200] = True
    with pytest.raises(ValueError, match="hold no code|beyond"):
        codes.candidates(matrix[0], 10, allowed)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="similarity"):
        QuantisedVectors(8, "l2")
    codes = QuantisedVectors(8, "dot")
    with pytest.raises(ValueError, match="one 8-d vector per slot"):
        codes.set_rows(np.arange(3), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="same slot twice"):
        codes.set_rows(np.array([1, 1]), np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="dimension"):
        codes.set_rows(np.arange(2), np.ones((2, 8), np.float32)) or codes.candidates(np.ones(4), 1, np.ones(2, bool))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_save_load_round_trip(tmp_path, similarity):
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((6000, 24)).astype(np.float32)
    codes = QuantisedVectors(24, similarity, vectors=lambda slots: matrix[slots])
    codes.set_rows(np.arange(6000), matrix)
    codes.clear_rows(np.arange(0, 6000, 11))
    codes.save(tmp_path / "codes.npz")
    loaded = QuantisedVectors.load(tmp_path / "codes.npz", 24, similarity, vectors=lambda slots: matrix[slots])
    assert np.array_equal(loaded.encoded(6000), codes.encoded(6000))
    allowed = codes.encoded(6000)
    query = _query(codes, rng.standard_normal(24).astype(np.float32))
    assert np.array_equal(loaded.candidates(query, 10, allowed), codes.candidates(query, 10, allowed))
    assert loaded.error_bound(query) == codes.error_bound(query)
    with pytest.raises(ValueError, match="not 24-d dot|not 24-d cosine"):
        QuantisedVectors.load(tmp_path / "codes.npz", 24, "dot" if similarity == "cosine" else "cosine")
    # A version-1 file (unsigned codes, no code norm) loads as the same codes, with the code norm measured.
    with np.load(tmp_path / "codes.npz") as saved:
        arrays = {name: saved[name] for name in saved.files}
    header = json.loads(arrays["header"].tobytes())
    del header["code_norm_max"]
    header["version"] = 1
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    arrays["codes"] = arrays["codes"].view(np.uint8) ^ np.uint8(0x80)
    save_arrays_atomically(tmp_path / "v1.npz", arrays)
    old = QuantisedVectors.load(tmp_path / "v1.npz", 24, similarity)
    np.testing.assert_array_equal(old._book.codes[:6000], codes._book.codes[:6000])
    assert old.query_error_bound(query) == pytest.approx(codes.query_error_bound(query), rel=1e-3)
    assert old.query_error_bound(query) >= codes.query_error_bound(query) * (1 - 1e-9)
    assert set(codes.candidates(query, 10, allowed).tolist()) <= set(old.candidates(query, 10, allowed).tolist())
    old.save(tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as saved:
        assert json.loads(saved["header"].tobytes())["version"] == 2 and saved["codes"].dtype == np.int8
    (tmp_path / "codes.npz").write_bytes((tmp_path / "codes.npz").read_bytes()[:500])
    with pytest.raises(ValueError, match="codes.npz"):
        QuantisedVectors.load(tmp_path / "codes.npz", 24, similarity)


# ------------------------------------------------------------------------------------------- the store
def _store_records(count: int, dim: int, seed: int, start: int = 0) -> list[StoredRecord]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return [
        StoredRecord(
            id=f"doc-{start + i}",
            content=f"text {start + i}",
            meta={"year": 2000 + (start + i) % 24, "source": ["web", "paper", "book", "news"][(start + i) % 4]},
            embedding=vectors[i],
        )
        for i in range(count)
    ]


def _spy(monkeypatch) -> list:
    """Records what every candidates() call returned, to prove the codes answered."""
    answers: list = []
    original = QuantisedVectors.candidates

    def spy(self, query, k, allowed):
        result = original(self, query, k, allowed)
        answers.append(result)
        return result

    monkeypatch.setattr(QuantisedVectors, "candidates", spy)
    return answers


def _both_paths(store: EmbeddedStore, query: np.ndarray, filters=None, top_k: int = 10):
    threshold = store.quantised_threshold
    with_codes = store.vector_search(query, top_k=top_k, filters=filters, exact=True)
    store.quantised_threshold = 10**12
    try:
        plain = store.vector_search(query, top_k=top_k, filters=filters, exact=True)
    finally:
        store.quantised_threshold = threshold
    return with_codes, plain


def _assert_same(with_codes, plain):
    assert with_codes.method == plain.method == "exact"
    assert [h.record.id for h in with_codes.hits] == [h.record.id for h in plain.hits]
    np.testing.assert_allclose([h.score for h in with_codes.hits], [h.score for h in plain.hits], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_store_exact_search_through_the_codes_matches_the_float32_scan(tmp_path, monkeypatch, caplog, similarity):
    answers = _spy(monkeypatch)
    store = EmbeddedStore(tmp_path / "s", similarity=similarity, quantised_threshold=2000)
    store.upsert(_store_records(6000, 32, seed=1))
    store.delete([f"doc-{i}" for i in range(0, 6000, 9)])
    store.upsert(_store_records(50, 32, seed=2, start=10_000))  # into the freed slots
    rng = np.random.default_rng(3)
    with caplog.at_level(logging.WARNING):
        for filters in (None, YEAR_FILTER, SOURCE_FILTER):
            for top_k in (1, 10, 100):
                query = rng.standard_normal(32).astype(np.float32)
                _assert_same(*_both_paths(store, query, filters, top_k))
    assert answers and all(answer is not None for answer in answers), "the codes answered every search"
    assert store.quantised_source == "built"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # Documents without vectors and exact duplicates (ties broken by insertion order) through the codes.
    store.upsert([StoredRecord(id="text-only", content="no vector")])
    twin = rng.standard_normal(32).astype(np.float32) * 4
    store.upsert([StoredRecord(id=f"twin-{i}", embedding=twin) for i in range(15)])
    with_codes, plain = _both_paths(store, twin)
    _assert_same(with_codes, plain)
    assert [h.record.id for h in with_codes.hits] == [f"twin-{i}" for i in range(10)]
    store.close()


def test_store_keeps_the_codes_across_reopen_and_other_writers(tmp_path, monkeypatch):
    answers = _spy(monkeypatch)
    path = tmp_path / "s"
    store = EmbeddedStore(path, quantised_threshold=2000)
    store.upsert(_store_records(25_000, 16, seed=4))  # a bulk write: builds and saves the codes as it goes
    assert store._quantised is not None and (path / "quantised.json").exists()
    store.close()
    # Another process writes and deletes without using the codes; a reopen loads them and replays the log.
    other = EmbeddedStore(path, quantised_threshold=10**12)
    needle = np.full(16, 9.0, np.float32)
    other.upsert([StoredRecord(id="needle", embedding=needle)])
    other.delete(["doc-1", "doc-2"])
    reopened = EmbeddedStore(path, quantised_threshold=2000)
    result = reopened.vector_search(needle, top_k=5, exact=True)
    assert reopened.quantised_source == "loaded", "loaded plus the change log, not rebuilt"
    assert result.hits[0].record.id == "needle" and result.method == "exact"
    # Writes by a live second instance reach this one's codes through the change log.
    other.upsert([StoredRecord(id="needle-2", embedding=needle * 2)])
    other.delete(["needle"])
    hits = reopened.vector_search(needle, top_k=3, exact=True).hits
    assert hits[0].record.id == "needle-2" and "needle" not in {h.record.id for h in hits}
    rng = np.random.default_rng(5)
    for filters in (None, YEAR_FILTER):
        _assert_same(*_both_paths(reopened, rng.standard_normal(16).astype(np.float32), filters))
    assert all(answer is not None for answer in answers)
    reopened.close()
    other.close()


def test_store_rebuilds_damaged_or_stale_codes(tmp_path, caplog):
    path = tmp_path / "s"
    store = EmbeddedStore(path, quantised_threshold=1000)
    store.upsert(_store_records(3000, 16, seed=6))
    query = np.random.default_rng(7).standard_normal(16).astype(np.float32)
    expected = [h.record.id for h in store.vector_search(query, top_k=10, exact=True).hits]
    store.close()
    (saved,) = path.glob("quantised-*.npz")
    saved.write_bytes(saved.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        reopened = EmbeddedStore(path, quantised_threshold=1000)
        assert [h.record.id for h in reopened.vector_search(query, top_k=10, exact=True).hits] == expected
    assert reopened.quantised_source == "built"
    assert any("did not load" in r.getMessage() and "quantised-" in r.getMessage() for r in caplog.records)
    reopened.close()
    # delete_all then new documents: the old saved codes cannot be brought up to date and are not used.
    again = EmbeddedStore(path, quantised_threshold=1000)
    again.delete_all()
    again.upsert(_store_records(1500, 16, seed=8))
    _assert_same(*_both_paths(again, query))
    assert again.quantised_source == "built"
    again.close()


def test_small_stores_scan_the_float32_matrix(monkeypatch):
    answers = _spy(monkeypatch)
    store = EmbeddedStore(None)  # the default threshold
    store.upsert(_store_records(500, 8, seed=9))
    store.vector_search(np.ones(8, np.float32), top_k=5)
    assert answers == [] and store._quantised is None


# --------------------------------------------------------------------------------------- real embeddings
@pytest.mark.scifact
def test_scifact_rankings_through_the_codes_are_the_float32_rankings(scifact_embedded, tmp_path, monkeypatch):
    """On real MiniLM embeddings (SciFact's 5,183 documents, the codes forced on) every one of the 300 queries
    gets the float32 scan's top 10, so nDCG@10 is unchanged; the first pass rescored few rows."""
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
    from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

    from dual_encoder.evaluation import evaluate_run

    answers = _spy(monkeypatch)
    data, documents = scifact_embedded
    store = EmbeddedDocumentStore(path=str(tmp_path / "codes"))
    store.write_documents(documents)
    retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store, exact=True), top_k=10)
    runs = {}
    for threshold in (0, 10**12):
        store.store.quantised_threshold = threshold
        runs[threshold] = {
            query_id: [(d.id, d.score) for d in retriever.run(query=text)["documents"]]
            for query_id, text in data.queries.items()
        }
    assert len(answers) == 300 and all(answer is not None for answer in answers), "the codes answered every query"
    assert np.median([len(answer) for answer in answers]) <= 100
    for query_id, ranked in runs[0].items():
        assert [i for i, _ in ranked] == [i for i, _ in runs[10**12][query_id]], query_id
        np.testing.assert_allclose([s for _, s in ranked], [s for _, s in runs[10**12][query_id]], atol=1e-6)
    ndcg = {t: evaluate_run(data.qrels, {q: dict(r) for q, r in run.items()})["ndcg@10"] for t, run in runs.items()}
    assert ndcg[0] == ndcg[10**12] == pytest.approx(0.6451, abs=0.0005)
