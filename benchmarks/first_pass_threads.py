"""Exact search's first pass on one thread against two, by store size: where the split starts to pay.

    ./dev python benchmarks/first_pass_threads.py

``QuantisedVectors.candidates(query, 10, everything)`` over random unit 384-d rows (cosine) at each size, with
``scan_threads`` 1 and 2 alternating query by query (40 queries x 3 rounds, medians). Two threads means the
calling thread and the process's helper thread taking chunks of the rows (NumKong releases the GIL); the store
uses two from :data:`dual_encoder.embedded.quantised.TWO_THREAD_MIN_ROWS` scanned rows.
Results: benchmarks/results/first_pass_threads.json.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from _common import unit_rows, write_result

from dual_encoder.embedded.quantised import TWO_THREAD_MIN_ROWS, QuantisedVectors

DIMENSION = 384
SIZES = (16_384, 50_000, 100_000, 200_000, 400_000)
QUERIES = 40
ROUNDS = 3


def main() -> None:
    matrix = unit_rows(max(SIZES), DIMENSION, seed=1)
    queries = unit_rows(QUERIES, DIMENSION, seed=2)
    load = [os.getloadavg()[0]]
    sizes = {}
    for rows in SIZES:
        codes = QuantisedVectors(DIMENSION, "cosine")
        for start in range(0, rows, 65_536):
            block = np.arange(start, min(rows, start + 65_536))
            codes.set_rows(block, matrix[block])
        allowed = np.ones(rows, dtype=bool)
        timings: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(ROUNDS):
            for query in queries:
                for threads in (1, 2):
                    codes.scan_threads = threads
                    begin = time.perf_counter()
                    codes.candidates(query, 10, allowed)
                    timings[threads].append((time.perf_counter() - begin) * 1000)
        one, two = statistics.median(timings[1]), statistics.median(timings[2])
        sizes[rows] = {
            "one_thread_p50_ms": round(one, 3),
            "two_threads_p50_ms": round(two, 3),
            "ratio": round(one / two, 2),
        }
        print(rows, sizes[rows], flush=True)
    load.append(os.getloadavg()[0])
    payload = {
        "dimension": DIMENSION,
        "queries_x_rounds": QUERIES * ROUNDS,
        "two_thread_min_rows": TWO_THREAD_MIN_ROWS,
        "sizes": sizes,
        "load_average_1min_before_after": load,
    }
    print(f"written to {write_result('first_pass_threads', payload)}")


if __name__ == "__main__":
    main()
