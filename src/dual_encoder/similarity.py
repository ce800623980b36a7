"""One score scale for every store.

Stores report closeness differently; this package always reports the similarity itself:

===========  ===========================  ==================================
similarity   embedded store score          Weaviate distance d -> score
===========  ===========================  ==================================
cosine       cos(q, x) in [-1, 1]          1 - d   (Weaviate: d = 1 - cos)
dot          q . x                         -d      (Weaviate: d = -q . x)
===========  ===========================  ==================================

Weaviate's ``certainty`` (cosine only) is ``1 - d / 2``, so ``cos = 2 * certainty - 1``; this package asks
Weaviate for the distance instead and converts it, so the embedded store and Weaviate give the same
scores for the same query and document, to float tolerance.
"""

from __future__ import annotations

from dual_encoder.config import SIMILARITIES
from dual_encoder.errors import ConfigurationError

#: Weaviate's distance metric for each similarity.
WEAVIATE_DISTANCE = {"cosine": "cosine", "dot": "dot"}


def score_from_weaviate_distance(distance: float, similarity: str) -> float:
    if similarity == "cosine":
        return 1.0 - distance
    if similarity == "dot":
        return -distance
    raise ConfigurationError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
