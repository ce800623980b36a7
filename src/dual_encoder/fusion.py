"""Fusing a vector result list and a keyword result list into one ranking, keeping both component scores.

Two methods, both weighted by ``weight`` = the share of the vector side (as Weaviate's ``alpha``: 1 is
vector only, 0 is keyword only):

- ``"rrf"``, reciprocal-rank fusion: ``score = weight / (k + vector_rank) + (1 - weight) / (k + keyword_rank)``
  with ranks from 1, ``k`` = 60 (Cormack et al. 2009) and a missing side contributing 0. Only ranks count,
  so the two sides' score scales never matter. At ``weight`` 0.5 this is plain RRF halved.
- ``"weighted"``, normalised-score fusion: each side's scores are min-max normalised over its own result
  list to [0, 1] (a list of one, or of equal scores, normalises to 1), then
  ``score = weight * vector_norm + (1 - weight) * keyword_norm``, a missing side contributing 0
  (Weaviate's ``relativeScoreFusion``).

Ties are broken by the better vector rank, then the better keyword rank, then id, so a fusion is
deterministic.

Example::

    fused = fuse(vector_result, keyword_result, method="rrf", weight=0.5, top_k=10)
    for hit in fused:
        print(hit.record.id, hit.score, hit.vector_score, hit.keyword_score)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from dual_encoder.errors import ConfigurationError
from dual_encoder.stores.contract import SearchHit, SearchResult, StoredRecord

__all__ = ["FUSION_METHODS", "RRF_K", "FusedHit", "FusionMethod", "fuse", "fuse_scores", "validate_fusion"]

FusionMethod = Literal["rrf", "weighted"]
FUSION_METHODS: tuple[str, ...] = ("rrf", "weighted")
#: The reciprocal-rank constant of Cormack et al.
RRF_K = 60


@dataclass(frozen=True)
class FusedHit:
    """One fused result: the ``score`` the ranking is by, and each side's own score and rank (1-based), or
    ``None`` where that side did not return the document."""

    record: StoredRecord
    score: float
    vector_score: float | None
    keyword_score: float | None
    vector_rank: int | None
    keyword_rank: int | None


def validate_fusion(method: str, weight: float, rrf_k: int = RRF_K) -> None:
    """Check fusion options before any search runs.

    :raises ConfigurationError: naming the accepted values.
    """
    if method not in FUSION_METHODS:
        raise ConfigurationError(f"Unknown fusion {method!r}; use one of {list(FUSION_METHODS)}.")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
        raise ConfigurationError(
            f"The fusion weight must be a number from 0 (keyword only) to 1 (vector only), got {weight!r}."
        )
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise ConfigurationError(f"rrf_k must be a non-negative integer, got {rrf_k!r}; {RRF_K} is the usual value.")


def fuse_scores(
    vector: Sequence[tuple[str, float]],
    keyword: Sequence[tuple[str, float]],
    *,
    method: FusionMethod = "rrf",
    weight: float = 0.5,
    rrf_k: int = RRF_K,
) -> list[tuple[str, float]]:
    """Fuse two rankings given as ``(id, score)`` pairs best first; returns ``(id, fused score)`` best first."""
    validate_fusion(method, weight, rrf_k)
    vector_parts = _contributions(vector, method, rrf_k)
    keyword_parts = _contributions(keyword, method, rrf_k)
    vector_rank = {key: rank for rank, (key, _) in enumerate(vector, start=1)}
    keyword_rank = {key: rank for rank, (key, _) in enumerate(keyword, start=1)}
    fused: dict[str, float] = {}
    for key in dict.fromkeys([key for key, _ in vector] + [key for key, _ in keyword]):
        fused[key] = weight * vector_parts.get(key, 0.0) + (1.0 - weight) * keyword_parts.get(key, 0.0)
    absent = math.inf

    def order(key: str) -> tuple[float, float, float, str]:
        return (-fused[key], vector_rank.get(key, absent), keyword_rank.get(key, absent), key)

    return [(key, fused[key]) for key in sorted(fused, key=order)]


def fuse(
    vector: SearchResult | Sequence[SearchHit],
    keyword: SearchResult | Sequence[SearchHit],
    *,
    method: FusionMethod = "rrf",
    weight: float = 0.5,
    top_k: int | None = None,
    rrf_k: int = RRF_K,
) -> list[FusedHit]:
    """Fuse a vector and a keyword result (best first each) into one list of :class:`FusedHit`, best first.

    A document in both keeps the vector side's record (it carries the embedding). ``top_k`` cuts the list.
    """
    vector_hits = _first_per_id(vector.hits if isinstance(vector, SearchResult) else vector)
    keyword_hits = _first_per_id(keyword.hits if isinstance(keyword, SearchResult) else keyword)
    ranking = fuse_scores(
        [(hit.record.id, hit.score) for hit in vector_hits],
        [(hit.record.id, hit.score) for hit in keyword_hits],
        method=method,
        weight=weight,
        rrf_k=rrf_k,
    )
    by_vector = {hit.record.id: (rank, hit) for rank, hit in enumerate(vector_hits, start=1)}
    by_keyword = {hit.record.id: (rank, hit) for rank, hit in enumerate(keyword_hits, start=1)}
    fused = []
    for key, score in ranking[:top_k] if top_k is not None else ranking:
        vector_rank, vector_hit = by_vector.get(key, (None, None))
        keyword_rank, keyword_hit = by_keyword.get(key, (None, None))
        source_hit = vector_hit or keyword_hit
        assert source_hit is not None  # every fused id came from one of the two lists
        record = source_hit.record
        fused.append(
            FusedHit(
                record=record,
                score=score,
                vector_score=None if vector_hit is None else vector_hit.score,
                keyword_score=None if keyword_hit is None else keyword_hit.score,
                vector_rank=vector_rank,
                keyword_rank=keyword_rank,
            )
        )
    return fused


def _first_per_id(hits: Sequence[SearchHit]) -> list[SearchHit]:
    seen: set[str] = set()
    unique = []
    for hit in hits:
        if hit.record.id not in seen:
            seen.add(hit.record.id)
            unique.append(hit)
    return unique


def _contributions(ranking: Sequence[tuple[str, float]], method: str, rrf_k: int) -> Mapping[str, float]:
    if method == "rrf":
        return {key: 1.0 / (rrf_k + rank) for rank, (key, _) in enumerate(ranking, start=1)}
    if not ranking:
        return {}
    scores = [float(score) for _, score in ranking]
    low, high = min(scores), max(scores)
    span = high - low
    return {key: (1.0 if span <= 0 else (float(score) - low) / span) for key, score in ranking}
