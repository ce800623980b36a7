"""Maximal marginal relevance (Carbonell and Goldstein 1998): a diverse top-k from a list of candidates.

Documents are picked one at a time; each pick maximises

    lambda_ * relevance(d) - (1 - lambda_) * max over picked p of cosine(d, p)

``lambda_`` = 1 keeps the relevance order, 0 picks for diversity only. Relevance is the cosine between the
query and each candidate embedding unless given (e.g. fused scores, which should then be on a comparable
[0, 1] scale: :func:`mmr` min-max normalises given relevances). Pure numpy.

Example::

    order = mmr(query_vector, candidate_vectors, k=5, lambda_=0.5)   # indices into the candidates
"""

from __future__ import annotations

import numpy as np

from dual_encoder.errors import ConfigurationError

__all__ = ["mmr", "validate_mmr_lambda"]


def validate_mmr_lambda(lambda_: float | None) -> None:
    """``None`` (no MMR) or a number from 0 to 1. :raises ConfigurationError: otherwise."""
    if lambda_ is None:
        return
    if isinstance(lambda_, bool) or not isinstance(lambda_, int | float) or not 0.0 <= lambda_ <= 1.0:
        raise ConfigurationError(
            f"The MMR lambda must be a number from 0 (diversity only) to 1 (relevance only), or None for no MMR; "
            f"got {lambda_!r}. 0.5 is the usual choice."
        )


def mmr(
    query: np.ndarray | None,
    candidates: np.ndarray,
    *,
    k: int,
    lambda_: float = 0.5,
    relevance: np.ndarray | None = None,
) -> list[int]:
    """Indices of up to ``k`` candidates in MMR order.

    :param query: The query embedding (1-D); used for relevance when ``relevance`` is not given.
    :param candidates: One embedding per candidate (2-D, rows), any norm (cosines are taken).
    :param relevance: Optional relevance per candidate (higher is better), min-max normalised here.
    """
    validate_mmr_lambda(lambda_)
    vectors = np.asarray(candidates, dtype=np.float32)
    if vectors.ndim != 2:
        raise ConfigurationError(f"MMR candidates must be a 2-D array (one row per candidate), got {vectors.shape}.")
    n = vectors.shape[0]
    if n == 0 or k <= 0:
        return []
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    if relevance is None:
        if query is None:
            raise ConfigurationError("MMR needs the query embedding or a relevance per candidate.")
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        q = q / (np.linalg.norm(q) or 1.0)
        rel = (unit @ q).astype(np.float32)
    else:
        rel = np.asarray(relevance, dtype=np.float32).reshape(-1)
        if rel.shape[0] != n:
            raise ConfigurationError(f"MMR got {n} candidates but {rel.shape[0]} relevance values.")
        span = float(rel.max() - rel.min())
        rel = (rel - rel.min()) / span if span > 0 else np.ones_like(rel)
    picked: list[int] = []
    redundancy = np.full(n, -np.inf, dtype=np.float32)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        value = lambda_ * rel - (1.0 - lambda_) * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, unit @ unit[best])
    return picked
