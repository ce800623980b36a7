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
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from dual_encoder.documents import DocumentInput, embed_documents
from dual_encoder.errors import ConfigurationError
from dual_encoder.filters import from_simple_mapping
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY
from dual_encoder.fusion import FusionMethod
from dual_encoder.fusion_tuning import resolve_fusion
from dual_encoder.hybrid import DEFAULT_FUSION, DEFAULT_WEIGHT, hybrid_search, validate_hybrid
from dual_encoder.keyword import KeywordConfig
from dual_encoder.mmr import mmr
from dual_encoder.stores import (
    DuplicatePolicy,
    SearchResult,
    Store,
    StoredRecord,
    validate_search,
    verify_hits,
)
from dual_encoder.stores.contract import StoreClosedError, scoped_to_tenant
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
    same fused ranking as ``dual_encoder.hybrid.hybrid_search`` and Haystack's ``DualEncoderHybridRetriever``
    (whose per-side scores :meth:`similarity_search_with_method` adds to the metadata), and MMR
    (``search_type="mmr"``) picks among the hybrid candidates then. Every search checks the encoder fingerprint
    against the store before encoding the query, and every hit's recorded document space after.

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
        cls,
        embedding: DualEncoderEmbeddings,
        path: str | None = None,
        *,
        similarity: str | None = None,
        keyword: KeywordConfig | Mapping[str, Any] | None = None,
    ) -> DualEncoderVectorStore:
        """A vector store over the embedded store at ``path`` (created if missing; ``None``: in memory only).

        :param similarity: ``"cosine"`` or ``"dot"`` for a new store; ``None`` keeps a saved store's (cosine
            for a new one).
        :param keyword: Keyword (BM25) settings for hybrid search, a ``dual_encoder.keyword.KeywordConfig`` or its
            dict; ``None`` keeps the store's saved settings (English stemming and stopwords for a new one).
        """
        from dual_encoder.embedded import open_embedded_store  # the storage engine loads only when asked for

        return cls(embedding, open_embedded_store(path, similarity=similarity, keyword=keyword))

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

    def with_tenant(self, tenant: str) -> DualEncoderVectorStore:
        """This vector store bound to ``tenant`` of a store with tenants (a multi-tenant Weaviate collection): every
        add, delete, read and search of the returned vector store sees only that tenant's documents. Its methods'
        ``tenant=`` option does the same for one call.

        :raises TenantsUnsupportedError: the store keeps no tenants (a ``ValueError``; the embedded store has none).
        """
        return DualEncoderVectorStore(self._embedding, scoped_to_tenant(self.store, tenant))

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
        tenant: str | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert ``texts`` (a text with a stored id replaces that document); returns their ids.

        A text whose id is already stored with the same text (and metadata embedded) in the same document space
        keeps its stored embedding instead of being encoded again, and is not written again, so re-adding an
        unchanged corpus with the same ``ids`` costs lookups only. Texts added without ``ids`` get new random
        ids and are always encoded. Everything is checked (texts, lengths, the store's encoder) before anything
        is encoded.

        :param tenant: Add into this tenant of a store with tenants (see :meth:`with_tenant`).
        :raises ValueError: empty texts, or lengths of ``texts``, ``metadatas`` and ``ids`` that differ.
        :raises EncoderMismatchError: the store holds embeddings from another encoder.
        """
        if tenant is not None:
            return self.with_tenant(tenant).add_texts(texts, metadatas, ids=ids)
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
        """Add LangChain documents; ``ids=`` overrides, otherwise each ``document.id`` (a random id when unset);
        ``tenant=`` adds them into that tenant (see :meth:`with_tenant`)."""
        ids = kwargs.pop("ids", None) or [doc.id or str(uuid.uuid4()) for doc in documents]
        texts, metadatas = [d.page_content for d in documents], [dict(d.metadata) for d in documents]
        return self.add_texts(texts, metadatas, ids=ids, tenant=kwargs.pop("tenant", None))

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return await asyncio.to_thread(self.add_texts, list(texts), metadatas, ids=ids, tenant=tenant)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add_documents, documents, **kwargs)

    def delete(self, ids: list[str] | None = None, *, tenant: str | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents with these ids (unknown ids are ignored); ``None`` deletes every document (of
        ``tenant`` only, when given: see :meth:`with_tenant`)."""
        store = scoped_to_tenant(self.store, tenant)
        if ids is None:
            store.delete_all()
        else:
            store.delete(ids)
        return True

    async def adelete(self, ids: list[str] | None = None, *, tenant: str | None = None, **kwargs: Any) -> bool | None:
        return await asyncio.to_thread(self.delete, ids, tenant=tenant)

    # ------------------------------------------------------------------------------------------ reading
    def get_by_ids(self, ids: Sequence[str], /, *, tenant: str | None = None) -> list[Document]:
        """The stored documents with these ids, in the order asked; unknown ids are left out. ``tenant``: read
        that tenant's documents (see :meth:`with_tenant`)."""
        found = scoped_to_tenant(self.store, tenant).stored_versions(ids)
        return [_to_document(found[i]) for i in dict.fromkeys(ids) if i in found]

    async def aget_by_ids(self, ids: Sequence[str], /, *, tenant: str | None = None) -> list[Document]:
        return await asyncio.to_thread(self.get_by_ids, ids, tenant=tenant)

    # ------------------------------------------------------------------------------------------ searching
    # Every text search goes through search_request (all options checked, nothing encoded yet) and _search (the
    # work), so each async method is the sync one's request run in a worker thread: the same code, the same results.
    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **options: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` best documents with their similarity scores (the same scale as the Haystack side).

        :param filter: Haystack filter syntax, or a plain ``{"key": value}`` mapping meaning equality on each key.
        :param options: Keyword options, all checked before the query is encoded (an unknown one is refused):

            - ``exact``: ``True`` scores every document, ``False`` asks for the approximate index, ``None`` (the
              default) lets the store choose.
            - ``hybrid_alpha``: ``None`` (the default): vector search. A number from 0 (BM25 only) to 1 (vector
              only): a hybrid search on a store with keyword search, ``hybrid_alpha`` being the vector side's
              share (``dual_encoder.hybrid.DEFAULT_WEIGHT`` is the tuned default). ``"auto"``: a hybrid search
              with the weight recorded in the model folder (``hybrid_fusion.json``, from ``dual-encoder train`` or
              ``dual-encoder tune-fusion``), else the default. Scores are then the fused scores (comparable
              within one result list only), not similarities; :meth:`similarity_search_with_method` also gives
              each document's score from each side.
            - ``hybrid_fusion``: ``"weighted"`` (min-max normalised scores) or ``"rrf"`` (reciprocal-rank
              fusion); ``None`` (the default): the model's recorded fusion with ``"auto"``, else ``"weighted"``.
              Only with ``hybrid_alpha``.
            - ``hybrid_candidates``: documents taken from each side before fusing (``None``: the core default);
              only with ``hybrid_alpha``.
            - ``tenant``: search only this tenant's documents, in a store with tenants (see :meth:`with_tenant`).
        :raises ConfigurationError: a bad ``k``; an unknown option; a bad fusion option, or one without
            ``hybrid_alpha``; ``hybrid_alpha`` on a store without keyword search.
        :raises FilterError: a malformed filter.
        :raises EncoderMismatchError: the store or a hit holds embeddings from another document encoder.
        """
        return self._search(query, search_request("similarity_search_with_score", k, filter, options))[0]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **options: Any
    ) -> list[tuple[Document, float]]:
        """:meth:`similarity_search_with_score` without blocking the event loop."""
        request = search_request("asimilarity_search_with_score", k, filter, options)
        return (await asyncio.to_thread(self._search, query, request))[0]

    def similarity_search_with_method(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **options: Any
    ) -> tuple[list[tuple[Document, float]], str]:
        """Like :meth:`similarity_search_with_score`, and also how the hits were found: ``"exact"`` (every
        candidate scored), ``"approximate"`` (an ANN index) or ``"hybrid"``. After a hybrid search each document's
        metadata also holds ``"vector_score"`` (its similarity to the query) and ``"keyword_score"`` (its BM25
        score), ``None`` where that side did not return it: the ``meta`` keys of Haystack's
        ``DualEncoderHybridRetriever``.

        Besides the options of :meth:`similarity_search_with_score` it takes ``mmr_lambda`` (``None``, the
        default: no MMR; else from 0, diversity only, to 1, relevance only) and ``fetch_k`` (the candidates MMR
        picks from, default 20), as :meth:`max_marginal_relevance_search` does; scores stay the similarities (or
        the fused scores).
        """
        request = search_request("similarity_search_with_method", k, filter, options, mmr=True)
        return self._search(query, request, component_scores=True)

    async def asimilarity_search_with_method(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **options: Any
    ) -> tuple[list[tuple[Document, float]], str]:
        """:meth:`similarity_search_with_method` without blocking the event loop."""
        request = search_request("asimilarity_search_with_method", k, filter, options, mmr=True)
        return await asyncio.to_thread(self._search, query, request, component_scores=True)

    def similarity_search(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **options: Any
    ) -> list[Document]:
        """The documents of :meth:`similarity_search_with_score` (same options)."""
        return _documents(self._search(query, search_request("similarity_search", k, filter, options))[0])

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **options: Any
    ) -> list[Document]:
        """:meth:`similarity_search` without blocking the event loop."""
        request = search_request("asimilarity_search", k, filter, options)
        return _documents((await asyncio.to_thread(self._search, query, request))[0])

    def similarity_search_by_vector_with_score(
        self,
        embedding: Sequence[float],
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        *,
        exact: bool | None = None,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents closest to a query vector you embedded yourself (with ``embed_query``).

        The vector cannot be checked against the encoder, but its dimension is checked against the store's
        and every hit's document space against the encoder's. ``tenant``: search only that tenant's documents.

        :raises DimensionMismatchError: the vector's dimension differs from the stored embeddings'.
        """
        _refuse_unknown(kwargs, "similarity_search_by_vector", "k, filter, exact and tenant")
        if tenant is not None:
            return self.with_tenant(tenant).similarity_search_by_vector_with_score(embedding, k, filter, exact=exact)
        filters = from_simple_mapping(filter)
        validate_search(k, filters)
        self.store.check_encoder(self._embedding.fingerprint)
        return self._verified(self.store.vector_search(embedding, top_k=k, filters=filters, exact=exact))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return _documents(self.similarity_search_by_vector_with_score(embedding, k, filter, **kwargs))

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
        **options: Any,
    ) -> list[Document]:
        """``k`` documents picked for relevance and diversity (maximal marginal relevance) among the ``fetch_k``
        best; LangChain's ``search_type="mmr"``.

        Vector search by default: relevance is the query's cosine. With ``hybrid_alpha`` (and ``hybrid_fusion``,
        ``hybrid_candidates``: the options of :meth:`similarity_search_with_score`, ``exact`` too) the candidates
        are the ``fetch_k`` best of the hybrid search and relevance is their fused score, as in Haystack's
        ``DualEncoderHybridRetriever(mmr_lambda=...)``. Diversity is always the cosine between the documents'
        embeddings (``dual_encoder.mmr``).

        :param lambda_mult: 1.0 ranks by relevance alone, 0.0 by diversity alone.
        :raises ConfigurationError: a bad ``k``, ``fetch_k``, ``lambda_mult`` or option.
        """
        options = {**options, "mmr_lambda": lambda_mult, "fetch_k": fetch_k}
        request = search_request("max_marginal_relevance_search", k, filter, options, mmr=True)
        return _documents(self._search(query, request)[0])

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> list[Document]:
        """:meth:`max_marginal_relevance_search` without blocking the event loop."""
        options = {**options, "mmr_lambda": lambda_mult, "fetch_k": fetch_k}
        request = search_request("amax_marginal_relevance_search", k, filter, options, mmr=True)
        return _documents((await asyncio.to_thread(self._search, query, request))[0])

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        *,
        exact: bool | None = None,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """:meth:`max_marginal_relevance_search` (vector search) for a query vector you embedded yourself."""
        known = "k, fetch_k, lambda_mult, filter, exact and tenant"
        _refuse_unknown(kwargs, "max_marginal_relevance_search_by_vector", known)
        if tenant is not None:
            return self.with_tenant(tenant).max_marginal_relevance_search_by_vector(
                embedding, k, fetch_k, lambda_mult, filter, exact=exact
            )
        request = search_request(
            "max_marginal_relevance_search_by_vector",
            k,
            filter,
            {"exact": exact, "mmr_lambda": lambda_mult, "fetch_k": fetch_k},
            mmr=True,
        )
        self.store.check_encoder(self._embedding.fingerprint)
        return _documents(self._vector_search(np.asarray(embedding, dtype=np.float32), request)[0])

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if kwargs.get("hybrid_alpha") is not None:
            raise ConfigurationError(_NO_HYBRID_RELEVANCE)
        return super()._similarity_search_with_relevance_scores(query, k, **kwargs)

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if kwargs.get("hybrid_alpha") is not None:
            raise ConfigurationError(_NO_HYBRID_RELEVANCE)
        return await super()._asimilarity_search_with_relevance_scores(query, k, **kwargs)

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

    def _search(
        self, query: str, request: SearchRequest, *, component_scores: bool = False
    ) -> tuple[list[tuple[Document, float]], str]:
        """A checked text search: the query encoded once, a vector or hybrid search, then MMR when asked for.

        :param component_scores: Add each hybrid hit's score from each side to its document's metadata
            (otherwise documents hold exactly the metadata they were added with).
        """
        if request.tenant is not None:
            scoped = self.with_tenant(request.tenant)
            return scoped._search(query, replace(request, tenant=None), component_scores=component_scores)
        encoder = self._embedding.encoder
        if request.hybrid_alpha is None:
            self.store.check_encoder(encoder.fingerprint)
            return self._vector_search(encoder.encode_query(query), request)
        self._require_keyword_search()
        weight = None if request.hybrid_alpha == "auto" else request.hybrid_alpha
        setting = resolve_fusion(encoder.config.model, request.hybrid_fusion, weight)  # type: ignore[arg-type]
        fused = hybrid_search(
            encoder,
            self.store,
            query,
            top_k=request.depth,
            filters=request.filters,
            fusion=setting.fusion,
            weight=setting.weight,
            candidates=request.hybrid_candidates,
            exact=request.exact,
        )
        records = [hit.record for hit in fused.hits]
        self._verify(records)
        found = [
            (
                _to_document(
                    hit.record,
                    {VECTOR_SCORE_KEY: hit.vector_score, KEYWORD_SCORE_KEY: hit.keyword_score}
                    if component_scores
                    else None,
                ),
                hit.score,
            )
            for hit in fused.hits
        ]
        if request.mmr_lambda is not None:
            found = self._diversified(found, records, None, request)  # relevance: the fused scores
        return found, "hybrid"

    def _vector_search(self, vector: np.ndarray, request: SearchRequest) -> tuple[list[tuple[Document, float]], str]:
        result = self.store.vector_search(vector, top_k=request.depth, filters=request.filters, exact=request.exact)
        found = self._verified(result)
        if request.mmr_lambda is not None:
            found = self._diversified(found, [hit.record for hit in result.hits], vector, request)
        return found, result.method

    def _diversified(
        self,
        found: list[tuple[Document, float]],
        records: list[StoredRecord],
        query_vector: np.ndarray | None,
        request: SearchRequest,
    ) -> list[tuple[Document, float]]:
        """MMR's ``request.k`` among ``found`` (the hits of ``records``): relevance is the cosine to
        ``query_vector``, or each hit's score when there is none (fused scores)."""
        assert request.mmr_lambda is not None  # only called for an MMR request
        # Stores need not return embeddings with hits (keyword-only hybrid hits, say); stored versions carry them.
        missing = [record.id for record in records if record.embedding is None]
        stored = self.store.stored_versions(missing) if missing else {}
        kept: list[tuple[Document, float]] = []
        embeddings: list[np.ndarray] = []
        for pair, record in zip(found, records):
            embedding = record.embedding if record.embedding is not None else _embedding_of(stored.get(record.id))
            if embedding is not None:  # None: deleted since the search
                kept.append(pair)
                embeddings.append(np.asarray(embedding, dtype=np.float32))
        if not kept:
            return []
        relevance = None if query_vector is not None else np.array([score for _, score in kept], dtype=np.float32)
        order = mmr(query_vector, np.stack(embeddings), k=request.k, lambda_=request.mmr_lambda, relevance=relevance)
        return [kept[i] for i in order]

    def _verify(self, records: Iterable[StoredRecord]) -> None:
        verify_hits(
            self._embedding.fingerprint,
            (record.document_space for record in records),
            where=f"the documents retrieved from {self.store.location}",
        )

    def _verified(self, result: SearchResult) -> list[tuple[Document, float]]:
        self._verify(hit.record for hit in result.hits)
        return [(_to_document(hit.record), hit.score) for hit in result.hits]


#: ``metadata`` keys of a hybrid search's documents: the document's score from each side (``None``: that side did
#: not return it), as in ``meta`` of Haystack's ``DualEncoderHybridRetriever``.
VECTOR_SCORE_KEY = "vector_score"
KEYWORD_SCORE_KEY = "keyword_score"

_TEXT_SEARCH_OPTIONS = ("exact", "hybrid_alpha", "hybrid_fusion", "hybrid_candidates", "tenant")
_MMR_OPTIONS = ("mmr_lambda", "fetch_k")
_HYBRID_ONLY_OPTIONS = ("hybrid_fusion", "hybrid_candidates")
_NO_HYBRID_RELEVANCE = (
    "Relevance scores in [0, 1] are similarities; a hybrid search's fused scores have no such scale (they rank one "
    "result list only). Use similarity_search_with_score with hybrid_alpha and threshold the fused scores, or drop "
    "hybrid_alpha for relevance scores."
)


@dataclass(frozen=True)
class SearchRequest:
    """A text search's options, every one checked (by :func:`search_request`) before a query is encoded.

    ``mmr_lambda`` ``None`` is a ranked search; otherwise MMR picks ``k`` among the ``fetch_k`` best.
    """

    k: int
    filters: Mapping[str, Any] | None
    exact: bool | None = None
    hybrid_alpha: float | Literal["auto"] | None = None
    hybrid_fusion: FusionMethod | None = None
    hybrid_candidates: int | None = None
    mmr_lambda: float | None = None
    fetch_k: int = 20
    tenant: str | None = None

    @property
    def depth(self) -> int:
        """How many hits the search itself returns: ``k``, or MMR's candidates."""
        return self.k if self.mmr_lambda is None else max(self.k, self.fetch_k)


def search_request(
    method: str, k: int, filter: Mapping[str, Any] | None, options: Mapping[str, Any], *, mmr: bool = False
) -> SearchRequest:
    """The checked options of a text search, before anything is encoded: the one place the vector store's sync
    and async methods and :class:`~langchain_dual_encoder.DualEncoderRetriever` read them.

    :param method: The method's name, for error messages.
    :param filter: Haystack filter syntax, or a plain ``{"key": value}`` mapping.
    :param options: Keyword options (:meth:`DualEncoderVectorStore.similarity_search_with_score`).
    :param mmr: Whether ``mmr_lambda`` and ``fetch_k`` are accepted too.
    :raises ConfigurationError: an unknown option, a bad value, or a hybrid option without ``hybrid_alpha``.
    :raises FilterError: a malformed filter.
    """
    known = _TEXT_SEARCH_OPTIONS + (_MMR_OPTIONS if mmr else ())
    _refuse_unknown(
        {key: value for key, value in options.items() if key not in known},
        method,
        "k, filter, " + ", ".join(known),
    )
    filters = from_simple_mapping(filter)
    request = SearchRequest(k=k, filters=filters, **options)
    validate_search(k, filters)
    alpha = request.hybrid_alpha
    if alpha is not None:
        if isinstance(alpha, str) and alpha != "auto":
            raise ConfigurationError(
                f"hybrid_alpha must be a number from 0 (BM25 only) to 1 (vector only), 'auto' (the weight recorded "
                f"with the model) or None (vector search), got {alpha!r}."
            )
        # With "auto" the weight is read from the model folder at search time; the rest is checked now.
        weight = DEFAULT_WEIGHT if alpha == "auto" else alpha
        fusion = request.hybrid_fusion or DEFAULT_FUSION
        validate_hybrid(request.depth, filters, fusion, weight, request.hybrid_candidates, None)  # type: ignore[arg-type]
    else:
        given = [name for name in _HYBRID_ONLY_OPTIONS if options.get(name) is not None]
        if given:
            raise ConfigurationError(
                f"{method} got {given} without hybrid_alpha; they set up a hybrid search. Add hybrid_alpha (the "
                f"vector side's share, e.g. dual_encoder.hybrid.DEFAULT_WEIGHT), or drop them for a vector search."
            )
    if request.mmr_lambda is not None or "fetch_k" in options:
        _check_mmr(request.fetch_k, request.mmr_lambda)
    return request


def _check_mmr(fetch_k: int, lambda_mult: float | None) -> None:
    if isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or fetch_k < 1:
        raise ConfigurationError(f"fetch_k must be a positive integer (candidates for MMR), got {fetch_k!r}.")
    if lambda_mult is None:
        raise ConfigurationError("fetch_k sets MMR's candidates; give mmr_lambda too (0.5 is the usual choice).")
    if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, int | float) or not 0.0 <= lambda_mult <= 1.0:
        raise ConfigurationError(
            f"lambda_mult (mmr_lambda) must be between 0.0 (diversity only) and 1.0 (similarity only), got "
            f"{lambda_mult!r}."
        )


def _documents(found: list[tuple[Document, float]]) -> list[Document]:
    return [document for document, _ in found]


def _embedding_of(record: StoredRecord | None) -> np.ndarray | None:
    return None if record is None else record.embedding


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


def _to_document(record: StoredRecord, scores: Mapping[str, float | None] | None = None) -> Document:
    """``record`` as a LangChain document, its metadata as added (plus ``scores``: a hybrid hit's component scores)."""
    metadata = {key: value for key, value in record.meta.items() if key not in _STAMP_KEYS}
    if scores:
        metadata.update(scores)
    return Document(id=record.id, page_content=record.content or "", metadata=metadata)


def _cosine_relevance(score: float) -> float:
    # Clamped: float rounding can put a cosine a hair outside [-1, 1], which LangChain would warn about.
    return min(1.0, max(0.0, (score + 1.0) / 2.0))
