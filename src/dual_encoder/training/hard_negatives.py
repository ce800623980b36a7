"""Hard negatives: documents the current encoder ranks high for a query but that are not its positives.

The corpus is encoded once with the document tower and the queries with the query tower (prompts and
routes included, through :class:`~dual_encoder.encoder.DualEncoder`); the same ranking also gives the dev
evaluation its hard distractors. Negatives are drawn at random from a rank window, skipping every known
positive of the query; the top ranks are skipped by default because unlabelled positives sit there.

sentence-transformers' ``mine_hard_negatives`` drops a pair when it finds too few negatives for it; here a
pair always keeps its place, and the window widens (with a note) when the corpus is too small for it.

Example::

    encoder = DualEncoder("all-MiniLM-L6-v2")
    rankings = rank_documents(encoder, data.queries, data.documents, depth=100)
    pairs, notes = pick_negatives(rankings, data, count=1, rank_range=(10, 50), seed=42)
"""

from __future__ import annotations

import random

import numpy as np

from dual_encoder.training.data import TrainingData, TrainingPair


def rank_documents(
    encoder, queries: dict[str, str], documents: dict[str, str], *, depth: int, progress_bar: bool = True
) -> dict[str, list[str]]:
    """The ``depth`` best document ids per query, best first, by the encoder's similarity."""
    document_ids = list(documents)
    document_vectors = encoder.encode_documents([documents[d] for d in document_ids], progress_bar=progress_bar)
    query_ids = list(queries)
    query_vectors = encoder.encode_queries([queries[q] for q in query_ids], progress_bar=False)
    depth = min(depth, len(document_ids))
    rankings: dict[str, list[str]] = {}
    for start in range(0, len(query_ids), 256):
        scores = query_vectors[start : start + 256] @ document_vectors.T
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        for row, query_id in enumerate(query_ids[start : start + 256]):
            ordered = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
            rankings[query_id] = [document_ids[i] for i in ordered]
    return rankings


def pick_negatives(
    rankings: dict[str, list[str]],
    data: TrainingData,
    *,
    count: int,
    rank_range: tuple[int, int],
    seed: int,
) -> tuple[list[TrainingPair], list[str]]:
    """Every pair of ``data`` with ``count`` more negatives drawn from ``rank_range`` of its query's ranking.

    Ranks count non-positive documents only, so ``(10, 50)`` means the 11th to 50th best negatives.
    """
    rng = random.Random(seed)
    positives = data.relevant
    low, high = rank_range
    widened = 0
    pairs = []
    for pair in data.pairs:
        candidates = [
            doc for doc in rankings.get(pair.query_id, [])
            if doc not in positives[pair.query_id] and doc not in pair.negative_ids
        ]
        window = candidates[low:high]
        if len(window) < count:
            # A small corpus cannot fill the window: take the nearest negatives before it.
            window = candidates[max(0, len(candidates) - max(count, high - low)) :]
            widened += 1
        chosen = tuple(rng.sample(window, min(count, len(window))))
        pairs.append(TrainingPair(pair.query_id, pair.document_id, pair.negative_ids + chosen))
    notes = []
    if widened:
        notes.append(
            f"The corpus was too small to draw hard negatives from ranks {low}-{high} for {widened} pair(s); "
            f"the nearest ranks that hold enough negatives were used instead."
        )
    short = sum(1 for pair in pairs if len(pair.negative_ids) < count)
    if short:
        notes.append(f"{short} pair(s) got fewer than {count} hard negatives: the corpus has too few other documents.")
    return pairs, notes
