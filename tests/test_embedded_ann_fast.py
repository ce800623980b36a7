"""Approximate index with several lists all scanned, in parallel: same answers as one thread, exact filters,
incremental writes, persistence and compaction."""

from __future__ import annotations

import numpy as np
import pytest

from dual_encoder.embedded import ann
from dual_encoder.embedded.ann import ApproximateIndex

DIMENSION = 32
TRAIN = 1024
PARALLEL = {"lists": 8, "probe": 8, "threads": 2}


def clustered(count: int, seed: int = 0) -> np.ndarray:
    """Vectors around 40 random centres, scaled differently so that cosine and dot rank differently."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIMENSION)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, count)] + 0.6 * rng.standard_normal((count, DIMENSION)).astype(np.float32)
    return (vectors * rng.uniform(0.5, 2.0, (count, 1))).astype(np.float32)


def exact_top(matrix: np.ndarray, positions: np.ndarray, query: np.ndarray, k: int, similarity: str) -> np.ndarray:
    rows = matrix[positions]
    scores = rows @ query
    if similarity == "cosine":
        scores = scores / (np.linalg.norm(rows, axis=1) * np.linalg.norm(query))
    return positions[np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture(autouse=True)
def parallel_even_when_small(monkeypatch):
    """These indexes are small: make their scans and adds use the threads that large ones would."""
    monkeypatch.setattr(ann, "_PARALLEL_SCAN_MIN", 0)
    monkeypatch.setattr(ann, "_PARALLEL_ENCODE_MIN", 0)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(4000), clustered(30, seed=1)


def build(matrix: np.ndarray, similarity: str = "cosine", **params) -> ApproximateIndex:
    index = ApproximateIndex(
        DIMENSION, similarity, vectors=lambda positions: matrix[positions], train_size=TRAIN, **params
    )
    # Blocks, so that training happens mid-way and later blocks are added incrementally.
    for start in range(0, len(matrix), 700):
        block = np.arange(start, min(start + 700, len(matrix)), dtype=np.int64)
        index.add(block, matrix[block])
    return index


def overlap(found: np.ndarray, expected: np.ndarray) -> int:
    return len(set(found.tolist()) & set(expected.tolist()))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_two_threads_answer_as_one_thread(data, similarity):
    matrix, queries = data
    index = build(matrix, similarity, **PARALLEL)
    assert index.trained
    everything = np.arange(len(matrix))
    hits = 0
    for query in queries:
        index.params["threads"] = 2
        parallel, parallel_scores = index.search(query, 10)
        index.params["threads"] = 1
        single, single_scores = index.search(query, 10)
        assert parallel.tolist() == single.tolist()
        np.testing.assert_array_equal(parallel_scores, single_scores)
        hits += overlap(parallel, exact_top(matrix, everything, query, 10, similarity))
    assert hits / (10 * len(queries)) >= 0.9


def test_scanning_every_list_keeps_filters_complete(data):
    matrix, queries = data
    index = build(matrix, **PARALLEL)
    rng = np.random.default_rng(2)
    allowed = np.zeros(len(matrix), dtype=bool)
    allowed[rng.choice(len(matrix), 8, replace=False)] = True
    for query in queries[:10]:
        positions, _ = index.search(query, 10, allowed=allowed)
        assert sorted(positions.tolist()) == np.flatnonzero(allowed).tolist()
    # The contrast: probing one list of eight misses allowed rows that sit in the other lists.
    index.params["probe"] = 1
    assert any(len(index.search(query, 10, allowed=allowed)[0]) < 8 for query in queries[:10])


def test_probe_beyond_the_lists_scans_each_list_once(data):
    matrix, queries = data
    index = build(matrix, **PARALLEL)
    expected = [index.search(query, 10)[0].tolist() for query in queries[:10]]
    index.params["probe"] = 100
    assert [index.search(query, 10)[0].tolist() for query in queries[:10]] == expected


def test_writes_after_training_are_searchable(data):
    matrix, queries = data
    grown = np.vstack([matrix, queries]).astype(np.float32)
    index = build(matrix, **PARALLEL)
    index._vectors_of = lambda positions: grown[positions]
    new = np.arange(len(matrix), len(grown), dtype=np.int64)
    index.add(new, grown[new])
    for position in new[:10]:
        assert index.search(grown[position], 1)[0][0] == position
    # Removed and replaced positions never come back from the scan, filtered or not.
    index.remove(new[:5])
    replaced = np.arange(0, 200, dtype=np.int64)
    index.add(replaced, grown[replaced])
    assert index.dead_codes == 200 + 5
    allowed = np.zeros(len(grown), dtype=bool)
    allowed[100:300] = True
    for query in queries[:5]:
        assert not set(index.search(query, 10)[0].tolist()) & set(new[:5].tolist())
        positions, _ = index.search(query, 10, allowed=allowed)
        assert len(positions) == 10 and allowed[positions].all()
        assert overlap(positions, exact_top(grown, np.flatnonzero(allowed), query, 10, "cosine")) >= 9


def test_parallel_scan_survives_save_load_and_compaction(tmp_path, data):
    matrix, queries = data
    index = build(matrix, **PARALLEL)
    path = tmp_path / "ann.npz"
    index.save(path)
    loaded = ApproximateIndex.load(path, DIMENSION, "cosine", vectors=lambda positions: matrix[positions], threads=2)
    # The probe saved with the index applies unless the caller passes one: still an exhaustive scan.
    assert loaded.params["lists"] == 8 and loaded.params["probe"] == 8
    chosen = ApproximateIndex.load(path, DIMENSION, "cosine", vectors=lambda positions: matrix[positions], probe=2)
    assert chosen.params["probe"] == 2
    for query in queries[:10]:
        assert loaded.search(query, 10)[0].tolist() == index.search(query, 10)[0].tolist()
    # faiss does not save its choice of implementation: a loaded (or compacted) index must scan in parallel too.
    assert loaded._index.implem == index._index.implem != 0
    loaded.remove(np.arange(0, 3000, dtype=np.int64))  # more dead codes than live ones: compacts
    assert loaded.dead_codes == 0 and loaded._index.implem == index._index.implem
    live = np.arange(3000, 4000)
    hits = 0
    for query in queries:
        positions, _ = loaded.search(query, 10)
        assert positions.min() >= 3000
        hits += overlap(positions, exact_top(matrix, live, query, 10, "cosine"))
    assert hits / (10 * len(queries)) >= 0.9


def test_one_list_keeps_faiss_default_scan(data):
    matrix, _ = data
    index = build(matrix[:2000], lists=1, probe=1)
    assert index.params["lists"] == 1 and index._index.implem == 0


def test_threads_never_exceed_the_cpus_the_process_may_use(data, monkeypatch):
    matrix, _ = data
    index = build(matrix[:2000])
    assert index.params["threads"] == 2 and index.params["probe"] == index.params["lists"] == 8
    monkeypatch.setattr(ann, "usable_cpus", lambda: 1)
    assert index._threads() == 1
    positions, _ = index.search(matrix[5], 10)
    assert positions[0] == 5
    monkeypatch.setattr(ann, "usable_cpus", lambda: 4)
    assert index._threads() == 2
