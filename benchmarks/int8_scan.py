"""Exact search's first pass on the store's 8-bit codes: NumKong's int8 dot products (what
:class:`dual_encoder.embedded.quantised.QuantisedVectors` runs since it replaced faiss's scanner) against faiss's
8-bit scanner over the same codes, beside the float32 product both avoid.

    ./dev python benchmarks/int8_scan.py                 # 100,000 rows
    ./dev python benchmarks/int8_scan.py --rows 1000000

Random unit 384-d rows (cosine), encoded by ``QuantisedVectors`` as the store encodes them; random unit queries,
each searched alone, the ways alternating query by query:

- ``float32_product_{1,2}_threads``: ``matrix @ query`` on one or two BLAS threads (the scan the codes replace);
- ``faiss_8bit_scan_1_thread``: faiss's ``IndexScalarQuantizer`` (``QT_8bit``, the same ranges and codes) searching
  the 296 best rows on one thread: the kernel of the store's former first pass, which decodes every code to
  float before multiplying (the former pass added its bound and a two-thread split on top);
- ``store_candidates_{1,2}_threads``: ``QuantisedVectors.candidates(query, 10, allowed)``: the query's weights
  quantised to int8, every row's integer dot (NumKong), and the rows that can be in the exact top 10.

The JSON reports the codes' error bound ``E`` and the query quantisation's ``E_w`` (medians), how many rows the
first pass leaves to rescore, and whether each candidate set held the exact float32 top 10.
Results: benchmarks/results/int8_scan_store_<rows>k.json. (int8_scan_<rows>k.json are the runs before adoption:
faiss's scanner was then the store's pass, and the int8 pass bounded the query's error by 128 * sum|r| only.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import faiss
import numkong
import numpy as np
from _common import summary, unit_rows, write_result
from threadpoolctl import threadpool_limits

from dual_encoder.embedded.quantised import QuantisedVectors

DIMENSION = 384
TOP = 10
FAISS_WANTED = 296  # the result length the former first pass asked faiss for at k = 10


def faiss_scanner(codes: QuantisedVectors, rows: int) -> faiss.IndexScalarQuantizer:
    """faiss's 8-bit index over the same ranges and codes (stored unsigned there)."""
    book = codes._book
    assert book is not None
    index = faiss.IndexScalarQuantizer(DIMENSION, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.concatenate([book.lower, book.width]).astype(np.float32), index.sq.trained)
    index.is_trained = True
    index.codes.resize(rows * DIMENSION)
    index.ntotal = rows
    unsigned = faiss.rev_swig_ptr(index.codes.data(), rows * DIMENSION).reshape(rows, DIMENSION)
    unsigned[:] = book.codes[:rows].view(np.uint8) ^ np.uint8(0x80)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    arguments = parser.parse_args()
    faiss.omp_set_num_threads(1)

    started = time.perf_counter()
    matrix = unit_rows(arguments.rows, DIMENSION, seed=1)
    queries = unit_rows(arguments.queries, DIMENSION, seed=2)
    codes = QuantisedVectors(DIMENSION, "cosine")
    for start in range(0, len(matrix), 65_536):
        block = np.arange(start, min(start + 65_536, len(matrix)))
        codes.set_rows(block, matrix[block])
    index = faiss_scanner(codes, len(matrix))
    allowed = np.ones(len(matrix), dtype=bool)
    prepared_s = round(time.perf_counter() - started, 1)

    names = (
        "float32_product_1_thread",
        "float32_product_2_threads",
        "faiss_8bit_scan_1_thread",
        "store_candidates_1_thread",
        "store_candidates_2_threads",
    )
    timings: dict[str, list[float]] = {name: [] for name in names}
    bounds, query_bounds, rescored, held = [], [], [], 0
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
        index.search(query[None], FAISS_WANTED)
        timings["faiss_8bit_scan_1_thread"].append((time.perf_counter() - begin) * 1000)
        found = None
        for threads in (1, 2):
            codes.scan_threads = threads
            begin = time.perf_counter()
            found = codes.candidates(query, TOP, allowed)
            timings[f"store_candidates_{threads}_thread{'s' if threads == 2 else ''}"].append(
                (time.perf_counter() - begin) * 1000
            )
        bounds.append(codes.error_bound(query))
        query_bounds.append(codes.query_error_bound(query))
        rescored.append(-1 if found is None else len(found))
        exact_top = set(np.argpartition(-scores, TOP - 1)[:TOP].tolist())
        held += found is not None and exact_top <= set(found.tolist())
    load.append(os.getloadavg()[0])

    medians = {name: statistics.median(values) for name, values in timings.items()}
    payload = {
        "rows": arguments.rows,
        "dimension": DIMENSION,
        "queries": arguments.queries,
        "numkong": numkong.__version__,
        "numkong_capabilities": sorted(name for name, on in numkong.get_capabilities().items() if on),
        "faiss": faiss.__version__,
        "prepare_seconds": prepared_s,
        "timings": {name: summary(values) for name, values in timings.items()},
        "speedup_of_medians_over_faiss_8bit_scan": {
            name: round(medians["faiss_8bit_scan_1_thread"] / median, 2) for name, median in medians.items()
        },
        "codes_bound_E_p50": round(statistics.median(bounds), 5),
        "query_quantisation_E_w_p50": round(statistics.median(query_bounds), 5),
        "rescored_rows_p50": statistics.median(rescored),
        "candidates_hold_exact_top10": f"{held}/{arguments.queries}",
        "load_average_1min_before_after": load,
    }
    path = write_result(f"int8_scan_store_{arguments.rows // 1000}k", payload)
    print(payload)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
