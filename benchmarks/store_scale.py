"""Embedded store at scale: writes, reopen, exact / filtered / approximate search, peak RSS.

Synthetic 384-d unit vectors (random: the hard case for approximate search) with small meta
(``year`` 2000..2023, so ``meta.year >= 2018`` matches 25%, ``source``, ``lang``). For each size the store
is built once in ``benchmarks/.work/``; every measurement then runs in a fresh subprocess, so its peak RSS
is the store's and not the generator's. Haystack's ``InMemoryDocumentStore`` runs beside it where it can.
Exact search through the store's 8-bit codes is measured side by side with the plain float32 scan on the same
store (``exact_search_codes``: each query both ways, wall-clock and CPU time, identical ids checked).

Usage::

    .venv/bin/python benchmarks/store_scale.py --sizes 100000            # ~2 min
    .venv/bin/python benchmarks/store_scale.py --sizes 100000 1000000    # ~20 min; writes results/store_scale.json
    .venv/bin/python benchmarks/store_scale.py --no-approximate --haystack-max 0 --output store_scale_exact_codes
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, WORK, machine

DIMENSION = 384
FILTER = {"field": "meta.year", "operator": ">=", "value": 2018}
SOURCES = ["web", "paper", "book", "news", "forum", "wiki", "code", "mail"]
BATCH = 50_000


def vectors(start: int, count: int, seed: int = 7) -> np.ndarray:
    """Rows ``start..start+count`` of a reproducible stream of random unit vectors."""
    rng = np.random.default_rng([seed, start])
    block = rng.standard_normal((count, DIMENSION), dtype=np.float32)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def meta(i: int) -> dict:
    return {"year": 2000 + (i * 7919) % 24, "source": SOURCES[i % len(SOURCES)], "lang": "en" if i % 5 else "de"}


def records(start: int, count: int, prefix: str = "doc"):
    from dual_encoder.stores.contract import StoredRecord

    block = vectors(start, count)
    return [
        StoredRecord(
            id=f"{prefix}-{start + i}", content=f"document {start + i}", meta=meta(start + i), embedding=block[i]
        )
        for i in range(count)
    ]


def queries(count: int) -> np.ndarray:
    return vectors(10**9, count, seed=11)


def rss() -> dict:
    status = Path("/proc/self/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].strip() for line in status if ":" in line}
    mib = lambda key: round(int(fields.get(key, "0 kB").split()[0]) / 1024, 1)  # noqa: E731
    return {
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mib": mib("VmRSS"),
        "rss_anon_mib": mib("RssAnon"),
        "rss_file_mib": mib("RssFile"),
    }


def p50(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def ms(function) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


# ------------------------------------------------------------------------------------------------ build
def build(size: int, path: Path) -> dict:
    from dual_encoder.embedded import EmbeddedStore

    if path.exists():
        shutil.rmtree(path)
    store = EmbeddedStore(path)
    started = time.perf_counter()
    for start in range(0, size, BATCH):
        store.upsert(records(start, min(BATCH, size - start)))
        gc.collect()
    seconds = time.perf_counter() - started
    store.close()
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {
        "documents": size,
        "build_s": round(seconds, 1),
        "docs_per_s": round(size / seconds),
        "disk_mib": round(disk / 2**20),
    }


# ---------------------------------------------------------------------------------------------- measure
def measure(size: int, path: Path, repeat: int, approximate: bool) -> dict:
    from dual_encoder.embedded import EmbeddedStore
    from dual_encoder.embedded import store as store_module
    from dual_encoder.embedded.storage import CHECKPOINT_FILE

    out: dict = {"documents": size}
    query_vectors = queries(max(repeat, 50))
    (path / CHECKPOINT_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    EmbeddedStore(path).close()  # reads one database row per document, then writes the slot checkpoint
    out["open_from_database_rows_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    store = EmbeddedStore(path)
    opened = time.perf_counter()
    first = store.vector_search(query_vectors[0], top_k=10, exact=True)
    answered = time.perf_counter()
    assert len(first.hits) == 10
    out["reopen"] = {
        "open_ms": round((opened - started) * 1000, 1),
        "first_search_ms": round((answered - opened) * 1000, 1),
        "until_first_answer_s": round(answered - started, 3),
    }
    out["reopen"]["first_filtered_search_ms"] = round(
        ms(lambda: store.vector_search(query_vectors[1], top_k=10, filters=FILTER, exact=True)), 1
    )
    out["rss_after_reopen"] = rss()

    out["exact_search_codes"] = measure_codes(store, path, query_vectors, repeat)
    exact = [ms(lambda q=q: store.vector_search(q, top_k=10, exact=True)) for q in query_vectors[:repeat]]
    filtered = [
        ms(lambda q=q: store.vector_search(q, top_k=10, filters=FILTER, exact=True)) for q in query_vectors[:repeat]
    ]
    out["exact_top10"] = {"p50_ms": p50(exact), "min_ms": round(min(exact), 3), "n": len(exact)}
    out["filtered_exact_top10"] = {
        "p50_ms": p50(filtered),
        "min_ms": round(min(filtered), 3),
        "n": len(filtered),
        "matching_fraction": round(store.count(FILTER) / store.count(), 4),
    }
    # The matrix-vector product alone, with 1 and 2 BLAS threads (memory bound at large sizes).
    from threadpoolctl import threadpool_limits

    matrix = store._vectors.matrix[: store._end]
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            samples = [ms(lambda q=q: matrix @ q) for q in query_vectors[:repeat]]
        out[f"matvec_{threads}_blas_threads_p50_ms"] = p50(samples)
    out["exact_top10_single_thread_threshold_elements"] = store_module._SINGLE_THREAD_MAX_ELEMENTS

    writes = []
    for round_ in range(5):
        batch = records(size + 1000 * round_, 10, prefix="new")
        writes.append(ms(lambda b=batch: store.upsert(b)))
    out["write_10_docs"] = {"p50_ms": p50(writes), "samples_ms": [round(w, 2) for w in writes]}
    store.delete([f"new-{size + 1000 * r + i}" for r in range(5) for i in range(10)])

    if approximate:
        out["approximate"] = measure_approximate(store, query_vectors, repeat)
    out["rss_end"] = rss()
    store.close()
    return out


def measure_codes(store, path: Path, query_vectors: np.ndarray, repeat: int) -> dict:
    """Exact top-10 through the 8-bit first pass against the plain float32 scan, side by side: each query runs
    both ways back to back (alternating which goes first), so load changes hit both alike. Both must return
    the same ids. Beside wall-clock time, the process CPU time (all threads): on a loaded machine wall-clock
    time is mostly waiting for a core, CPU time is the work done."""
    from dual_encoder.embedded import store as store_module

    result: dict = {"threshold_documents": store.quantised_threshold}
    codes = store._quantised
    if codes is None:
        return {**result, "skipped": "the store holds no exact-search codes (below the threshold or faiss missing)"}
    result["codes_from"] = store.quantised_source
    saved = list(path.glob(f"{store_module._QUANTISED_PREFIX}*.npz"))
    result["codes_file_mib"] = round(saved[0].stat().st_size / 2**20, 1) if saved else None
    result["outliers"] = codes.outliers
    threshold = store.quantised_threshold

    def both(query: np.ndarray, filters, first_plain: bool) -> tuple[dict, dict, bool]:
        wall, cpu, ids = {}, {}, {}
        for plain in (first_plain, not first_plain):
            store.quantised_threshold = 10**18 if plain else threshold
            started, started_cpu = time.perf_counter(), time.process_time()
            hits = store.vector_search(query, top_k=10, filters=filters, exact=True).hits
            wall[plain] = (time.perf_counter() - started) * 1000
            cpu[plain] = (time.process_time() - started_cpu) * 1000
            ids[plain] = [h.record.id for h in hits]
        store.quantised_threshold = threshold
        return wall, cpu, ids[False] == ids[True]

    for label, filters in (("unfiltered", None), ("filtered", FILTER)):
        wall: dict = {False: [], True: []}
        cpu: dict = {False: [], True: []}
        same = 0
        for i, query in enumerate(query_vectors[:repeat]):
            one_wall, one_cpu, identical = both(query, filters, first_plain=bool(i % 2))
            for plain in (False, True):
                wall[plain].append(one_wall[plain])
                cpu[plain].append(one_cpu[plain])
            same += identical
        result[label] = {
            "codes_p50_ms": p50(wall[False]),
            "float32_scan_p50_ms": p50(wall[True]),
            "speedup_of_medians": round(statistics.median(wall[True]) / statistics.median(wall[False]), 2),
            "codes_cpu_p50_ms": p50(cpu[False]),
            "float32_scan_cpu_p50_ms": p50(cpu[True]),
            "cpu_ratio_of_medians": round(statistics.median(cpu[True]) / max(statistics.median(cpu[False]), 1e-3), 2),
            "identical_ids": f"{same}/{len(wall[False])}",
        }
    # What the first pass leaves to rescore, and its error bound, for the unfiltered queries.
    with store._lock:
        end = store._end
        valid = store._live[:end] & store._has_vector[:end]
    counts, bounds = [], []
    for query in query_vectors[:repeat]:
        unit = query / np.linalg.norm(query) if store.similarity == "cosine" else query
        found = codes.candidates(unit, 10, valid)
        counts.append(len(found) if found is not None else end)
        bounds.append(codes.error_bound(unit))
    result["rescored_rows_p50"] = statistics.median(counts)
    result["error_bound_p50"] = round(float(statistics.median(bounds)), 5)
    return result


def measure_approximate(store, query_vectors: np.ndarray, repeat: int) -> dict:
    try:
        from dual_encoder.embedded import ann  # noqa: F401
    except ImportError:
        return {"skipped": "dual_encoder.embedded.ann is not installed"}
    result: dict = {}
    from dual_encoder.embedded import store as store_module

    saved = (store.path / store_module._ANN_POINTER).exists()
    started = time.perf_counter()
    with store._lock:
        store._ann_index()
    result["index_ready_s"] = round(time.perf_counter() - started, 1)
    result["index_ready_from"] = (
        "saved file + change log" if store.approximate_index_source == "loaded" else "built from the vectors"
    )
    result["saved_index_present"] = saved
    truth = [[h.record.id for h in store.vector_search(q, top_k=10, exact=True).hits] for q in query_vectors[:repeat]]

    def run(label: str, filters=None) -> dict:
        latencies, recalls = [], []
        for q, expected in zip(query_vectors[:repeat], truth):
            started = time.perf_counter()
            got = store.vector_search(q, top_k=10, filters=filters, exact=False)
            latencies.append((time.perf_counter() - started) * 1000)
            if filters is None:
                assert got.method == "approximate", got.method
                recalls.append(len(set(expected) & {h.record.id for h in got.hits}) / 10)
        entry = {"p50_ms": p50(latencies), "n": len(latencies)}
        if recalls:
            entry["recall_at_10"] = round(float(np.mean(recalls)), 4)
        return entry

    result["top10"] = run("unfiltered")
    # The recall/latency curve of the index's main knob: candidates rescored exactly per 10 results.
    curve = []
    default = store._ann.params["candidates"]
    for value in (50, 100, 200, 500, 1000, 2000):
        store._ann.params["candidates"] = value
        curve.append({"candidates": value, **run(f"candidates={value}")})
    store._ann.params["candidates"] = default
    result["curve"] = curve
    filtered_truth = [
        {h.record.id for h in store.vector_search(q, top_k=10, filters=FILTER, exact=True).hits}
        for q in query_vectors[:repeat]
    ]
    latencies, recalls = [], []
    for q, expected in zip(query_vectors[:repeat], filtered_truth):
        started = time.perf_counter()
        got = store.vector_search(q, top_k=10, filters=FILTER, exact=False)
        latencies.append((time.perf_counter() - started) * 1000)
        recalls.append(len(expected & {h.record.id for h in got.hits}) / 10)
    result["filtered_top10"] = {"p50_ms": p50(latencies), "recall_at_10": round(float(np.mean(recalls)), 4)}
    result["parameters"] = dict(store._ann.params)
    result["trained"] = bool(store._ann.trained)
    return result


# -------------------------------------------------------------------------------------------- haystack
def measure_haystack(size: int, repeat: int) -> dict:
    from haystack import Document
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    before = rss()["rss_mib"]
    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    started = time.perf_counter()
    for start in range(0, size, BATCH):
        block = vectors(start, min(BATCH, size - start))
        store.write_documents(
            [
                Document(
                    id=f"doc-{start + i}",
                    content=f"document {start + i}",
                    meta=meta(start + i),
                    embedding=block[i].tolist(),
                )
                for i in range(len(block))
            ]
        )
    out = {"documents": size, "write_all_s": round(time.perf_counter() - started, 1)}
    query_vectors = queries(repeat)
    count = min(repeat, 5)
    exact = [ms(lambda q=q: store.embedding_retrieval(q.tolist(), top_k=10)) for q in query_vectors[:count]]
    filtered = [
        ms(lambda q=q: store.embedding_retrieval(q.tolist(), top_k=10, filters=FILTER)) for q in query_vectors[:count]
    ]
    writes = []
    for round_ in range(5):
        block = vectors(size + 1000 * round_, 10)
        docs = [
            Document(id=f"new-{round_}-{i}", content="x", meta=meta(i), embedding=block[i].tolist()) for i in range(10)
        ]
        writes.append(ms(lambda d=docs: store.write_documents(d)))
    out.update(
        exact_top10={"p50_ms": p50(exact), "n": count},
        filtered_exact_top10={"p50_ms": p50(filtered), "n": count},
        write_10_docs={"p50_ms": p50(writes), "note": "in memory only: nothing is persisted"},
        rss_growth_mib=round(rss()["rss_mib"] - before, 1),
        rss=rss(),
    )
    return out


# ------------------------------------------------------------------------------------------------- main
def _child(command: str, size: int, args) -> dict:
    """Run one phase in a fresh interpreter (clean peak RSS) and return its JSON."""
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "--phase",
            command,
            "--sizes",
            str(size),
            "--repeat",
            str(args.repeat),
            "--work",
            str(args.work),
        ]
        + (["--no-approximate"] if args.no_approximate else []),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--phase", choices=["build", "measure", "haystack"])
    parser.add_argument("--no-approximate", action="store_true")
    parser.add_argument("--haystack-max", type=int, default=100_000)
    parser.add_argument("--output", default="store_scale")
    parser.add_argument("--reuse", action="store_true", help="measure the stores an earlier run built")
    parser.add_argument("--work", type=Path, default=WORK, help="where the stores are built (default benchmarks/.work)")
    args = parser.parse_args()
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    if args.phase:
        size = args.sizes[0]
        path = args.work / f"store_scale-{size}"
        if args.phase == "build":
            result = build(size, path)
        elif args.phase == "measure":
            result = measure(size, path, args.repeat, not args.no_approximate)
        else:
            result = measure_haystack(size, args.repeat)
        result["peak_rss_mib"] = rss()["peak_rss_mib"]
        print(json.dumps(result))
        return

    results: dict = {"dimension": DIMENSION, "filter": FILTER, "sizes": {}}
    earlier = RESULTS / f"{args.output}.json"
    if earlier.exists():
        # Sizes measured by an earlier run stay in the file (each entry records its own load average).
        results["sizes"] = json.loads(earlier.read_text()).get("sizes", {})
    for size in args.sizes:
        entry: dict = {}
        previous = RESULTS / f"{args.output}.json"
        built = args.work / f"store_scale-{size}"
        if args.reuse and built.exists() and previous.exists():
            # The store from an earlier run of the same size (building 1,000,000 documents takes minutes).
            entry["build"] = json.loads(previous.read_text())["sizes"][str(size)]["build"]
        else:
            print(f"[{size}] building ...", file=sys.stderr, flush=True)
            entry["build"] = _child("build", size, args)
        print(f"[{size}] measuring ...", file=sys.stderr, flush=True)
        entry["embedded_store"] = _child("measure", size, args)
        if size <= args.haystack_max:
            print(f"[{size}] haystack InMemoryDocumentStore ...", file=sys.stderr, flush=True)
            entry["haystack_in_memory"] = _child("haystack", size, args)
        else:
            entry["haystack_in_memory"] = {
                "skipped": "InMemoryDocumentStore rebuilds the embedding matrix from Document objects and sorts every "
                "score on each query (see its 100,000-document numbers: time grows linearly), and holds every "
                "embedding as a Python list of floats; at this size one query takes tens of seconds and the "
                "store needs several times the float32 matrix in memory."
            }
        entry["load_average"] = [round(x, 2) for x in os.getloadavg()]
        results["sizes"][str(size)] = entry
        print(json.dumps(entry, indent=1), file=sys.stderr, flush=True)
    load = os.getloadavg()
    results["load_average_at_end"] = [round(x, 2) for x in load]
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{args.output}.json"
    target.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    print(f"wrote {target.relative_to(RESULTS.parent.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
