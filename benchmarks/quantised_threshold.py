"""Where exact search's 8-bit first pass starts to pay: the store's exact top-10 with and without its codes,
by store size, to choose ``DEFAULT_QUANTISED_THRESHOLD``.

    ./dev python benchmarks/quantised_threshold.py

- Synthetic: random unit 384-d vectors in an in-memory ``EmbeddedStore`` at each size, 200 random unit queries.
- SciFact: a copy of an embedded SciFact index under ``benchmarks/.work`` (the first ``scifact-test-index-*``
  there; skipped when there is none), queried with 300 of its own document vectors (real embeddings: the
  codes' ranges and the candidate counts are those of a real corpus).

Each query runs both ways back to back (``quantised_threshold`` 0, then 10**12, the order alternating), through
``EmbeddedStore.vector_search(..., exact=True)``; medians, and whether both ways returned the same ids.
Results: benchmarks/results/quantised_threshold.json.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import WORK, unit_rows, write_result

from dual_encoder.embedded import EmbeddedStore
from dual_encoder.embedded.store import DEFAULT_QUANTISED_THRESHOLD
from dual_encoder.stores.contract import StoredRecord

DIMENSION = 384
SIZES = (2_500, 5_000, 10_000, 20_000, 50_000)
CODES, NO_CODES = 0, 10**12


def both_ways(store: EmbeddedStore, queries: np.ndarray) -> dict:
    timings: dict[str, list[float]] = {"codes": [], "float32": []}
    same = 0
    for number, query in enumerate(queries):
        ids = {}
        ways = [("codes", CODES), ("float32", NO_CODES)]
        for name, threshold in ways if number % 2 else ways[::-1]:
            store.quantised_threshold = threshold
            begin = time.perf_counter()
            hits = store.vector_search(query, top_k=10, exact=True).hits
            timings[name].append((time.perf_counter() - begin) * 1000)
            ids[name] = [hit.record.id for hit in hits]
        same += ids["codes"] == ids["float32"]
    codes, plain = statistics.median(timings["codes"]), statistics.median(timings["float32"])
    return {
        "codes_p50_ms": round(codes, 3),
        "float32_p50_ms": round(plain, 3),
        "float32_over_codes": round(plain / codes, 2),
        "identical_ids": f"{same}/{len(queries)}",
    }


def synthetic() -> dict:
    matrix = unit_rows(max(SIZES), DIMENSION, seed=1)
    queries = unit_rows(200, DIMENSION, seed=2)
    results = {}
    for size in SIZES:
        store = EmbeddedStore(quantised_threshold=CODES)
        store.upsert(
            [StoredRecord(id=f"doc-{i}", content=f"document {i}", meta={}, embedding=matrix[i]) for i in range(size)]
        )
        both_ways(store, queries[:20])  # builds the codes, warms the caches
        results[size] = both_ways(store, queries)
        print("synthetic", size, results[size], flush=True)
        store.close()
    return results


def scifact() -> dict | None:
    indexes = sorted(WORK.glob("scifact-test-index-*"))
    if not indexes:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "index"
        shutil.copytree(indexes[0], copy, ignore=shutil.ignore_patterns("store.lock"))
        store = EmbeddedStore(copy, quantised_threshold=CODES)
        documents = store.count()
        rows = np.random.default_rng(3).choice(documents, size=300, replace=False)
        records = store.list()
        queries = np.stack([np.asarray(records[int(row)].embedding, dtype=np.float32) for row in rows])
        both_ways(store, queries[:20])
        result = {"index": indexes[0].name, "documents": documents, **both_ways(store, queries)}
        print("scifact", result, flush=True)
        store.close()
    return result


def main() -> None:
    load = [os.getloadavg()[0]]
    payload = {
        "default_quantised_threshold": DEFAULT_QUANTISED_THRESHOLD,
        "synthetic_384d": synthetic(),
        "scifact_index": scifact(),
    }
    payload["load_average_1min_before_after"] = [*load, os.getloadavg()[0]]
    print(f"written to {write_result('quantised_threshold', payload)}")


if __name__ == "__main__":
    main()
