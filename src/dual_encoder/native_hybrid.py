"""Hybrid search fused by the store's own engine, for stores that offer one (``supports_native_hybrid_search``).

:func:`native_hybrid_search` takes the arguments of :func:`dual_encoder.hybrid.hybrid_search` and returns the same
:class:`~dual_encoder.hybrid.HybridResult`, so a caller switches between the two by choosing the function. The
query is encoded with the query tower once and sent with its text in one request
(:meth:`~dual_encoder.stores.Store.native_hybrid_search`); the store runs its keyword and vector searches and
fuses them with ``fusion`` and ``weight`` as :mod:`dual_encoder.fusion` defines them, by its own implementation
(its own candidate counts, normalisation and rank constant).

The engine reports only the fused score, so each hit's ``vector_score`` is computed here: its similarity to the
query (cosine or dot product, as the store's), from the embedding the store returns with it. ``keyword_score``
and both ranks are ``None``. With ``mmr_lambda`` the store is asked for ``candidates`` fused hits, re-ranked by
maximal marginal relevance as :func:`~dual_encoder.hybrid.hybrid_search` does.

Example::

    result = native_hybrid_search(encoder, store, "Does vitamin D lower fracture risk?", top_k=10, weight=0.4)
    for hit in result.hits:
        print(hit.record.id, hit.score, hit.vector_score)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.fusion import RRF_K, FusedHit, FusionMethod
from dual_encoder.hybrid import (
    DEFAULT_CANDIDATES,
    DEFAULT_FUSION,
    DEFAULT_WEIGHT,
    HybridResult,
    _diversified,
    validate_hybrid,
)
from dual_encoder.stores.contract import NativeHybridUnsupportedError, Store

__all__ = ["check_native_hybrid_options", "native_hybrid_search", "require_native_hybrid"]


def require_native_hybrid(store: Store) -> None:
    """:raises NativeHybridUnsupportedError: ``store`` has no native hybrid search, with the fix."""
    if not getattr(store, "supports_native_hybrid_search", False):
        raise NativeHybridUnsupportedError(
            f"{store.location} has no native hybrid search (its engine cannot fuse keyword and vector search "
            f"itself). Fuse its keyword and vector searches with dual_encoder.hybrid.hybrid_search instead (any "
            f"store with keyword search), or use a store whose supports_native_hybrid_search is true."
        )


def check_native_hybrid_options(
    candidates: int | None, mmr_lambda: float | None, rrf_k: int = RRF_K, exact: bool | None = None
) -> None:
    """Refuse the options of :func:`~dual_encoder.hybrid.hybrid_search` that the store's engine decides itself.

    :raises ConfigurationError: ``rrf_k`` other than the usual constant, ``exact`` set, or ``candidates``
        without ``mmr_lambda`` (with native fusion ``candidates`` only sizes MMR's pool).
    """
    if rrf_k != RRF_K:
        raise ConfigurationError(
            f"rrf_k={rrf_k!r} applies to our fusion only: a store's native hybrid search uses its own rank "
            f"constant. Leave rrf_k at {RRF_K}, or turn native hybrid search off."
        )
    if exact is not None:
        raise ConfigurationError(
            f"exact={exact!r} applies to our fusion's vector search only: a store's native hybrid search uses its "
            f"own index. Leave exact unset (None), or turn native hybrid search off."
        )
    if candidates is not None and mmr_lambda is None:
        raise ConfigurationError(
            f"candidates={candidates!r} sets our fusion's lists per side; a store's native hybrid search chooses "
            f"its own, so there it only sets how many fused hits MMR picks from. Set mmr_lambda too, leave "
            f"candidates unset (None), or turn native hybrid search off."
        )


def native_hybrid_search(
    encoder: DualEncoder,
    store: Store,
    query: str,
    *,
    top_k: int = 10,
    filters: Mapping[str, Any] | None = None,
    fusion: FusionMethod = DEFAULT_FUSION,
    weight: float = DEFAULT_WEIGHT,
    candidates: int | None = None,
    mmr_lambda: float | None = None,
    rrf_k: int = RRF_K,
    exact: bool | None = None,
) -> HybridResult:
    """The ``top_k`` best documents for ``query`` by the store's own fused keyword and vector search.

    :param fusion: ``"weighted"`` (normalised scores) or ``"rrf"`` (reciprocal ranks), computed by the store.
    :param weight: The vector side's share, 0 (keyword only) to 1 (vector only).
    :param candidates: With ``mmr_lambda``: fused hits MMR picks from (default
        ``dual_encoder.hybrid.DEFAULT_CANDIDATES``, at least ``top_k``); refused without it.
    :param mmr_lambda: ``None``: no MMR; else the fused hits re-ranked by maximal marginal relevance.
    :param rrf_k: Must stay :data:`~dual_encoder.fusion.RRF_K` (the store's engine has its own constant).
    :param exact: Must stay ``None`` (the store's engine searches its own index).
    :returns: Fused hits, best first: ``score`` the store's, ``vector_score`` the similarity, ``keyword_score``
        ``None``; ``vector_method`` is ``"hybrid"``.
    :raises NativeHybridUnsupportedError: the store has no native hybrid search (the message names the fix).
    :raises ConfigurationError: a bad option, or one the store's engine decides itself.
    """
    validate_hybrid(top_k, filters, fusion, weight, candidates, mmr_lambda, rrf_k)
    check_native_hybrid_options(candidates, mmr_lambda, rrf_k, exact)
    require_native_hybrid(store)
    store.check_encoder(encoder.fingerprint)
    depth = top_k if mmr_lambda is None else max(top_k, DEFAULT_CANDIDATES if candidates is None else candidates)
    vector = encoder.encode_query(query)
    result = store.native_hybrid_search(
        query, vector, top_k=depth, filters=filters or None, weight=weight, fusion=fusion
    )
    hits = [
        FusedHit(
            record=hit.record,
            score=hit.score,
            vector_score=_similarity(vector, hit.record.embedding, store.similarity),
            keyword_score=None,
            vector_rank=None,
            keyword_rank=None,
        )
        for hit in result.hits
    ]
    if mmr_lambda is not None and hits:
        hits = _diversified(store, hits, top_k, mmr_lambda)
    return HybridResult(hits=hits[:top_k], vector_method=result.method, fusion=fusion, weight=weight)


def _similarity(query: np.ndarray, embedding: np.ndarray | None, similarity: str) -> float | None:
    if embedding is None:
        return None
    document = np.asarray(embedding, dtype=np.float32)
    score = float(np.dot(document, query))
    if similarity != "cosine":
        return score
    norms = float(np.linalg.norm(document)) * float(np.linalg.norm(query))
    return score / norms if norms > 0 else 0.0
