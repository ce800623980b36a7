"""Haystack face of the embedded default store (:class:`dual_encoder.index.EmbeddedIndex`)."""

from __future__ import annotations

import asyncio
from typing import Any

from haystack import Document, default_from_dict, default_to_dict
from haystack.dataclasses import ByteStream, SparseEmbedding
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.document_stores.types import DuplicatePolicy
from haystack.errors import FilterError

from dual_encoder import errors
from dual_encoder.fingerprint import StoredSpace
from dual_encoder.index import DuplicatePolicy as IndexDuplicatePolicy
from dual_encoder.index import IndexRecord, open_index

_POLICIES = {
    DuplicatePolicy.NONE: IndexDuplicatePolicy.FAIL,
    DuplicatePolicy.FAIL: IndexDuplicatePolicy.FAIL,
    DuplicatePolicy.SKIP: IndexDuplicatePolicy.SKIP,
    DuplicatePolicy.OVERWRITE: IndexDuplicatePolicy.OVERWRITE,
}


class EmbeddedDocumentStore:
    """An in-process document store with exact embedding search; needs no server.

    Embeddings are kept in one contiguous float32 matrix (so they come back as float32 values), updated on
    write and delete; queries never rebuild it. With ``path`` set, the store loads from that directory and
    saves every change back to it (JSON lines and ``.npy`` files, no pickle). Stores opened on the same
    directory in one process share their contents; a store notices another process's saved changes on
    its next read. Write to one directory from one process at a time.

    Usage::

        store = EmbeddedDocumentStore(path="my-index")
        store.write_documents(embedded_documents)
        store.embedding_retrieval(query_embedding=[...], top_k=5)

    :param path: Directory to persist to; ``None`` keeps the store in memory only.
    :param similarity: ``"cosine"`` (scores are cosine similarities in [-1, 1]) or ``"dot"`` (raw dot
        products). ``None`` takes the similarity saved at ``path``, or cosine for a new store.
    """

    def __init__(self, path: str | None = None, similarity: str | None = None) -> None:
        self.path = path
        self.similarity = similarity
        self.index = open_index(path, similarity=similarity)

    # ---------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, path=self.path, similarity=self.similarity)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddedDocumentStore:
        return default_from_dict(cls, data)

    # -------------------------------------------------------------------------------------- protocol
    def count_documents(self) -> int:
        """Number of stored documents."""
        return len(self.index)

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        """Stored documents matching Haystack-syntax ``filters``, in insertion order, with embeddings."""
        with _as_filter_error():
            return [_to_document(record, embedding=record.embedding) for record in self.index.records(filters)]

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Write documents; ``NONE`` means ``FAIL``. Nothing is written when any document is refused.

        :returns: The number of documents written.
        :raises DuplicateDocumentError: An id is already stored and the policy is ``NONE``/``FAIL``.
        :raises ValueError: The input is not a list of Documents, or an embedding's dimension or encoder
            fingerprint differs from the stored ones.
        """
        if not isinstance(documents, list) or not all(isinstance(doc, Document) for doc in documents):
            raise ValueError("write_documents expects a list of Document objects.")
        records = [_to_record(document) for document in documents]
        try:
            return self.index.upsert(records, policy=_POLICIES[DuplicatePolicy(policy)])
        except errors.DuplicateIdError as error:
            raise DuplicateDocumentError(str(error)) from error

    def delete_documents(self, document_ids: list[str]) -> None:
        """Delete documents by id; unknown ids are ignored."""
        self.index.delete(document_ids)

    def delete_all_documents(self) -> None:
        self.index.clear()

    # ------------------------------------------------------------------------------------- retrieval
    def embedding_retrieval(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        return_embedding: bool = False,
    ) -> list[Document]:
        """Exact top-k documents by similarity to ``query_embedding``, best first, with ``score`` set."""
        with _as_filter_error():
            hits = self.index.search(query_embedding, top_k=top_k, filters=filters)
        return [
            _to_document(hit.record, embedding=hit.embedding if return_embedding else None, score=hit.score)
            for hit in hits
        ]

    async def embedding_retrieval_async(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        return_embedding: bool = False,
    ) -> list[Document]:
        return await asyncio.to_thread(self.embedding_retrieval, query_embedding, filters, top_k, return_embedding)

    def get_embedding_space(self) -> StoredSpace:
        """The document space, dimension and similarity of the stored embeddings (for fingerprint checks)."""
        return self.index.stored_space


class _as_filter_error:
    """Translate the core's filter errors into Haystack's ``FilterError``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, errors.FilterError):
            raise FilterError(str(error)) from error
        return False


def _to_record(document: Document) -> IndexRecord:
    extra: dict[str, Any] = {}
    if document.blob is not None:
        extra["blob"] = document.blob.to_dict()
    if document.sparse_embedding is not None:
        extra["sparse_embedding"] = document.sparse_embedding.to_dict()
    return IndexRecord(
        id=document.id, content=document.content, meta=dict(document.meta), embedding=document.embedding, extra=extra
    )


def _to_document(record: IndexRecord, *, embedding: Any, score: float | None = None) -> Document:
    blob = record.extra.get("blob")
    sparse = record.extra.get("sparse_embedding")
    return Document(
        id=record.id,
        content=record.content,
        meta=dict(record.meta),
        score=score,
        embedding=None if embedding is None else embedding.tolist(),
        blob=ByteStream.from_dict(blob) if blob is not None else None,
        sparse_embedding=SparseEmbedding.from_dict(sparse) if sparse is not None else None,
    )
