"""Hybrid search: BM25 keyword search beside dual-encoder vector search, fused into one ranking.

:func:`hybrid_search` encodes the query with the query tower once, runs the keyword search in a worker
thread while the query is encoded and the vector search runs, then fuses both candidate lists
(:mod:`dual_encoder.fusion`) and optionally re-ranks them for diversity (:mod:`dual_encoder.mmr`).

The keyword side is the store's own :meth:`~dual_encoder.stores.Store.keyword_search`. For a store without
one, :class:`KeywordIndexedStore` wraps any store and keeps an in-memory :class:`~dual_encoder.keyword.KeywordIndex`
over its documents (built from ``store.list()`` when wrapped, then updated on every write and delete made
through the wrapper).

Example::

    result = hybrid_search(encoder, store, "Does vitamin D lower fracture risk?", top_k=10)
    for hit in result.hits:
        print(hit.record.id, hit.score, hit.vector_score, hit.keyword_score)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.filters import compile_filter
from dual_encoder.fingerprint import StoredSpace
from dual_encoder.fusion import RRF_K, FusedHit, FusionMethod, fuse, validate_fusion
from dual_encoder.keyword import KeywordConfig, KeywordIndex
from dual_encoder.mmr import mmr, validate_mmr_lambda
from dual_encoder.stores.contract import (
    DuplicatePolicy,
    KeywordSearchUnsupportedError,
    SearchHit,
    SearchMethod,
    SearchResult,
    Store,
    StoredRecord,
    validate_search,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_FUSION",
    "DEFAULT_WEIGHT",
    "HybridResult",
    "KeywordIndexedStore",
    "hybrid_search",
    "require_keyword_search",
]

#: Fusion defaults, chosen on a dev slice of SciFact train queries with the untrained all-MiniLM-L6-v2
#: (see benchmarks/README.md, "Hybrid"): normalised-score fusion leaning slightly to the keyword side.
DEFAULT_FUSION: FusionMethod = "weighted"
DEFAULT_WEIGHT = 0.4
#: Candidates taken from each side before fusing (at least ``top_k``).
DEFAULT_CANDIDATES = 100

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


@dataclass(frozen=True)
class HybridResult:
    """Fused hits best first (each with both component scores and ranks), and how each side searched."""

    hits: list[FusedHit]
    vector_method: SearchMethod
    fusion: str
    weight: float


def require_keyword_search(store: Store) -> None:
    """:raises KeywordSearchUnsupportedError: ``store`` has no keyword index, with the fix."""
    if not getattr(store, "supports_keyword_search", False):
        raise KeywordSearchUnsupportedError(
            f"{store.location} has no keyword (BM25) index, so keyword and hybrid search cannot run on it. Use the "
            f"embedded store or Weaviate, or wrap this store: KeywordIndexedStore(store) keeps an in-memory BM25 "
            f"index over its documents."
        )


def validate_hybrid(
    top_k: int,
    filters: Mapping[str, Any] | None,
    fusion: str,
    weight: float,
    candidates: int | None,
    mmr_lambda: float | None,
    rrf_k: int = RRF_K,
) -> int:
    """Check every hybrid option before any work; returns the candidate count per side."""
    validate_search(top_k, filters)
    validate_fusion(fusion, weight, rrf_k)
    validate_mmr_lambda(mmr_lambda)
    if candidates is None:
        return max(top_k, DEFAULT_CANDIDATES)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ConfigurationError(
            f"candidates must be a positive integer (or None for the default), got {candidates!r}."
        )
    return max(top_k, candidates)


def hybrid_search(
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
    """The ``top_k`` best documents for ``query`` by fused keyword and vector search.

    :param fusion: ``"rrf"`` (reciprocal-rank fusion) or ``"weighted"`` (min-max normalised scores).
    :param weight: The vector side's share, 0 (keyword only) to 1 (vector only).
    :param candidates: Documents taken from each side before fusing (default ``DEFAULT_CANDIDATES``, at least
        ``top_k``).
    :param mmr_lambda: ``None``: no MMR. Otherwise the fused candidates are re-ranked by maximal marginal
        relevance with fused scores as relevance and embeddings for similarity.
    :param exact: Passed to the vector search (``None``: the store chooses).
    :returns: Fused hits; a query with no keyword match (only stopwords, say) fuses the vector list alone.
    :raises KeywordSearchUnsupportedError: the store has no keyword index (the message names the fix).
    """
    per_side = validate_hybrid(top_k, filters, fusion, weight, candidates, mmr_lambda, rrf_k)
    require_keyword_search(store)
    store.check_encoder(encoder.fingerprint)
    filters = filters or None
    keyword_future = _pool().submit(store.keyword_search, query, top_k=per_side, filters=filters)
    try:
        vector_result = store.vector_search(encoder.encode_query(query), top_k=per_side, filters=filters, exact=exact)
    finally:
        keyword_result = keyword_future.result()
    fused = fuse(vector_result, keyword_result, method=fusion, weight=weight, rrf_k=rrf_k)
    if mmr_lambda is not None and fused:
        fused = _diversified(store, fused, top_k, mmr_lambda)
    return HybridResult(hits=fused[:top_k], vector_method=vector_result.method, fusion=fusion, weight=weight)


def _diversified(store: Store, fused: list[FusedHit], top_k: int, lambda_: float) -> list[FusedHit]:
    missing = [hit.record.id for hit in fused if hit.record.embedding is None]
    stored = store.stored_versions(missing) if missing else {}
    embeddings, usable = [], []
    for hit in fused:
        embedding = hit.record.embedding if hit.record.embedding is not None else _embedding(stored.get(hit.record.id))
        if embedding is not None:
            embeddings.append(embedding)
            usable.append(hit)
    if not usable:
        return fused
    order = mmr(None, np.stack(embeddings), k=top_k, lambda_=lambda_, relevance=np.array([h.score for h in usable]))
    return [usable[i] for i in order]


def _embedding(record: StoredRecord | None) -> np.ndarray | None:
    return None if record is None else record.embedding


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dual-encoder-keyword")
        return _executor


class KeywordIndexedStore(Store):
    """Any store plus an in-memory BM25 index over its documents' content, kept in step with writes and
    deletes made through this wrapper (not with writes made to the inner store directly).

    The index is built from ``store.list()`` when wrapped. Everything else is the inner store's.

    :param store: The store to wrap.
    :param config: Tokenisation and BM25 parameters (English defaults).
    """

    supports_keyword_search = True

    def __init__(self, store: Store, config: KeywordConfig | None = None) -> None:
        self.inner = store
        self.similarity = store.similarity
        self.location = store.location
        self._lock = threading.RLock()
        self._index = KeywordIndex(config)
        self._slots: dict[str, int] = {}
        self._records: list[StoredRecord | None] = []
        self._free: list[int] = []
        self._index_records(store.list())

    @property
    def keyword_index(self) -> KeywordIndex:
        return self._index

    def _index_records(self, records: Sequence[StoredRecord]) -> None:
        with self._lock:
            slots = []
            for record in records:
                slot = self._slots.get(record.id)
                if slot is None:
                    slot = self._free.pop() if self._free else len(self._records)
                    if slot == len(self._records):
                        self._records.append(None)
                    self._slots[record.id] = slot
                self._records[slot] = replace(record, embedding=None)
                slots.append(slot)
            self._index.set_rows(slots, [record.content for record in records])

    def _unindex(self, ids: Sequence[str]) -> None:
        with self._lock:
            slots = [self._slots.pop(i) for i in ids if i in self._slots]
            for slot in slots:
                self._records[slot] = None
            self._free.extend(slots)
            self._index.clear_rows(slots)

    # Primitives: the inner store's, with the index kept in step.
    def _recorded_space(self) -> StoredSpace:
        return self.inner._recorded_space()

    def _record_space(self, space: StoredSpace) -> None:
        self.inner._record_space(space)

    def _fetch(self, ids: Sequence[str]) -> dict[str, StoredRecord]:
        return self.inner._fetch(ids)

    def _write(self, records: Sequence[StoredRecord], policy: DuplicatePolicy) -> None:
        self.inner._write(records, policy)
        self._index_records(records)

    def _delete(self, ids: Sequence[str]) -> int:
        deleted = self.inner._delete(ids)
        self._unindex(ids)
        return deleted

    def _delete_all(self) -> None:
        self.inner._delete_all()
        with self._lock:
            self._slots.clear()
            self._records.clear()
            self._free.clear()
            self._index.clear()

    def _count(self, filters: Mapping[str, Any] | None) -> int:
        return self.inner._count(filters)

    def _list(self, filters: Mapping[str, Any] | None) -> list[StoredRecord]:
        return self.inner._list(filters)

    def _vector_search(
        self, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None, exact: bool | None
    ) -> SearchResult:
        return self.inner._vector_search(vector, top_k, filters, exact)

    def _check_record(self, record: StoredRecord) -> None:
        self.inner._check_record(record)

    def _keyword_search(self, text: str, top_k: int, filters: Mapping[str, Any] | None) -> SearchResult:
        with self._lock:
            records = list(self._records)
        allowed = None
        if filters:
            matches = compile_filter(filters)
            assert matches is not None  # a non-empty filter always compiles to a predicate
            allowed = np.fromiter(
                (r is not None and matches({"id": r.id, "content": r.content, "meta": r.meta}) for r in records),
                dtype=np.bool_,
                count=len(records),
            )
        slots, scores = self._index.search(text, top_k, allowed)
        hits = []
        for slot, score in zip(slots.tolist(), scores.tolist()):
            record = records[slot] if slot < len(records) else None
            if record is not None:
                hits.append(SearchHit(record=record, score=float(score)))
        return SearchResult(hits=hits, method="keyword")

    def close(self) -> None:
        self.inner.close()
