"""Haystack's ``DocumentStore`` protocol over any store of the core contract (:class:`dual_encoder.stores.Store`).

The adapter only translates: Haystack ``Document`` <-> :class:`~dual_encoder.stores.StoredRecord`, Haystack's
duplicate policies, and the core's errors into the ones Haystack's callers expect. The rules (fingerprint guard,
unchanged documents, filter validation) live in the core store.

Example::

    class MyDocumentStore(ContractDocumentStore):
        def __init__(self):
            self.store = SomeCoreStore()

        def to_dict(self): ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from haystack import Document
from haystack.dataclasses import ByteStream, SparseEmbedding
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.document_stores.types import DuplicatePolicy
from haystack.errors import FilterError

from dual_encoder import errors
from dual_encoder.fingerprint import EncoderFingerprint, StoredSpace
from dual_encoder.stores import DuplicatePolicy as StoreDuplicatePolicy
from dual_encoder.stores import SearchResult, Store, StoredRecord
from dual_encoder.stores.contract import StoreClosedError

_POLICIES = {
    DuplicatePolicy.NONE: StoreDuplicatePolicy.FAIL,
    DuplicatePolicy.FAIL: StoreDuplicatePolicy.FAIL,
    DuplicatePolicy.SKIP: StoreDuplicatePolicy.SKIP,
    DuplicatePolicy.OVERWRITE: StoreDuplicatePolicy.OVERWRITE,
}


class ContractDocumentStore:
    """Base of this package's Haystack document stores. Subclasses set ``self.store`` to a core ``Store``
    and implement ``to_dict`` / ``from_dict``.

    Lifecycle: :meth:`close` (which ``Pipeline.close()`` reaches through the components holding the store)
    releases the connection or files; using the store afterwards raises ``StoreClosedError`` until
    :meth:`warm_up` reopens it. This package's components warm their store up, so running a closed pipeline
    again reopens it, as it recreates the clients of Haystack's own components.
    """

    _store: Store
    _closed: bool = False

    @property
    def store(self) -> Store:
        """The core store behind this document store.

        :raises StoreClosedError: after :meth:`close`, until :meth:`warm_up`.
        """
        if self._closed:
            raise StoreClosedError(
                f"This {type(self).__name__} ({self._store.location}) is closed: close() or Pipeline.close() released "
                f"its connection and files. Call its warm_up() to reopen it (running a pipeline does, through this "
                f"package's components), or create a new store."
            )
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        self._store = store

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called and :meth:`warm_up` not since."""
        return self._closed

    # -------------------------------------------------------------------------------------- protocol
    def to_dict(self) -> dict[str, Any]:
        """This store's definition for a pipeline file; each subclass supplies its own."""
        raise NotImplementedError(f"{type(self).__name__} must implement to_dict() to be saved in a pipeline.")

    def count_documents(self) -> int:
        """Number of stored documents."""
        return self.store.count()

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        """Stored documents matching Haystack-syntax ``filters``, with their embeddings.

        :raises FilterError: malformed filters or unknown operators.
        """
        with haystack_errors():
            return [record_to_document(record, embedding=True) for record in self.store.list(filters)]

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Write documents; ``NONE`` means ``FAIL``. Nothing is written when any document is refused.

        Documents already stored exactly as given are not sent again; they count as written.

        :returns: The number of documents the store now holds as given (skipped ones excluded).
        :raises DuplicateDocumentError: an id is already stored and the policy is ``NONE``/``FAIL``.
        :raises ValueError: the input is not a list of Documents, or an embedding's dimension or encoder
            fingerprint differs from the stored ones (``EncoderMismatchError``).
        """
        records = documents_to_records(documents)
        with haystack_errors():
            return self.store.upsert(records, policy=_POLICIES[DuplicatePolicy(policy)]).stored

    def delete_documents(self, document_ids: list[str]) -> None:
        """Delete documents by id; unknown ids are ignored."""
        self.store.delete(document_ids)

    def delete_all_documents(self) -> None:
        """Delete every document."""
        self.store.delete_all()

    def count_documents_by_filter(self, filters: dict[str, Any]) -> int:
        """Number of documents matching ``filters``."""
        with haystack_errors():
            return self.store.count(filters)

    def delete_by_filter(self, filters: dict[str, Any]) -> int:
        """Delete the documents matching ``filters`` (a filter is required); returns how many were deleted."""
        with haystack_errors():
            return self.store.delete_where(filters)

    def update_by_filter(self, filters: dict[str, Any], meta: dict[str, Any]) -> int:
        """Merge ``meta`` into every document matching ``filters``; returns how many were updated."""
        with haystack_errors():
            return self.store.update_meta_where(filters, meta)

    async def count_documents_async(self) -> int:
        return await self.store.count_async()

    async def filter_documents_async(self, filters: dict[str, Any] | None = None) -> list[Document]:
        return await asyncio.to_thread(self.filter_documents, filters)

    async def write_documents_async(
        self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE
    ) -> int:
        return await asyncio.to_thread(self.write_documents, documents, policy)

    async def delete_documents_async(self, document_ids: list[str]) -> None:
        await self.store.delete_async(document_ids)

    async def delete_all_documents_async(self) -> None:
        await self.store.delete_all_async()

    async def count_documents_by_filter_async(self, filters: dict[str, Any]) -> int:
        return await asyncio.to_thread(self.count_documents_by_filter, filters)

    async def delete_by_filter_async(self, filters: dict[str, Any]) -> int:
        return await asyncio.to_thread(self.delete_by_filter, filters)

    async def update_by_filter_async(self, filters: dict[str, Any], meta: dict[str, Any]) -> int:
        return await asyncio.to_thread(self.update_by_filter, filters, meta)

    # ------------------------------------------------------------------------------------- retrieval
    def embedding_retrieval(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        return_embedding: bool = False,
        exact: bool | None = None,
    ) -> list[Document]:
        """The ``top_k`` documents closest to ``query_embedding``, best first, each with ``score`` (the
        similarity itself: cosine in [-1, 1] or the dot product) and ``meta``'s search method untouched.

        :param exact: ``True`` scores every document; ``None`` lets the store choose (see its docs).
        """
        with haystack_errors():
            result = self.store.vector_search(query_embedding, top_k=top_k, filters=filters, exact=exact)
        return result_to_documents(result, return_embedding=return_embedding)

    async def embedding_retrieval_async(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        return_embedding: bool = False,
        exact: bool | None = None,
    ) -> list[Document]:
        return await asyncio.to_thread(
            self.embedding_retrieval, query_embedding, filters, top_k, return_embedding, exact
        )

    # ----------------------------------------------------------------------------------- fingerprint
    def get_embedding_space(self) -> StoredSpace:
        """The document space, dimension and similarity of the stored embeddings."""
        return self.store.embedding_space()

    def check_encoder(self, fingerprint: EncoderFingerprint) -> None:
        """Refuse an encoder from another embedding space (see :meth:`dual_encoder.stores.Store.check_encoder`)."""
        self.store.check_encoder(fingerprint)

    # ------------------------------------------------------------------------------------- lifecycle
    def warm_up(self) -> None:
        """Reopen after :meth:`close` (the connection or files open on first use); does nothing otherwise."""
        self._closed = False

    def close(self) -> None:
        """Release the connection (Weaviate's client) or files (the embedded store's database, vector map and lock).

        Calling it again does nothing. An embedded store's directory opened elsewhere in the process keeps working
        there (it reopens on its next use); this object refuses use until :meth:`warm_up`.
        """
        if self._closed:
            return
        self._closed = True
        self._store.close()

    async def close_async(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)


# ---------------------------------------------------------------------------------------- translation
class StoreComponentLifecycle:
    """``warm_up``/``close``/``close_async`` for a component that reads or writes ``self.document_store``: each is
    passed on to the store, so ``Pipeline.warm_up()`` reopens a closed store and ``Pipeline.close()`` releases its
    connection or files."""

    document_store: ContractDocumentStore

    def warm_up(self) -> None:
        """Reopen the document store if it was closed (its connection or files open on first use); idempotent."""
        self.document_store.warm_up()

    def close(self) -> None:
        """Release the document store's connection or files; ``Pipeline.close()`` calls this."""
        self.document_store.close()

    async def close_async(self) -> None:
        """:meth:`close` without blocking the event loop; ``close_async()`` of a pipeline calls this."""
        await self.document_store.close_async()


@contextlib.contextmanager
def haystack_errors() -> Iterator[None]:
    """The core's filter and duplicate errors as Haystack's own types (both stay ``ValueError``s)."""
    try:
        yield
    except errors.FilterError as error:
        raise FilterError(str(error)) from error
    except errors.DuplicateIdError as error:
        raise DuplicateDocumentError(str(error)) from error


def documents_to_records(documents: Any) -> list[StoredRecord]:
    if not isinstance(documents, list) or not all(isinstance(doc, Document) for doc in documents):
        raise ValueError("write_documents expects a list of Document objects.")
    return [document_to_record(document) for document in documents]


def document_to_record(document: Document) -> StoredRecord:
    extra: dict[str, Any] = {}
    if document.blob is not None:
        extra["blob"] = document.blob.to_dict()
    if document.sparse_embedding is not None:
        extra["sparse_embedding"] = document.sparse_embedding.to_dict()
    # The embedding stays a list here: the store converts it to a float32 vector when it validates the record,
    # with an error that names the document when the list is not a flat list of finite floats.
    return StoredRecord(
        id=document.id,
        content=document.content,
        meta=dict(document.meta),
        embedding=document.embedding,  # type: ignore[arg-type]
        extra=extra,
    )


def record_to_document(record: StoredRecord, *, embedding: bool, score: float | None = None) -> Document:
    blob = record.extra.get("blob")
    sparse = record.extra.get("sparse_embedding")
    return Document(
        id=record.id,
        content=record.content,
        meta=dict(record.meta),
        score=score,
        embedding=None if not embedding or record.embedding is None else record.embedding.tolist(),
        blob=ByteStream.from_dict(blob) if blob is not None else None,
        sparse_embedding=SparseEmbedding.from_dict(sparse) if sparse is not None else None,
    )


def result_to_documents(result: SearchResult, *, return_embedding: bool) -> list[Document]:
    return [record_to_document(hit.record, embedding=return_embedding, score=hit.score) for hit in result.hits]


#: Ids per ``filter_documents`` call when reading another Haystack store's stored versions.
_LOOKUP_CHUNK = 500


def stored_versions(document_store: Any, ids: list[str], *, reader: str) -> dict[str, StoredRecord]:
    """What ``document_store`` holds for ``ids`` (meta and embedding), for the core's unchanged-document rule.

    This package's stores answer through the contract; any other Haystack store (``InMemoryDocumentStore``,
    say) through ``filter_documents`` on ``id``. A failure names ``reader`` and the way out, and happens before
    anything is encoded.
    """
    try:
        if isinstance(document_store, ContractDocumentStore):
            return document_store.store.stored_versions(ids)
        found: dict[str, StoredRecord] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            for doc in document_store.filter_documents(filters={"field": "id", "operator": "in", "value": chunk}):
                found[doc.id] = document_to_record(doc)
        return found
    except errors.DualEncoderError:
        raise  # already names the problem and the fix (an unreachable Weaviate, say)
    except Exception as error:
        raise errors.DualEncoderError(
            f"{reader} could not read the stored versions of {len(ids)} document(s) from "
            f"{type(document_store).__name__} ({type(error).__name__}: {error}). Nothing was encoded. Check that the "
            f"store is reachable, or stop passing the store for the unchanged-document check so that every "
            f"document is encoded."
        ) from error
