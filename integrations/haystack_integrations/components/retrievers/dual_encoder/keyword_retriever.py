"""Haystack component: BM25 keyword retrieval from this project's stores (query text in, documents out)."""

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
from dual_encoder.hybrid import require_keyword_search
from dual_encoder.stores.contract import scoped_to_tenant


@component
class DualEncoderKeywordRetriever(StoreComponentLifecycle):
    """Top-k BM25 keyword retrieval from a store of this package that has a keyword index.

    Usage::

        retriever = DualEncoderKeywordRetriever(document_store=EmbeddedDocumentStore(path="my-index"), top_k=5)
        documents = retriever.run(query="vitamin D fracture risk")["documents"]

    Each document's ``score`` is its BM25 score (unbounded, higher is better; see ``dual_encoder.keyword``
    for the tokenisation). A query of only stopwords or punctuation matches nothing: no documents, no error.

    :param document_store: A store of this package with keyword search.
    :param filters: Default Haystack-syntax filters.
    :param top_k: Default number of documents to return; must be positive.
    :param filter_policy: How run-time filters combine with ``filters`` (``replace`` or ``merge``).
    :param return_embedding: Include each document's embedding in the results.
    :param tenant: The tenant to search in a store with tenants; ``run(tenant=...)`` overrides it per query.
        ``None``: the document store's own tenant, if any. A store without tenants refuses one.
    """

    def __init__(
        self,
        document_store: ContractDocumentStore,
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        filter_policy: FilterPolicy | str = FilterPolicy.REPLACE,
        return_embedding: bool = False,
        tenant: str | None = None,
    ) -> None:
        if not isinstance(document_store, ContractDocumentStore):
            raise TypeError(
                f"document_store must be a document store of this package (EmbeddedDocumentStore, "
                f"DualEncoderWeaviateDocumentStore), got {type(document_store).__name__}. For Haystack's in-memory "
                f"store use InMemoryBM25Retriever."
            )
        validate_top_k(top_k)
        self.document_store = document_store
        self.filters = filters
        self.top_k = top_k
        self.filter_policy = FilterPolicy.from_str(filter_policy) if isinstance(filter_policy, str) else filter_policy
        self.return_embedding = return_embedding
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
            tenant=self.tenant,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderKeywordRetriever:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        tenant: str | None = None,
    ) -> dict[str, list[Document]]:
        """The ``top_k`` documents with the highest BM25 score for ``query``, best first.

        :param query: The query text.
        :param filters: Run-time filters, combined with the default ones by ``filter_policy``.
        :param top_k: Number of documents; defaults to the ``top_k`` given at init.
        :param tenant: Search this tenant's documents only; defaults to the ``tenant`` given at init.
        :returns: ``documents``: best first, each with ``score`` (BM25); only documents sharing a word with
            the query.
        :raises KeywordSearchUnsupportedError: the store has no keyword index (a ``NotImplementedError``).
        :raises TenantsUnsupportedError: a tenant for a store without tenants (a ``ValueError``).
        """
        store = scoped_to_tenant(self.document_store.store, self.tenant if tenant is None else tenant)
        require_keyword_search(store)
        top_k = validate_top_k(self.top_k if top_k is None else top_k)
        filters = apply_filter_policy(self.filter_policy, self.filters, filters)
        with haystack_errors():
            result = store.keyword_search(query, top_k=top_k, filters=filters)
        return {"documents": result_to_documents(result, return_embedding=self.return_embedding)}

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
