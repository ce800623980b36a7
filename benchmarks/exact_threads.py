"""Exact search's 8-bit first pass on one thread against two: where splitting one query's scan pays.

:class:`~dual_encoder.embedded.quantised.QuantisedVectors` of random 384-d unit vectors (the embedded store's
exact-search codes; the store scans them for every exact query once it is large enough) are built once at the
largest size; each smaller size scans the first rows only, which is what a store of that many documents scans.
For each size every query runs each way back to back, the order rotating from query to query, so load changes
hit all ways alike; the file records medians and the ratios of medians, with the load average and the time the
hypervisor took (steal) beside them. All ways must give identical candidates.

Ways measured:

- ``unfiltered``: the exact top 10 of every row (``candidates()``, which also checks the mask and derives the
  bound, then the candidates scored in float32), ``scan_threads=1`` against ``2``;
- ``filtered``: the same under a 25 % filter (the store benchmark's ``meta.year >= 2018``);
- ``scan_variants`` (the scan alone, one thread, every row allowed): faiss's whole-index ``search`` with a
  bitmap selector (how the first pass scanned before), faiss's row scanner with the bitmap, and without it;
  then with as many rows excluded (deleted documents, outliers) as the size still scans without a bitmap,
  skipped through the bitmap against scanned and dropped from a result that much longer (``skipped_variants``).

``TWO_THREAD_MIN_ROWS`` in ``dual_encoder/embedded/quantised.py`` is set from ``threshold_rows``: the fewest
scanned rows at which two threads were at least ``--gain`` faster.

Usage::

    .venv/bin/python benchmarks/exact_threads.py                                  # ~3 min, 1,000,000 rows
    .venv/bin/python benchmarks/exact_threads.py --sizes 10000 50000 --repeat 20  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine
from _cpu import StealMeter, cpu_topology

DIMENSION = 384
K = 10
BLOCK = 50_000
DEFAULT_SIZES = [8_000, 16_000, 32_000, 64_000, 100_000, 250_000, 1_000_000]


def unit_vectors(start: int, count: int, seed: int = 7) -> np.ndarray:
    """Rows ``start..start+count`` of a reproducible stream of random unit vectors (as store_scale.py makes)."""
    rng = np.random.default_rng([seed, start])
    block = rng.standard_normal((count, DIMENSION), dtype=np.float32)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def year_filter(rows: int) -> np.ndarray:
    """store_scale.py's ``meta.year >= 2018`` as a mask: year ``2000 + (i * 7919) % 24``, 25 % of the rows."""
    return (np.arange(rows, dtype=np.int64) * 7919) % 24 >= 18


def build(rows: int) -> tuple[object, np.ndarray]:
    from dual_encoder.embedded.quantised import QuantisedVectors

    matrix = np.empty((rows, DIMENSION), dtype=np.float32)
    codes = QuantisedVectors(DIMENSION, "cosine", vectors=lambda slots: matrix[slots])
    for start in range(0, rows, BLOCK):
        count = min(BLOCK, rows - start)
        matrix[start : start + count] = unit_vectors(start, count)
        codes.set_rows(np.arange(start, start + count), matrix[start : start + count])
    return codes, matrix


def side_by_side(ways: dict[str, Callable[[np.ndarray], object]], queries: np.ndarray, cpu: bool = False) -> dict:
    """Each query every way, the order rotating; medians in milliseconds and whether all ways agreed.

    With ``cpu``, also CPU time: the process's (every thread: the work done) and the critical path, the larger
    of the calling thread's and the other threads' CPU time (what the wall time would be on two otherwise idle
    cores; on a loaded machine the wall time is mostly waiting for a core)."""
    names = list(ways)
    samples: dict[str, list[float]] = {name: [] for name in names}
    work: dict[str, list[float]] = {name: [] for name in names}
    critical: dict[str, list[float]] = {name: [] for name in names}
    agreed = 0
    for number, query in enumerate(queries):
        shift = number % len(names)
        outputs = {}
        for name in names[shift:] + names[:shift]:
            started, process, caller = time.perf_counter(), time.process_time(), time.thread_time()
            outputs[name] = ways[name](query)
            samples[name].append((time.perf_counter() - started) * 1000)
            caller_cpu, process_cpu = time.thread_time() - caller, time.process_time() - process
            work[name].append(process_cpu * 1000)
            critical[name].append(max(caller_cpu, process_cpu - caller_cpu) * 1000)
        first = outputs[names[0]]
        agreed += all(_same(first, other) for other in outputs.values())
    result: dict = {f"{name}_p50_ms": round(statistics.median(samples[name]), 3) for name in names}
    if cpu:
        for name in names:
            result[f"{name}_cpu_p50_ms"] = round(statistics.median(work[name]), 3)
            result[f"{name}_critical_path_cpu_p50_ms"] = round(statistics.median(critical[name]), 3)
    result["identical"] = f"{agreed}/{len(queries)}"
    return result


def _same(left: object, right: object) -> bool:
    if isinstance(left, tuple) and isinstance(right, tuple):
        return all(np.array_equal(a, b) for a, b in zip(left, right))
    return bool(np.array_equal(left, right))  # type: ignore[arg-type]


def measure(codes, matrix: np.ndarray, size: int, queries: np.ndarray) -> dict:
    import faiss

    from dual_encoder.embedded import quantised

    book = codes._book
    everything = np.ones(size, dtype=bool)
    filtered = year_filter(size)

    def exact_top(allowed: np.ndarray, threads: int) -> Callable[[np.ndarray], object]:
        """The exact top 10 as the store finds it: the candidates, scored in float32, best first."""

        def run(query: np.ndarray) -> object:
            codes.scan_threads = threads
            found = codes.candidates(query, K, allowed)
            assert found is not None, "random unit vectors: the first pass always narrows the rows down"
            scores = matrix[found] @ query
            return found, found[np.lexsort((found, -scores))[:K]]

        return run

    entry: dict = {"rows": size, "filtered_rows": int(filtered.sum())}
    for label, allowed in (("unfiltered", everything), ("filtered", filtered)):
        before = codes.two_thread_scans
        timing = side_by_side(
            {"one_thread": exact_top(allowed, 1), "two_threads": exact_top(allowed, 2)}, queries, cpu=True
        )
        timing["two_over_one"] = round(timing["two_threads_p50_ms"] / timing["one_thread_p50_ms"], 3)
        timing["two_over_one_critical_path_cpu"] = round(
            timing["two_threads_critical_path_cpu_p50_ms"] / timing["one_thread_critical_path_cpu_p50_ms"], 3
        )
        timing["scans_on_two_threads"] = codes.two_thread_scans - before
        entry[label] = timing

    wanted = max(4 * K, K + 256)
    bitmap = np.packbits(everything, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    with_bitmap = quantised._ScanPlan(scanned=everything, bitmap=bitmap, skipped=0, chunks=((0, size),))
    without = quantised._ScanPlan(scanned=everything, bitmap=None, skipped=0, chunks=((0, size),))

    def faiss_search(query: np.ndarray) -> object:
        # The whole index (this size's rows allowed), on one OpenMP thread: the former first pass.
        faiss.omp_set_num_threads(1)
        capacity = book.index.ntotal
        book.index.ntotal = size  # scan this size's rows only, as an index of this size would
        try:
            scores, rows = book.index.search(query[None], wanted, params=faiss.SearchParameters(sel=selector))
        finally:
            book.index.ntotal = capacity
        return np.sort(scores[0])

    def scanner(plan) -> Callable[[np.ndarray], object]:
        return lambda query: np.sort(quantised._scan_top(book, query, plan, wanted)[0].astype(np.float32))

    previous = faiss.omp_get_max_threads()
    try:
        entry["scan_variants"] = side_by_side(
            {
                "faiss_search_bitmap": faiss_search,
                "scanner_bitmap": scanner(with_bitmap),
                "scanner_no_bitmap": scanner(without),
            },
            queries,
        )
    finally:
        faiss.omp_set_num_threads(previous)
    variants = entry["scan_variants"]
    variants["no_bitmap_over_bitmap"] = round(
        variants["scanner_no_bitmap_p50_ms"] / variants["scanner_bitmap_p50_ms"], 3
    )
    # The most excluded rows this size still scans without a bitmap.
    most = size // quantised._BITMAP_FREE_MAX_FRACTION
    excluded = np.random.default_rng(size).choice(size, most, replace=False)
    some = everything.copy()
    some[excluded] = False
    some_bitmap = np.packbits(some, bitorder="little")
    count = len(excluded)
    skipped = entry["skipped_variants"] = side_by_side(
        {
            "bitmap": scanner(
                quantised._ScanPlan(scanned=some, bitmap=some_bitmap, skipped=count, chunks=((0, size),))
            ),
            "no_bitmap": scanner(quantised._ScanPlan(scanned=some, bitmap=None, skipped=count, chunks=((0, size),))),
        },
        queries,
    )
    skipped["excluded_rows"] = count
    skipped["no_bitmap_over_bitmap"] = round(skipped["no_bitmap_p50_ms"] / skipped["bitmap_p50_ms"], 3)
    return entry


def one_thread_ran_alone(timing: dict) -> bool:
    """Whether the one-thread way used about one CPU: once, at 1,000,000 rows unfiltered, the process used twice
    the calling thread's CPU time while it ran, so that size did not compare one thread with two."""
    return timing["one_thread_cpu_p50_ms"] <= 1.3 * timing["one_thread_critical_path_cpu_p50_ms"]


def threshold_rows(sizes: dict[str, dict], gain: float, ratio: str = "two_over_one") -> int | None:
    """The fewest scanned rows from which on every measured size two threads took at most ``1 - gain`` of one
    (wall time, or with ``ratio="two_over_one_critical_path_cpu"`` the critical path's CPU time)."""
    points = []
    for entry in sizes.values():
        for label in ("unfiltered", "filtered"):
            timing = entry[label]
            if not one_thread_ran_alone(timing):
                continue
            scanned = entry["rows"] if label == "unfiltered" else entry["filtered_rows"]
            points.append((scanned, timing[ratio] <= 1 - gain))
    points.sort()
    for index, (scanned, pays) in enumerate(points):
        if pays and all(later for _, later in points[index:]):
            return scanned
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--repeat", type=int, default=40, help="queries per size")
    parser.add_argument("--gain", type=float, default=0.15, help="least time saved for two threads to count")
    parser.add_argument("--output", default="exact_threads")
    args = parser.parse_args()

    from dual_encoder.embedded import quantised

    sizes = sorted(set(args.sizes))
    meter = StealMeter()
    print(f"building codes of {sizes[-1]:,} rows ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    codes, matrix = build(sizes[-1])
    build_seconds = round(time.perf_counter() - started, 1)
    rng = np.random.default_rng(11)
    queries = rng.standard_normal((args.repeat, DIMENSION), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results: dict = {
        "machine": machine(),
        "cpu": cpu_topology(),
        "usable_cpus": quantised.usable_cpus(),
        "two_thread_min_rows_in_code": quantised.TWO_THREAD_MIN_ROWS,
        "top_k": K,
        "queries_per_size": args.repeat,
        "build_seconds": build_seconds,
        "outliers": codes.outliers,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "sizes": {},
    }
    for size in sizes:
        print(f"[{size:,}] measuring ...", file=sys.stderr, flush=True)
        entry = measure(codes, matrix, size, queries)
        entry["load_average"] = [round(x, 2) for x in os.getloadavg()]
        results["sizes"][str(size)] = entry
        print(json.dumps(entry), file=sys.stderr, flush=True)
    results["threshold_rows"] = threshold_rows(results["sizes"], args.gain)
    results["threshold_rows_by_critical_path_cpu"] = threshold_rows(
        results["sizes"], args.gain, "two_over_one_critical_path_cpu"
    )
    results["gain_required"] = args.gain
    results["cpu_time_taken"] = meter.read()
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{args.output}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
