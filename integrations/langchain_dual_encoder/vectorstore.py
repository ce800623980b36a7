"""LangChain ``VectorStore`` over this project's stores (embedded default or Weaviate)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

from haystack import Document as HaystackDocument
from haystack.document_stores.types import DuplicatePolicy
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from dual_encoder.documents import DocumentInput, embed_documents
from dual_encoder.errors import ConfigurationError
from dual_encoder.filters import compile_filter, from_simple_mapping
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, check_documents_compatible, check_store_compatible
from haystack_integrations.document_stores.dual_encoder.stored_versions import read_stored_versions
from langchain_dual_encoder.embeddings import DualEncoderEmbeddings


class DualEncoderVectorStore(VectorStore):
    """A LangChain vector store over ``EmbeddedDocumentStore`` or ``DualEncoderWeaviateDocumentStore``.

    Documents are embedded and stamped exactly as ``DualEncoderDocumentEmbedder`` does, so a collection
    indexed from Haystack can be searched from LangChain and the other way round, with the same ids and the
    same scores. Searches are pure vector searches; ``hybrid_alpha`` asks Weaviate for a hybrid (BM25 +
    vector) search explicitly. Every search checks the encoder fingerprint first.

    Example::

        store = DualEncoderVectorStore(DualEncoderEmbeddings("all-MiniLM-L6-v2"), EmbeddedDocumentStore(path="idx"))
        store.add_texts(["Tides are caused by the Moon."], metadatas=[{"topic": "sea"}])
        store.similarity_search_with_score("What causes tides?", k=3, filter={"topic": "sea"})

    :param embedding: The dual encoder (must be a ``DualEncoderEmbeddings``).
    :param document_store: The Haystack-side store that holds the vectors.
    """

    def __init__(self, embedding: DualEncoderEmbeddings, document_store: Any) -> None:
        if not isinstance(embedding, DualEncoderEmbeddings):
            raise ConfigurationError(
                f"embedding must be a DualEncoderEmbeddings, got {type(embedding).__name__}: other Embeddings apply "
                f"one model and prompt to both roles and carry no fingerprint."
            )
        self._embedding = embedding
        self.document_store = document_store

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # ------------------------------------------------------------------------------------------ writing
    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None, **kwargs: Any
    ) -> list[str]:
        """Embed and upsert texts (a text with an existing id overwrites it); returns their ids. A text whose id
        is already stored with the same text, metadata embedded and encoder fingerprint keeps its stored
        embedding instead of being encoded again, so re-adding an unchanged corpus with the same ``ids`` is
        cheap. Texts added without ``ids`` get new random ids and are always encoded."""
        texts = list(texts)
        metadatas = metadatas or [{} for _ in texts]
        given_ids = ids is not None
        ids = ids or [str(uuid.uuid4()) for _ in texts]
        if not (len(texts) == len(metadatas) == len(ids)):
            raise ValueError(f"Got {len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids; they must match.")
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"Text {position} (id {ids[position]!r}) is empty or not a string: {text!r}.")
        outcomes = embed_documents(
            self._embedding.encoder,
            [DocumentInput(id=i, content=t, meta=m) for i, t, m in zip(ids, texts, metadatas)],
            progress_bar=self._embedding.progress_bar,
            stored=read_stored_versions(self.document_store, ids, reader=type(self).__name__) if given_ids else None,
        )
        documents = [
            HaystackDocument(id=i, content=t, meta=o.meta, embedding=o.embedding.tolist())
            for i, t, o in zip(ids, texts, outcomes)
        ]
        self.document_store.write_documents(documents, policy=DuplicatePolicy.OVERWRITE)
        return ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None) or [doc.id or str(uuid.uuid4()) for doc in documents]
        return self.add_texts([d.page_content for d in documents], [dict(d.metadata) for d in documents], ids=ids)

    async def aadd_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None, **kwargs: Any
    ) -> list[str]:
        return await asyncio.to_thread(self.add_texts, list(texts), metadatas, ids=ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if ids:
            self.document_store.delete_documents(ids)
        return True

    # ------------------------------------------------------------------------------------------ searching
    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, hybrid_alpha: float | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` best documents with their similarity scores (the same scale as the Haystack side).

        :param filter: Haystack filter syntax, or a plain ``{"key": value}`` mapping meaning equality on each key.
        :param hybrid_alpha: Weaviate only: run a hybrid search weighting vector (1.0) against BM25 (0.0).
            Hybrid scores are Weaviate's fused scores, not similarities.
        """
        filters = self._filters(filter)
        self._check_store()
        if hybrid_alpha is None:
            vector = self._embedding.embed_query(query)
            found = self.document_store.embedding_retrieval(query_embedding=vector, filters=filters, top_k=k)
        else:
            found = self._hybrid(query, k, filters, hybrid_alpha)
        return self._verified(found)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        self._check_store()
        found = self.document_store.embedding_retrieval(query_embedding=embedding, filters=self._filters(filter), top_k=k)
        return [document for document, _ in self._verified(found)]

    async def asimilarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return await asyncio.to_thread(self.similarity_search_with_score, query, k, **kwargs)

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [document for document, _ in await self.asimilarity_search_with_score(query, k, **kwargs)]

    def _select_relevance_score_fn(self):
        # Cosine similarity in [-1, 1] to LangChain's [0, 1] relevance.
        return lambda score: (score + 1.0) / 2.0

    @classmethod
    def from_texts(
        cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
        document_store: Any = None, **kwargs: Any,
    ) -> DualEncoderVectorStore:
        """A store over ``document_store`` (an in-memory ``EmbeddedDocumentStore`` when omitted) holding ``texts``."""
        if document_store is None:
            from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

            document_store = EmbeddedDocumentStore()
        store = cls(embedding, document_store)  # type: ignore[arg-type]
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # ------------------------------------------------------------------------------------------ internals
    def _filters(self, filter: dict[str, Any] | None) -> dict[str, Any] | None:
        filters = from_simple_mapping(filter)
        compile_filter(filters)
        return filters

    def _check_store(self) -> None:
        get_space = getattr(self.document_store, "get_embedding_space", None)
        if callable(get_space):
            check_store_compatible(self._embedding.fingerprint, get_space(), where=type(self.document_store).__name__)

    def _verified(self, found: list[HaystackDocument]) -> list[tuple[Document, float]]:
        check_documents_compatible(
            self._embedding.fingerprint, (d.meta.get(DOCUMENT_SPACE_META_KEY) for d in found), where="the retrieved documents"
        )
        return [(Document(id=d.id, page_content=d.content or "", metadata=dict(d.meta)), d.score) for d in found]

    def _hybrid(self, query: str, k: int, filters: dict[str, Any] | None, alpha: float) -> list[HaystackDocument]:
        hybrid = getattr(self.document_store, "hybrid_retrieval", None)
        if not callable(hybrid):
            raise ConfigurationError(
                f"hybrid_alpha needs a store with hybrid search (Weaviate); {type(self.document_store).__name__} only "
                f"does vector search. Leave hybrid_alpha unset."
            )
        return hybrid(query=query, query_embedding=self._embedding.embed_query(query), filters=filters, top_k=k, alpha=alpha)
