"""LangChain ``VectorStore`` over any store of this project's contract (:class:`dual_encoder.stores.Store`).

The adapter only translates between LangChain's ``Document`` and the core's
:class:`~dual_encoder.stores.StoredRecord`; the rules (fingerprint guard, unchanged documents, filter and
``top_k`` validation) are the core's. It imports neither Haystack nor a Haystack integration, so
``pip install dual-encoder-retrieval[langchain]`` is enough.

Example::

    from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderVectorStore

    embeddings = DualEncoderEmbeddings("all-MiniLM-L6-v2")
    vectorstore = DualEncoderVectorStore.embedded(embeddings, path="my-index")   # or (embeddings, any Store)
    vectorstore.add_texts(["Tides are caused by the Moon."], metadatas=[{"topic": "sea"}], ids=["tides"])
    for document, score in vectorstore.similarity_search_with_score("What causes tides?", k=3, filter={"topic": "sea"}):
        print(document.id, score)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from dual_encoder.documents import DocumentInput, embed_documents
from dual_encoder.errors import ConfigurationError
from dual_encoder.filters import from_simple_mapping
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY
from dual_encoder.fusion import FusionMethod
from dual_encoder.hybrid import DEFAULT_FUSION, hybrid_search, validate_hybrid
from dual_encoder.stores import (
    DuplicatePolicy,
    SearchHit,
    SearchResult,
    Store,
    StoredRecord,
    validate_search,
    verify_hits,
)
from dual_encoder.stores.contract import StoreClosedError
from langchain_dual_encoder.embeddings import DualEncoderEmbeddings


@runtime_checkable
class WrapsStore(Protocol):
    """Anything that holds a contract store in ``.store``: this project's Haystack document stores
    (``EmbeddedDocumentStore``, ``DualEncoderWeaviateDocumentStore``) are such wrappers."""

    store: Store


def as_store(store: Store | WrapsStore) -> Store:
    """The contract store behind ``store``: a :class:`~dual_encoder.stores.Store` itself, or the ``.store`` of a
    wrapper such as this project's Haystack document stores (unwrapped without importing Haystack).

    :raises ConfigurationError: ``store`` is neither.
    """
    if isinstance(store, Store):
        return store
    inner = getattr(store, "store", None)
    if isinstance(inner, Store):
        return inner
    raise ConfigurationError(
        f"store must be a dual_encoder Store (dual_encoder.embedded.EmbeddedStore, "
        f"dual_encoder_weaviate.WeaviateStore) or one of this project's Haystack document stores, got "
        f"{type(store).__name__}. Other stores record no embedding space, so the fingerprint check could not "
        f"run; open one with DualEncoderVectorStore.embedded(embeddings, path=...)."
    )


class DualEncoderVectorStore(VectorStore):
    """A LangChain vector store over a store of the contract: the embedded store or Weaviate.

    Documents are embedded and stamped exactly as Haystack's ``DualEncoderDocumentEmbedder`` does, so a
    collection indexed from Haystack can be searched from LangChain and the other way round, with the same ids
    and the same scores. Searches are pure vector searches; ``hybrid_alpha`` asks a store with keyword search
    (the embedded store, Weaviate, a ``KeywordIndexedStore``) for a hybrid (BM25 + vector) search explicitly: the
    same fused ranking as ``dual_encoder.hybrid.hybrid_search`` and Haystack's ``DualEncoderHybridRetriever``.
    Every search checks the encoder fingerprint against the store before encoding the query, and every hit's
    recorded document space after.

    Scores are the store's similarities: cosine in [-1, 1], or raw dot products for a ``"dot"`` store.
    Documents come back with the metadata they were added with; the store also keeps the encoder's stamps
    (``encoder_fingerprint``, ``encoder_input_digest``), which Haystack's components show in ``meta``.

    Example::

        vectorstore = DualEncoderVectorStore(DualEncoderEmbeddings("all-MiniLM-L6-v2"), open_embedded_store("idx"))
        vectorstore.add_texts(["Tides are caused by the Moon."], metadatas=[{"topic": "sea"}])
        vectorstore.similarity_search_with_score("What causes tides?", k=3, filter={"topic": "sea"})

    :param embedding: The dual encoder (must be a ``DualEncoderEmbeddings``: it carries the fingerprint).
    :param store: A :class:`~dual_encoder.stores.Store`, or one of this project's Haystack document stores
        (its ``.store`` is used).
    :raises ConfigurationError: another kind of embeddings or store.
    """

    def __init__(self, embedding: DualEncoderEmbeddings, store: Store | WrapsStore) -> None:
        if not isinstance(embedding, DualEncoderEmbeddings):
            raise ConfigurationError(
                f"embedding must be a DualEncoderEmbeddings, got {type(embedding).__name__}: other Embeddings apply "
                f"one model and prompt to both roles and carry no fingerprint."
            )
        self._embedding = embedding
        self._store: Store = as_store(store)
        self._closed = False

    @classmethod
    def embedded(
        cls, embedding: DualEncoderEmbeddings, path: str | None = None, *, similarity: str | None = None
    ) -> DualEncoderVectorStore:
        """A vector store over the embedded store at ``path`` (created if missing; ``None``: in memory only).

        :param similarity: ``"cosine"`` or ``"dot"`` for a new store; ``None`` keeps a saved store's (cosine
            for a new one).
        """
        from dual_encoder.embedded import open_embedded_store  # the storage engine loads only when asked for

        return cls(embedding, open_embedded_store(path, similarity=similarity))

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def store(self) -> Store:
        """The core store behind this vector store.

        :raises StoreClosedError: after :meth:`close`.
        """
        if self._closed:
            raise StoreClosedError(
                f"This DualEncoderVectorStore ({self._store.location}) is closed: close() released its connection and "
                f"files. Create a new DualEncoderVectorStore over the store (the store reopens on its next use)."
            )
        return self._store

    # ---------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release the store's connection (Weaviate's client) or files (the embedded store's database, vector map
        and lock); calling it again does nothing, using this vector store afterwards raises ``StoreClosedError``.
        The embedded store's directory opened elsewhere in the process keeps working there."""
        if self._closed:
            return
        self._closed = True
        self._store.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    # ------------------------------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert ``texts`` (a text with a stored id replaces that document); returns their ids.

        A text whose id is already stored with the same text (and metadata embedded) in the same document space
        keeps its stored embedding instead of being encoded again, and is not written again, so re-adding an
        unchanged corpus with the same ``ids`` costs lookups only. Texts added without ``ids`` get new random
        ids and are always encoded. Everything is checked (texts, lengths, the store's encoder) before anything
        is encoded.

        :raises ValueError: empty texts, or lengths of ``texts``, ``metadatas`` and ``ids`` that differ.
        :raises EncoderMismatchError: the store holds embeddings from another encoder.
        """
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        given_ids = ids is not None
        ids = list(ids) if ids is not None else [str(uuid.uuid4()) for _ in texts]
        if not (len(texts) == len(metadatas) == len(ids)):
            raise ValueError(f"Got {len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids; they must match.")
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"Text {position} (id {ids[position]!r}) is empty or not a string: {text!r}.")
        if not texts:
            return []
        encoder = self._embedding.encoder
        self.store.check_encoder(encoder.fingerprint)
        # Fresh random ids cannot be stored yet, so only given ids are looked up (once, for both steps below).
        stored = self.store.stored_versions(ids) if given_ids else {}
        outcomes = embed_documents(
            encoder,
            [DocumentInput(id=i, content=t, meta=dict(m or {})) for i, t, m in zip(ids, texts, metadatas)],
            progress_bar=self._embedding.progress_bar,
            stored=stored,
        )
        records = [
            StoredRecord(id=i, content=t, meta=o.meta, embedding=o.embedding) for i, t, o in zip(ids, texts, outcomes)
        ]
        self.store.upsert(records, DuplicatePolicy.OVERWRITE, stored=stored)
        return ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Add LangChain documents; ``ids=`` overrides, otherwise each ``document.id`` (a random id when unset)."""
        ids = kwargs.pop("ids", None) or [doc.id or str(uuid.uuid4()) for doc in documents]
        return self.add_texts([d.page_content for d in documents], [dict(d.metadata) for d in documents], ids=ids)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return await asyncio.to_thread(self.add_texts, list(texts), metadatas, ids=ids)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add_documents, documents, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents with these ids (unknown ids are ignored); ``None`` deletes every document."""
        if ids is None:
            self.store.delete_all()
        else:
            self.store.delete(ids)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await asyncio.to_thread(self.delete, ids)

    # ------------------------------------------------------------------------------------------ reading
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids, in the order asked; unknown ids are left out."""
        found = self.store.stored_versions(ids)
        return [_to_document(found[i]) for i in dict.fromkeys(ids) if i in found]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await asyncio.to_thread(self.get_by_ids, ids)

    # ------------------------------------------------------------------------------------------ searching
    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        hybrid_alpha: float | None = None,
        *,
        exact: bool | None = None,
        hybrid_fusion: FusionMethod = DEFAULT_FUSION,
        hybrid_candidates: int | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` best documents with their similarity scores (the same scale as the Haystack side).

        :param filter: Haystack filter syntax, or a plain ``{"key": value}`` mapping meaning equality on each key.
        :param hybrid_alpha: ``None``: vector search. A number from 0 (BM25 only) to 1 (vector only): a hybrid
            search on a store with keyword search, ``hybrid_alpha`` being the vector side's share
            (``dual_encoder.hybrid.DEFAULT_WEIGHT`` is the tuned default). Scores are then the fused scores
            (comparable within one result list only), not similarities.
        :param exact: ``True`` scores every document, ``False`` asks for the approximate index, ``None`` lets
            the store choose.
        :param hybrid_fusion: ``"weighted"`` (min-max normalised scores) or ``"rrf"`` (reciprocal-rank fusion).
        :param hybrid_candidates: Documents taken from each side before fusing (``None``: the core default).
        :raises ConfigurationError: a bad ``k`` or fusion option, or ``hybrid_alpha`` on a store without keyword
            search.
        :raises FilterError: a malformed filter.
        :raises EncoderMismatchError: the store or a hit holds embeddings from another document encoder.
        """
        known = "k, filter, hybrid_alpha, exact, hybrid_fusion and hybrid_candidates"
        _refuse_unknown(kwargs, "similarity_search_with_score", known)
        return self.similarity_search_with_method(
            query,
            k,
            filter,
            hybrid_alpha,
            exact=exact,
            hybrid_fusion=hybrid_fusion,
            hybrid_candidates=hybrid_candidates,
        )[0]

    def similarity_search_with_method(
        self,
        query: str,
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        hybrid_alpha: float | None = None,
        *,
        exact: bool | None = None,
        hybrid_fusion: FusionMethod = DEFAULT_FUSION,
        hybrid_candidates: int | None = None,
    ) -> tuple[list[tuple[Document, float]], str]:
        """Like :meth:`similarity_search_with_score`, and also how the hits were found: ``"exact"`` (every
        candidate scored), ``"approximate"`` (an ANN index) or ``"hybrid"``."""
        filters = from_simple_mapping(filter)
        validate_search(k, filters)
        encoder = self._embedding.encoder
        if hybrid_alpha is not None:
            validate_hybrid(k, filters, hybrid_fusion, hybrid_alpha, hybrid_candidates, None)
            self._require_keyword_search()
            fused = hybrid_search(
                encoder,
                self.store,
                query,
                top_k=k,
                filters=filters,
                fusion=hybrid_fusion,
                weight=hybrid_alpha,
                candidates=hybrid_candidates,
                exact=exact,
            )
            hits = [SearchHit(record=hit.record, score=hit.score) for hit in fused.hits]
            return self._verified(SearchResult(hits=hits, method="hybrid")), "hybrid"
        self.store.check_encoder(encoder.fingerprint)
        vector = encoder.encode_query(query)
        result = self.store.vector_search(vector, top_k=k, filters=filters, exact=exact)
        return self._verified(result), result.method

    async def asimilarity_search_with_method(
        self,
        query: str,
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        hybrid_alpha: float | None = None,
        *,
        exact: bool | None = None,
        hybrid_fusion: FusionMethod = DEFAULT_FUSION,
        hybrid_candidates: int | None = None,
    ) -> tuple[list[tuple[Document, float]], str]:
        return await asyncio.to_thread(
            self.similarity_search_with_method,
            query,
            k,
            filter,
            hybrid_alpha,
            exact=exact,
            hybrid_fusion=hybrid_fusion,
            hybrid_candidates=hybrid_candidates,
        )

    def similarity_search(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector_with_score(
        self,
        embedding: Sequence[float],
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        *,
        exact: bool | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents closest to a query vector you embedded yourself (with ``embed_query``).

        The vector cannot be checked against the encoder, but its dimension is checked against the store's
        and every hit's document space against the encoder's.

        :raises DimensionMismatchError: the vector's dimension differs from the stored embeddings'.
        """
        _refuse_unknown(kwargs, "similarity_search_by_vector", "k, filter and exact")
        filters = from_simple_mapping(filter)
        validate_search(k, filters)
        self.store.check_encoder(self._embedding.fingerprint)
        return self._verified(self.store.vector_search(embedding, top_k=k, filters=filters, exact=exact))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_by_vector_with_score(embedding, k, filter, **kwargs)]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await asyncio.to_thread(self.similarity_search_with_score, query, k, filter, **kwargs)

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return await asyncio.to_thread(self.similarity_search, query, k, filter, **kwargs)

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return await asyncio.to_thread(self.similarity_search_by_vector, embedding, k, filter, **kwargs)

    async def asimilarity_search_by_vector_with_score(
        self, embedding: Sequence[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await asyncio.to_thread(self.similarity_search_by_vector_with_score, embedding, k, filter, **kwargs)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        *,
        exact: bool | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents picked for relevance and diversity (maximal marginal relevance) among the ``fetch_k``
        most similar; LangChain's ``search_type="mmr"``.

        :param lambda_mult: 1.0 ranks by similarity alone, 0.0 by diversity alone.
        """
        _refuse_unknown(kwargs, "max_marginal_relevance_search", "k, fetch_k, lambda_mult, filter and exact")
        filters = self._checked_search(k, filter, fetch_k, lambda_mult)
        vector = self._embedding.encoder.encode_query(query)
        return self._mmr(vector, k, fetch_k, lambda_mult, filters, exact)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        *,
        exact: bool | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """:meth:`max_marginal_relevance_search` for a query vector you embedded yourself."""
        _refuse_unknown(kwargs, "max_marginal_relevance_search_by_vector", "k, fetch_k, lambda_mult, filter and exact")
        filters = self._checked_search(k, filter, fetch_k, lambda_mult)
        return self._mmr(embedding, k, fetch_k, lambda_mult, filters, exact)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """LangChain's relevance in [0, 1], for ``similarity_search_with_relevance_scores`` and the
        ``similarity_score_threshold`` retriever: ``(cosine + 1) / 2`` on a cosine store.

        A dot-product store has no such scale (raw dot products are unbounded, and any squashing would make a
        threshold mean something different for every model), so it is refused rather than guessed.
        """
        similarity = self.store.similarity
        if similarity == "cosine":
            return _cosine_relevance
        raise ConfigurationError(
            f"Relevance scores in [0, 1] need a cosine store, but {self.store.location} scores by {similarity!r} "
            f"similarity (unbounded). Use similarity_search_with_score and threshold the raw scores, or index into "
            f"a store created with similarity='cosine'."
        )

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        store: Store | WrapsStore | None = None,
        document_store: Store | WrapsStore | None = None,
        **kwargs: Any,
    ) -> DualEncoderVectorStore:
        """A vector store over ``store`` (a new in-memory embedded store when omitted) holding ``texts``.

        ``document_store`` is the former name of ``store``.
        """
        if store is not None and document_store is not None:
            raise ConfigurationError("Pass the store once: store= (document_store= is its former name).")
        chosen = store if store is not None else document_store
        if chosen is None:
            vectorstore = cls.embedded(embedding)  # type: ignore[arg-type]
        else:
            vectorstore = cls(embedding, chosen)  # type: ignore[arg-type]
        vectorstore.add_texts(texts, metadatas, ids=ids)
        return vectorstore

    # ------------------------------------------------------------------------------------------ internals
    def _require_keyword_search(self) -> None:
        if not getattr(self.store, "supports_keyword_search", False):
            raise ConfigurationError(
                f"hybrid_alpha needs a store with hybrid (keyword + vector) search, such as the embedded store or "
                f"dual_encoder_weaviate.WeaviateStore; {self.store.location} has no keyword index. Leave "
                f"hybrid_alpha unset, or wrap the store: dual_encoder.hybrid.KeywordIndexedStore(store)."
            )

    def _checked_search(
        self, k: int, filter: Mapping[str, Any] | None, fetch_k: int, lambda_mult: float
    ) -> dict[str, Any] | None:
        filters = from_simple_mapping(filter)
        validate_search(k, filters)
        if isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or fetch_k < 1:
            raise ConfigurationError(f"fetch_k must be a positive integer (candidates for MMR), got {fetch_k!r}.")
        if not 0.0 <= lambda_mult <= 1.0:
            raise ConfigurationError(
                f"lambda_mult must be between 0.0 (diversity only) and 1.0 (similarity only), got {lambda_mult}."
            )
        self.store.check_encoder(self._embedding.fingerprint)
        return filters

    def _mmr(
        self,
        vector: np.ndarray | Sequence[float],
        k: int,
        fetch_k: int,
        lambda_mult: float,
        filters: Mapping[str, Any] | None,
        exact: bool | None,
    ) -> list[Document]:
        result = self.store.vector_search(vector, top_k=max(k, fetch_k), filters=filters, exact=exact)
        found = self._verified(result)
        # Stores need not return embeddings with hits; the contract's stored versions always carry them.
        missing = [hit.record.id for hit in result.hits if hit.record.embedding is None]
        stored = self.store.stored_versions(missing) if missing else {}
        candidates: list[tuple[Document, np.ndarray]] = []
        for (document, _), hit in zip(found, result.hits):
            embedding = hit.record.embedding
            if embedding is None and hit.record.id in stored:
                embedding = stored[hit.record.id].embedding
            if embedding is not None:  # None: deleted since the search
                candidates.append((document, np.asarray(embedding, dtype=np.float32)))
        if not candidates:
            return []
        # langchain_core annotates the embeddings as list[list[float]], but it hands them to its cosine_similarity,
        # which takes any matrix-like, numpy arrays included.
        chosen = maximal_marginal_relevance(
            np.asarray(vector, dtype=np.float32),
            [e for _, e in candidates],  # type: ignore[misc]
            lambda_mult=lambda_mult,
            k=k,
        )
        return [candidates[i][0] for i in chosen]

    def _verified(self, result: SearchResult) -> list[tuple[Document, float]]:
        verify_hits(
            self._embedding.fingerprint,
            (hit.record.document_space for hit in result.hits),
            where=f"the documents retrieved from {self.store.location}",
        )
        return [(_to_document(hit.record), hit.score) for hit in result.hits]


def _refuse_unknown(kwargs: Mapping[str, Any], method: str, known: str) -> None:
    # LangChain passes search options as **kwargs; a misspelt one (filters=, top_k=) would otherwise be
    # ignored silently and return unfiltered results.
    if kwargs:
        raise ConfigurationError(
            f"{method} got unknown option(s) {sorted(kwargs)}; it takes {known}. Filters go in filter= (Haystack "
            f"filter syntax or a plain {{'key': value}} mapping)."
        )


#: The encoder's stamps in stored meta: kept by the store (for the fingerprint guard and the unchanged-text
#: check), left out of LangChain documents, so a document comes back with exactly the metadata it was added with.
_STAMP_KEYS = (DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY)


def _to_document(record: StoredRecord) -> Document:
    metadata = {key: value for key, value in record.meta.items() if key not in _STAMP_KEYS}
    return Document(id=record.id, page_content=record.content or "", metadata=metadata)


def _cosine_relevance(score: float) -> float:
    # Clamped: float rounding can put a cosine a hair outside [-1, 1], which LangChain would warn about.
    return min(1.0, max(0.0, (score + 1.0) / 2.0))
