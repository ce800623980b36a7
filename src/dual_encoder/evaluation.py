"""Retrieval quality on BEIR-layout data, scored with trec_eval (via pytrec_eval).

BEIR and MTEB report with trec_eval, so numbers from here are directly comparable with published ones.

Example::

    data = load_beir("../shared/data/scifact", split="test")
    run = {query_id: {doc_id: score, ...}, ...}     # from any retriever
    evaluate_run(data.qrels, run)                     # {"ndcg@10": 0.645, "recall@100": ..., "mrr@10": ...}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dual_encoder.errors import InvalidDocumentError


@dataclass(frozen=True)
class BeirDocument:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class BeirDataset:
    corpus: dict[str, BeirDocument]
    queries: dict[str, str]  # only the queries judged in the chosen split
    qrels: dict[str, dict[str, int]]


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from a BEIR-layout folder."""
    root = Path(folder)
    qrels_file = root / "qrels" / f"{split}.tsv"
    for required in (root / "corpus.jsonl", root / "queries.jsonl", qrels_file):
        if not required.is_file():
            raise InvalidDocumentError(f"'{required}' is missing; a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/{split}.tsv.")
    corpus = {}
    with open(root / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            corpus[str(row["_id"])] = BeirDocument(id=str(row["_id"]), title=row.get("title") or "", text=row.get("text") or "")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_file, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        for query_id, doc_id, score in reader:
            qrels.setdefault(query_id, {})[doc_id] = int(score)
    queries = {}
    with open(root / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries[str(row["_id"])] = row["text"]
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], k: int = 10, recall_k: int = 100
) -> dict[str, float]:
    """Mean nDCG@k, MRR@k and Recall@recall_k over the judged queries (a query missing from ``run`` counts 0)."""
    import pytrec_eval

    judged = {query: dict(docs) for query, docs in qrels.items()}
    ranked = {query: sorted(docs.items(), key=lambda item: -item[1]) for query, docs in run.items()}
    per_query = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut.{k}", f"recall.{recall_k}"}).evaluate(
        {query: dict(docs[:recall_k]) for query, docs in ranked.items()}
    )
    # trec_eval's recip_rank has no cut-off; MRR@k only credits hits within the first k.
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(
        {query: dict(docs[:k]) for query, docs in ranked.items()}
    )
    total = len(qrels)
    return {
        f"ndcg@{k}": sum(r[f"ndcg_cut_{k}"] for r in per_query.values()) / total,
        f"recall@{recall_k}": sum(r[f"recall_{recall_k}"] for r in per_query.values()) / total,
        f"mrr@{k}": sum(r["recip_rank"] for r in mrr.values()) / total,
    }
