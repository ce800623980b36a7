"""Training examples from a BEIR folder or a JSON-lines file, checked and split into train and dev.

Two inputs are accepted:

- a BEIR-layout folder: every ``(query, document)`` judged relevant (score > 0) in ``qrels/<split>.tsv``
  becomes a pair; documents are embedded as ``title + " " + text``, as in evaluation;
- a ``.jsonl`` file of ``{"query": ..., "positive": ...}`` pairs or ``{"query", "positive", "negative"}``
  triplets.

Example::

    data = load_training_data("../shared/data/scifact")
    train_set, dev_set = split_off_dev(data, fraction=0.1, seed=42)
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dual_encoder.errors import InvalidDocumentError
from dual_encoder.sources import json_objects

logger = logging.getLogger(__name__)


class TrainingDataError(InvalidDocumentError):
    """Training data is empty, inconsistent or malformed."""


@dataclass(frozen=True)
class TrainingPair:
    query_id: str
    document_id: str
    #: Ids of negative documents, from a triplet file and/or hard-negative mining.
    negative_ids: tuple[str, ...] = ()


@dataclass
class TrainingData:
    """Pairs (and optional negatives) over one pool of queries and documents, all by id."""

    queries: dict[str, str]
    documents: dict[str, str]
    pairs: list[TrainingPair]
    notes: list[str] = field(default_factory=list)

    @property
    def relevant(self) -> dict[str, set[str]]:
        relevant: dict[str, set[str]] = {}
        for pair in self.pairs:
            relevant.setdefault(pair.query_id, set()).add(pair.document_id)
        return relevant

    def subset(self, query_ids: set[str]) -> TrainingData:
        return TrainingData(
            queries={q: t for q, t in self.queries.items() if q in query_ids},
            documents=self.documents,
            pairs=[pair for pair in self.pairs if pair.query_id in query_ids],
            notes=list(self.notes),
        )


def load_training_data(source: str | Path, split: str = "train") -> TrainingData:
    """Read training pairs from a BEIR folder (``qrels/<split>.tsv``) or a ``.jsonl`` file."""
    path = Path(source)
    if not path.exists():
        raise TrainingDataError(
            f"Training data '{source}' does not exist. Pass a BEIR-layout folder or a .jsonl file of "
            f'{{"query", "positive"[, "negative"]}} objects.'
        )
    data = _from_beir(path, split) if path.is_dir() else _from_jsonl(path)
    return _deduplicated(data)


def _from_beir(folder: Path, split: str) -> TrainingData:
    from dual_encoder.evaluation import load_beir

    beir = load_beir(folder, split)
    if beir.unknown_document_judgements:
        raise TrainingDataError(
            f"{beir.unknown_document_judgements} judgement(s) in {folder}/qrels/{split}.tsv point at documents "
            f"missing from corpus.jsonl, so they cannot be trained on. Fix the ids or remove those lines."
        )
    without_positive = [query for query, judged in beir.qrels.items() if not any(s > 0 for s in judged.values())]
    if without_positive:
        raise TrainingDataError(
            f"{len(without_positive)} of {len(beir.qrels)} judged queries in {folder}/qrels/{split}.tsv have no "
            f"positive document (all scores <= 0), e.g. {without_positive[:5]}. Give each a relevant document "
            f"or drop them from the split."
        )
    empty_queries = [query for query in beir.queries if not beir.queries[query].strip()]
    if empty_queries:
        raise TrainingDataError(
            f"{len(empty_queries)} judged queries in {folder}/queries.jsonl have no text, e.g. {empty_queries[:5]}."
        )
    pairs = [
        TrainingPair(query_id=query, document_id=document)
        for query, judged in beir.qrels.items()
        for document, score in judged.items()
        if score > 0
    ]
    empty_documents = sorted({p.document_id for p in pairs if not beir.corpus[p.document_id].beir_text})
    if empty_documents:
        raise TrainingDataError(
            f"{len(empty_documents)} relevant documents in {folder}/corpus.jsonl have neither title nor text, "
            f"e.g. {empty_documents[:5]}."
        )
    documents = {doc_id: document.beir_text for doc_id, document in beir.corpus.items() if document.beir_text}
    return TrainingData(queries=dict(beir.queries), documents=documents, pairs=pairs, notes=list(beir.notes))


def _from_jsonl(file: Path) -> TrainingData:
    queries: dict[str, str] = {}
    documents: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    document_ids: dict[str, str] = {}
    pairs: list[TrainingPair] = []
    missing_positive: list[int] = []
    bad_fields: list[str] = []

    def document_id(text: str) -> str:
        if text not in document_ids:
            document_ids[text] = f"d{len(document_ids)}"
            documents[document_ids[text]] = text
        return document_ids[text]

    for number, row in json_objects(file):
        query, positive, negative = row.get("query"), row.get("positive"), row.get("negative")
        if positive is None or (isinstance(positive, str) and not positive.strip()):
            missing_positive.append(number)
            continue
        for name, value in (("query", query), ("positive", positive), ("negative", negative)):
            if value is None and name == "negative":
                continue
            if not isinstance(value, str) or not value.strip():
                bad_fields.append(f"line {number}: '{name}' is {value!r}")
        if bad_fields and bad_fields[-1].startswith(f"line {number}:"):
            continue
        # The field checks above skip any line whose query or positive is not a non-blank string.
        assert isinstance(query, str) and isinstance(positive, str)
        if query not in query_ids:
            query_ids[query] = f"q{len(query_ids)}"
            queries[query_ids[query]] = query
        pairs.append(
            TrainingPair(
                query_id=query_ids[query],
                document_id=document_id(positive),
                negative_ids=(document_id(negative),) if negative is not None else (),
            )
        )
    if missing_positive:
        raise TrainingDataError(
            f"{len(missing_positive)} line(s) of {file} have a query but no 'positive' (lines "
            f"{missing_positive[:10]}). Every training line needs the text of a relevant document."
        )
    if bad_fields:
        raise TrainingDataError(
            f"{len(bad_fields)} field(s) in {file} are empty or not text ({'; '.join(bad_fields[:5])}). "
            f"'query', 'positive' and 'negative' must be non-empty strings."
        )
    if not pairs:
        raise TrainingDataError(f'\'{file}\' holds no training pairs; it needs lines of {{"query", "positive"}}.')
    return TrainingData(queries=queries, documents=documents, pairs=pairs)


def _deduplicated(data: TrainingData) -> TrainingData:
    unique = list(dict.fromkeys(data.pairs))
    if not unique:
        raise TrainingDataError("The training data holds no pairs.")
    removed = len(data.pairs) - len(unique)
    if removed:
        note = f"Removed {removed} duplicate training pair(s); {len(unique)} remain."
        logger.warning(note)
        data.notes.append(note)
    data.pairs = unique
    return data


def split_off_dev(data: TrainingData, *, fraction: float, seed: int) -> tuple[TrainingData, TrainingData | None]:
    """Hold out ``fraction`` of the queries (with all their pairs) for evaluation during training."""
    query_ids = sorted({pair.query_id for pair in data.pairs})
    held_out = round(len(query_ids) * fraction)
    if fraction == 0 or held_out == 0:
        return data, None
    if held_out >= len(query_ids):
        raise TrainingDataError(
            f"A dev fraction of {fraction} would hold out all {len(query_ids)} training queries; lower it."
        )
    dev_ids = set(random.Random(seed).sample(query_ids, held_out))
    return data.subset(set(query_ids) - dev_ids), data.subset(dev_ids)


def evaluation_corpus(
    dev: TrainingData, *, size: int | None, seed: int, hard_distractors: Sequence[str] = ()
) -> dict[str, str]:
    """The documents the dev evaluation searches: every dev positive, the ``hard_distractors`` (documents the
    base encoder ranks high for dev queries), then random documents up to ``size``.

    Searching a sample keeps evaluation during training affordable on a CPU; hard distractors keep it close
    to searching the whole corpus, and the seed fixes the sample so the scores of one run compare. Every dev
    positive and hard distractor is kept even when they outnumber ``size`` (queries with many positives):
    leaving positives out would make them unfindable, and leaving distractors out would make the search easy.
    """
    if size is None or size >= len(dev.documents):
        return dict(dev.documents)
    chosen = list(dict.fromkeys([pair.document_id for pair in dev.pairs] + list(hard_distractors)))
    others = sorted(set(dev.documents) - set(chosen))
    chosen += random.Random(seed).sample(others, max(0, min(len(others), size - len(chosen))))
    return {doc_id: dev.documents[doc_id] for doc_id in chosen}


def describe_evaluation_corpus(dev: TrainingData, corpus: dict[str, str], hard_distractors: list[str]) -> dict:
    """What the dev corpus is made of: counts of dev positives, base-model distractors and random documents."""
    positives = {pair.document_id for pair in dev.pairs}
    hard = set(hard_distractors) - positives
    in_corpus = set(corpus)
    counts: dict[str, Any] = {
        "documents": len(corpus),
        "dev_queries": len({pair.query_id for pair in dev.pairs}),
        "dev_positives": len(positives & in_corpus),
        "base_model_top10_distractors": len(hard & in_corpus),
        "random_documents": len(in_corpus - positives - hard),
        "whole_corpus": len(corpus) == len(dev.documents),
    }
    counts["description"] = (
        "the whole corpus"
        if counts["whole_corpus"]
        else f"{counts['documents']:,} documents: the {counts['dev_positives']:,} positives of the "
        f"{counts['dev_queries']:,} dev queries, {counts['base_model_top10_distractors']:,} other documents from the "
        f"base model's top 10 for them, and {counts['random_documents']:,} random documents"
    )
    return counts


def query_sized_pieces(documents: Iterable[str], words: int) -> set[str]:
    """Query-like text from documents, for distillation (no labels needed): each document's opening and each of
    its sentences of at least four words, every piece cut to its first ``words`` words."""
    pieces: set[str] = set()
    for text in documents:
        pieces.add(" ".join(text.split()[:words]))
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            sentence_words = sentence.split()
            if len(sentence_words) >= 4:
                pieces.add(" ".join(sentence_words[:words]))
    return pieces
