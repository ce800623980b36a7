"""Exact search's first pass on an AVX2 CPU: faiss's 8-bit scanner (what the store runs now) against NumKong's
int8 dot products over the same codes, beside the float32 product they both avoid.

    DEV_EXTRAS=bench ./dev python benchmarks/int8_scan.py                 # 100,000 rows
    DEV_EXTRAS=bench ./dev python benchmarks/int8_scan.py --rows 1000000

Random unit 384-d rows (cosine), encoded by :class:`dual_encoder.embedded.quantised.QuantisedVectors` as the
store encodes them; random unit queries, each searched alone, the ways alternating query by query:

- ``float32_product_{1,2}_threads``: ``matrix @ query`` on one or two BLAS threads (the scan the codes replace);
- ``faiss_candidates``: ``QuantisedVectors.candidates(query, 10, allowed)``: faiss's 8-bit scanner over the codes
  (two threads from 16,384 rows), the bound and the candidate set: the store's first pass today;
- ``int8_dot_{1,2}_threads``: NumKong's ``cdist(..., metric="dot")`` of the query's weights quantised to int8
  with the codes stored as ``code - 128`` (int8), then the candidate set from every row's integer dot (the rows
  within twice the bound, query quantisation included, of the 10th best): the same answer with another kernel.
  Two threads: the calling thread and a new thread each take half the rows (NumKong releases the GIL).

Quantising the query adds an error the candidate bound must cover. With ``w_i = q_i * step_i`` (``step_i`` the
code step of dimension ``i``), ``s = max|w| / 127`` and ``w8 = round(w / s)``, the integer dot ``D = w8 . (c - 128)``
gives ``approx(d) = base(q) + s * D`` within ``E_w = 128 * sum_i |w_i - s * w8_i|`` of faiss's approximate score.
The JSON reports the faiss bound ``E`` and ``E_w`` (medians) and how many rows each way leaves to rescore, so
the speed of the kernel can be weighed against the candidates it adds; and whether each int8 candidate set held
the exact float32 top 10. Results: benchmarks/results/int8_scan_<rows>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np
from _common import summary, write_result

from dual_encoder.embedded.quantised import QuantisedVectors

DIMENSION = 384
TOP = 10


def unit_rows(rows: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    matrix = np.empty((rows, DIMENSION), dtype=np.float32)
    for start in range(0, rows, 65_536):
        block = generator.standard_normal((min(65_536, rows - start), DIMENSION), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        matrix[start : start + len(block)] = block
    return matrix


class Int8Scan:
    """The int8 first pass over ``codes`` (int8, ``code - 128``): weights, integer dots, the best rows."""

    def __init__(self, codes: np.ndarray, lower: np.ndarray, width: np.ndarray) -> None:
        import numkong

        self._numkong = numkong
        self.codes = codes
        self.step = width.astype(np.float64) / 255
        self.lower = lower.astype(np.float64)

    def weights(self, query: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """int8 weights, their scale, the constant part of every approximate score, and ``E_w``."""
        weights = query.astype(np.float64) * self.step
        scale = float(np.abs(weights).max()) / 127 or 1.0
        quantised = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
        base = float(query.astype(np.float64) @ (self.lower + 128.5 * self.step))
        error = 128 * float(np.abs(weights - scale * quantised).sum())
        return quantised, scale, base, error

    def dots(self, quantised: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
        self._numkong.cdist(quantised[None, :], self.codes[start:stop], metric="dot", out=out[None, start:stop])

    def candidates(self, query: np.ndarray, threads: int, bound: float) -> np.ndarray:
        """Rows whose approximate score is within ``2 * (bound + E_w)`` of the 10th best: the rows that can be in
        the exact top 10 (``bound``: the codes' own error ``E``), as ``QuantisedVectors.candidates`` gives."""
        quantised, scale, _, error_w = self.weights(query)
        rows = len(self.codes)
        dots = np.empty(rows, dtype=np.float32)
        if threads == 1:
            self.dots(quantised, 0, rows, dots)
        else:
            half = rows // 2
            helper = threading.Thread(target=self.dots, args=(quantised, half, rows, dots))
            helper.start()
            self.dots(quantised, 0, half, dots)
            helper.join()
        tenth = np.partition(dots, rows - TOP)[rows - TOP]
        return np.flatnonzero(dots >= tenth - 2 * (bound + error_w) / scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    arguments = parser.parse_args()
    try:
        import numkong
    except ImportError:
        sys.exit("NumKong is missing: run with DEV_EXTRAS=bench (or pip install 'numkong==7.8.*').")
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    matrix = unit_rows(arguments.rows, seed=1)
    queries = unit_rows(arguments.queries, seed=2)
    codes = QuantisedVectors(DIMENSION, "cosine")
    for start in range(0, len(matrix), 65_536):
        block = np.arange(start, min(start + 65_536, len(matrix)))
        codes.set_rows(block, matrix[block])
    book = codes._book
    assert book is not None
    signed = (book.codes[: len(matrix)] ^ np.uint8(0x80)).view(np.int8)  # code - 128
    scan = Int8Scan(signed, book.lower, book.width)
    allowed = np.ones(len(matrix), dtype=bool)
    prepared_s = round(time.perf_counter() - started, 1)

    # The integer dots must be exactly what the codes give: compare with an int64 product once.
    check_query = queries[0]
    quantised = scan.weights(check_query)[0]
    exact_dots = signed[:2000].astype(np.int64) @ quantised.astype(np.int64)
    kernel_dots = np.empty(len(matrix), dtype=np.float32)
    scan.dots(quantised, 0, 2000, kernel_dots)
    if not np.array_equal(kernel_dots[:2000].astype(np.int64), exact_dots):
        sys.exit("NumKong's int8 dot products differ from the integer products: the kernel cannot be used.")

    timings: dict[str, list[float]] = {
        name: []
        for name in (
            "float32_product_1_thread",
            "float32_product_2_threads",
            "faiss_candidates",
            "int8_dot_1_thread",
            "int8_dot_2_threads",
        )
    }
    bounds, bounds_w, candidates_faiss_bound, candidates_with_query_error, same_top = [], [], [], [], 0
    load = [os.getloadavg()[0]]
    for query in queries:
        with threadpool_limits(1, "blas"):
            begin = time.perf_counter()
            scores = matrix @ query
            timings["float32_product_1_thread"].append((time.perf_counter() - begin) * 1000)
        with threadpool_limits(2, "blas"):
            begin = time.perf_counter()
            matrix @ query
            timings["float32_product_2_threads"].append((time.perf_counter() - begin) * 1000)
        begin = time.perf_counter()
        found = codes.candidates(query, TOP, allowed)
        timings["faiss_candidates"].append((time.perf_counter() - begin) * 1000)
        bound = codes.error_bound(query)
        for threads in (1, 2):
            begin = time.perf_counter()
            rows = scan.candidates(query, threads, bound)
            timings[f"int8_dot_{threads}_thread{'s' if threads == 2 else ''}"].append(
                (time.perf_counter() - begin) * 1000
            )
        bounds.append(bound)
        bounds_w.append(scan.weights(query)[3])
        candidates_with_query_error.append(len(rows))
        candidates_faiss_bound.append(-1 if found is None else len(found))
        exact_top = set(np.argpartition(-scores, TOP - 1)[:TOP].tolist())
        same_top += exact_top <= set(rows.tolist())
    load.append(os.getloadavg()[0])

    payload = {
        "rows": arguments.rows,
        "dimension": DIMENSION,
        "queries": arguments.queries,
        "numkong": numkong.__version__,
        "numkong_capabilities": sorted(name for name, on in numkong.get_capabilities().items() if on),
        "prepare_seconds": prepared_s,
        "timings": {name: summary(values) for name, values in timings.items()},
        "speedup_of_medians_over_faiss_candidates": {
            name: round(statistics.median(timings["faiss_candidates"]) / statistics.median(values), 2)
            for name, values in timings.items()
        },
        "faiss_bound_E_p50": round(statistics.median(bounds), 5),
        "query_quantisation_E_w_p50": round(statistics.median(bounds_w), 5),
        "rescored_rows_p50": {
            "faiss_first_pass": statistics.median(candidates_faiss_bound),
            "int8_first_pass_bound_E_plus_E_w": statistics.median(candidates_with_query_error),
        },
        "int8_scan_holds_exact_top10": f"{same_top}/{arguments.queries}",
        "load_average_1min_before_after": load,
    }
    path = write_result(f"int8_scan_{arguments.rows // 1000}k", payload)
    print(payload)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
