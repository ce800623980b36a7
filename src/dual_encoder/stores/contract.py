"""The store contract: what every document store of this project implements, and the rules they share.

A store keeps documents with their embeddings and answers searches. Every store (the embedded default,
Weaviate, any future one) subclasses :class:`Store` and implements a handful of primitive operations
(the ``_``-prefixed abstract methods). The public methods around them hold the rules that must be the
same everywhere, written once:

- **the fingerprint guard**: a write that would mix embedding spaces or dimensions is refused before
  anything is stored (:meth:`Store.upsert`), and so is a query from an encoder whose document space is
  not the one the store records (:meth:`Store.check_encoder`, :func:`verify_hits`);
- **skipping unchanged documents**: an overwrite of a document that is stored exactly as given (same
  content, meta, extra fields and embedding) sends nothing to the store, and the stored versions by id
  feed the encoder's own "reuse the stored embedding" rule (:meth:`Store.stored_versions`);
- **validation** of ids, embeddings, ``top_k`` and filters (Haystack filter syntax, see
  :mod:`dual_encoder.filters`), before anything runs, with errors that name the fix.

Async methods run the sync ones in a worker thread, so both paths give identical results.

Framework adapters (Haystack's ``DocumentStore``, LangChain's ``VectorStore``) translate their document
types to :class:`StoredRecord` and call these methods; they do not restate any rule.

Example::

    store = EmbeddedStore(path="my-index")                 # or any other Store
    store.upsert([StoredRecord(id="a", content="Paris is in France.", meta={}, embedding=vector)])
    store.check_encoder(encoder.fingerprint)               # raises EncoderMismatchError on another space
    result = store.vector_search(encoder.encode_query("Where is Paris?"), top_k=5)
    for hit in result.hits:
        print(hit.record.id, hit.score, result.method)     # method: "exact" or "approximate"
"""

from __future__ import annotations

import asyncio
import builtins
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal

import numpy as np

from dual_encoder.config import validate_top_k
from dual_encoder.errors import (
    ConfigurationError,
    DimensionMismatchError,
    DualEncoderError,
    DuplicateIdError,
    InvalidDocumentError,
)
from dual_encoder.filters import compile_filter
from dual_encoder.fingerprint import (
    DOCUMENT_SPACE_META_KEY,
    EncoderFingerprint,
    StoredSpace,
    check_documents_compatible,
    check_store_compatible,
    space_of_documents,
)

SearchMethod = Literal["exact", "approximate", "keyword", "hybrid"]


class KeywordSearchUnsupportedError(DualEncoderError, NotImplementedError):
    """The store has no keyword (BM25) index."""


class NativeHybridUnsupportedError(ConfigurationError):
    """A native hybrid search was asked of a store without one (see :attr:`Store.supports_native_hybrid_search`)."""


class TenantsUnsupportedError(ConfigurationError):
    """A tenant was named for a store that keeps no tenants (see :attr:`Store.supports_tenants`)."""


class StoreClosedError(DualEncoderError, RuntimeError):
    """A framework-facing store (a Haystack document store, a LangChain vector store) was used after ``close()``."""


class DuplicatePolicy(str, Enum):
    """What a write does with an id that is already stored."""

    OVERWRITE = "overwrite"
    SKIP = "skip"
    FAIL = "fail"


@dataclass
class StoredRecord:
    """One document as stores keep it.

    :param id: Non-empty string, unique in the store.
    :param content: The text, or ``None``.
    :param meta: JSON-like metadata; ``meta["encoder_fingerprint"]`` names the embedding's space.
    :param embedding: A 1-D float32 vector, or ``None`` for a document without one.
    :param extra: Adapter fields a store keeps verbatim (a Haystack blob or sparse embedding), JSON-safe.
    """

    id: str
    content: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def document_space(self) -> str | None:
        return self.meta.get(DOCUMENT_SPACE_META_KEY)

    def same_as(self, other: StoredRecord) -> bool:
        """Whether storing ``other`` over this record would change nothing."""
        if self.id != other.id or self.content != other.content:
            return False
        if _present(self.meta) != _present(other.meta) or _present(self.extra) != _present(other.extra):
            return False
        if (self.embedding is None) != (other.embedding is None):
            return False
        if self.embedding is None or other.embedding is None:
            return True
        return bool(np.array_equal(self.embedding, other.embedding))


@dataclass(frozen=True)
class SearchHit:
    record: StoredRecord
    score: float


@dataclass(frozen=True)
class SearchResult:
    """Hits best first. ``method`` says how they were found: ``exact`` (every candidate scored),
    ``approximate`` (an ANN index: may miss a true neighbour), ``keyword`` (BM25) or ``hybrid`` (keyword and
    vector results fused)."""

    hits: list[SearchHit]
    method: SearchMethod


@dataclass(frozen=True)
class WriteSummary:
    """What :meth:`Store.upsert` did: ``written`` new or changed records, ``unchanged`` records that were
    already stored exactly as given (nothing sent), ``skipped`` existing ids left alone by ``SKIP``."""

    written: int
    unchanged: int
    skipped: int

    @property
    def stored(self) -> int:
        """Records the store now holds as given (Haystack's "documents written")."""
        return self.written + self.unchanged


class Store(ABC):
    """Base class of every document store. Subclasses implement the ``_``-prefixed primitives.

    Subclasses set :attr:`similarity` (``"cosine"``: scores are cosine similarities in [-1, 1];
    ``"dot"``: raw dot products) and :attr:`location` (how error messages name the store, e.g.
    ``"the embedded store at 'my-index'"``).
    """

    similarity: str = "cosine"
    location: str = "the document store"
    #: Whether :meth:`keyword_search` is available.
    supports_keyword_search: bool = False
    #: Whether :meth:`with_tenant` is available: the store keeps the documents of each tenant apart.
    supports_tenants: bool = False
    #: Whether :meth:`native_hybrid_search` is available: the store's own engine fuses its keyword and vector
    #: searches in one request.
    supports_native_hybrid_search: bool = False

    # ------------------------------------------------------------------------------------ primitives
    @abstractmethod
    def _recorded_space(self) -> StoredSpace:
        """The document space and dimension the store records (``None`` fields: nothing embedded yet)."""

    @abstractmethod
    def _record_space(self, space: StoredSpace) -> None:
        """Record ``space`` before the first embedded write (called once, by :meth:`upsert`)."""

    @abstractmethod
    def _fetch(self, ids: Sequence[str]) -> dict[str, StoredRecord]:
        """The stored records among ``ids``, with embeddings, by id (unknown ids are left out)."""

    @abstractmethod
    def _write(self, records: Sequence[StoredRecord], policy: DuplicatePolicy) -> None:
        """Store validated records (insert or replace by id). ``policy`` is informative: :meth:`upsert` has
        already removed what ``SKIP`` keeps and refused what ``FAIL`` refuses. Either all records are
        durable when this returns, or the store raises and says which may not be."""

    @abstractmethod
    def _delete(self, ids: Sequence[str]) -> int:
        """Delete by id; unknown ids are ignored. Returns how many were deleted."""

    @abstractmethod
    def _delete_all(self) -> None:
        """Delete every document (the recorded space is forgotten with them)."""

    @abstractmethod
    def _count(self, filters: Mapping[str, Any] | None) -> int:
        """How many documents match ``filters`` (already validated; ``None``: all)."""

    @abstractmethod
    def _list(self, filters: Mapping[str, Any] | None) -> list[StoredRecord]:
        """The documents matching ``filters`` (already validated), with embeddings."""

    @abstractmethod
    def _vector_search(
        self, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None, exact: bool | None
    ) -> SearchResult:
        """The ``top_k`` best records for a validated float32 query vector of the recorded dimension."""

    def _native_hybrid_search(
        self, text: str, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None, weight: float, fusion: str
    ) -> SearchResult:
        """Optional primitive of :meth:`native_hybrid_search` (arguments validated, ``vector`` of the recorded
        dimension), for stores with :attr:`supports_native_hybrid_search`."""
        raise NativeHybridUnsupportedError(_no_native_hybrid(self))

    def _keyword_search(self, text: str, top_k: int, filters: Mapping[str, Any] | None) -> SearchResult:
        raise KeywordSearchUnsupportedError(
            f"{self.location} has no keyword index; use vector search, or a store with keyword search."
        )

    def _check_record(self, record: StoredRecord) -> None:
        """Store-specific checks of one record before any is written (e.g. JSON-safety). Optional."""

    def close(self) -> None:
        """Release connections and file handles; calling it again does nothing. Optional.

        A core store reopens (reconnects) on its next use: the embedded store is shared by every opener of one
        directory in a process, so one opener's close must not break the others. The framework adapters (Haystack's
        document stores, LangChain's vector store) refuse use after their own ``close()`` instead.
        """

    async def close_async(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def with_tenant(self, tenant: str) -> Store:
        """This store bound to ``tenant``: every read, write and search of the returned store sees only that
        tenant's documents. Optional (stores with :attr:`supports_tenants`); it must not connect, so a bad
        tenant name fails here and a missing tenant at its first use. Asking again for the same tenant may
        return the same object.

        :raises TenantsUnsupportedError: the store keeps no tenants.
        """
        raise TenantsUnsupportedError(
            f"{self.location} keeps no tenants, so it cannot keep tenant {tenant!r}'s documents apart. Drop the "
            f"tenant, or use a store with tenants (one whose supports_tenants is true, set up for multi-tenancy)."
        )

    # --------------------------------------------------------------------------- the embedding space
    def embedding_space(self) -> StoredSpace:
        """What the store holds: document space, dimension and similarity (``None``: not known yet)."""
        recorded = self._recorded_space()
        return replace(recorded, similarity=self.similarity)

    def check_encoder(self, fingerprint: EncoderFingerprint) -> None:
        """Refuse an encoder whose document space, dimension or similarity differs from the store's.

        :raises EncoderMismatchError: naming both spaces (``DimensionMismatchError`` for a dimension).
        """
        check_store_compatible(fingerprint, self.embedding_space(), where=self.location)

    # ------------------------------------------------------------------------------------- reading
    def stored_versions(self, ids: Iterable[str]) -> dict[str, StoredRecord]:
        """The stored record (meta and embedding) of each id in ``ids`` that the store holds."""
        unique = [i for i in dict.fromkeys(ids) if isinstance(i, str) and i]
        return self._fetch(unique) if unique else {}

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        return self._count(_validated_filters(filters))

    def list(self, filters: Mapping[str, Any] | None = None) -> list[StoredRecord]:
        """The documents matching ``filters`` (Haystack syntax), with their embeddings."""
        return self._list(_validated_filters(filters))

    def vector_search(
        self,
        vector: np.ndarray | Sequence[float],
        *,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
        exact: bool | None = None,
    ) -> SearchResult:
        """The ``top_k`` records closest to ``vector``, best first; records without embeddings never match.

        :param exact: ``True`` scores every candidate, ``False`` asks for the approximate index, ``None``
            lets the store choose (stores document when they go approximate). ``result.method`` tells.
        :raises DimensionMismatchError: the vector's dimension differs from the stored embeddings'.
        """
        validate_search(top_k, filters)
        query = self._query_vector(vector)
        if query is None:
            return SearchResult(hits=[], method="exact")
        return self._vector_search(query, top_k, filters or None, exact)

    def native_hybrid_search(
        self,
        text: str,
        vector: np.ndarray | Sequence[float],
        *,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
        weight: float,
        fusion: str,
    ) -> SearchResult:
        """The store's own hybrid search: its keyword search for ``text`` and its vector search for ``vector``,
        fused by its engine in one request. Optional (stores with :attr:`supports_native_hybrid_search`).

        :param weight: The vector side's share, from 0 (keyword only) to 1 (vector only).
        :param fusion: ``"weighted"`` (each side's scores normalised to [0, 1], then weighted) or ``"rrf"``
            (weighted reciprocal ranks), as in :mod:`dual_encoder.fusion`; the store's engine computes them.
        :returns: The ``top_k`` best records with the store's fused scores, ``method`` ``"hybrid"``.
        :raises NativeHybridUnsupportedError: the store has none (fuse with ``dual_encoder.hybrid`` instead).
        :raises DimensionMismatchError: the vector's dimension differs from the stored embeddings'.
        """
        from dual_encoder.fusion import validate_fusion  # the fusion module builds on this one

        validate_search(top_k, filters)
        validate_fusion(fusion, weight)
        if not self.supports_native_hybrid_search:
            raise NativeHybridUnsupportedError(_no_native_hybrid(self))
        query = self._query_vector(vector)
        if query is None:
            return SearchResult(hits=[], method="hybrid")
        return self._native_hybrid_search(text, query, top_k, filters or None, float(weight), fusion)

    def _query_vector(self, vector: np.ndarray | Sequence[float]) -> np.ndarray | None:
        """``vector`` as float32, checked against the recorded dimension; ``None`` while nothing is embedded."""
        query = _as_vector(vector, what="The query embedding")
        dimension = self._recorded_space().dimension
        if dimension is None:
            return None
        if query.shape[0] != dimension:
            raise DimensionMismatchError(
                f"The query embedding has {query.shape[0]} dimensions but {self.location} holds {dimension}-d "
                f"embeddings. Query with the encoder the documents were embedded with."
            )
        return query

    def keyword_search(self, text: str, *, top_k: int = 10, filters: Mapping[str, Any] | None = None) -> SearchResult:
        validate_top_k(top_k)
        return self._keyword_search(text, top_k, _validated_filters(filters))

    # ------------------------------------------------------------------------------------- writing
    def upsert(
        self,
        records: Sequence[StoredRecord],
        policy: DuplicatePolicy | str = DuplicatePolicy.OVERWRITE,
        *,
        stored: Mapping[str, StoredRecord] | None = None,
    ) -> WriteSummary:
        """Write ``records``. Everything is validated before anything is written.

        Records already stored exactly as given are not sent again. With ``FAIL``, any stored or repeated
        id refuses the whole call; with ``SKIP``, stored ids are left alone.

        :param stored: What :meth:`stored_versions` returned for these ids just before, when the caller already
            read it (an indexing run does, to reuse embeddings): saves a second lookup. Ids missing from it
            count as not stored.

        :raises InvalidDocumentError: a bad id or embedding, or a store-specific refusal.
        :raises EncoderMismatchError: records from another embedding space or of another dimension than
            each other or the store (``DimensionMismatchError`` for dimensions).
        :raises DuplicateIdError: ``FAIL`` and an id that is stored or repeated.
        """
        policy = DuplicatePolicy(policy)
        records = [_validated_record(record) for record in records]
        for record in records:
            self._check_record(record)
        if policy is DuplicatePolicy.FAIL:
            repeated = [i for i, n in _counts(r.id for r in records).items() if n > 1]
            if repeated:
                raise DuplicateIdError(
                    f"{len(repeated)} document id(s) occur more than once in one write: {repeated[:5]}. Nothing was "
                    f"written. Give every document its own id, or use the overwrite policy."
                )
        else:
            records = list({record.id: record for record in records}.values())  # the last version of an id wins
        recorded = self._recorded_space()
        established = space_of_documents(
            ((r.id, r.document_space, None if r.embedding is None else int(r.embedding.shape[0])) for r in records),
            recorded if recorded.dimension is not None else None,
            where=self.location,
        )
        if stored is None:
            stored = self.stored_versions(r.id for r in records)
        else:
            stored = {r.id: stored[r.id] for r in records if r.id in stored}
        if policy is DuplicatePolicy.FAIL and stored:
            raise DuplicateIdError(
                f"{len(stored)} document id(s) already stored in {self.location}: {sorted(stored)[:5]}. Nothing was "
                f"written. Use the overwrite or skip policy to replace or keep the stored documents."
            )
        skipped = unchanged = 0
        to_write = []
        for record in records:
            previous = stored.get(record.id)
            if previous is not None and policy is DuplicatePolicy.SKIP:
                skipped += 1
            elif previous is not None and previous.same_as(record):
                unchanged += 1
            else:
                to_write.append(record)
        if to_write:
            if established is not None and established.dimension is not None and recorded.dimension is None:
                self._record_space(replace(established, similarity=self.similarity))
            self._write(to_write, policy)
        return WriteSummary(written=len(to_write), unchanged=unchanged, skipped=skipped)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were deleted."""
        unique = [i for i in dict.fromkeys(ids) if isinstance(i, str)]
        return self._delete(unique) if unique else 0

    def delete_all(self) -> None:
        self._delete_all()

    def delete_where(self, filters: Mapping[str, Any]) -> int:
        """Delete every document matching ``filters``; returns how many were deleted."""
        return self.delete(record.id for record in self.list(_required_filters(filters)))

    def update_meta_where(self, filters: Mapping[str, Any], meta: Mapping[str, Any]) -> int:
        """Merge ``meta`` into the meta of every document matching ``filters``; returns how many matched.

        Embeddings and their fingerprints are kept: meta is not part of the embedded text unless an embedder
        was told to embed those fields, and then its input digest no longer matches, so the next indexing run
        re-encodes exactly those documents.
        """
        matching = self.list(_required_filters(filters))
        updated = [replace(record, meta={**record.meta, **meta}) for record in matching]
        self.upsert(updated, DuplicatePolicy.OVERWRITE)
        return len(matching)

    # --------------------------------------------------------------------------------------- async
    async def embedding_space_async(self) -> StoredSpace:
        return await asyncio.to_thread(self.embedding_space)

    async def check_encoder_async(self, fingerprint: EncoderFingerprint) -> None:
        await asyncio.to_thread(self.check_encoder, fingerprint)

    async def stored_versions_async(self, ids: Iterable[str]) -> dict[str, StoredRecord]:
        return await asyncio.to_thread(self.stored_versions, list(ids))

    async def count_async(self, filters: Mapping[str, Any] | None = None) -> int:
        return await asyncio.to_thread(self.count, filters)

    async def list_async(self, filters: Mapping[str, Any] | None = None) -> builtins.list[StoredRecord]:
        return await asyncio.to_thread(self.list, filters)

    async def vector_search_async(
        self,
        vector: np.ndarray | Sequence[float],
        *,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
        exact: bool | None = None,
    ) -> SearchResult:
        return await asyncio.to_thread(self.vector_search, vector, top_k=top_k, filters=filters, exact=exact)

    async def native_hybrid_search_async(
        self,
        text: str,
        vector: np.ndarray | Sequence[float],
        *,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
        weight: float,
        fusion: str,
    ) -> SearchResult:
        return await asyncio.to_thread(
            self.native_hybrid_search, text, vector, top_k=top_k, filters=filters, weight=weight, fusion=fusion
        )

    async def keyword_search_async(
        self, text: str, *, top_k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> SearchResult:
        return await asyncio.to_thread(self.keyword_search, text, top_k=top_k, filters=filters)

    async def upsert_async(
        self,
        records: Sequence[StoredRecord],
        policy: DuplicatePolicy | str = DuplicatePolicy.OVERWRITE,
        *,
        stored: Mapping[str, StoredRecord] | None = None,
    ) -> WriteSummary:
        return await asyncio.to_thread(self.upsert, records, policy, stored=stored)

    async def delete_async(self, ids: Iterable[str]) -> int:
        return await asyncio.to_thread(self.delete, list(ids))

    async def delete_all_async(self) -> None:
        await asyncio.to_thread(self.delete_all)

    async def delete_where_async(self, filters: Mapping[str, Any]) -> int:
        return await asyncio.to_thread(self.delete_where, filters)

    async def update_meta_where_async(self, filters: Mapping[str, Any], meta: Mapping[str, Any]) -> int:
        return await asyncio.to_thread(self.update_meta_where, filters, meta)


def verify_hits(fingerprint: EncoderFingerprint, spaces: Iterable[str | None], where: str) -> int:
    """The per-document half of the fingerprint guard, for results from any store (ours or not).

    Raises :class:`~dual_encoder.errors.EncoderMismatchError` when a returned document was embedded in
    another space; returns how many carried no fingerprint (and so could not be verified).
    """
    return check_documents_compatible(fingerprint, spaces, where=where)


def validate_search(top_k: int, filters: Mapping[str, Any] | None) -> None:
    """Check ``top_k`` and ``filters`` the way every search does, before any work such as encoding a query.

    :raises ConfigurationError: ``top_k`` is not a positive integer.
    :raises FilterError: malformed filters or unknown operators.
    """
    validate_top_k(top_k)
    _validated_filters(filters)


def scoped_to_tenant(store: Store, tenant: str | None) -> Store:
    """``store`` itself when ``tenant`` is ``None``, else ``store.with_tenant(tenant)`` (without connecting).

    Adapters call this for a per-call or per-run tenant, so every store answers the same way.

    :raises TenantsUnsupportedError: a tenant for a store that keeps no tenants.
    :raises ConfigurationError: a tenant that is not a non-empty string (stores may refuse other names too).
    """
    if tenant is None:
        return store
    if not isinstance(tenant, str) or not tenant:
        raise ConfigurationError(f"A tenant is a non-empty name (or None for no tenant), got {tenant!r}.")
    return store.with_tenant(tenant)


# ------------------------------------------------------------------------------------------ helpers
def _no_native_hybrid(store: Store) -> str:
    return (
        f"{store.location} has no native hybrid search. Fuse its keyword and vector searches instead "
        f"(dual_encoder.hybrid.hybrid_search), or use a store whose supports_native_hybrid_search is true."
    )


def _validated_filters(filters: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    compile_filter(filters)  # raises FilterError naming the problem
    return filters or None


def _required_filters(filters: Mapping[str, Any]) -> Mapping[str, Any]:
    if not filters:
        raise ConfigurationError(
            "A filter is required here (an empty one would select every document); use delete_all() for that."
        )
    return filters


def _as_vector(values: Any, *, what: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    if vector.ndim != 1 or vector.shape[0] == 0:
        raise InvalidDocumentError(f"{what} has shape {vector.shape}; expected a flat, non-empty list of floats.")
    if not np.isfinite(vector).all():
        raise InvalidDocumentError(f"{what} has NaN or infinite values.")
    return vector


def _validated_record(record: StoredRecord) -> StoredRecord:
    if not isinstance(record, StoredRecord):
        raise InvalidDocumentError(f"Stores take StoredRecord objects, got {type(record).__name__}.")
    if not isinstance(record.id, str) or not record.id:
        raise InvalidDocumentError(f"Every stored document needs a non-empty string id, got {record.id!r}.")
    if record.content is not None and not isinstance(record.content, str):
        raise InvalidDocumentError(
            f"Document '{record.id}' has content of type {type(record.content).__name__}; stores keep text or None."
        )
    if record.embedding is None:
        return record
    vector = _as_vector(record.embedding, what=f"Document '{record.id}''s embedding")
    return replace(record, embedding=vector, meta=dict(record.meta), extra=dict(record.extra))


def check_json_safe(record: StoredRecord) -> None:
    """Refuse content, meta or extra fields that cannot be stored as JSON (for stores that keep JSON)."""
    try:
        json.dumps({"content": record.content, "meta": record.meta, "extra": record.extra}, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidDocumentError(
            f"Document '{record.id}' cannot be stored: its content or meta is not JSON-serialisable ({error}). "
            f"Store dates as ISO strings and other objects as strings, numbers, lists or dicts."
        ) from error


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    """Unset values count as absent, so a store that drops ``None`` properties still compares equal."""
    return {key: value for key, value in values.items() if value is not None and not _is_nan(value)}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _counts(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts
