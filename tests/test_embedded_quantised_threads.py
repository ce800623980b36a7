"""Exact search's quantised first pass on two threads (dual_encoder.embedded.quantised): a scan cut into chunks
that two threads take gives exactly the one-thread candidates (and the exact integer dots) on random, tied and
adversarial data, with and without filters, over the whole code buffer or gathered rows, for both similarities;
a process allowed one CPU scans on one thread; concurrent searches neither deadlock nor disagree; a forked child
can still use two."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dual_encoder import cpus
from dual_encoder.embedded import quantised
from dual_encoder.embedded.quantised import TWO_THREAD_MIN_ROWS, QuantisedVectors


@pytest.fixture
def two_cpus(monkeypatch):
    """Two usable CPUs whatever the machine has, so the two-thread path runs everywhere."""
    monkeypatch.setattr(quantised, "usable_cpus", lambda: 2)


def _codes(matrix: np.ndarray, similarity: str, **options) -> QuantisedVectors:
    codes = QuantisedVectors(matrix.shape[1], similarity, vectors=lambda slots: matrix[slots], **options)
    codes.set_rows(np.arange(len(matrix)), matrix)
    return codes


def _unit(query: np.ndarray, similarity: str) -> np.ndarray:
    return query / np.linalg.norm(query) if similarity == "cosine" else query


def _exact_scores(matrix: np.ndarray, query: np.ndarray, similarity: str, allowed: np.ndarray) -> np.ndarray:
    rows = matrix.astype(np.float64)
    scores = rows @ query.astype(np.float64)
    if similarity == "cosine":
        norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(query.astype(np.float64))
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    return np.where(allowed, scores, -np.inf)


def _both(codes: QuantisedVectors, query: np.ndarray, k: int, allowed: np.ndarray):
    """Candidates on one thread and on two; asserts the second scan was cut into chunks for two threads."""
    codes.scan_threads = 1
    before = codes.two_thread_scans
    one = codes.candidates(query, k, allowed)
    assert codes.two_thread_scans == before
    codes.scan_threads = 2
    two = codes.candidates(query, k, allowed)
    assert codes.two_thread_scans > before, "the scan should have been cut for two threads"
    return one, two


def _assert_same_and_exact(codes, matrix, query, k, allowed):
    query = _unit(query, codes.similarity)
    one, two = _both(codes, query, k, allowed)
    assert (one is None) == (two is None)
    if one is None:
        return None
    np.testing.assert_array_equal(one, two)
    scores = _exact_scores(matrix, query, codes.similarity, allowed)
    kth = np.sort(scores)[::-1][k - 1]
    assert set(np.flatnonzero(scores >= kth).tolist()) <= set(two.tolist()), "the exact top k is not covered"
    assert allowed[two].all(), "a candidate the mask does not allow"
    return two


# ------------------------------------------------------------------------------------------ equal results
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("chunk_rows", [16_384, 1500], ids=["two-chunks", "eight-chunks"])
def test_two_threads_give_the_one_thread_candidates_on_random_data(two_cpus, monkeypatch, similarity, chunk_rows):
    monkeypatch.setattr(quantised, "_CHUNK_MIN_ROWS", chunk_rows)
    rng = np.random.default_rng(10)
    matrix = rng.standard_normal((20_000, 48)).astype(np.float32)
    matrix[::7] *= 4.0  # lengths differ: dot and cosine rank differently
    codes = _codes(matrix, similarity)
    # No filter; a filter skipping a few rows; 25 %; 2 % (rows gathered).
    for fraction in [1.0, 0.9995, 0.25, 0.02] * 3:
        allowed = rng.random(len(matrix)) < fraction
        query = rng.standard_normal(48).astype(np.float32)
        for k in (1, 10, 50):
            _assert_same_and_exact(codes, matrix, query, k, allowed)


def test_filters_that_allow_one_end_of_the_rows_split_by_allowed_rows(two_cpus):
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((16_000, 32)).astype(np.float32)
    codes = _codes(matrix, "dot")
    for allowed_range in (slice(0, 3000), slice(13_000, 16_000), slice(7900, 8100)):
        allowed = np.zeros(len(matrix), bool)
        allowed[allowed_range] = True
        allowed[rng.choice(len(matrix), 40, replace=False)] = True  # a few stragglers elsewhere
        _assert_same_and_exact(codes, matrix, rng.standard_normal(32).astype(np.float32), 10, allowed)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_ties_across_the_split_are_all_candidates_on_both_paths(two_cpus, similarity):
    # Integer vectors: scores are exact in float32; 400 rows tie at the best score, on both sides of the split.
    rng = np.random.default_rng(12)
    matrix = rng.integers(-3, 4, size=(12_000, 32)).astype(np.float32)
    best = np.full(32, 3, np.float32)
    tied = np.concatenate([rng.choice(6000, 200, replace=False), 6000 + rng.choice(6000, 200, replace=False)])
    matrix[tied] = best
    codes = _codes(matrix, similarity)
    for allowed in (np.ones(len(matrix), bool), rng.random(len(matrix)) < 0.5):
        candidates = _assert_same_and_exact(codes, matrix, best, 10, allowed)
        assert candidates is not None and set(tied[allowed[tied]].tolist()) <= set(candidates.tolist())
    # Every row equal: nothing can be pruned, on either path.
    flat = np.ones((3000, 16), np.float32)
    everything = _assert_same_and_exact(
        _codes(flat, similarity), flat, np.ones(16, np.float32), 10, np.ones(3000, bool)
    )
    assert everything is None or len(everything) == 3000


def test_near_ties_within_the_bound_agree_or_both_give_up(two_cpus):
    # 3,000 rows within a fraction of a quantisation step around the query, spread over both halves.
    rng = np.random.default_rng(13)
    matrix = rng.standard_normal((20_000, 32)).astype(np.float32)
    centre = rng.standard_normal(32).astype(np.float32)
    crowd = rng.choice(len(matrix), 3000, replace=False)
    matrix[crowd] = centre + rng.standard_normal((3000, 32)).astype(np.float32) * 1e-4
    for max_candidates in (64, 8192):
        codes = _codes(matrix, "cosine", max_candidates=max_candidates)
        candidates = _assert_same_and_exact(codes, matrix, centre, 10, np.ones(len(matrix), bool))
        assert (candidates is None) == (max_candidates == 64)


def test_outliers_and_rows_without_codes_stay_exact_on_two_threads(two_cpus):
    rng = np.random.default_rng(14)
    matrix = rng.standard_normal((20_000, 32)).astype(np.float32) * 0.1
    codes = _codes(matrix[:19_000], "dot")
    query = rng.standard_normal(32).astype(np.float32)
    # Outliers on both sides of the split: their codes clamp, so the scan cannot rank them; always candidates.
    for row in (3, 12_500):
        matrix[row] = query * 50
        codes.set_rows(np.array([row]), matrix[row : row + 1])
    assert codes.outliers == 2
    # Rows that were the best and are then forgotten keep their stale codes: the scan reads them and must drop
    # them; so must a scan of gathered rows.
    stale = np.argsort(matrix[:19_000] @ query)[::-1][2:200]
    codes.clear_rows(stale)
    allowed = np.ones(19_000, bool)
    allowed[stale] = False
    for k in (1, 10, 100):
        candidates = _assert_same_and_exact(codes, matrix[:19_000], query, k, allowed)
        assert candidates is not None and {3, 12_500} <= set(candidates.tolist())
        assert not set(stale.tolist()) & set(candidates.tolist())
    # Most rows forgotten: the rest are gathered.
    many = rng.choice(19_000, 17_000, replace=False)
    many = many[~np.isin(many, [3, 12_500])]
    codes.clear_rows(many)
    allowed[many] = False
    candidates = _assert_same_and_exact(codes, matrix[:19_000], query, 10, allowed)
    assert candidates is not None and not set(many.tolist()) & set(candidates.tolist())


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_gathered_rows_give_the_candidates_of_the_whole_buffer(two_cpus, similarity, monkeypatch):
    rng = np.random.default_rng(22)
    matrix = rng.standard_normal((32_000, 32)).astype(np.float32)
    codes = _codes(matrix, similarity)
    for fraction in (0.5, 0.1, 0.01):
        allowed = rng.random(len(matrix)) < fraction
        query = _unit(rng.standard_normal(32).astype(np.float32), similarity)
        answers = []
        for gather_fraction in (1, 10**9):  # always gather, never gather
            monkeypatch.setattr(quantised, "_GATHER_MAX_FRACTION", gather_fraction)
            answers.append(_assert_same_and_exact(codes, matrix, query, 10, allowed))
        np.testing.assert_array_equal(*answers)


@pytest.mark.parametrize("dimension", [48, 1100], ids=["float32-dots", "float64-dots"])
def test_the_chunks_integer_dots_are_the_exact_products(dimension, monkeypatch):
    # Every chunking, over the whole buffer or gathered rows, gives each row the exact integer dot of its codes.
    rng = np.random.default_rng(15)
    matrix = rng.standard_normal((6000, dimension)).astype(np.float32)
    codes = _codes(matrix, "dot")
    book = codes._book
    weights = rng.integers(-127, 128, size=(1, dimension)).astype(np.int8)
    expected = book.codes[: len(matrix)].astype(np.int64) @ weights[0].astype(np.int64)
    positions = np.flatnonzero(rng.random(len(matrix)) < 0.3)
    monkeypatch.setattr(quantised, "usable_cpus", lambda: 2)
    monkeypatch.setattr(quantised, "TWO_THREAD_MIN_ROWS", 1000)
    for threads, chunk_rows in ((1, 16_384), (2, 16_384), (2, 300)):
        codes.scan_threads = threads
        monkeypatch.setattr(quantised, "_CHUNK_MIN_ROWS", chunk_rows)
        whole = codes._dots(book, weights, None, len(matrix), len(matrix))
        gathered = codes._dots(book, weights, positions, len(matrix), len(positions))
        assert whole.dtype == (np.float32 if dimension < 1024 else np.float64)
        np.testing.assert_array_equal(whole.astype(np.int64), expected)
        np.testing.assert_array_equal(gathered.astype(np.int64), expected[positions])


# ------------------------------------------------------------------------------------------ thread choice
def test_one_usable_cpu_means_one_thread(monkeypatch):
    rng = np.random.default_rng(16)
    matrix = rng.standard_normal((8000, 16)).astype(np.float32)
    codes = _codes(matrix, "dot", scan_threads=2)

    def no_helper():
        raise AssertionError("the helper thread must not be used with one CPU")

    monkeypatch.setattr(quantised, "_helper", no_helper)
    monkeypatch.setattr(quantised.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert quantised.usable_cpus() == 1
    assert codes.candidates(matrix[5], 10, np.ones(len(matrix), bool)) is not None
    assert codes.two_thread_scans == 0
    # Two CPUs in the affinity mask but a cgroup quota of one CPU: still one.
    monkeypatch.setattr(quantised.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 1.0)
    assert quantised.usable_cpus() == 1
    assert codes.candidates(matrix[6], 10, np.ones(len(matrix), bool)) is not None
    assert codes.two_thread_scans == 0
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 1.5)
    assert quantised.usable_cpus() == 2


def test_small_scans_stay_on_one_thread_unless_asked(two_cpus, monkeypatch):
    rng = np.random.default_rng(17)
    matrix = rng.standard_normal((6000, 16)).astype(np.float32)
    assert len(matrix) < TWO_THREAD_MIN_ROWS
    codes = _codes(matrix, "dot")
    allowed = np.ones(len(matrix), bool)
    codes.candidates(matrix[1], 10, allowed)
    assert codes.two_thread_scans == 0
    monkeypatch.setattr(quantised, "TWO_THREAD_MIN_ROWS", 4000)
    codes.candidates(matrix[1], 10, allowed)
    assert codes.two_thread_scans == 1
    codes.scan_threads = 1
    codes.candidates(matrix[1], 10, allowed)
    assert codes.two_thread_scans == 1
    with pytest.raises(ValueError, match="scan_threads"):
        QuantisedVectors(16, "dot", scan_threads=3)


def test_concurrent_searches_agree_and_never_wait_for_each_other(two_cpus):
    rng = np.random.default_rng(18)
    matrix = rng.standard_normal((20_000, 32)).astype(np.float32)
    shared = _codes(matrix, "cosine", scan_threads=2)
    other = _codes(matrix[:10_000], "dot", scan_threads=2)
    queries = rng.standard_normal((48, 32)).astype(np.float32)
    masks = [np.ones(len(matrix), bool), rng.random(len(matrix)) < 0.25]
    expected = {}
    reference = _codes(matrix, "cosine", scan_threads=1)
    for number, query in enumerate(queries):
        expected[number] = reference.candidates(_unit(query, "cosine"), 10, masks[number % 2])
    reference_dot = _codes(matrix[:10_000], "dot", scan_threads=1)
    expected_dot = [reference_dot.candidates(query, 5, np.ones(10_000, bool)) for query in queries]
    start = threading.Barrier(4)

    def search(worker: int) -> list[bool]:
        start.wait(timeout=30)
        agreed = []
        for number in range(worker, len(queries), 4):
            found = shared.candidates(_unit(queries[number], "cosine"), 10, masks[number % 2])
            agreed.append(np.array_equal(found, expected[number]))
            agreed.append(
                np.array_equal(other.candidates(queries[number], 5, np.ones(10_000, bool)), expected_dot[number])
            )
        return agreed

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [future.result(timeout=120) for future in [pool.submit(search, worker) for worker in range(4)]]
    assert all(all(agreed) for agreed in results)
    # Some scans found the helper busy and ran both halves themselves; at least some used it.
    assert 0 < shared.two_thread_scans + other.two_thread_scans <= 2 * len(queries)


def test_the_helper_thread_scans_chunks_and_its_errors_reach_the_caller(two_cpus, monkeypatch):
    rng = np.random.default_rng(20)
    matrix = rng.standard_normal((40_000, 16)).astype(np.float32)
    codes = _codes(matrix, "dot", scan_threads=2)
    allowed = np.ones(len(matrix), bool)
    codes.scan_threads = 1
    expected = codes.candidates(matrix[9], 10, allowed)
    codes.scan_threads = 2
    original = quantised._scan_range
    callers = threading.current_thread()
    helper_started = threading.Event()
    threads_seen = []

    def scan_range(*args):
        threads_seen.append(threading.current_thread().name)
        if threading.current_thread() is callers:
            # Hold the caller's first chunk until the helper has taken one: it must take part.
            assert helper_started.wait(timeout=30), "the helper thread never took a chunk"
        else:
            helper_started.set()
        return original(*args)

    monkeypatch.setattr(quantised, "_scan_range", scan_range)
    np.testing.assert_array_equal(codes.candidates(matrix[9], 10, allowed), expected)
    assert any(name.startswith("quantised-scan") for name in threads_seen)

    def failing_on_the_helper(*args):
        if threading.current_thread() is not callers:
            helper_started.set()
            raise MemoryError("helper failed")
        helper_started.wait(timeout=30)
        return original(*args)

    helper_started.clear()
    monkeypatch.setattr(quantised, "_scan_range", failing_on_the_helper)
    with pytest.raises(MemoryError, match="helper failed"):
        codes.candidates(matrix[9], 10, allowed)
    monkeypatch.setattr(quantised, "_scan_range", original)
    np.testing.assert_array_equal(codes.candidates(matrix[9], 10, allowed), expected)  # the helper still works


def test_a_helper_that_starts_late_or_never_does_not_hold_the_query(two_cpus, monkeypatch):
    rng = np.random.default_rng(21)
    matrix = rng.standard_normal((40_000, 16)).astype(np.float32)
    codes = _codes(matrix, "dot", scan_threads=1)
    allowed = rng.random(len(matrix)) < 0.5
    expected = codes.candidates(matrix[4], 10, allowed)
    codes.scan_threads = 2

    class Stalled:
        """An executor whose thread never gets to run (a saturated machine)."""

        def __init__(self) -> None:
            self.tasks = []

        def submit(self, task):
            self.tasks.append(task)

    stalled = Stalled()
    monkeypatch.setattr(quantised, "_helper", lambda: stalled)
    np.testing.assert_array_equal(codes.candidates(matrix[4], 10, allowed), expected)
    assert len(stalled.tasks) == 1 and codes.two_thread_scans == 1
    # When it finally runs, the caller has taken every chunk and closed the scan: it scans nothing.
    original = quantised._scan_range
    late_scans = []
    monkeypatch.setattr(quantised, "_scan_range", lambda *args: late_scans.append(args))
    stalled.tasks[0]()
    assert not late_scans, "a helper that started after the caller finished scanned"
    # Nor when the caller's own scan failed and left chunks untaken.

    def failing(*args):
        raise MemoryError("no memory for the result list")

    monkeypatch.setattr(quantised, "_scan_range", failing)
    with pytest.raises(MemoryError):
        codes.candidates(matrix[4], 10, allowed)
    monkeypatch.setattr(quantised, "_scan_range", lambda *args: late_scans.append(args))
    stalled.tasks[1]()
    assert not late_scans, "a helper that started after the caller failed scanned"
    monkeypatch.setattr(quantised, "_scan_range", original)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_helper(two_cpus):
    rng = np.random.default_rng(19)
    matrix = rng.standard_normal((8000, 16)).astype(np.float32)
    codes = _codes(matrix, "dot", scan_threads=2)
    allowed = np.ones(len(matrix), bool)
    expected = codes.candidates(matrix[3], 10, allowed)
    assert codes.two_thread_scans == 1
    # Fork while another query holds the helper: the child gets a free helper of its own (the parent's thread
    # does not exist there), and searches right away.
    quantised._helper_busy.acquire()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            ok = np.array_equal(codes.candidates(matrix[3], 10, allowed), expected)
            ok = ok and quantised._helper_busy.acquire(blocking=False)
            ok = ok and quantised._helper().submit(lambda: 7).result(timeout=30) == 7
            os._exit(0 if ok else 1)
    finally:
        quantised._helper_busy.release()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child could not search or has no working helper"
