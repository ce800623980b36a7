"""A faster approximate top-10 at 1M: one list on one thread beside a parallel scan and smaller codes, in one run.

Two stages, each writing one result file under ``benchmarks/results/``:

- ``curve`` (1,000,000 random unit 384-d vectors, cosine): builds every configuration below as the store does
  (65,536-row ``add`` calls, the float32 rows read back through a callback), then searches 200 random unit
  queries (independent of the data, each searched alone) with all configurations in alternation, query by
  query, for each point of their ``candidates`` curve: p50 latency and recall@10 against exact float32
  search. Also: where one search's time goes (the faiss scan of the codes, the exact rescoring of the
  candidates, the rest), the cost of dead codes (a selector inside the scan), writes of 10 vectors, save and
  load, and exact ``matrix @ query`` in the same run for scale. -> ``ann_fast_1000k.json``
- ``scifact`` (SciFact's 5,183 documents embedded by all-MiniLM-L6-v2, its 300 test queries): recall@10 and
  nDCG@10 against exact search for the one-list and the parallel configuration. -> ``ann_fast_scifact.json``

Configurations (``dual_encoder.embedded.ann.ApproximateIndex`` parameters):

- ``lists1_1thread``: the defaults before 2026-12-02 (one list: an exhaustive scan of 4-bit codes, 2 dimensions
  per sub-quantiser, on one thread);
- ``lists8_1thread`` / ``lists8_2threads``: 8 lists, all 8 probed (still exhaustive), on 1 or 2 threads (one
  index, so the thread count is the only difference);
- ``lists2_2threads``: 2 lists, both probed, on 2 threads;
- ``dims4_lists8_2threads``: half the code bytes (4 dimensions per sub-quantiser) with more candidates;
- ``dims3_lists8_2threads``: two thirds of the code bytes (3 dimensions per sub-quantiser, 64 bytes per vector).

``--scan-rate`` adds where the scan's time comes from: faiss's scan of the default index's codes over the first
100,000 rows (10 MB of codes, which stay in the caches when searched back to back) and over all rows, on 1 and 2
threads, in milliseconds per million codes. The same rate at both sizes means the kernel's arithmetic bounds the
scan; a slower rate over all rows means memory bandwidth does, and then only fewer code bytes per vector make it
faster.

Run from the repository root on a quiet machine (it times single queries; other jobs distort them)::

    .venv/bin/python benchmarks/ann_fast.py curve                 # ~6 min, ~3 GB RAM
    .venv/bin/python benchmarks/ann_fast.py curve --vectors /path/to/store/vectors-XXXX.f32   # reuse rows
    .venv/bin/python benchmarks/ann_fast.py scifact               # ~3 min the first time (encodes SciFact)
    .venv/bin/python benchmarks/ann_fast.py curve --configurations lists8_2threads dims3_lists8_2threads \
        --scan-rate --tag _scan_rate                                # the default beside 64-byte codes

``--vectors`` reads the first ``--size`` rows of a float32 row-major file of 384-d vectors (an embedded
store's vector file) through a read-only memory map instead of generating random ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCIFACT, WORK, summary, write_result
from ann_choice import exact_top, random_unit, recall_at, scifact_embeddings

DIMENSION = 384
QUERIES = 200
WARM_UP = 20
DIMS2_CURVE = [100, 200, 300, 500, 1000]
DIMS4_CURVE = [500, 1000, 2000, 3000, 5000]
DIMS3_CURVE = [500, 1000, 1500, 2000, 3000]

# name -> (index key, search parameters, candidates curve)
CONFIGURATIONS: dict[str, tuple[str, dict, list[int]]] = {
    "lists1_1thread": ("lists1", {"threads": 1}, DIMS2_CURVE),
    "lists8_1thread": ("lists8", {"threads": 1}, DIMS2_CURVE),
    "lists8_2threads": ("lists8", {"threads": 2}, DIMS2_CURVE),
    "lists2_2threads": ("lists2", {"threads": 2}, DIMS2_CURVE),
    "dims4_lists8_2threads": ("dims4_lists8", {"threads": 2}, DIMS4_CURVE),
    "dims3_lists8_2threads": ("dims3_lists8", {"threads": 2}, DIMS3_CURVE),
}
# index key -> structural parameters (built on one thread: on a shared machine a second thread's waits
# dominate the build)
INDEXES: dict[str, dict] = {
    "lists1": {"lists": 1, "probe": 1, "threads": 1},
    "lists8": {"lists": 8, "probe": 8, "threads": 1},
    "lists2": {"lists": 2, "probe": 2, "threads": 1},
    "dims4_lists8": {"lists": 8, "probe": 8, "threads": 1, "dims_per_subquantizer": 4},
    "dims3_lists8": {"lists": 8, "probe": 8, "threads": 1, "dims_per_subquantizer": 3},
}


def anonymous_rss_mb() -> float:
    """Anonymous resident memory of this process in MB (the memory-mapped vectors are file-backed, not counted)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rows_reader(matrix: np.ndarray, extra: np.ndarray | None = None):
    """``f(positions) -> rows``: rows of ``matrix``, positions past its end read from ``extra``."""
    size = len(matrix)

    def rows(positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if extra is None or len(positions) == 0 or int(positions.max()) < size:
            return np.asarray(matrix[positions], dtype=np.float32)
        out = np.empty((len(positions), DIMENSION), dtype=np.float32)
        inside = positions < size
        out[inside] = matrix[positions[inside]]
        out[~inside] = extra[positions[~inside] - size]
        return out

    return rows


def build(matrix: np.ndarray, **params):
    from dual_encoder.embedded.ann import ApproximateIndex

    before = anonymous_rss_mb()
    started = time.perf_counter()
    index = ApproximateIndex(DIMENSION, "cosine", vectors=rows_reader(matrix), **params)
    for start in range(0, len(matrix), 65_536):
        block = np.arange(start, min(start + 65_536, len(matrix)), dtype=np.int64)
        index.add(block, np.asarray(matrix[block], dtype=np.float32))
    return index, {
        "parameters": {**index.params},
        "build_s": round(time.perf_counter() - started, 1),
        "anonymous_rss_delta_mb": round(anonymous_rss_mb() - before),
    }


def time_breakdown(index, queries: np.ndarray) -> dict:
    """Where one search's time goes: faiss's scan (as the index calls it, and with k=10 for the bare kernel),
    the exact rescoring of the candidates from the float32 rows (in row order, as the index does, and in a
    random order, as faiss returns them), and the whole ``search``."""
    parts: dict[str, list[float]] = {
        "faiss_scan": [],
        "faiss_scan_k10": [],
        "rescoring": [],
        "rescoring_in_scan_order": [],
        "search": [],
    }
    for query in queries:
        prepared = index._prepare(query[None, :])
        begun = time.perf_counter()
        candidates = index._scan(prepared, 10, None)
        parts["faiss_scan"].append((time.perf_counter() - begun) * 1000)
        # One rescoring per query, alternating the order, so that each reads rows the scan just evicted
        # from the caches (a second rescoring of the same rows would find them cached).
        in_row_order = len(parts["search"]) % 2 == 0
        if not in_row_order:
            candidates = np.random.default_rng(len(parts["search"])).permutation(candidates)
        begun = time.perf_counter()
        index._exact_scores(candidates, prepared[0])
        part = "rescoring" if in_row_order else "rescoring_in_scan_order"
        parts[part].append((time.perf_counter() - begun) * 1000)
        begun = time.perf_counter()
        index._index.search(prepared, 10)
        parts["faiss_scan_k10"].append((time.perf_counter() - begun) * 1000)
        begun = time.perf_counter()
        index.search(query, 10)
        parts["search"].append((time.perf_counter() - begun) * 1000)
    result = {name: summary(samples)["p50_ms"] for name, samples in parts.items()}
    result["rest_of_search"] = round(result["search"] - result["faiss_scan"] - result["rescoring"], 3)
    return result


def alternate(entries: dict, indexes: dict, queries: np.ndarray, truth: np.ndarray) -> dict[str, list[dict]]:
    """Every configuration's curve, measured query by query in alternation (so load changes hit all alike)."""
    points = len(next(iter(entries.values()))[2])
    curves: dict[str, list[dict]] = {name: [] for name in entries}
    for query in queries[:WARM_UP]:  # page in the rows rescoring reads, warm the caches
        for key, params, curve in entries.values():
            indexes[key].params.update(params, candidates=curve[-1])
            indexes[key].search(query, 10)
    for point in range(points):
        samples: dict[str, list[float]] = {name: [] for name in entries}
        found: dict[str, list[np.ndarray]] = {name: [] for name in entries}
        for query in queries:
            for name, (key, params, curve) in entries.items():
                index = indexes[key]
                index.params.update(params, candidates=curve[point])
                begun = time.perf_counter()
                positions, _ = index.search(query, 10)
                samples[name].append((time.perf_counter() - begun) * 1000)
                found[name].append(positions)
        for name, (_, _, curve) in entries.items():
            row = {"candidates": curve[point], "recall_at_10": round(recall_at(found[name], truth), 4)}
            curves[name].append({**row, **summary(samples[name])})
            print(f"  {name}: {curves[name][-1]}", flush=True)
    return curves


def load_matrix(size: int, vectors: str | None) -> tuple[np.ndarray, str]:
    if vectors is None:
        return random_unit(size, seed=0), "generated: random unit vectors, seed 0"
    mapped = np.memmap(vectors, dtype=np.float32, mode="r")
    rows = mapped.reshape(-1, DIMENSION)
    if len(rows) < size:
        raise SystemExit(f"{vectors} holds {len(rows)} rows of {DIMENSION} floats; --size {size} needs more.")
    norms = np.linalg.norm(np.asarray(rows[:1000]), axis=1)
    if not np.allclose(norms, 1.0, atol=1e-4):
        raise SystemExit(f"The first rows of {vectors} are not unit vectors: this stage measures random unit vectors.")
    # The store folder and file name only: results carry no machine's absolute paths.
    named = Path(vectors).resolve()
    return rows[:size], f"first {size} rows of {named.parent.name}/{named.name} (read-only memory map)"


def stage_curve(
    size: int, vectors: str | None, configurations: list[str], scratch_root: Path, count: int, scan_rate: bool = False
) -> dict:
    from threadpoolctl import threadpool_limits

    matrix, source = load_matrix(size, vectors)
    queries = random_unit(count, seed=1)
    started = time.perf_counter()
    truth = exact_top(matrix, queries)
    print(f"truth in {time.perf_counter() - started:.1f}s", flush=True)
    results: dict = {"size": size, "queries": count, "dimension": DIMENSION, "vectors": source}
    results["load_average_at_start"] = [round(value, 2) for value in os.getloadavg()]

    # Exact search of the whole matrix (one BLAS call, BLAS's own threads), for scale.
    exact = []
    for query in queries[:10]:
        begun = time.perf_counter()
        scores = matrix @ query
        np.argpartition(-scores, 9)[:10]
        exact.append((time.perf_counter() - begun) * 1000)
    results["exact_numpy"] = summary(exact)
    print("exact", results["exact_numpy"], flush=True)

    # One BLAS thread from here on, as the embedded store rescores a query's candidates.
    threadpool_limits(1, user_api="blas")
    entries = {name: CONFIGURATIONS[name] for name in configurations}
    indexes, builds = {}, {}
    for key in dict.fromkeys(entry[0] for entry in entries.values()):
        indexes[key], builds[key] = build(matrix, **INDEXES[key])
        print(f"built {key}: {builds[key]}", flush=True)
    results["indexes"] = builds
    results["configurations"] = {name: {"index": key, "search": params} for name, (key, params, _) in entries.items()}
    results["curves"] = alternate(entries, indexes, queries, truth)

    # Where the time goes: at the default 500 candidates (3,000 for the smaller codes, which need more).
    breakdown = {}
    for name, (key, params, _) in entries.items():
        candidates = {"dims4": 3000, "dims3": 1500}.get(key[:5], 500)
        indexes[key].params.update(params, candidates=candidates)
        breakdown[name] = {"candidates": candidates, **time_breakdown(indexes[key], queries[:50])}
        print(f"breakdown {name}: {breakdown[name]}", flush=True)
    results["time_breakdown"] = breakdown

    if scan_rate and "lists8" in indexes:
        results["scan_rate"] = _scan_rate(indexes["lists8"], matrix, queries[:100])
        print(f"scan rate: {results['scan_rate']}", flush=True)

    rng = np.random.default_rng(3)
    for key in ("lists1", "lists8"):
        if key not in indexes:
            continue
        index = indexes[key]
        index.params.update(threads=INDEXES[key]["threads"], candidates=500)
        report: dict = {}
        # Dead codes: remove 1% of the rows; the scan then tests a live-code bitmap on every candidate.
        removed = np.sort(rng.choice(size, size // 100, replace=False)).astype(np.int64)
        report["without_dead_codes"] = summary([_timed(index, query) for query in queries[:50]])
        index.remove(removed)
        report["with_1pct_dead_codes"] = summary([_timed(index, query) for query in queries[:50]])
        index.add(removed, np.asarray(matrix[removed], dtype=np.float32))
        # Filters: a 25% mask inside the scan, recall against the exact top 10 of the allowed rows.
        allowed = rng.random(size) < 0.25
        rows = np.flatnonzero(allowed)
        truth_allowed = rows[exact_top(matrix[rows], queries[:50])]
        filtered, samples = [], []
        for query in queries[:50]:
            begun = time.perf_counter()
            filtered.append(index.search(query, 10, allowed=allowed)[0])
            samples.append((time.perf_counter() - begun) * 1000)
        report["filtered_25pct"] = {"recall_at_10": round(recall_at(filtered, truth_allowed), 4), **summary(samples)}
        report["writes"] = _writes(index, matrix, rng)
        report["persistence"] = _persistence(index, matrix, queries[:50], scratch_root)
        results[f"checks_{key}"] = report
        print(f"checks {key}: {report}", flush=True)
    results["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return results


def _scan_rate(index, matrix: np.ndarray, queries: np.ndarray, small: int = 100_000) -> dict:
    """faiss's scan (300 candidates, every list) of the first ``small`` rows' codes and of all rows' codes, on 1
    and 2 threads: milliseconds per query and per million codes. Each (codes, threads) pair runs its queries back
    to back after two warm-up searches, so the small set's 10 MB of codes stay in the caches between queries
    (alternating with the large set would evict them)."""
    import faiss

    from dual_encoder.embedded.ann import _OmpThreads, _parallel_over_lists

    whole = index._index
    part = _parallel_over_lists(faiss.clone_index(whole))
    part.reset()  # keeps the trained quantisers
    part.add(index._prepare(np.asarray(matrix[:small], dtype=np.float32)))
    prepared = [index._prepare(query[None, :]) for query in queries]
    params = faiss.SearchParametersIVF(nprobe=whole.nlist)  # type: ignore[call-arg]
    result: dict = {"code_bytes_per_vector": whole.code_size, "rows": {"small": small, "all": whole.ntotal}}
    for round_ in range(2):  # two rounds, so a load change shows as a difference between them
        for threads in (1, 2):
            for name, codes in (("small", part), ("all", whole)):
                samples = []
                with _OmpThreads(threads):
                    for query in prepared[:2] + prepared:
                        begun = time.perf_counter()
                        codes.search(query, 300, params=params)
                        samples.append((time.perf_counter() - begun) * 1000)
                p50 = summary(samples[2:])["p50_ms"]
                rows = result["rows"][name]
                result[f"{name}_{threads}thread_round{round_ + 1}"] = {
                    "p50_ms": p50,
                    "ms_per_million_codes": round(p50 * 1e6 / rows, 2),
                }
    return result


def _timed(index, query: np.ndarray) -> float:
    begun = time.perf_counter()
    index.search(query, 10)
    return (time.perf_counter() - begun) * 1000


def _writes(index, matrix: np.ndarray, rng: np.random.Generator) -> dict:
    """Writes as the store issues them: 10 new rows, 10 replaced rows, 10 removed rows (p50 of 5)."""
    size = len(matrix)
    extra = random_unit(50, seed=4)
    index._vectors_of = rows_reader(matrix, extra)
    writes: dict[str, list[float]] = {"add_10_new": [], "replace_10": [], "remove_10": []}
    for round_ in range(5):
        new = np.arange(size + 10 * round_, size + 10 * (round_ + 1), dtype=np.int64)
        begun = time.perf_counter()
        index.add(new, extra[new - size])
        writes["add_10_new"].append((time.perf_counter() - begun) * 1000)
        found, _ = index.search(extra[new[0] - size], 1)
        assert found[0] == new[0], "a vector just added is its own nearest neighbour"
        old = rng.choice(size, 10, replace=False).astype(np.int64)
        begun = time.perf_counter()
        index.add(old, np.asarray(matrix[old], dtype=np.float32))
        writes["replace_10"].append((time.perf_counter() - begun) * 1000)
        begun = time.perf_counter()
        index.remove(new)
        writes["remove_10"].append((time.perf_counter() - begun) * 1000)
    index._vectors_of = rows_reader(matrix)
    return {name: summary(samples) for name, samples in writes.items()}


def _persistence(index, matrix: np.ndarray, queries: np.ndarray, scratch_root: Path) -> dict:
    from dual_encoder.embedded.ann import ApproximateIndex

    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
        path = Path(scratch) / "ann.npz"
        begun = time.perf_counter()
        index.save(path)
        saved = time.perf_counter() - begun
        begun = time.perf_counter()
        search = {name: index.params[name] for name in ("candidates", "probe", "threads")}
        loaded = ApproximateIndex.load(path, DIMENSION, "cosine", vectors=rows_reader(matrix), **search)
        load_s = time.perf_counter() - begun
        same = all(np.array_equal(index.search(q, 10)[0], loaded.search(q, 10)[0]) for q in queries)
        return {
            "save_s": round(saved, 2),
            "load_s": round(load_s, 2),
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "same_results_after_load": bool(same),
            "loaded_search": summary([_timed(loaded, query) for query in queries]),
        }


def stage_scifact(configurations: list[str]) -> dict:
    import pytrec_eval

    documents, queries, doc_ids, query_ids = scifact_embeddings()
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, doc, score = line.split("\t")
        qrels.setdefault(query, {})[doc] = int(score)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})

    def ndcg(top: list[tuple[np.ndarray, np.ndarray]]) -> float:
        run = {
            q: {doc_ids[int(p)]: float(s) for p, s in zip(positions, scores)}
            for q, (positions, scores) in zip(query_ids, top)
        }
        return float(np.mean([v["ndcg_cut_10"] for v in evaluator.evaluate(run).values()]))

    unit = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    exact = []
    for query in queries:
        scores = unit @ (query / np.linalg.norm(query))
        top = np.argsort(-scores, kind="stable")[:10]
        exact.append((top, scores[top]))
    truth = np.stack([positions for positions, _ in exact])
    results: dict = {"documents": len(documents), "queries": len(queries), "exact_ndcg_at_10": round(ndcg(exact), 4)}
    built: dict[str, object] = {}
    for name in configurations:
        key, params, _ = CONFIGURATIONS[name]
        if key not in built:
            # train_size below the corpus size, so that the index is trained and answers approximately.
            built[key], _ = build(documents, **{**INDEXES[key], "train_size": 4096})
        index = built[key]
        assert index.trained
        curve = []
        for candidates in [20, 50, 100, 200, 500]:
            index.params.update(params, candidates=candidates)
            found = [index.search(query, 10) for query in queries]
            curve.append(
                {
                    "candidates": candidates,
                    "recall_at_10": round(recall_at([f[0] for f in found], truth), 4),
                    "ndcg_at_10": round(ndcg(found), 4),
                }
            )
            print(name, curve[-1], flush=True)
        results[name] = {"index": INDEXES[key], "search": params, "curve": curve}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["curve", "scifact"])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=QUERIES, help="random queries, each searched alone")
    parser.add_argument("--vectors", default=None, help="float32 file of 384-d unit rows to read instead of generating")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--scratch", type=Path, default=WORK, help="directory for the saved index of the load check")
    parser.add_argument("--scan-rate", action="store_true", help="also time the scan over cached and uncached codes")
    parser.add_argument("--tag", default="", help="suffix for the result file name (keeps earlier runs' files)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.stage == "curve":
        payload = stage_curve(args.size, args.vectors, args.configurations, args.scratch, args.queries, args.scan_rate)
        name = f"ann_fast_{args.size // 1000}k{args.tag}"
    else:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        configurations = [name for name in args.configurations if not name.startswith("dims4")]
        payload, name = stage_scifact(configurations), "ann_fast_scifact"
    payload["peak_rss_mb"] = round(
        __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024
    )
    payload["wall_s"] = round(time.perf_counter() - started)
    payload["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(write_result(name, payload))


if __name__ == "__main__":
    main()
