"""Hybrid retrieval on SciFact (quality, with defaults chosen on a dev slice of train) and BM25 at scale.

Stages (``--stage``, default all):

- ``quality``: BM25 (``dual_encoder.keyword``), dense (all-MiniLM-L6-v2, untrained) and their fusion on a
  dev slice of SciFact *train* (a seeded 20% of the train queries, all documents). The BM25 parameters and
  the fusion defaults are chosen on dev; the chosen configuration then runs once on test. The corpus is
  encoded once (``title + " " + text``, as BEIR) and cached in ``benchmarks/.work/hybrid/``.
- ``latency``: text -> top-10 p50 through the real path (an in-memory embedded store wrapped with a keyword
  index): dense ``search`` against ``hybrid_search`` with the defaults, alternating, on test queries.
- ``scale``: 100,000 synthetic documents sampled from SciFact's word distribution: BM25 top-10 p50 with SciFact
  test queries, indexing throughput of ``KeywordIndex``, bm25s and Haystack's ``InMemoryDocumentStore`` (what
  ``InMemoryBM25Retriever`` searches), and incremental-update cost.

Usage::

    .venv/bin/python benchmarks/hybrid.py                  # all three stages
    .venv/bin/python benchmarks/hybrid.py --stage quality  # results/hybrid.json (~3 min once the corpus is cached)
    .venv/bin/python benchmarks/hybrid.py --stage latency  # results/hybrid_latency.json
    .venv/bin/python benchmarks/hybrid.py --stage scale    # results/hybrid_scale.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCIFACT, WORK, summary, write_result

from dual_encoder.evaluation import evaluate_run, load_beir
from dual_encoder.fusion import fuse_scores
from dual_encoder.keyword import KeywordConfig, KeywordIndex

CACHE = WORK / "hybrid"
MODEL = "all-MiniLM-L6-v2"
DEV_SHARE, DEV_SEED = 0.2, 13
DEPTH = 1000  # ranking depth for single-method runs (as BEIR)
K1_GRID, B_GRID = (0.9, 1.2, 1.5), (0.4, 0.75, 0.9)
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)
CANDIDATES = (20, 50, 100, 200)


def dev_split():
    train = load_beir(SCIFACT, split="train")
    ids = sorted(train.queries)
    chosen = sorted(random.Random(DEV_SEED).sample(ids, round(DEV_SHARE * len(ids))))
    return train, {q: train.queries[q] for q in chosen}, {q: train.qrels[q] for q in chosen}


def corpus_embeddings(data) -> tuple[list[str], np.ndarray]:
    ids = sorted(data.corpus)
    matrix_file, ids_file = CACHE / "scifact-minilm-docs.npy", CACHE / "scifact-minilm-docs.json"
    if matrix_file.exists() and json.loads(ids_file.read_text())["ids"] == ids:
        return ids, np.load(matrix_file)
    from dual_encoder.encoder import DualEncoder

    matrix = DualEncoder(MODEL).encode_documents([data.corpus[i].beir_text for i in ids], progress_bar=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(matrix_file, matrix)
    ids_file.write_text(json.dumps({"ids": ids, "model": MODEL, "text": "title + ' ' + text"}))
    return ids, matrix


def dense_runs(encoder, ids, matrix, queries) -> dict[str, list[tuple[str, float]]]:
    qids = sorted(queries)
    vectors = encoder.encode_queries([queries[q] for q in qids])
    scores = vectors @ matrix.T
    runs = {}
    for row, qid in enumerate(qids):
        top = np.argsort(-scores[row], kind="stable")[:DEPTH]
        runs[qid] = [(ids[i], float(scores[row, i])) for i in top]
    return runs


def bm25_runs(index: KeywordIndex, ids, queries) -> dict[str, list[tuple[str, float]]]:
    runs = {}
    for qid, text in queries.items():
        slots, scores = index.search(text, DEPTH)
        runs[qid] = [(ids[s], float(v)) for s, v in zip(slots.tolist(), scores.tolist())]
    return runs


def ndcg(qrels, runs) -> float:
    return round(evaluate_run(qrels, {q: dict(r) for q, r in runs.items()})["ndcg@10"], 4)


def fused_runs(dense, bm25, method, weight, candidates):
    return {
        q: fuse_scores(dense[q][:candidates], bm25.get(q, [])[:candidates], method=method, weight=weight) for q in dense
    }


def stage_quality() -> dict:
    from dual_encoder.encoder import DualEncoder

    test = load_beir(SCIFACT, split="test")
    _, dev_queries, dev_qrels = dev_split()
    ids, matrix = corpus_embeddings(test)
    texts = [test.corpus[i].beir_text for i in ids]
    result: dict = {"dev": {"queries": len(dev_queries), "share_of_train": DEV_SHARE, "seed": DEV_SEED}}

    # BM25 parameters on dev.
    grid = {}
    for k1 in K1_GRID:
        for b in B_GRID:
            index = KeywordIndex(KeywordConfig(k1=k1, b=b))
            index.set_rows(np.arange(len(texts)), texts)
            grid[f"k1={k1},b={b}"] = ndcg(dev_qrels, bm25_runs(index, ids, dev_queries))
    for label, config in {
        "no_stemmer": KeywordConfig(stemmer=None),
        "no_stopwords": KeywordConfig(stopwords=None),
    }.items():
        index = KeywordIndex(config)
        index.set_rows(np.arange(len(texts)), texts)
        grid[label + " (k1=0.9,b=0.4)"] = ndcg(dev_qrels, bm25_runs(index, ids, dev_queries))
    result["dev"]["bm25_grid_ndcg@10"] = grid
    print("BM25 dev grid", grid, flush=True)

    default = KeywordConfig()
    index = KeywordIndex(default)
    index.set_rows(np.arange(len(texts)), texts)
    encoder = DualEncoder(MODEL).load()
    dense_dev, bm25_dev = dense_runs(encoder, ids, matrix, dev_queries), bm25_runs(index, ids, dev_queries)
    fusion_grid = {}
    for method in ("rrf", "weighted"):
        for weight in WEIGHTS:
            for candidates in CANDIDATES:
                fusion_grid[f"{method},w={weight},c={candidates}"] = ndcg(
                    dev_qrels, fused_runs(dense_dev, bm25_dev, method, weight, candidates)
                )
    best = max(fusion_grid, key=fusion_grid.get)
    result["dev"].update(
        dense_ndcg10=ndcg(dev_qrels, dense_dev),
        bm25_ndcg10=ndcg(dev_qrels, bm25_dev),
        fusion_grid_ndcg10=fusion_grid,
        best_on_dev=best,
    )
    print(
        "dev dense",
        result["dev"]["dense_ndcg10"],
        "bm25",
        result["dev"]["bm25_ndcg10"],
        "best",
        best,
        fusion_grid[best],
        flush=True,
    )

    # Test, once, with the library defaults (dual_encoder.hybrid) and for reference the other fusion at its default.
    from dual_encoder.hybrid import DEFAULT_CANDIDATES, DEFAULT_FUSION, DEFAULT_WEIGHT

    dense_test, bm25_test = dense_runs(encoder, ids, matrix, test.queries), bm25_runs(index, ids, test.queries)
    result["test"] = {
        "queries": len(test.queries),
        "bm25_config": default.to_dict(),
        "dense_ndcg10": ndcg(test.qrels, dense_test),
        "bm25_ndcg10": ndcg(test.qrels, bm25_test),
        "default_fusion": {"fusion": DEFAULT_FUSION, "weight": DEFAULT_WEIGHT, "candidates": DEFAULT_CANDIDATES},
        "hybrid_default_ndcg10": ndcg(
            test.qrels, fused_runs(dense_test, bm25_test, DEFAULT_FUSION, DEFAULT_WEIGHT, DEFAULT_CANDIDATES)
        ),
        "plain_rrf_ndcg10": ndcg(test.qrels, fused_runs(dense_test, bm25_test, "rrf", 0.5, DEPTH)),
    }
    result["defaults_are_best_on_dev"] = best == f"{DEFAULT_FUSION},w={DEFAULT_WEIGHT},c={DEFAULT_CANDIDATES}"
    print("test", result["test"], flush=True)
    return result


def stage_latency(queries: int = 300, repeat: int = 3) -> dict:
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.hybrid import KeywordIndexedStore, hybrid_search
    from dual_encoder.search import search
    from dual_encoder.stores.contract import StoredRecord

    test = load_beir(SCIFACT, split="test")
    ids, matrix = corpus_embeddings(test)
    encoder = DualEncoder(MODEL).load()
    fingerprint = encoder.fingerprint.document_space
    inner = open_embedded_store(None)
    inner.upsert(
        [
            StoredRecord(id=i, content=test.corpus[i].beir_text, meta={"encoder_fingerprint": fingerprint}, embedding=v)
            for i, v in zip(ids, matrix)
        ]
    )
    started = time.perf_counter()
    store = KeywordIndexedStore(inner)
    wrap_seconds = time.perf_counter() - started
    texts = list(test.queries.values())[:queries]
    for text in texts[:20]:  # warm-up
        search(encoder, store, text, top_k=10)
        hybrid_search(encoder, store, text, top_k=10)
    dense, hybrid, keyword = [], [], []
    run: dict[str, dict[str, float]] = {}
    query_ids = list(test.queries)[:queries]
    for _ in range(repeat):
        for qid, text in zip(query_ids, texts):
            t0 = time.perf_counter()
            search(encoder, store, text, top_k=10)
            t1 = time.perf_counter()
            fused = hybrid_search(encoder, store, text, top_k=10)
            t2 = time.perf_counter()
            run[qid] = {hit.record.id: hit.score for hit in fused.hits}
            store.keyword_search(text, top_k=10)
            t3 = time.perf_counter()
            dense.append((t1 - t0) * 1000)
            hybrid.append((t2 - t1) * 1000)
            keyword.append((t3 - t2) * 1000)
    result = {
        "documents": len(ids),
        "keyword_index_build_s": round(wrap_seconds, 3),
        "dense_search": summary(dense),
        "hybrid_search_defaults": summary(hybrid),
        "keyword_search": summary(keyword),
        "hybrid_minus_dense_p50_ms": round(statistics.median(hybrid) - statistics.median(dense), 3),
        # The real path (store, threads, fusion) scored like the offline runs of the quality stage.
        "hybrid_search_path_test_ndcg10": ndcg({q: test.qrels[q] for q in query_ids}, run),
    }
    print("latency", result, flush=True)
    return result


def synthetic_texts(count: int, seed: int = 5) -> list[str]:
    """Documents sampled from SciFact's word distribution, with SciFact's document lengths."""
    import re

    corpus = load_beir(SCIFACT, split="test").corpus
    words, lengths = [], []
    for document in corpus.values():
        found = re.findall(r"\w+", document.beir_text.lower())
        words.extend(found)
        lengths.append(len(found))
    vocabulary, counts = np.unique(np.array(words), return_counts=True)
    rng = np.random.default_rng(seed)
    sizes = rng.choice(np.array(lengths), size=count)
    drawn = rng.choice(vocabulary.shape[0], size=int(sizes.sum()), p=counts / counts.sum())
    ends = np.cumsum(sizes)
    return [" ".join(vocabulary[drawn[e - s : e]].tolist()) for s, e in zip(sizes, ends)]


def stage_scale(count: int = 100_000, queries: int = 300) -> dict:
    texts = synthetic_texts(count)
    test = load_beir(SCIFACT, split="test")
    query_texts = list(test.queries.values())[:queries]
    result: dict = {"documents": count, "mean_words": round(statistics.fmean(len(t.split()) for t in texts), 1)}

    # Indexing: one bulk call, and in batches of 1,000 (how a store feeds it).
    gc.collect()
    started = time.perf_counter()
    index = KeywordIndex()
    index.set_rows(np.arange(count), texts)
    bulk = time.perf_counter() - started
    started = time.perf_counter()
    batched = KeywordIndex()
    for start in range(0, count, 1000):
        batched.set_rows(np.arange(start, min(count, start + 1000)), texts[start : start + 1000])
    batches = time.perf_counter() - started
    result["indexing_docs_per_s"] = {
        "keyword_index_one_call": round(count / bulk),
        "keyword_index_batches_of_1000": round(count / batches),
    }
    del batched

    import bm25s
    import Stemmer

    started = time.perf_counter()
    reference = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    reference.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False),
        show_progress=False,
    )
    result["indexing_docs_per_s"]["bm25s_static_build"] = round(count / (time.perf_counter() - started))
    del reference

    from haystack import Document
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    documents = [Document(id=str(i), content=t) for i, t in enumerate(texts)]
    haystack_store = InMemoryDocumentStore()
    started = time.perf_counter()
    haystack_store.write_documents(documents)
    result["indexing_docs_per_s"]["haystack_in_memory_bm25"] = round(count / (time.perf_counter() - started))
    print("indexing", result["indexing_docs_per_s"], flush=True)

    # Query latency, top-10.
    for text in query_texts[:20]:
        index.search(text, 10)
    samples = []
    for _ in range(3):
        for text in query_texts:
            t0 = time.perf_counter()
            index.search(text, 10)
            samples.append((time.perf_counter() - t0) * 1000)
    result["keyword_index_top10"] = summary(samples)
    allowed = np.random.default_rng(1).random(count) < 0.25
    samples = []
    for text in query_texts:
        t0 = time.perf_counter()
        index.search(text, 10, allowed)
        samples.append((time.perf_counter() - t0) * 1000)
    result["keyword_index_top10_with_25pct_mask"] = summary(samples)
    retriever = InMemoryBM25Retriever(haystack_store, top_k=10)
    samples = []
    for text in query_texts[:20]:
        t0 = time.perf_counter()
        retriever.run(query=text)
        samples.append((time.perf_counter() - t0) * 1000)
    result["haystack_in_memory_bm25_top10"] = summary(samples)
    print("query", result["keyword_index_top10"], result["haystack_in_memory_bm25_top10"], flush=True)

    # Incremental updates at this size: overwrite 10 documents, then the next query.
    rng = np.random.default_rng(3)
    writes, first_queries = [], []
    for _ in range(50):
        slots = rng.integers(0, count, size=10)
        t0 = time.perf_counter()
        index.set_rows(slots, [texts[s] for s in rng.integers(0, count, size=10)])
        t1 = time.perf_counter()
        index.search(query_texts[0], 10)
        t2 = time.perf_counter()
        writes.append((t1 - t0) * 1000)
        first_queries.append((t2 - t1) * 1000)
    result["overwrite_10_docs"] = summary(writes)
    result["query_right_after_a_write"] = summary(first_queries)
    t0 = time.perf_counter()
    index.save(CACHE / "scale-index")
    result["save_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    KeywordIndex.load(CACHE / "scale-index")
    result["load_s"] = round(time.perf_counter() - t0, 3)
    result["saved_mb"] = round(sum(p.stat().st_size for p in (CACHE / "scale-index").iterdir()) / 1e6, 1)
    print("scale", result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["quality", "latency", "scale", "all"], default="all")
    args = parser.parse_args()
    if args.stage in ("quality", "all"):
        print("wrote", write_result("hybrid", {"quality": stage_quality()}).name)
    if args.stage in ("latency", "all"):
        print("wrote", write_result("hybrid_latency", stage_latency()).name)
    if args.stage in ("scale", "all"):
        print("wrote", write_result("hybrid_scale", stage_scale()).name)


if __name__ == "__main__":
    main()
