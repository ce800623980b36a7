"""Haystack component: documents in, documents with document-tower embeddings out."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack_integrations.document_stores.dual_encoder.contract_adapter import stored_versions

from dual_encoder.config import EncoderConfig
from dual_encoder.documents import DocumentInput, embed_documents
from dual_encoder.encoder import DualEncoder
from dual_encoder.stores import StoredRecord


@component
class DualEncoderDocumentEmbedder:
    """Embeds documents with the **document tower** of a dual encoder and stamps its fingerprint.

    Each embedded document gets ``meta["encoder_fingerprint"]`` (the document space, which retrievers and
    stores check) and ``meta["encoder_input_digest"]`` (a digest of the embedded text). A document whose text
    and fingerprint are unchanged and that already has an embedding is passed through without encoding it
    again. Documents with no text are passed on without an embedding (with a warning), never dropped.

    Documents fresh from a converter carry no embedding. Give the embedder the ``document_store`` the
    pipeline writes to, and it looks their ids up there first: a document stored with the same text and
    fingerprint gets its stored embedding back instead of being encoded again, so re-running an indexing
    pipeline over an unchanged corpus encodes nothing (and a writer with ``DuplicatePolicy.OVERWRITE``
    writes the same vectors back).

    Usage::

        embedder = DualEncoderDocumentEmbedder(encoder={"model": "all-MiniLM-L6-v2"}, meta_fields_to_embed=["title"])
        documents = embedder.run(documents=[Document(content="...", meta={"title": "..."})])["documents"]

        # Re-indexing skips unchanged documents:
        store = EmbeddedDocumentStore(path="my-index")
        embedder = DualEncoderDocumentEmbedder(document_store=store)

    :param encoder: The encoder definition (an ``EncoderConfig``, its dict form, or a model name). Use the
        same definition for the query side. A model folder's named prompts are chosen there
        (``{"document_prompt_name": "passage", "query_prompt_name": "query"}``), and serialised with it.
    :param meta_fields_to_embed: Meta fields whose values are embedded before the content. Values must be
        strings, numbers or booleans.
    :param embedding_separator: Joins the meta values and the content.
    :param progress_bar: Show a progress bar while encoding.
    :param document_store: Optional: the store these documents are written to, read (never written) to reuse
        the embeddings of unchanged documents. Any Haystack store whose ``filter_documents`` returns
        embeddings works (EmbeddedDocumentStore, DualEncoderWeaviateDocumentStore, InMemoryDocumentStore).
    """

    def __init__(
        self,
        encoder: EncoderConfig | dict[str, Any] | str = "all-MiniLM-L6-v2",
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        progress_bar: bool = True,
        document_store: Any | None = None,
    ) -> None:
        if document_store is not None and not callable(getattr(document_store, "filter_documents", None)):
            raise TypeError(
                f"document_store must be a Haystack document store (it needs filter_documents), got "
                f"{type(document_store).__name__}. Pass the store the pipeline writes to, or leave it unset."
            )
        self.encoder_config = EncoderConfig.coerce(encoder)
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.progress_bar = progress_bar
        self.document_store = document_store
        self.encoder = DualEncoder(self.encoder_config)

    def warm_up(self) -> None:
        """Load the model (shared within the process), compute its fingerprint and reopen ``document_store`` if
        it was closed; idempotent."""
        if self.document_store is not None and hasattr(self.document_store, "warm_up"):
            self.document_store.warm_up()
        self.encoder.load()
        _ = self.encoder.fingerprint

    def close(self) -> None:
        """Close ``document_store`` (when given and closable); ``Pipeline.close()`` calls this. Closing a store that
        the pipeline's writer also closes is harmless."""
        if self.document_store is not None and hasattr(self.document_store, "close"):
            self.document_store.close()

    async def close_async(self) -> None:
        """:meth:`close` without blocking the event loop; ``close_async()`` of a pipeline calls this."""
        if self.document_store is not None and hasattr(self.document_store, "close_async"):
            await self.document_store.close_async()
        elif self.document_store is not None and hasattr(self.document_store, "close"):
            await asyncio.to_thread(self.document_store.close)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            encoder=self.encoder_config.to_dict(),
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            progress_bar=self.progress_bar,
            document_store=None if self.document_store is None else self.document_store.to_dict(),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderDocumentEmbedder:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, list[Document]]:
        """Embed ``documents``.

        :param documents: Documents to embed; their order is kept and none is dropped.
        :returns: ``documents``: the same documents with ``embedding`` and fingerprint meta set.
        :raises TypeError: ``documents`` is not a list of Documents.
        :raises ValueError: A document has non-text content or an unusable meta field (nothing is embedded).
        :raises DualEncoderError: ``document_store`` was given but could not be read (nothing is embedded).
        """
        if not isinstance(documents, list) or not all(isinstance(doc, Document) for doc in documents):
            raise TypeError(
                "DualEncoderDocumentEmbedder expects a list of Documents. To embed a single string, use "
                "DualEncoderTextEmbedder."
            )
        self.warm_up()
        outcomes = embed_documents(
            self.encoder,
            [
                DocumentInput(id=doc.id, content=doc.content, meta=doc.meta, has_embedding=doc.embedding is not None)
                for doc in documents
            ],
            meta_fields_to_embed=self.meta_fields_to_embed,
            separator=self.embedding_separator,
            progress_bar=self.progress_bar,
            stored=self._stored_versions([doc.id for doc in documents if doc.embedding is None]),
        )
        embedded = []
        for document, outcome in zip(documents, outcomes):
            if outcome.status == "unchanged":
                embedded.append(document)
            else:
                vector = None if outcome.embedding is None else outcome.embedding.tolist()
                embedded.append(replace(document, embedding=vector, meta=outcome.meta))
        return {"documents": embedded}

    def _stored_versions(self, ids: list[str]) -> dict[str, StoredRecord]:
        # Read before any encoding, so an unreachable store fails the call at once, not after the encoding.
        if self.document_store is None or not ids:
            return {}
        return stored_versions(self.document_store, ids, reader=type(self).__name__)

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, list[Document]]:
        """Same as :meth:`run`, without blocking the event loop."""
        return await asyncio.to_thread(self.run, documents)
