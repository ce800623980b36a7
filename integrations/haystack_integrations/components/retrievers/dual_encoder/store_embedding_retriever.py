"""Haystack component: embedding retrieval over this project's stores (embedded or Weaviate)."""

from __future__ import annotations

import asyncio
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.document_stores.types import FilterPolicy, apply_filter_policy
from haystack_integrations.document_stores.dual_encoder.contract_adapter import (
    ContractDocumentStore,
    StoreComponentLifecycle,
    haystack_errors,
    result_to_documents,
)

from dual_encoder.config import validate_top_k
from dual_encoder.stores import Store
from dual_encoder.stores.contract import scoped_to_tenant


@component
class StoreEmbeddingRetriever(StoreComponentLifecycle):
    """Top-k retrieval by query embedding from :class:`EmbeddedDocumentStore` (exact) or
    :class:`DualEncoderWeaviateDocumentStore` (HNSW), with scores on the same scale for both.

    Most users want :class:`DualEncoderRetriever`, which wraps this one and encodes the query text itself.

    Usage::

        retriever = StoreEmbeddingRetriever(document_store=EmbeddedDocumentStore(path="my-index"), top_k=5)
        documents = retriever.run(query_embedding=[0.1, ...])["documents"]

    :param document_store: The store to search: an ``EmbeddedDocumentStore`` or ``DualEncoderWeaviateDocumentStore``
        (any store of this package).
    :param filters: Default Haystack-syntax filters.
    :param top_k: Default number of documents to return; must be positive.
    :param filter_policy: How run-time filters combine with ``filters`` (``replace`` or ``merge``).
    :param return_embedding: Include each document's embedding in the results.
    :param exact: ``True`` scores every document, ``False`` uses the store's approximate index, ``None`` (default)
        lets the store choose (the embedded store goes approximate only from ``approximate_threshold`` documents;
        Weaviate always uses its vector index).
    :param tenant: The tenant to search in a store with tenants (a multi-tenant ``DualEncoderWeaviateDocumentStore``);
        ``run(tenant=...)`` overrides it per query. ``None``: the document store's own tenant, if any. A store
        without tenants refuses a tenant with ``TenantsUnsupportedError`` (a ``ValueError``).
    """

    def __init__(
        self,
        document_store: ContractDocumentStore,
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        filter_policy: FilterPolicy | str = FilterPolicy.REPLACE,
        return_embedding: bool = False,
        exact: bool | None = None,
        tenant: str | None = None,
    ) -> None:
        if not isinstance(document_store, ContractDocumentStore):
            raise TypeError(
                f"document_store must be an EmbeddedDocumentStore or DualEncoderWeaviateDocumentStore, got "
                f"{type(document_store).__name__}. For other stores, put their own embedding retriever inside "
                f"DualEncoderRetriever."
            )
        validate_top_k(top_k)
        self.document_store = document_store
        self.filters = filters
        self.top_k = top_k
        self.filter_policy = FilterPolicy.from_str(filter_policy) if isinstance(filter_policy, str) else filter_policy
        self.return_embedding = return_embedding
        self.exact = exact
        self.tenant = tenant
        scoped_to_tenant(document_store.store, tenant)  # a store without tenants refuses one now, not at run time

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            document_store=self.document_store.to_dict(),
            filters=self.filters,
            top_k=self.top_k,
            filter_policy=self.filter_policy.value,
            return_embedding=self.return_embedding,
            exact=self.exact,
            tenant=self.tenant,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreEmbeddingRetriever:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        return_embedding: bool | None = None,
        tenant: str | None = None,
    ) -> dict[str, list[Document]]:
        """Retrieve the documents closest to ``query_embedding``.

        :param query_embedding: The query vector (from the same encoder as the documents).
        :param filters: Run-time filters, combined with the default ones by ``filter_policy``.
        :param top_k: Number of documents to return; defaults to the ``top_k`` given at init.
        :param return_embedding: Override ``return_embedding`` for this call.
        :param tenant: Search this tenant's documents only; defaults to the ``tenant`` given at init.
        :returns: ``documents``: best first, each with ``score`` (cosine similarity or dot product).
        :raises TenantsUnsupportedError: a tenant for a store without tenants (a ``ValueError``).
        """
        arguments = self._search(query_embedding, filters, top_k, return_embedding)
        tenant = self.tenant if tenant is None else tenant
        if tenant is None:
            return {"documents": self.document_store.embedding_retrieval(**arguments)}
        return {"documents": self._retrieve_in(tenant, arguments)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        return_embedding: bool | None = None,
        tenant: str | None = None,
    ) -> dict[str, list[Document]]:
        """Same as :meth:`run`, without blocking the event loop."""
        arguments = self._search(query_embedding, filters, top_k, return_embedding)
        tenant = self.tenant if tenant is None else tenant
        if tenant is None:
            return {"documents": await self.document_store.embedding_retrieval_async(**arguments)}
        return {"documents": await asyncio.to_thread(self._retrieve_in, tenant, arguments)}

    def store_for(self, tenant: str | None = None) -> Store:
        """The core store a run with ``tenant`` searches: the document store's, bound to ``tenant`` or else to the
        ``tenant`` given at init (the document store's own when both are ``None``).

        :raises TenantsUnsupportedError: a tenant for a store without tenants.
        """
        return scoped_to_tenant(self.document_store.store, self.tenant if tenant is None else tenant)

    def _retrieve_in(self, tenant: str, arguments: dict[str, Any]) -> list[Document]:
        store = self.store_for(tenant)
        with haystack_errors():
            result = store.vector_search(
                arguments["query_embedding"],
                top_k=arguments["top_k"],
                filters=arguments["filters"],
                exact=arguments["exact"],
            )
        return result_to_documents(result, return_embedding=arguments["return_embedding"])

    def _search(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None,
        top_k: int | None,
        return_embedding: bool | None,
    ) -> dict[str, Any]:
        """The store call's arguments, with init defaults and the filter policy applied."""
        return {
            "query_embedding": query_embedding,
            "filters": apply_filter_policy(self.filter_policy, self.filters, filters),
            "top_k": validate_top_k(self.top_k if top_k is None else top_k),
            "return_embedding": self.return_embedding if return_embedding is None else return_embedding,
            "exact": self.exact,
        }
