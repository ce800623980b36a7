"""Haystack component: hybrid retrieval (BM25 keyword search fused with dual-encoder vector search)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.document_stores.types import FilterPolicy, apply_filter_policy
from haystack_integrations.document_stores.dual_encoder.contract_adapter import (
    ContractDocumentStore,
    StoreComponentLifecycle,
    haystack_errors,
    record_to_document,
)

from dual_encoder.config import EncoderConfig
from dual_encoder.encoder import DualEncoder
from dual_encoder.fusion import RRF_K
from dual_encoder.fusion_tuning import FusionSetting, resolve_fusion
from dual_encoder.hybrid import (
    DEFAULT_FUSION,
    DEFAULT_WEIGHT,
    hybrid_search,
    require_keyword_search,
    validate_hybrid,
)
from dual_encoder.native_hybrid import check_native_hybrid_options, native_hybrid_search
from dual_encoder.stores import Store
from dual_encoder.stores.contract import NativeHybridUnsupportedError, scoped_to_tenant

#: ``meta`` keys of each returned document: its score from each side (``None``: that side did not return it).
VECTOR_SCORE_KEY = "vector_score"
KEYWORD_SCORE_KEY = "keyword_score"


@component
class DualEncoderHybridRetriever(StoreComponentLifecycle):
    """Query text in, one fused list out: BM25 keyword search and dual-encoder vector search on the same store.

    The query is encoded with the query tower once; the keyword search runs in a worker thread meanwhile.
    Each side returns ``candidates`` documents, which are fused:

    - ``fusion="rrf"``: ``score = weight / (60 + vector_rank) + (1 - weight) / (60 + keyword_rank)``
      (ranks from 1; a side that did not return the document adds 0);
    - ``fusion="weighted"``: each side's scores min-max normalised to [0, 1] over its candidates, then
      ``score = weight * vector + (1 - weight) * keyword``.

    ``weight`` is the vector side's share (1: vector only, 0: keyword only). Each document's ``score`` is the
    fused score (only comparable within one result list); ``meta["vector_score"]`` is its similarity to the
    query (cosine or dot product, as the store's) and ``meta["keyword_score"]`` its BM25 score, ``None`` where
    that side did not return it. With ``mmr_lambda`` set, the fused candidates are re-ordered by maximal
    marginal relevance (relevance = fused score, similarity = embedding cosine) and ``score`` stays the fused
    one. A query with no keyword match (only stopwords, say) gives the vector ranking.

    With ``native_hybrid=True`` the store's own engine runs both searches and fuses them in one request (on
    Weaviate its hybrid query: ``fusion="weighted"`` is relativeScoreFusion, ``"rrf"`` rankedFusion, ``weight``
    is ``alpha``); filters, the tenant and ``mmr_lambda`` apply as usual. The engine picks its own candidates, so
    ``rrf_k`` and ``exact`` must stay unset and ``candidates`` only sizes MMR's pool. It reports only the fused
    score: ``meta["vector_score"]`` is the similarity computed from the returned embedding and
    ``meta["keyword_score"]`` is ``None``. A document store without native hybrid search is refused at init.

    Usage::

        retriever = DualEncoderHybridRetriever(document_store=EmbeddedDocumentStore(path="my-index"), top_k=5)
        documents = retriever.run(query="Does vitamin D lower fracture risk?")["documents"]

    :param document_store: A store of this package with keyword search.
    :param encoder: The encoder definition the documents were embedded with (config, dict or model name).
    :param filters: Default Haystack-syntax filters (applied to both sides).
    :param top_k: Default number of documents to return.
    :param fusion: ``"rrf"`` or ``"weighted"``; ``None``: the fusion recorded with the model, else ``"weighted"``.
    :param weight: The vector side's share, from 0 to 1. ``None``: the weight recorded in the model folder
        (``hybrid_fusion.json``, written by ``dual-encoder train`` and ``dual-encoder tune-fusion``), else
        ``dual_encoder.hybrid.DEFAULT_WEIGHT``. :attr:`fusion_setting` shows the one used.
    :param candidates: Documents per side before fusing; ``None``: ``dual_encoder.hybrid.DEFAULT_CANDIDATES``.
    :param rrf_k: The reciprocal-rank constant (``"rrf"`` only).
    :param mmr_lambda: ``None`` for no MMR, else from 0 (diversity only) to 1 (relevance only).
    :param filter_policy: How run-time filters combine with ``filters`` (``replace`` or ``merge``).
    :param return_embedding: Include each document's embedding in the results.
    :param exact: Passed to the vector search: ``None`` lets the store choose.
    :param tenant: The tenant to search in a store with tenants; ``run(tenant=...)`` overrides it per query.
        ``None``: the document store's own tenant, if any. A store without tenants refuses one.
    :param native_hybrid: ``False`` (the default): our fusion of the store's keyword and vector searches (any store
        with keyword search). ``True``: the store's native hybrid search (``DualEncoderWeaviateDocumentStore``).
    """

    def __init__(
        self,
        document_store: ContractDocumentStore,
        encoder: EncoderConfig | dict[str, Any] | str = "all-MiniLM-L6-v2",
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        fusion: str | None = None,
        weight: float | None = None,
        candidates: int | None = None,
        rrf_k: int = RRF_K,
        mmr_lambda: float | None = None,
        filter_policy: FilterPolicy | str = FilterPolicy.REPLACE,
        return_embedding: bool = False,
        exact: bool | None = None,
        tenant: str | None = None,
        native_hybrid: bool = False,
    ) -> None:
        if not isinstance(document_store, ContractDocumentStore):
            raise TypeError(
                f"document_store must be a document store of this package (EmbeddedDocumentStore, "
                f"DualEncoderWeaviateDocumentStore), got {type(document_store).__name__}."
            )
        validate_hybrid(
            top_k,
            filters,
            DEFAULT_FUSION if fusion is None else fusion,
            DEFAULT_WEIGHT if weight is None else weight,
            candidates,
            mmr_lambda,
            rrf_k,
        )
        self.document_store = document_store
        self.encoder_config = EncoderConfig.coerce(encoder)
        self.encoder = DualEncoder(self.encoder_config)
        self.filters = filters
        self.top_k = top_k
        self.fusion = fusion
        self.weight = weight
        self.candidates = candidates
        self.rrf_k = rrf_k
        self.mmr_lambda = mmr_lambda
        self.filter_policy = FilterPolicy.from_str(filter_policy) if isinstance(filter_policy, str) else filter_policy
        self.return_embedding = return_embedding
        self.exact = exact
        self.tenant = tenant
        scoped_to_tenant(document_store.store, tenant)  # a store without tenants refuses one now, not at run time
        self.native_hybrid = native_hybrid
        if native_hybrid:
            check_native_hybrid_options(candidates, mmr_lambda, rrf_k, exact)
            if not getattr(document_store.store, "supports_native_hybrid_search", False):
                raise NativeHybridUnsupportedError(
                    f"native_hybrid=True needs a document store whose engine fuses keyword and vector search itself "
                    f"(DualEncoderWeaviateDocumentStore); {type(document_store).__name__} has none. Drop "
                    f"native_hybrid (or set it to False): the same fusion then runs here over the store's keyword "
                    f"and vector searches."
                )

    @property
    def fusion_setting(self) -> FusionSetting:
        """The fusion and weight searches run with, and their source: ``"given"`` (at init), ``"model"`` (the
        model folder's ``hybrid_fusion.json``) or ``"default"``. Read on every run, so a new record is used."""
        return resolve_fusion(self.encoder_config.model, self.fusion, self.weight)

    def warm_up(self) -> None:
        """Load the query tower (shared within the process) and reopen the document store if it was closed;
        idempotent. ``close`` releases the store only: the model stays loaded, shared within the process."""
        self.document_store.warm_up()
        self.encoder.load()
        _ = self.encoder.fingerprint

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            document_store=self.document_store.to_dict(),
            encoder=self.encoder_config.to_dict(),
            filters=self.filters,
            top_k=self.top_k,
            fusion=self.fusion,
            weight=self.weight,
            candidates=self.candidates,
            rrf_k=self.rrf_k,
            mmr_lambda=self.mmr_lambda,
            filter_policy=self.filter_policy.value,
            return_embedding=self.return_embedding,
            exact=self.exact,
            tenant=self.tenant,
            native_hybrid=self.native_hybrid,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderHybridRetriever:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        tenant: str | None = None,
    ) -> dict[str, list[Document]]:
        """The ``top_k`` best documents for ``query`` by fused keyword and vector search.

        :param query: The query text.
        :param filters: Run-time filters, combined with the default ones by ``filter_policy``.
        :param top_k: Number of documents; defaults to the ``top_k`` given at init.
        :param tenant: Search this tenant's documents only; defaults to the ``tenant`` given at init.
        :returns: ``documents``: best first, ``score`` fused, both component scores in ``meta``.
        :raises KeywordSearchUnsupportedError: the store has no keyword index (a ``NotImplementedError``).
        :raises ValueError: ``top_k`` < 1, or an encoder/dimension mismatch with the store.
        """
        store = scoped_to_tenant(self.document_store.store, self.tenant if tenant is None else tenant)
        top_k = self.top_k if top_k is None else top_k
        filters = apply_filter_policy(self.filter_policy, self.filters, filters)
        with haystack_errors():
            setting = self.fusion_setting
            validate_hybrid(
                top_k, filters, setting.fusion, setting.weight, self.candidates, self.mmr_lambda, self.rrf_k
            )
            if not self.native_hybrid:
                require_keyword_search(store)
            self.warm_up()
            search = native_hybrid_search if self.native_hybrid else hybrid_search
            result = search(
                self.encoder,
                store,
                query,
                top_k=top_k,
                filters=filters,
                fusion=setting.fusion,
                weight=setting.weight,
                candidates=self.candidates,
                rrf_k=self.rrf_k,
                mmr_lambda=self.mmr_lambda,
                exact=self.exact,
            )
        documents = []
        for hit in result.hits:
            document = record_to_document(hit.record, embedding=self.return_embedding, score=hit.score)
            meta = {**document.meta, VECTOR_SCORE_KEY: hit.vector_score, KEYWORD_SCORE_KEY: hit.keyword_score}
            documents.append(replace(document, meta=meta))
        if self.return_embedding:
            documents = self._with_embeddings(documents, store)
        return {"documents": documents}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        tenant: str | None = None,
    ) -> dict[str, list[Document]]:
        """Same as :meth:`run`, without blocking the event loop."""
        return await asyncio.to_thread(self.run, query, filters, top_k, tenant)

    @staticmethod
    def _with_embeddings(documents: list[Document], store: Store) -> list[Document]:
        """Keyword-only hits may come without their embedding: read those from the store searched."""
        missing = [doc.id for doc in documents if doc.embedding is None]
        if not missing:
            return documents
        stored = store.stored_versions(missing)
        out = []
        for doc in documents:
            record = stored.get(doc.id)
            if doc.embedding is None and record is not None and record.embedding is not None:
                doc = replace(doc, embedding=record.embedding.tolist())
            out.append(doc)
        return out
