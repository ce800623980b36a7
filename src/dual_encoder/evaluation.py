"""Retrieval quality on BEIR-layout data, scored with trec_eval (via pytrec_eval).

BEIR and MTEB report with trec_eval and embed documents as ``title + " " + text``, so numbers from here are
directly comparable with published ones. Rankings are evaluated to a depth of 1000 documents per query.

Example::

    data = load_beir("../shared/data/scifact", split="test")
    run = {query_id: {doc_id: score, ...}, ...}     # from any retriever
    evaluate_run(data.qrels, run)["ndcg@10"]          # 0.645 for all-MiniLM-L6-v2

:func:`evaluate_store` ranks with vector search, BM25 keyword search or hybrid search (both fused), so the three
are scored on the same store with the same metrics.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dual_encoder.errors import ConfigurationError, InvalidDocumentError
from dual_encoder.sources import json_objects

if TYPE_CHECKING:
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.stores import Store

logger = logging.getLogger(__name__)

#: Ranking depth per query, as in BEIR.
EVALUATION_DEPTH = 1000
#: Cut-offs of the recall@k curve.
RECALL_CURVE_KS = (1, 3, 5, 10, 20, 50, 100, 200, 500, 1000)

RetrievalMethod = Literal["vector", "keyword", "hybrid"]
#: How :func:`evaluate_store` can rank: dual-encoder vector search, BM25 keyword search, or both fused.
RETRIEVAL_METHODS: tuple[str, ...] = ("vector", "keyword", "hybrid")
#: Other names people use for the same methods.
RETRIEVAL_ALIASES = {"dense": "vector", "bm25": "keyword"}


def resolve_retrieval(retrieval: str) -> RetrievalMethod:
    """The retrieval method named by ``retrieval`` (``"dense"`` and ``"bm25"`` are accepted as aliases).

    :raises ConfigurationError: an unknown name, listing the accepted ones.
    """
    name = RETRIEVAL_ALIASES.get(retrieval, retrieval)
    if name not in RETRIEVAL_METHODS:
        raise ConfigurationError(
            f"Unknown retrieval {retrieval!r}; use one of {list(RETRIEVAL_METHODS)} (or the aliases "
            f"{sorted(RETRIEVAL_ALIASES)})."
        )
    return name  # type: ignore[return-value]


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


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
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


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
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
    #: ``"vector"``, ``"keyword"`` or ``"hybrid"``.
    retrieval: str = "vector"
    #: The fusion options of a hybrid run (``fusion``, ``weight``, ``candidates``); ``None`` otherwise.
    fusion: dict[str, Any] | None = None


def evaluate_store(
    folder: str | Path,
    *,
    split: str = "test",
    encoder: DualEncoder,
    store: Store,
    progress_bar: bool = True,
    exact: bool | None = None,
    retrieval: str = "vector",
    fusion: str | None = None,
    weight: float | None = None,
    candidates: int | None = None,
) -> EvaluationReport:
    """Index a BEIR corpus into ``store`` (any store of the contract) with ``encoder``, rank every judged query,
    and score the rankings. A store that already holds the corpus from the same encoder re-encodes nothing.

    :param exact: passed to every vector search (``True``: exact; ``False``: the store's approximate index).
    :param retrieval: ``"vector"`` (the dual encoder), ``"keyword"`` (the store's BM25) or ``"hybrid"``
        (:func:`dual_encoder.hybrid.hybrid_search`: both, fused). Vector and keyword rankings go to
        :data:`EVALUATION_DEPTH`; a hybrid ranking is the fused ``candidates`` from each side cut to ``candidates``
        documents, so its top 10 is exactly what a top-10 hybrid search with the same options returns (raise
        ``candidates`` for deeper recall).
    :param fusion: ``"weighted"`` or ``"rrf"`` (hybrid only; ``None``: the one recorded with the model, else the
        default of :mod:`dual_encoder.hybrid`).
    :param weight: The vector side's share, 0 to 1 (hybrid only; ``None``: the weight recorded in the model folder's
        ``hybrid_fusion.json``, else the default; see :func:`dual_encoder.fusion_tuning.resolve_fusion`).
    :param candidates: Documents per side before fusing (hybrid only; ``None``: the default).
    :returns: The metrics, with ``retrieval`` and (hybrid) the ``fusion`` options used; a note says where the
        weight came from (given, the model's record or the default).
    :raises ConfigurationError: an unknown retrieval or fusion option, fusion options without hybrid retrieval.
    :raises KeywordSearchUnsupportedError: keyword or hybrid retrieval on a store without a keyword index
        (raised before anything is encoded).
    """
    from dual_encoder.documents import DocumentInput
    from dual_encoder.fusion_tuning import resolve_fusion
    from dual_encoder.hybrid import (
        DEFAULT_CANDIDATES,
        hybrid_search,
        require_keyword_search,
        validate_hybrid,
    )
    from dual_encoder.search import index_documents

    method = resolve_retrieval(retrieval)
    fusion_options: dict[str, Any] | None = None
    setting = None
    if method == "hybrid":
        # No weight given: the one recorded with the model (hybrid_fusion.json), else the library default.
        setting = resolve_fusion(encoder.config.model, fusion, weight)
        fusion_options = {
            "fusion": setting.fusion,
            "weight": setting.weight,
            "candidates": DEFAULT_CANDIDATES if candidates is None else candidates,
        }
        validate_hybrid(1, None, fusion_options["fusion"], fusion_options["weight"], fusion_options["candidates"], None)
    elif fusion is not None or weight is not None or candidates is not None:
        raise ConfigurationError(
            f"fusion, weight and candidates apply to hybrid retrieval only, but retrieval is {method!r}; pass "
            f"retrieval='hybrid' (--retrieval hybrid) or leave them out."
        )
    if method != "vector":
        require_keyword_search(store)
    data = load_beir(folder, split)
    documents = [DocumentInput(id=d.id, content=d.beir_text) for d in data.corpus.values() if d.beir_text]
    skipped = len(data.corpus) - len(documents)
    notes = list(data.notes)
    if skipped:
        notes.append(f"{skipped} corpus document(s) have neither title nor text and were not indexed.")
    index_documents(encoder, store, documents, progress_bar=progress_bar)
    query_ids = list(data.queries)
    methods: set[str] = set()
    run: dict[str, dict[str, float]] = {}
    depth = EVALUATION_DEPTH
    if method == "vector":
        vectors = encoder.encode_queries([data.queries[q] or " " for q in query_ids], progress_bar=progress_bar)
        for query_id, vector in zip(query_ids, vectors):
            result = store.vector_search(vector, top_k=EVALUATION_DEPTH, exact=exact)
            methods.add(result.method)
            run[query_id] = {hit.record.id: hit.score for hit in result.hits}
    elif method == "keyword":
        for query_id in _progress(query_ids, progress_bar, "BM25 search"):
            result = store.keyword_search(data.queries[query_id], top_k=EVALUATION_DEPTH)
            methods.add(result.method)
            run[query_id] = {hit.record.id: hit.score for hit in result.hits}
    else:
        assert fusion_options is not None
        depth = fusion_options["candidates"]
        for query_id in _progress(query_ids, progress_bar, "hybrid search"):
            fused = hybrid_search(
                encoder,
                store,
                data.queries[query_id] or " ",
                top_k=depth,
                fusion=fusion_options["fusion"],
                weight=fusion_options["weight"],
                candidates=depth,
                exact=exact,
            )
            methods.add(
                f"hybrid ({fusion_options['fusion']}, weight {fusion_options['weight']}, {depth} candidates"
                f" per side; vector side {fused.vector_method})"
            )
            run[query_id] = {hit.record.id: hit.score for hit in fused.hits}
    notes.append(f"search: {', '.join(sorted(methods)) or 'none'} ({store.location})")
    if setting is not None:
        notes.append(f"fusion: {setting.describe()}")
    return EvaluationReport(
        dataset=str(folder),
        split=split,
        encoder=encoder.config.to_dict(),
        documents=len(data.corpus),
        queries=len(query_ids),
        depth=depth,
        metrics=evaluate_run(data.qrels, run),
        notes=notes,
        retrieval=method,
        fusion=fusion_options,
    )


def _progress(items: list[str], enabled: bool, description: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="query")


def evaluate_embedded(
    folder: str | Path,
    *,
    split: str = "test",
    encoder: DualEncoder,
    index_path: str | Path | None = None,
    progress_bar: bool = True,
    retrieval: str = "vector",
) -> EvaluationReport:
    """Index a BEIR corpus into the embedded store with ``encoder`` and evaluate it on ``split``.

    With ``index_path`` the index is kept, and a later run with the same encoder skips re-encoding.
    ``retrieval`` is as in :func:`evaluate_store` (hybrid with the default fusion).
    """
    from dual_encoder.embedded import open_embedded_store

    store = open_embedded_store(index_path, similarity=encoder.similarity)
    return evaluate_store(
        folder, split=split, encoder=encoder, store=store, progress_bar=progress_bar, retrieval=retrieval
    )
