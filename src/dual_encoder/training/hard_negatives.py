"""Hard negatives: documents the current encoder ranks high for a query but that are not its positives.

The corpus is encoded once with the document tower and the queries with the query tower (prompts and
routes included, through :class:`~dual_encoder.encoder.DualEncoder`); the same ranking also gives the dev
evaluation its hard distractors. Negatives are drawn at random from a rank window, skipping every known
positive of the query; the top ranks are skipped by default because unlabelled positives sit there.

A negative must also score clearly below the pair's positive (a *relative margin*, as
sentence-transformers' ``mine_hard_negatives(relative_margin=...)``): when a query has many relevant
documents and most are unjudged, a document the base model scores about as high as a known positive is
more likely an unlabelled positive than a negative, and training against it teaches the model to push
relevant documents away.

sentence-transformers' ``mine_hard_negatives`` drops a pair when it finds too few negatives for it; here a
pair always keeps its place (with fewer negatives, counted in a note), and the window widens (with a note)
when the corpus is too small for it.

Example::

    encoder = DualEncoder("all-MiniLM-L6-v2")
    rankings = rank_documents(encoder, data.queries, data.documents, depth=100, pairs=data.pairs)
    pairs, notes = pick_negatives(rankings, data, count=1, rank_range=(10, 50), seed=42, relative_margin=0.05)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dual_encoder.training.data import TrainingData, TrainingPair


@dataclass
class Rankings:
    """The base encoder's best documents per query (best first) with their scores, and the score of every
    training pair's positive."""

    ids: dict[str, list[str]]
    scores: dict[str, list[float]] = field(default_factory=dict)
    #: ``(query id, document id) -> similarity`` for the pairs passed to :func:`rank_documents`.
    positive_scores: dict[tuple[str, str], float] = field(default_factory=dict)

    def get(self, query_id: str, default: list[str] | None = None) -> list[str]:
        return self.ids.get(query_id, [] if default is None else default)

    def scored(self, query_id: str) -> list[tuple[str, float]]:
        """``(document id, score)`` best first; documents without a recorded score get ``-inf``."""
        ids = self.ids.get(query_id, [])
        scores = self.scores.get(query_id, [float("-inf")] * len(ids))
        return list(zip(ids, scores))


def rank_documents(
    encoder: Any,
    queries: dict[str, str],
    documents: dict[str, str],
    *,
    depth: int,
    pairs: list[TrainingPair] = (),  # type: ignore[assignment]
    progress_bar: bool = True,
) -> Rankings:
    """The ``depth`` best document ids per query, best first, by the encoder's similarity, with their scores,
    and the similarity of every ``(query, positive)`` in ``pairs`` whose query is in ``queries``."""
    document_ids = list(documents)
    document_vectors = encoder.encode_documents([documents[d] for d in document_ids], progress_bar=progress_bar)
    query_ids = list(queries)
    query_vectors = encoder.encode_queries([queries[q] for q in query_ids], progress_bar=False)
    depth = min(depth, len(document_ids))
    ranked: dict[str, list[str]] = {}
    scored: dict[str, list[float]] = {}
    for start in range(0, len(query_ids), 256):
        scores = query_vectors[start : start + 256] @ document_vectors.T
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        for row, query_id in enumerate(query_ids[start : start + 256]):
            ordered = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
            ranked[query_id] = [document_ids[i] for i in ordered]
            scored[query_id] = [float(scores[row, i]) for i in ordered]
    query_row = {query_id: row for row, query_id in enumerate(query_ids)}
    document_row = {document_id: row for row, document_id in enumerate(document_ids)}
    positive_scores = {
        (pair.query_id, pair.document_id): float(
            query_vectors[query_row[pair.query_id]] @ document_vectors[document_row[pair.document_id]]
        )
        for pair in pairs
        if pair.query_id in query_row and pair.document_id in document_row
    }
    return Rankings(ids=ranked, scores=scored, positive_scores=positive_scores)


def pick_negatives(
    rankings: Rankings | dict[str, list[str]],
    data: TrainingData,
    *,
    count: int,
    rank_range: tuple[int, int],
    seed: int,
    relative_margin: float = 0.0,
    max_score: float | None = None,
) -> tuple[list[TrainingPair], list[str]]:
    """Every pair of ``data`` with ``count`` more negatives drawn from ``rank_range`` of its query's ranking.

    Ranks count non-positive documents only, so ``(10, 50)`` means the 11th to 50th best negatives. With a
    ``relative_margin`` (needs scores, i.e. :class:`Rankings`), a candidate scoring above
    ``(1 - relative_margin)`` times the pair's positive score is skipped, as is one above ``max_score``;
    the window then takes the next candidates that pass, so a pair keeps ``count`` negatives when the
    ranking holds enough.
    """
    if not isinstance(rankings, Rankings):
        rankings = Rankings(ids=dict(rankings))
    rng = random.Random(seed)
    positives = data.relevant
    low, high = rank_range
    widened = 0
    too_close = 0
    pairs = []
    for pair in data.pairs:
        candidates = [
            (doc, score)
            for doc, score in rankings.scored(pair.query_id)
            if doc not in positives[pair.query_id] and doc not in pair.negative_ids
        ]
        positive_score = rankings.positive_scores.get((pair.query_id, pair.document_id))
        ceiling = float("inf")
        if relative_margin and positive_score is not None:
            ceiling = positive_score * (1 - relative_margin)
        if max_score is not None:
            ceiling = min(ceiling, max_score)
        # Ranks count every candidate, so the margin removes near-positives without pulling the window towards
        # the top ranks it is meant to skip; candidates past the window replace the ones it removes.
        passing = [(rank, doc) for rank, (doc, score) in enumerate(candidates) if score <= ceiling]
        window = [doc for rank, doc in passing if low <= rank < high]
        too_close += len(candidates[low:high]) - len(window)
        if len(window) < count:
            window += [doc for rank, doc in passing if rank >= high][: count - len(window)]
        if len(window) < count and len(candidates) < high:
            # A small corpus cannot fill the window: take the nearest passing negatives before it.
            window = [doc for rank, doc in passing if rank < low][-(count - len(window)) :] + window
            widened += 1
        chosen = tuple(rng.sample(window, min(count, len(window))))
        pairs.append(TrainingPair(pair.query_id, pair.document_id, pair.negative_ids + chosen))
    notes = []
    if widened:
        notes.append(
            f"The corpus was too small to draw hard negatives from ranks {low}-{high} for {widened} pair(s); "
            f"the nearest ranks that hold enough negatives were used instead."
        )
    if too_close:
        notes.append(
            f"{too_close} candidate negative(s) in ranks {low}-{high} scored within the margin of their pair's "
            f"positive (relative margin {relative_margin}, max score {max_score}) and were skipped as likely "
            f"unlabelled positives."
        )
    short = sum(1 for pair in pairs if len(pair.negative_ids) < count)
    if short:
        notes.append(
            f"{short} pair(s) got fewer than {count} hard negatives: too few other documents score below the margin."
        )
    return pairs, notes
