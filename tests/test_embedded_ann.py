"""Approximate index of the embedded store: recall, replacement, removal, filters, persistence, exact scores."""

from __future__ import annotations

import numpy as np
import pytest

from dual_encoder.embedded.ann import DEFAULT_PARAMETERS, ApproximateIndex, prefers_exact

DIMENSION = 32
# Small enough to train quickly, large enough that the trained (approximate) path answers.
TRAIN = 1024


def clustered(count: int, seed: int = 0, dimension: int = DIMENSION) -> np.ndarray:
    """Vectors around 40 random centres, scaled differently so that cosine and dot rank differently."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dimension)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, count)] + 0.6 * rng.standard_normal((count, dimension)).astype(np.float32)
    return (vectors * rng.uniform(0.5, 2.0, (count, 1))).astype(np.float32)


def exact_top(matrix: np.ndarray, positions: np.ndarray, query: np.ndarray, k: int, similarity: str) -> np.ndarray:
    rows = matrix[positions]
    scores = rows @ query
    if similarity == "cosine":
        scores = scores / (np.linalg.norm(rows, axis=1) * np.linalg.norm(query))
    return positions[np.argsort(-scores, kind="stable")[:k]]


def exact_score(vector: np.ndarray, query: np.ndarray, similarity: str) -> float:
    score = float(vector.astype(np.float64) @ query.astype(np.float64))
    if similarity == "cosine":
        score /= float(np.linalg.norm(vector.astype(np.float64)) * np.linalg.norm(query.astype(np.float64)))
    return score


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(4000), clustered(30, seed=1)


def build(matrix: np.ndarray, similarity: str = "cosine", own: bool = False, **params) -> ApproximateIndex:
    vectors = None if own else (lambda positions: matrix[positions])
    index = ApproximateIndex(DIMENSION, similarity, vectors=vectors, train_size=TRAIN, **params)
    # Blocks, so that training happens mid-way and later blocks are added incrementally.
    for start in range(0, len(matrix), 700):
        block = np.arange(start, min(start + 700, len(matrix)), dtype=np.int64)
        index.add(block, matrix[block])
    return index


def recall(index: ApproximateIndex, matrix: np.ndarray, queries: np.ndarray, similarity: str, live=None) -> float:
    live = np.arange(len(matrix)) if live is None else live
    hits = 0
    for query in queries:
        found, _ = index.search(query, 10)
        hits += len(set(found.tolist()) & set(exact_top(matrix, live, query, 10, similarity).tolist()))
    return hits / (10 * len(queries))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("own", [False, True])
def test_recall_and_exact_scores(data, similarity, own):
    matrix, queries = data
    index = build(matrix, similarity, own=own)
    assert index.trained and len(index) == len(matrix)
    assert recall(index, matrix, queries, similarity) >= 0.9
    for query in queries[:5]:
        positions, scores = index.search(query, 10)
        assert positions.dtype == np.int64 and scores.dtype == np.float32
        assert len(positions) == 10 and np.all(np.diff(scores) <= 0)
        for position, score in zip(positions, scores):
            assert score == pytest.approx(exact_score(matrix[position], query, similarity), abs=1e-5)


def test_exact_before_training(data):
    matrix, queries = data
    index = build(matrix[:500])
    assert not index.trained
    for query in queries[:5]:
        positions, _ = index.search(query, 10)
        assert positions.tolist() == exact_top(matrix, np.arange(500), query, 10, "cosine").tolist()


def test_add_replaces_a_position(data):
    matrix, queries = data
    index = build(matrix)
    query = queries[0]
    # Position 5 now holds the query itself: it must come first with score 1, once.
    index.add(np.array([5]), query[None, :])
    matrix = matrix.copy()
    matrix[5] = query
    index._vectors_of = lambda positions: matrix[positions]
    positions, scores = index.search(query, 10)
    assert positions[0] == 5 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert positions.tolist().count(5) == 1
    assert len(index) == len(matrix)


def test_remove_excludes_positions_and_keeps_recall(data):
    matrix, queries = data
    index = build(matrix)
    best = {int(index.search(query, 1)[0][0]) for query in queries}
    removed = np.array(sorted(best | set(range(0, len(matrix), 2))), dtype=np.int64)
    index.remove(removed)
    index.remove(np.array([10**9, -3]))  # unknown positions are ignored
    live = np.setdiff1d(np.arange(len(matrix)), removed)
    assert len(index) == len(live)
    for query in queries:
        positions, _ = index.search(query, 10)
        assert not set(positions.tolist()) & set(removed.tolist())
    assert recall(index, matrix, queries, "cosine", live=live) >= 0.9
    # Removed positions can come back.
    index.add(removed[:3], matrix[removed[:3]])
    assert index.search(matrix[removed[0]], 1)[0][0] == removed[0]


def test_allowed_mask_is_honoured(data):
    matrix, queries = data
    index = build(matrix)
    rng = np.random.default_rng(2)
    for fraction in (0.5, 0.05, 0.002):
        allowed = rng.random(len(matrix)) < fraction
        for query in queries[:5]:
            positions, _ = index.search(query, 10, allowed=allowed)
            assert len(positions) == min(10, int(allowed.sum()))
            assert allowed[positions].all()
            expected = exact_top(matrix, np.flatnonzero(allowed), query, 10, "cosine")
            assert len(set(positions.tolist()) & set(expected.tolist())) >= 8
    assert len(index.search(queries[0], 10, allowed=np.zeros(len(matrix), dtype=bool))[0]) == 0
    # Positions past the end of the mask are not allowed.
    short = np.ones(100, dtype=bool)
    positions, _ = index.search(queries[0], 10, allowed=short)
    assert len(positions) == 10 and positions.max() < 100


def test_filters_after_replacements(data):
    """Replaced positions get new codes, so the mask must be translated from positions to codes."""
    matrix, queries = data
    matrix = matrix.copy()
    index = build(matrix)
    replaced = np.arange(0, 300, dtype=np.int64)
    matrix[replaced] = clustered(300, seed=5)
    index.add(replaced, matrix[replaced])
    assert index.dead_codes == 300
    allowed = np.zeros(len(matrix), dtype=bool)
    allowed[150:450] = True
    for query in queries[:10]:
        positions, scores = index.search(query, 10, allowed=allowed)
        assert allowed[positions].all() and len(positions) == 10
        expected = exact_top(matrix, np.flatnonzero(allowed), query, 10, "cosine")
        assert len(set(positions.tolist()) & set(expected.tolist())) >= 9
        for position, score in zip(positions, scores):
            assert score == pytest.approx(exact_score(matrix[position], query, "cosine"), abs=1e-5)


def test_compaction_drops_dead_codes(data):
    matrix, queries = data
    index = build(matrix)
    removed = np.arange(0, 3000, dtype=np.int64)
    index.remove(removed)  # more dead codes than live ones: compacts
    assert index.dead_codes == 0 and len(index) == 1000
    live = np.arange(3000, 4000)
    for query in queries[:5]:
        assert index.search(query, 10)[0].min() >= 3000
    assert recall(index, matrix, queries, "cosine", live=live) >= 0.9


def test_allowed_mask_before_training(data):
    matrix, queries = data
    index = build(matrix[:300])
    allowed = np.zeros(300, dtype=bool)
    allowed[[3, 30, 299]] = True
    positions, _ = index.search(queries[0], 10, allowed=allowed)
    assert sorted(positions.tolist()) == [3, 30, 299]


@pytest.mark.parametrize("own", [False, True])
@pytest.mark.parametrize("size", [300, 4000])
def test_save_load_round_trip(tmp_path, data, own, size):
    matrix, queries = data
    matrix = matrix[:size]
    index = build(matrix, own=own)
    index.remove(np.array([1, 2, 3]))
    path = tmp_path / "ann.npz"
    index.save(path)
    vectors = None if own else (lambda positions: matrix[positions])
    loaded = ApproximateIndex.load(path, DIMENSION, "cosine", vectors=vectors)
    assert len(loaded) == len(index) and loaded.trained == index.trained
    allowed = np.arange(size) % 3 == 0
    for query in queries[:10]:
        for mask in (None, allowed):
            first, first_scores = index.search(query, 10, allowed=mask)
            second, second_scores = loaded.search(query, 10, allowed=mask)
            assert first.tolist() == second.tolist()
            np.testing.assert_array_equal(first_scores, second_scores)
    # Still incremental after loading.
    loaded.add(np.array([1]), matrix[[1]])
    assert loaded.search(matrix[1], 1)[0][0] == 1


def test_load_refuses_a_mismatch(tmp_path, data):
    matrix, _ = data
    index = build(matrix[:300], own=True)
    path = tmp_path / "ann.npz"
    index.save(path)
    with pytest.raises(ValueError, match="not 64-d cosine"):
        ApproximateIndex.load(path, 64, "cosine")
    with pytest.raises(ValueError, match="delete it"):
        ApproximateIndex.load(path, DIMENSION, "cosine", train_size=TRAIN * 2)
    path.write_bytes(b"not an index")
    with pytest.raises(ValueError, match="Cannot read the approximate index"):
        ApproximateIndex.load(path, DIMENSION, "cosine")


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="similarity"):
        ApproximateIndex(8, "l2")
    with pytest.raises(ValueError, match="Unknown ApproximateIndex parameter"):
        ApproximateIndex(8, "dot", ef_search=10)
    with pytest.raises(ValueError, match="does not divide"):
        ApproximateIndex(9, "dot", dims_per_subquantizer=2)
    index = ApproximateIndex(8, "dot")
    with pytest.raises(ValueError, match="one 8-d vector per position"):
        index.add(np.arange(2), np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="same position twice"):
        index.add(np.array([1, 1]), np.zeros((2, 8), dtype=np.float32))


def test_prefers_exact_for_selective_masks():
    assert prefers_exact(10, 1_000_000)
    assert not prefers_exact(250_000, 1_000_000)
    assert set(DEFAULT_PARAMETERS) >= {"candidates", "lists", "probe", "train_size"}
