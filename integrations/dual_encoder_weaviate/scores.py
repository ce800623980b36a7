"""Weaviate's distances as the similarity scores every store of this project reports.

===========  ===========================  ==================================
similarity   embedded store score          Weaviate distance d -> score
===========  ===========================  ==================================
cosine       cos(q, x) in [-1, 1]          1 - d   (Weaviate: d = 1 - cos)
dot          q . x                         -d      (Weaviate: d = -q . x)
===========  ===========================  ==================================

Weaviate's ``certainty`` (cosine only) is ``1 - d / 2``, so ``cos = 2 * certainty - 1``; this package asks
Weaviate for the distance instead and converts it, so the embedded store and Weaviate give the same
scores for the same query and document, to float tolerance.

Example::

    score_from_distance(0.25, "cosine")   # 0.75
    DISTANCE_METRIC["dot"]                # "dot": the HNSW metric a dot-product collection is created with
"""

from __future__ import annotations

from dual_encoder.config import SIMILARITIES
from dual_encoder.errors import ConfigurationError

#: Weaviate's distance metric (``weaviate.classes.config.VectorDistances`` value) for each similarity.
DISTANCE_METRIC = {"cosine": "cosine", "dot": "dot"}


def score_from_distance(distance: float, similarity: str) -> float:
    """The similarity for a Weaviate ``distance`` under ``similarity`` (``"cosine"`` or ``"dot"``)."""
    if similarity == "cosine":
        return 1.0 - distance
    if similarity == "dot":
        return -distance
    raise ConfigurationError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")


def check_similarity(similarity: str) -> str:
    """``similarity`` if Weaviate can score with it, else a ``ConfigurationError`` naming the choices."""
    if similarity not in DISTANCE_METRIC:
        raise ConfigurationError(f"similarity must be one of {tuple(DISTANCE_METRIC)}, got {similarity!r}.")
    return similarity
