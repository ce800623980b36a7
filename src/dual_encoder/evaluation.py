"""Retrieval quality on BEIR-layout data, scored with trec_eval (via pytrec_eval).

BEIR and MTEB report with trec_eval and embed documents as ``title + " " + text``, so numbers from here are
directly comparable with published ones. Rankings are evaluated to a depth of 1000 documents per query.

Example::

    data = load_beir("../shared/data/scifact", split="test")
    run = {query_id: {doc_id: score, ...}, ...}     # from any retriever
    evaluate_run(data.qrels, run)["ndcg@10"]          # 0.645 for all-MiniLM-L6-v2
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dual_encoder.errors import ConfigurationError, InvalidDocumentError
from dual_encoder.sources import json_objects

if TYPE_CHECKING:
    from dual_encoder.stores import Store

logger = logging.getLogger(__name__)

#: Ranking depth per query, as in BEIR.
EVALUATION_DEPTH = 1000
#: Cut-offs of the recall@k curve.
RECALL_CURVE_KS = (1, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class BeirDocument:
    id: str
    title: str
    text: str

    @property
    def beir_text(self) -> str:
        """The text BEIR and MTEB embed: title, a space, then the body."""
        return f"{self.title} {self.text}".strip()


@dataclass(frozen=True)
class BeirDataset:
    corpus: dict[str, BeirDocument]
    queries: dict[str, str]  # only the queries judged in the chosen split
    qrels: dict[str, dict[str, int]]
    #: Judgements that point at documents missing from the corpus (kept: they still count as relevant).
    unknown_document_judgements: int = 0
    notes: list[str] = field(default_factory=list)


def _json_lines(path: Path):
    for number, row in json_objects(path):
        if "_id" not in row:
            raise InvalidDocumentError(f"{path}:{number} has no '_id' field; BEIR lines need one.")
        yield number, row


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from a BEIR-layout folder."""
    root = Path(folder)
    qrels_file = root / "qrels" / f"{split}.tsv"
    for required in (root / "corpus.jsonl", root / "queries.jsonl", qrels_file):
        if not required.is_file():
            raise InvalidDocumentError(
                f"'{required}' is missing; a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/{split}.tsv."
            )
    corpus = {
        str(row["_id"]): BeirDocument(id=str(row["_id"]), title=row.get("title") or "", text=row.get("text") or "")
        for _, row in _json_lines(root / "corpus.jsonl")
    }
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_file, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(reader, start=1):
            if number == 1 and row and not row[-1].lstrip("-").isdigit():
                continue  # header
            if not row:
                continue
            if len(row) != 3 or not row[2].lstrip("-").isdigit():
                raise InvalidDocumentError(
                    f"{qrels_file}:{number} must be 'query-id<TAB>corpus-id<TAB>score', got {row!r}."
                )
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    if not qrels:
        raise InvalidDocumentError(f"{qrels_file} holds no judgements: the '{split}' split is empty.")
    all_queries = {str(row["_id"]): row.get("text") or "" for _, row in _json_lines(root / "queries.jsonl")}
    notes = []
    missing_queries = sorted(set(qrels) - set(all_queries))
    if missing_queries:
        notes.append(
            f"{len(missing_queries)} judged query id(s) in {qrels_file} are not in queries.jsonl and were left out "
            f"(first: {missing_queries[:5]})."
        )
        logger.warning(notes[-1])
        qrels = {query: docs for query, docs in qrels.items() if query in all_queries}
        if not qrels:
            raise InvalidDocumentError(f"None of the queries judged in {qrels_file} are in queries.jsonl.")
    unknown = sum(1 for docs in qrels.values() for doc_id in docs if doc_id not in corpus)
    if unknown:
        notes.append(
            f"{unknown} judgement(s) in {qrels_file} point at documents missing from corpus.jsonl; they still count "
            f"as relevant, so they lower recall."
        )
        logger.warning(notes[-1])
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, unknown_document_judgements=unknown, notes=notes)


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Mean nDCG@10, Recall@10/100, MRR@10 and MAP@100 over the judged queries (a query missing from
    ``run`` counts 0), plus ``recall@k`` for every k of :data:`RECALL_CURVE_KS`."""
    import pytrec_eval

    judged = {query: dict(docs) for query, docs in qrels.items()}
    ranked = {query: sorted(docs.items(), key=lambda item: -item[1]) for query, docs in run.items()}

    def mean_at(measure: str, key: str, depth: int) -> float:
        # trec_eval's recip_rank and map have no cut-off; rankings are cut to `depth` first.
        scores = pytrec_eval.RelevanceEvaluator(judged, {measure}).evaluate(
            {query: dict(docs[:depth]) for query, docs in ranked.items()}
        )
        return sum(result[key] for result in scores.values()) / len(judged)

    recall_measure = "recall." + ",".join(str(k) for k in RECALL_CURVE_KS)
    per_query = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", recall_measure}).evaluate(
        {query: dict(docs[:EVALUATION_DEPTH]) for query, docs in ranked.items()}
    )
    metrics = {"ndcg@10": sum(r["ndcg_cut_10"] for r in per_query.values()) / len(judged)}
    for k in RECALL_CURVE_KS:
        metrics[f"recall@{k}"] = sum(r[f"recall_{k}"] for r in per_query.values()) / len(judged)
    metrics["mrr@10"] = mean_at("recip_rank", "recip_rank", 10)
    metrics["map@100"] = mean_at("map", "map", 100)
    return metrics


def plot_recall_curve(metrics: Mapping[str, float], path: str | Path, title: str) -> Path:
    """Save a PNG of recall@k against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [k for k in RECALL_CURVE_KS if f"recall@{k}" in metrics]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    axis.plot(ks, [metrics[f"recall@{k}"] for k in ks], marker="o")
    axis.set_xscale("log")
    axis.set_xticks(ks, [str(k) for k in ks])
    axis.set_ylim(0, 1)
    axis.set_xlabel("k (documents retrieved)")
    axis.set_ylabel("recall@k")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


@dataclass(frozen=True)
class EvaluationReport:
    dataset: str
    split: str
    encoder: dict
    documents: int
    queries: int
    depth: int
    metrics: dict[str, float]
    notes: list[str]


def evaluate_store(
    folder: str | Path,
    *,
    split: str = "test",
    encoder,
    store: Store,
    progress_bar: bool = True,
    exact: bool | None = None,
) -> EvaluationReport:
    """Index a BEIR corpus into ``store`` (any store of the contract) with ``encoder``, rank every judged query
    to :data:`EVALUATION_DEPTH`, and score the rankings. A store that already holds the corpus from the same
    encoder re-encodes nothing.

    :param exact: passed to every search (``True``: exact; ``False``: the store's approximate index).
    """
    from dual_encoder.documents import DocumentInput
    from dual_encoder.search import index_documents

    data = load_beir(folder, split)
    documents = [DocumentInput(id=d.id, content=d.beir_text) for d in data.corpus.values() if d.beir_text]
    skipped = len(data.corpus) - len(documents)
    notes = list(data.notes)
    if skipped:
        notes.append(f"{skipped} corpus document(s) have neither title nor text and were not indexed.")
    index_documents(encoder, store, documents, progress_bar=progress_bar)
    query_ids = list(data.queries)
    vectors = encoder.encode_queries([data.queries[q] or " " for q in query_ids], progress_bar=progress_bar)
    methods = set()
    run = {}
    for query_id, vector in zip(query_ids, vectors):
        result = store.vector_search(vector, top_k=EVALUATION_DEPTH, exact=exact)
        methods.add(result.method)
        run[query_id] = {hit.record.id: hit.score for hit in result.hits}
    notes.append(f"search: {', '.join(sorted(methods)) or 'none'} ({store.location})")
    return EvaluationReport(
        dataset=str(folder), split=split, encoder=encoder.config.to_dict(), documents=len(data.corpus),
        queries=len(query_ids), depth=EVALUATION_DEPTH, metrics=evaluate_run(data.qrels, run), notes=notes,
    )


def evaluate_embedded(
    folder: str | Path,
    *,
    split: str = "test",
    encoder,
    index_path: str | Path | None = None,
    progress_bar: bool = True,
) -> EvaluationReport:
    """Index a BEIR corpus into the embedded store with ``encoder`` and evaluate it on ``split``.

    With ``index_path`` the index is kept, and a later run with the same encoder skips re-encoding.
    """
    from dual_encoder.embedded import open_embedded_store

    store = open_embedded_store(index_path, similarity=encoder.similarity)
    return evaluate_store(folder, split=split, encoder=encoder, store=store, progress_bar=progress_bar)
