"""Choose and check the embedded store's approximate index (`dual_encoder.embedded.ann`).

Five stages, each writing one result file under ``benchmarks/results/``:

- ``choose`` (100,000 random unit 384-d vectors, cosine): our faiss IVF-PQ fast-scan index with exact rescoring
  beside two HNSW graphs (usearch 2.26 with f16 storage, faiss HNSW with fp16 storage): build time, RSS delta,
  and the recall@10 / latency curve of each one's main search parameter. -> ``ann_choice_100k.json``
- ``confirm`` (1,000,000 random unit vectors): the chosen index built incrementally in 65,536-row blocks as the
  store does: build time, RSS delta, the ``candidates`` curve, 2 threads vs 1, writes of 10 vectors, filtered
  search against exact scoring of the allowed rows (the ``prefers_exact`` crossover), save/load.
  -> ``ann_1m.json``
- ``latency`` (1,000,000 random unit vectors): the default parameters alternating query by query with exact
  numpy search, to re-measure latency when the machine is quieter. -> ``ann_latency_1000k.json``
- ``filters`` (1,000,000 random unit vectors): filtered approximate search alternating with exact scoring of
  the allowed rows gathered 1,024 at a time (as the store does), down to 0.5% selectivity: where
  ``prefers_exact`` should switch. -> ``ann_filters_1000k.json``
- ``scifact`` (SciFact's 5,183 documents embedded by all-MiniLM-L6-v2, its 300 test queries): recall@10 and
  nDCG@10 of approximate vs exact search. -> ``ann_scifact.json``

Every query is a single vector searched alone (as in a RAG query). Recall@10 is against exact float32 search.
The random queries are independent of the data: the hard case, where neighbours are barely closer than
any other vector.

Run from the repository root (the machine is shared: run stages one at a time)::

    .venv/bin/pip install usearch==2.26.6    # compared in `choose` and `scifact` (in the bench extra)
    .venv/bin/python benchmarks/ann_choice.py choose    # ~15 min on 2 busy cores
    .venv/bin/python benchmarks/ann_choice.py confirm   # ~10 min, ~4 GB RAM
    .venv/bin/python benchmarks/ann_choice.py latency   # ~4 min, ~3 GB RAM
    .venv/bin/python benchmarks/ann_choice.py filters   # ~6 min, ~3 GB RAM
    .venv/bin/python benchmarks/ann_choice.py scifact   # ~5 min the first time (encodes SciFact, cached)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCIFACT, WORK, summary, write_result

DIMENSION = 384
QUERIES = 200


def rss_mb() -> float:
    """Resident set size of this process in MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_unit(count: int, seed: int) -> np.ndarray:
    """Random unit vectors, generated in blocks so no float64 copy of the whole matrix is made."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, DIMENSION), dtype=np.float32)
    for start in range(0, count, 100_000):
        block = rng.standard_normal((min(100_000, count - start), DIMENSION), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top(matrix: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k rows (cosine of unit vectors = dot) for each query, blockwise."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(matrix), 200_000):
        scores = queries @ matrix[start : start + 200_000].T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, 1)])
        best = np.hstack([best, top + start])
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_scores, best = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best, keep, 1)
    return best


def recall_at(found: list[np.ndarray], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def measure(search, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Run ``search(query) -> positions`` on every query alone; recall@10 and latency."""
    found, samples = [], []
    for query in queries:
        started = time.perf_counter()
        positions = search(query)
        samples.append((time.perf_counter() - started) * 1000)
        found.append(np.asarray(positions))
    return {"recall_at_10": round(recall_at(found, truth), 4), **summary(samples)}


def build_ours(matrix: np.ndarray, **params):
    from dual_encoder.embedded.ann import ApproximateIndex

    before = rss_mb()
    started = time.perf_counter()
    index = ApproximateIndex(DIMENSION, "cosine", vectors=lambda positions: matrix[positions], **params)
    for start in range(0, len(matrix), 65_536):
        block = np.arange(start, min(start + 65_536, len(matrix)), dtype=np.int64)
        index.add(block, matrix[block])
    return index, {"build_s": round(time.perf_counter() - started, 1), "rss_delta_mb": round(rss_mb() - before)}


def curve_ours(index, queries, truth, values) -> list[dict]:
    rows = []
    for candidates in values:
        index.params["candidates"] = candidates
        rows.append({"candidates": candidates, **measure(lambda q: index.search(q, 10)[0], queries, truth)})
        print("  ours", rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ stages
def stage_choose(size: int) -> dict:
    import faiss
    from usearch.index import Index

    from dual_encoder.embedded.ann import DEFAULT_PARAMETERS

    matrix = random_unit(size, seed=0)
    queries = random_unit(QUERIES, seed=1)
    truth = exact_top(matrix, queries)
    results: dict = {"size": size, "queries": QUERIES, "dimension": DIMENSION, "libraries": {}}

    index, build = build_ours(matrix)
    results["libraries"]["faiss IVF1,PQ192x4fs + exact rescoring (ours)"] = {
        **build,
        "parameter": "candidates (rescored per 10 results)",
        "curve": curve_ours(index, queries, truth, [50, 100, 200, 500, 1000]),
    }
    print(results["libraries"], flush=True)
    index.params["candidates"] = DEFAULT_PARAMETERS["candidates"]

    before, started = rss_mb(), time.perf_counter()
    graph = Index(ndim=DIMENSION, metric="cos", dtype="f16", connectivity=16, expansion_add=128)
    graph.add(np.arange(size, dtype=np.uint64), matrix, threads=1)
    entry: dict = {
        "build_s": round(time.perf_counter() - started, 1),
        "rss_delta_mb": round(rss_mb() - before),
        "settings": "connectivity 16, expansion_add 128, f16, built on 1 thread",
        "parameter": "expansion_search",
        "curve": [],
    }
    for expansion in [64, 128, 256, 512, 1024]:
        graph.expansion_search = expansion
        row = measure(lambda q: graph.search(q, 10, threads=1).keys.astype(np.int64), queries, truth)
        entry["curve"].append({"expansion_search": expansion, **row})
        print("  usearch", entry["curve"][-1], flush=True)
    results["libraries"]["usearch HNSW f16"] = entry

    faiss.omp_set_num_threads(1)
    before, started = rss_mb(), time.perf_counter()
    hnsw = faiss.IndexHNSWSQ(DIMENSION, faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.train(matrix[:1000])
    hnsw.add(matrix)
    entry = {
        "build_s": round(time.perf_counter() - started, 1),
        "rss_delta_mb": round(rss_mb() - before),
        "settings": "M 32, efConstruction 80, fp16, built on 1 thread",
        "parameter": "efSearch",
        "curve": [],
    }
    for ef in [64, 128, 256, 512, 1024]:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        row = measure(lambda q, p=params: hnsw.search(q[None, :], 10, params=p)[1][0], queries, truth)
        entry["curve"].append({"efSearch": ef, **row})
        print("  faiss hnsw", entry["curve"][-1], flush=True)
    results["libraries"]["faiss HNSW32 fp16"] = entry
    return results


def stage_confirm(size: int) -> dict:
    from dual_encoder.embedded.ann import DEFAULT_PARAMETERS, ApproximateIndex

    matrix = random_unit(size, seed=0)
    queries = random_unit(QUERIES, seed=1)
    started = time.perf_counter()
    truth = exact_top(matrix, queries)
    print(f"truth in {time.perf_counter() - started:.1f}s", flush=True)
    index, build = build_ours(matrix)
    results: dict = {"size": size, "queries": QUERIES, "dimension": DIMENSION, "defaults": DEFAULT_PARAMETERS, **build}
    print(build, flush=True)
    results["curve"] = curve_ours(index, queries, truth, [100, 200, 300, 500, 1000])
    index.params["candidates"] = DEFAULT_PARAMETERS["candidates"]

    index.params["threads"] = 2
    results["two_threads"] = measure(lambda q: index.search(q, 10)[0], queries[:100], truth[:100])
    index.params["threads"] = 1
    print("two threads", results["two_threads"], flush=True)

    # Exact search of the whole matrix, single BLAS call, for reference.
    exact = []
    for query in queries[:50]:
        begun = time.perf_counter()
        scores = matrix @ query
        np.argpartition(-scores, 9)[:10]
        exact.append((time.perf_counter() - begun) * 1000)
    results["exact_numpy"] = summary(exact)

    # Writes as the store issues them: 10 new rows, 10 replaced rows, 10 removed rows (median of 5).
    rng = np.random.default_rng(3)
    extra = random_unit(50, seed=4)
    grown = np.vstack([matrix, extra])
    index._vectors_of = lambda positions: grown[positions]
    writes: dict[str, list[float]] = {"add_10_new": [], "replace_10": [], "remove_10": []}
    for round_ in range(5):
        new = np.arange(size + 10 * round_, size + 10 * (round_ + 1), dtype=np.int64)
        begun = time.perf_counter()
        index.add(new, grown[new])
        writes["add_10_new"].append((time.perf_counter() - begun) * 1000)
        old = rng.choice(size, 10, replace=False).astype(np.int64)
        begun = time.perf_counter()
        index.add(old, grown[old])
        writes["replace_10"].append((time.perf_counter() - begun) * 1000)
        begun = time.perf_counter()
        index.remove(new[:10])
        writes["remove_10"].append((time.perf_counter() - begun) * 1000)
    results["writes"] = {name: summary(samples) for name, samples in writes.items()}
    print(results["writes"], flush=True)
    index.compact()
    index._vectors_of = lambda positions: matrix[positions]

    # Filters: approximate with the mask inside the scan vs exact scoring of the allowed rows.
    filtered = []
    for fraction in [0.25, 0.05, 0.01, 0.002]:
        allowed = rng.random(size) < fraction
        rows = np.flatnonzero(allowed)
        subset = exact_top(matrix[rows], queries[:50])
        truth_filtered = rows[subset]
        ann = measure(lambda q, mask=allowed: index.search(q, 10, allowed=mask)[0], queries[:50], truth_filtered)

        def exact_allowed(query: np.ndarray, mask: np.ndarray = allowed) -> np.ndarray:
            chosen = np.flatnonzero(mask)
            scores = matrix[chosen] @ query
            return chosen[np.argpartition(-scores, 9)[:10]]

        exact_row = measure(exact_allowed, queries[:50], truth_filtered)
        filtered.append({"fraction": fraction, "allowed": int(allowed.sum()), "approximate": ann, "exact": exact_row})
        print("filter", filtered[-1], flush=True)
    results["filtered"] = filtered

    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        path = Path(scratch) / "ann.npz"
        begun = time.perf_counter()
        index.save(path)
        saved = time.perf_counter() - begun
        begun = time.perf_counter()
        loaded = ApproximateIndex.load(path, DIMENSION, "cosine", vectors=lambda positions: matrix[positions])
        results["persistence"] = {
            "save_s": round(saved, 2),
            "load_s": round(time.perf_counter() - begun, 2),
            "file_mb": round(path.stat().st_size / 2**20, 1),
        }
        assert len(loaded) == len(index)
    print(results["persistence"], flush=True)
    return results


def stage_latency(size: int) -> dict:
    """Default-parameter latency beside exact search, alternating query by query (for a quieter moment)."""
    from dual_encoder.embedded.ann import DEFAULT_PARAMETERS

    matrix = random_unit(size, seed=0)
    queries = random_unit(QUERIES, seed=1)
    truth = exact_top(matrix, queries)
    index, build = build_ours(matrix)
    approximate, exact, found = [], [], []
    for query in queries:
        begun = time.perf_counter()
        found.append(index.search(query, 10)[0])
        approximate.append((time.perf_counter() - begun) * 1000)
        begun = time.perf_counter()
        scores = matrix @ query
        np.argpartition(-scores, 9)[:10]
        exact.append((time.perf_counter() - begun) * 1000)
    return {
        "size": size,
        "defaults": DEFAULT_PARAMETERS,
        **build,
        "recall_at_10": round(recall_at(found, truth), 4),
        "approximate": summary(approximate),
        "exact_numpy": summary(exact),
    }


def exact_allowed_blocked(matrix: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Exact top-10 of the allowed ``rows`` as the store scores them: gathered 1,024 rows at a time."""
    best_rows, best_scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    for start in range(0, len(rows), 1024):
        block = rows[start : start + 1024]
        scores = matrix[block] @ query
        best_rows, best_scores = np.concatenate([best_rows, block]), np.concatenate([best_scores, scores])
        if len(best_rows) > 10:
            keep = np.argpartition(-best_scores, 9)[:10]
            best_rows, best_scores = best_rows[keep], best_scores[keep]
    return best_rows


def stage_filters(size: int) -> dict:
    """Filtered approximate search against blocked exact scoring of the allowed rows: the crossover."""
    from dual_encoder.embedded.ann import DEFAULT_PARAMETERS, EXACT_BELOW_FRACTION

    matrix = random_unit(size, seed=0)
    queries = random_unit(40, seed=1)
    index, build = build_ours(matrix)
    rng = np.random.default_rng(5)
    rows_out = []
    for fraction in [0.2, 0.1, 0.05, 0.02, 0.01, 0.005]:
        allowed = rng.random(size) < fraction
        rows = np.flatnonzero(allowed)
        truth = rows[exact_top(matrix[rows], queries)]
        approximate, exact, found = [], [], []
        for query in queries:  # alternating, so both see the same load
            begun = time.perf_counter()
            found.append(index.search(query, 10, allowed=allowed)[0])
            approximate.append((time.perf_counter() - begun) * 1000)
            begun = time.perf_counter()
            exact_allowed_blocked(matrix, np.flatnonzero(allowed), query)
            exact.append((time.perf_counter() - begun) * 1000)
        rows_out.append(
            {
                "fraction": fraction,
                "allowed": len(rows),
                "approximate": {"recall_at_10": round(recall_at(found, truth), 4), **summary(approximate)},
                "exact_blocked": summary(exact),
            }
        )
        print(rows_out[-1], flush=True)
    return {
        "size": size,
        "defaults": DEFAULT_PARAMETERS,
        "exact_below_fraction": EXACT_BELOW_FRACTION,
        **build,
        "filtered": rows_out,
    }


def scifact_embeddings() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """SciFact corpus (title + " " + text) and test queries, encoded once and cached under .work/ann."""
    cache = WORK / "ann"
    cache.mkdir(parents=True, exist_ok=True)
    files = [cache / name for name in ("scifact_docs.npy", "scifact_queries.npy", "scifact_ids.json")]
    if not all(file.exists() for file in files):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from dual_encoder.encoder import DualEncoder

        docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
        texts = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()}
        lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]
        test = sorted({line.split("\t")[0] for line in lines})
        encoder = DualEncoder("all-MiniLM-L6-v2")
        documents = encoder.encode_documents([doc.get("title", "") + " " + doc["text"] for doc in docs])
        queries = np.stack([encoder.encode_query(texts[q]) for q in test])
        np.save(files[0], np.asarray(documents, dtype=np.float32))
        np.save(files[1], np.asarray(queries, dtype=np.float32))
        files[2].write_text(json.dumps({"doc_ids": [doc["_id"] for doc in docs], "query_ids": test}))
    ids = json.loads(files[2].read_text())
    return np.load(files[0]), np.load(files[1]), ids["doc_ids"], ids["query_ids"]


def stage_scifact() -> dict:
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
    # train_size below the corpus size, so the index is trained and answers approximately.
    index, build = build_ours(documents, train_size=4096)
    assert index.trained
    results["build"] = build
    curve = []
    for candidates in [20, 50, 100, 200, 500]:
        index.params["candidates"] = candidates
        found = [index.search(query, 10) for query in queries]
        curve.append(
            {
                "candidates": candidates,
                "recall_at_10": round(recall_at([f[0] for f in found], truth), 4),
                "ndcg_at_10": round(ndcg(found), 4),
            }
        )
        print(curve[-1], flush=True)
    results["curve"] = curve

    # The HNSW graphs of the `choose` stage on the same real embeddings, for comparison.
    import faiss
    from usearch.index import Index

    graph = Index(ndim=documents.shape[1], metric="cos", dtype="f16", connectivity=16, expansion_add=128)
    graph.add(np.arange(len(documents), dtype=np.uint64), documents, threads=1)
    hnsw = faiss.IndexHNSWSQ(documents.shape[1], faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.train(unit[:1000])
    hnsw.add(unit)
    others = []
    for ef in [16, 32, 64, 128]:
        graph.expansion_search = ef
        found_usearch = [graph.search(query, 10, threads=1).keys.astype(np.int64) for query in queries]
        params = faiss.SearchParametersHNSW(efSearch=ef)
        found_faiss = [hnsw.search((q / np.linalg.norm(q))[None, :], 10, params=params)[1][0] for q in queries]
        others.append(
            {
                "ef": ef,
                "usearch_hnsw_f16_recall_at_10": round(recall_at(found_usearch, truth), 4),
                "faiss_hnsw32_fp16_recall_at_10": round(recall_at(found_faiss, truth), 4),
            }
        )
        print(others[-1], flush=True)
    results["hnsw_for_comparison"] = others
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["choose", "confirm", "latency", "filters", "scifact"])
    parser.add_argument("--size", type=int, default=None)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # One BLAS thread, as the embedded store uses for a query (spinning BLAS workers distort the timings).
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    if args.stage == "choose":
        size = args.size or 100_000
        payload, name = stage_choose(size), f"ann_choice_{size // 1000}k"
    elif args.stage == "confirm":
        size = args.size or 1_000_000
        payload, name = stage_confirm(size), f"ann_{size // 1_000_000}m" if size >= 1_000_000 else f"ann_{size}"
    elif args.stage == "latency":
        size = args.size or 1_000_000
        payload, name = stage_latency(size), f"ann_latency_{size // 1000}k"
    elif args.stage == "filters":
        size = args.size or 1_000_000
        payload, name = stage_filters(size), f"ann_filters_{size // 1000}k"
    else:
        payload, name = stage_scifact(), "ann_scifact"
    payload["peak_rss_mb"] = round(
        __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024
    )
    payload["wall_s"] = round(time.perf_counter() - started)
    # The machine is shared: the 1-minute load average at the end says how busy it was.
    payload["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(write_result(name, payload))


if __name__ == "__main__":
    main()
