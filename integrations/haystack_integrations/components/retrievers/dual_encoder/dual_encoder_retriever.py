"""Haystack component: a query string in, documents out, through the query tower of a dual encoder."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.components.retrievers.types import EmbeddingRetriever
from haystack.core.serialization import component_to_dict
from haystack_integrations.components.retrievers.dual_encoder.store_embedding_retriever import StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder.contract_adapter import ContractDocumentStore, haystack_errors

from dual_encoder.config import EncoderConfig, validate_top_k
from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY
from dual_encoder.stores import Store, validate_search, verify_hits

logger = logging.getLogger(__name__)


@component
class DualEncoderRetriever:
    """First-stage retriever: encodes the query with the query tower, searches any embedding retriever.

    Before searching, it checks the store's recorded encoder fingerprint, dimension and similarity (for
    stores that record them, like :class:`EmbeddedDocumentStore`). After searching, it checks the
    fingerprint every returned document carries. A mismatch raises ``EncoderMismatchError`` (a
    ``ValueError``) naming both sides instead of returning documents from another embedding space.

    Usage::

        store = EmbeddedDocumentStore(path="my-index")
        retriever = DualEncoderRetriever(
            retriever=StoreEmbeddingRetriever(document_store=store),
            encoder={"model": "all-MiniLM-L6-v2"},
            top_k=5,
        )
        documents = retriever.run(query="What causes tides?")["documents"]

    :param retriever: Any Haystack embedding retriever (``run(query_embedding, filters, top_k)``), e.g.
        ``StoreEmbeddingRetriever`` or ``InMemoryEmbeddingRetriever``.
    :param encoder: The encoder definition the documents were embedded with (config, dict or model name).
    :param top_k: Default number of documents; ``None`` uses the inner retriever's default.
    :param tenant: The tenant to search (``run(tenant=...)`` overrides it per query); needs a
        ``StoreEmbeddingRetriever`` inside over a store with tenants. ``None``: the inner retriever's own tenant.
    """

    def __init__(
        self,
        retriever: EmbeddingRetriever,
        encoder: EncoderConfig | dict[str, Any] | str = "all-MiniLM-L6-v2",
        top_k: int | None = None,
        tenant: str | None = None,
    ) -> None:
        if top_k is not None:
            validate_top_k(top_k)
        self.retriever = retriever
        self.encoder_config = EncoderConfig.coerce(encoder)
        self.top_k = top_k
        self.tenant = tenant
        if tenant is not None:
            self._tenant_store(tenant)  # a retriever or store without tenants refuses one now, not at run time
        self.encoder = DualEncoder(self.encoder_config)
        self._warned_unverified = False

    def warm_up(self) -> None:
        """Load the query tower (shared within the process) and warm up the inner retriever; idempotent."""
        self.encoder.load()
        _ = self.encoder.fingerprint
        if hasattr(self.retriever, "warm_up"):
            self.retriever.warm_up()

    def close(self) -> None:
        """Close the inner retriever (and so its document store's connection or files), if it can be closed;
        ``Pipeline.close()`` calls this. The model stays loaded: it is shared within the process."""
        if hasattr(self.retriever, "close"):
            self.retriever.close()

    async def close_async(self) -> None:
        """:meth:`close` without blocking the event loop, through the inner retriever's ``close_async`` if any."""
        if hasattr(self.retriever, "close_async"):
            await self.retriever.close_async()
        elif hasattr(self.retriever, "close"):
            await asyncio.to_thread(self.retriever.close)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            retriever=component_to_dict(obj=self.retriever, name="retriever"),
            encoder=self.encoder_config.to_dict(),
            top_k=self.top_k,
            tenant=self.tenant,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderRetriever:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        tenant: str | None = None,
    ) -> dict[str, list[Document]]:
        """Retrieve the documents closest to ``query``.

        :param query: The question; empty or whitespace-only queries are refused.
        :param filters: Haystack-syntax metadata filters, validated before anything runs.
        :param top_k: Number of documents; defaults to ``top_k`` from init, then the inner retriever's.
        :param tenant: Search this tenant's documents only; defaults to ``tenant`` from init, then the inner
            retriever's.
        :returns: ``documents``: best first, each with ``score``.
        :raises ValueError: Empty query, ``top_k`` < 1, an encoder/dimension mismatch with the store, or a tenant
            for a store (or inner retriever) without tenants.
        :raises FilterError: Malformed filters or unknown operators.
        """
        top_k, tenant = self._prepare(filters, top_k, tenant)
        query_embedding = self.encoder.encode_query(query).tolist()
        arguments = self._arguments(query_embedding, filters, top_k, tenant)
        documents = self.retriever.run(**arguments)["documents"]
        return {"documents": self._verified(documents)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        tenant: str | None = None,
    ) -> dict[str, list[Document]]:
        """Same as :meth:`run`; the inner retriever's ``run_async`` is used when it has one."""
        top_k, tenant = await asyncio.to_thread(self._prepare, filters, top_k, tenant)
        query_embedding = (await asyncio.to_thread(self.encoder.encode_query, query)).tolist()
        arguments = self._arguments(query_embedding, filters, top_k, tenant)
        if hasattr(self.retriever, "run_async"):
            result = await self.retriever.run_async(**arguments)
        else:
            result = await asyncio.to_thread(self.retriever.run, **arguments)
        return {"documents": self._verified(result["documents"])}

    def _prepare(
        self, filters: dict[str, Any] | None, top_k: int | None, tenant: str | None
    ) -> tuple[int | None, str | None]:
        top_k = self.top_k if top_k is None else top_k
        tenant = self.tenant if tenant is None else tenant
        with haystack_errors():
            validate_search(1 if top_k is None else top_k, filters)
        self.warm_up()
        if tenant is not None or isinstance(self.retriever, StoreEmbeddingRetriever):
            # The store the inner retriever will search: bound to the run's tenant, else the inner one's.
            self._tenant_store(tenant).check_encoder(self.encoder.fingerprint)
            return top_k, tenant
        # Haystack's own retrievers keep the store as `document_store` or `_document_store`; only this package's
        # stores record their embedding space, the others are checked document by document afterwards.
        store = getattr(self.retriever, "document_store", None) or getattr(self.retriever, "_document_store", None)
        if isinstance(store, ContractDocumentStore):
            store.check_encoder(self.encoder.fingerprint)
        return top_k, tenant

    def _tenant_store(self, tenant: str | None) -> Store:
        if not isinstance(self.retriever, StoreEmbeddingRetriever):
            raise ConfigurationError(
                f"A tenant ({tenant!r}) needs a StoreEmbeddingRetriever inside DualEncoderRetriever, over a store with "
                f"tenants; {type(self.retriever).__name__} takes none. Put StoreEmbeddingRetriever(document_store=...) "
                f"inside, or drop the tenant."
            )
        return self.retriever.store_for(tenant)

    @staticmethod
    def _arguments(
        query_embedding: list[float], filters: dict[str, Any] | None, top_k: int | None, tenant: str | None
    ) -> dict[str, Any]:
        """The inner retriever's run arguments; ``top_k`` and ``tenant`` only when set, so any embedding retriever
        takes them."""
        arguments: dict[str, Any] = {"query_embedding": query_embedding, "filters": filters}
        if top_k is not None:
            arguments["top_k"] = top_k
        if tenant is not None:
            arguments["tenant"] = tenant
        return arguments

    def _verified(self, documents: list[Document]) -> list[Document]:
        unverified = verify_hits(
            self.encoder.fingerprint,
            (doc.meta.get(DOCUMENT_SPACE_META_KEY) for doc in documents),
            where="the retrieved documents",
        )
        if unverified and not self._warned_unverified:
            self._warned_unverified = True
            logger.warning(
                "%d retrieved document(s) carry no encoder fingerprint, so this retriever cannot verify they were "
                "embedded with its encoder. Embed documents with DualEncoderDocumentEmbedder to enable the check.",
                unverified,
            )
        return documents
