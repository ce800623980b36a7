"""Retrieval quality of every backend on SciFact, and of indexes queried with another backend than they were built with.

The backend is not part of the encoder fingerprint, so an index built with one backend may be queried with
another (for example built with ``openvino-int8`` on one machine, queried by ``"auto"``, which is torch on a
GPU machine). This encodes the SciFact corpus (title + " " + text, as BEIR does) and the test queries once
with each backend, then scores every pair (documents from one backend, queries from another) with exact
search and trec_eval's nDCG@10 (``dual_encoder.evaluation.evaluate_run``), and reports the cosine between the
backends' document vectors.

    .venv/bin/python benchmarks/backend_quality.py                       # torch, auto, openvino-int8
    .venv/bin/python benchmarks/backend_quality.py --backends torch,openvino,openvino-bf16
    .venv/bin/python benchmarks/backend_quality.py --document-backends auto,openvino-int8   # skip torch's slow corpus

Queries are always encoded with every backend (300 queries are cheap); ``--document-backends`` limits which
backends encode the corpus.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from _common import SCIFACT, machine, write_result
from _cpu import StealMeter

TOP = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,auto,openvino-int8", help="comma-separated backends")
    parser.add_argument("--document-backends", default="", help="backends that encode the corpus (default: all)")
    args = parser.parse_args()
    backends = args.backends.split(",")
    document_backends = args.document_backends.split(",") if args.document_backends else backends

    from dual_encoder.encoder import DualEncoder
    from dual_encoder.evaluation import evaluate_run, load_beir

    meter = StealMeter()
    data = load_beir(SCIFACT, split="test")
    doc_ids = [doc_id for doc_id, doc in data.corpus.items() if doc.beir_text]
    texts = [data.corpus[doc_id].beir_text for doc_id in doc_ids]
    query_ids = [query_id for query_id in data.queries if query_id in data.qrels]
    questions = [data.queries[query_id] for query_id in query_ids]

    documents: dict[str, np.ndarray] = {}
    queries: dict[str, np.ndarray] = {}
    runs_as: dict[str, str] = {}
    seconds: dict[str, float] = {}
    fingerprints = set()
    for backend in backends:
        encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": backend})
        runs_as[backend] = encoder.backend
        fingerprints.add(encoder.fingerprint)
        queries[backend] = encoder.encode_queries(questions)
        if backend not in document_backends:
            continue
        started = time.perf_counter()
        documents[backend] = encoder.encode_documents(texts)
        seconds[backend] = round(time.perf_counter() - started, 1)
        print(f"{backend} (runs as {runs_as[backend]}): {len(texts)} documents in {seconds[backend]} s", flush=True)
    assert len(fingerprints) == 1, "every backend must report the same document space"

    ndcg: dict[str, dict[str, float]] = {}
    recall: dict[str, dict[str, float]] = {}
    for document_backend, matrix in documents.items():
        ndcg[document_backend], recall[document_backend] = {}, {}
        for query_backend, vectors in queries.items():
            scores = vectors @ matrix.T
            top = np.argpartition(-scores, TOP, axis=1)[:, :TOP]
            run = {q: {doc_ids[j]: float(scores[row, j]) for j in top[row]} for row, q in enumerate(query_ids)}
            metrics = evaluate_run(data.qrels, run)
            ndcg[document_backend][query_backend] = round(metrics["ndcg@10"], 4)
            recall[document_backend][query_backend] = round(metrics["recall@100"], 4)
            print(
                f"documents {document_backend:>14}, queries {query_backend:>14}: nDCG@10 {metrics['ndcg@10']:.4f}",
                flush=True,
            )
    reference = documents.get("torch")
    cosines = {}
    if reference is not None:
        for backend, matrix in documents.items():
            values = np.sum(reference * matrix, axis=1) / (
                np.linalg.norm(reference, axis=1) * np.linalg.norm(matrix, axis=1)
            )
            cosines[backend] = {"min": round(float(values.min()), 6), "mean": round(float(values.mean()), 6)}
    result = {
        "what": "SciFact test (300 queries, 5,183 documents as title + ' ' + text) encoded by all-MiniLM-L6-v2 "
        "with each backend; nDCG@10 and Recall@100 of exact search for documents from one backend "
        "(rows) queried with another (columns)",
        "backends_run_as": runs_as,
        "encode_seconds_full_corpus": seconds,
        "ndcg@10_documents_by_queries": ndcg,
        "recall@100_documents_by_queries": recall,
        "document_cosine_to_torch": cosines,
        "during_run": meter.read(),
    }
    query_cosines = {}
    for backend, vectors in queries.items():
        values = np.sum(queries[backends[0]] * vectors, axis=1)
        query_cosines[backend] = {"min": round(float(values.min()), 6), "mean": round(float(values.mean()), 6)}
    result[f"query_cosine_to_{backends[0]}"] = query_cosines
    path = write_result("backend_quality", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    machine()
    main()
