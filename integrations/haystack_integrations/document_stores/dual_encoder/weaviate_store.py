"""Haystack face of a Weaviate collection set up for one dual encoder (over :class:`WeaviateStore`).

Everything Weaviate is in :mod:`dual_encoder_weaviate`; this class only adds Haystack's document types,
serialization with env-var ``Secret`` s, and the async methods (which run the same code as the sync ones).

Example (``WEAVIATE_URL=http://127.0.0.1:8080``, optional ``WEAVIATE_API_KEY`` and ``WEAVIATE_GRPC_PORT``)::

    store = DualEncoderWeaviateDocumentStore(collection_name="Articles", meta_fields={"year": "int"})
    store.write_documents(embedded_documents, policy=DuplicatePolicy.OVERWRITE)
    store.embedding_retrieval(query_embedding, top_k=5)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dual_encoder_weaviate.collection import CollectionSettings
from dual_encoder_weaviate.errors import PartialWriteError, WeaviateUnavailableError
from dual_encoder_weaviate.store import WeaviateStore
from haystack import Document, default_from_dict, default_to_dict
from haystack.document_stores.types import DuplicatePolicy
from haystack.utils.auth import Secret, deserialize_secrets_inplace
from haystack_integrations.document_stores.dual_encoder.contract_adapter import (
    _POLICIES,
    ContractDocumentStore,
    documents_to_records,
    haystack_errors,
    result_to_documents,
)

__all__ = ["DualEncoderWeaviateDocumentStore", "PartialWriteError", "WeaviateUnavailableError"]


class DualEncoderWeaviateDocumentStore(ContractDocumentStore):
    """A Weaviate collection created explicitly for a dual encoder, as a Haystack document store.

    The collection has no vectorizer, an HNSW index whose distance matches ``similarity``, declared
    properties for ``meta_fields`` and for the fingerprint meta, and records the encoder fingerprint,
    dimension and similarity of its first embedded write in its description. Later writes from another
    encoder, and retrievers with another query tower, are refused. Scores are the similarity itself (not
    Weaviate's certainty), the same scale as :class:`EmbeddedDocumentStore`, sync or async.

    :param url: Weaviate's REST URL; a ``Secret`` read from ``WEAVIATE_URL`` by default, so it is never
        written into a serialized pipeline.
    :param collection_name: Collection to use (created when missing); Weaviate capitalises the first letter.
    :param similarity: ``"cosine"`` or ``"dot"``; must match the encoder.
    :param meta_fields: Meta fields to declare, name to Weaviate data type (``text``, ``int``, ``number``,
        ``boolean``, ``date`` or a ``[]`` list of one). Declared types make range filters reliable.
    :param api_key: API key; a ``Secret`` read from ``WEAVIATE_API_KEY`` when that variable is set.
    :param grpc_port: gRPC port; ``None`` reads ``WEAVIATE_GRPC_PORT``, else 50051.
    :param timeout: Seconds to wait for Weaviate to answer a connection attempt (queries may take 3x,
        inserts 6x); an unreachable server fails within that bound.
    :param batch_size: Documents per write request.
    :param consistency_level: ``"ONE"``, ``"QUORUM"`` or ``"ALL"`` for every read and write (``None``: the
        server's default, QUORUM).
    :param tenant: With a multi-tenant collection, the tenant this store reads and writes (:meth:`with_tenant`
        gives the same store bound to another tenant).
    :param replication_factor: Copies of every document, each on another node (new collections only, as are
        the parameters below).
    :param async_replication: Timing of the repair that catches up a node that was down, in milliseconds:
        ``frequency_ms``, ``frequency_while_propagating_ms``, ``propagation_delay_ms``.
    :param shards: Desired shard count (``None``: one per node).
    :param multi_tenancy: One shard per tenant; every read and write names its tenant.
    :param auto_create_tenants: With ``multi_tenancy``, a write to a missing tenant creates it (else refused).
    :param vector_index: ``"hnsw"``, ``"flat"`` or ``"dynamic"``; ``vector_index_options`` its settings
        (``ef``, ``ef_construction``, ``max_connections``, ``threshold``...).
    :param compression: ``None``, ``"rq"``, ``"bq"``, ``"pq"`` or ``"sq"``; ``compression_options`` its
        settings (``bits``, ``rescore_limit``, ``segments``...).

    Several nodes of one cluster: ``WEAVIATE_URL=http://127.0.0.1:8080,http://127.0.0.1:8081`` with
    ``grpc_port=[50051, 50052]`` (or ``WEAVIATE_GRPC_PORT=50051,50052``); a call goes to the next node when
    the one in use goes away.
    """

    store: WeaviateStore

    def __init__(
        self,
        *,
        url: Secret | str = Secret.from_env_var("WEAVIATE_URL"),
        collection_name: str = "DualEncoderDocuments",
        similarity: str = "cosine",
        meta_fields: dict[str, str] | None = None,
        api_key: Secret | None = Secret.from_env_var("WEAVIATE_API_KEY", strict=False),
        grpc_port: int | list[int] | None = None,
        timeout: float = 10.0,
        batch_size: int = 500,
        consistency_level: str | None = None,
        tenant: str | None = None,
        replication_factor: int = 1,
        async_replication: dict[str, int] | None = None,
        shards: int | None = None,
        multi_tenancy: bool = False,
        auto_create_tenants: bool = True,
        vector_index: str = "hnsw",
        vector_index_options: dict[str, Any] | None = None,
        compression: str | None = None,
        compression_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.collection_name = collection_name
        self.similarity = similarity
        self.meta_fields = dict(meta_fields or {})
        self.api_key = api_key
        self.grpc_port = grpc_port
        self.timeout = timeout
        self.batch_size = batch_size
        self.consistency_level = consistency_level
        self.tenant = tenant
        settings = CollectionSettings(
            replication_factor=replication_factor,
            async_replication=async_replication,
            shards=shards,
            multi_tenancy=multi_tenancy,
            auto_create_tenants=auto_create_tenants,
            vector_index=vector_index,
            vector_index_options=vector_index_options,
            compression=compression,
            compression_options=compression_options,
        )
        self.settings = settings
        #: Documents that ``write_documents`` found stored exactly as given and did not send again (a count since
        #: this store object was created).
        self.unchanged_not_rewritten = 0
        # The URL and key are resolved on first use, so a pipeline loads without them.
        self.store = WeaviateStore(
            url=_resolver(url),
            collection=collection_name,
            similarity=similarity,
            meta_fields=self.meta_fields,
            api_key=_resolver(api_key) if api_key is not None else None,
            api_key_env=None,
            grpc_port=grpc_port,
            timeout=timeout,
            batch_size=batch_size,
            consistency_level=consistency_level,
            tenant=tenant,
            settings=settings,
        )

    # ---------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            url=self.url.to_dict() if isinstance(self.url, Secret) else self.url,
            collection_name=self.collection_name,
            similarity=self.similarity,
            meta_fields=dict(self.meta_fields),  # a copy: YAML would alias a dict two components share
            api_key=self.api_key.to_dict() if self.api_key is not None else None,
            grpc_port=self.grpc_port,
            timeout=self.timeout,
            batch_size=self.batch_size,
            consistency_level=self.consistency_level,
            tenant=self.tenant,
            **self.settings.to_dict(),
        )

    def with_tenant(self, tenant: str) -> DualEncoderWeaviateDocumentStore:
        """The same store (same collection and settings) bound to ``tenant``."""
        data = self.to_dict()
        data["init_parameters"]["tenant"] = tenant
        return type(self).from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderWeaviateDocumentStore:
        parameters = data.get("init_parameters", {})
        if isinstance(parameters.get("url"), dict):
            deserialize_secrets_inplace(parameters, keys=["url"])
        deserialize_secrets_inplace(parameters, keys=["api_key"])
        return default_from_dict(cls, data)

    # ------------------------------------------------------------------------------------ Weaviate access
    @property
    def client(self) -> Any:
        """The connected ``weaviate.WeaviateClient`` (connects on first use)."""
        return self.store.client

    @property
    def collection(self) -> Any:
        """The ``weaviate.collections.Collection`` behind this store."""
        return self.store.collection

    # --------------------------------------------------------------------------------------- writing
    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Write documents after checking their encoder fingerprints and dimensions (``NONE`` means ``FAIL``).

        Objects already stored exactly as given are not sent again (they count as written). Refused objects raise
        ``PartialWriteError`` naming every id that was not written and why; a lost server raises
        ``WeaviateUnavailableError`` with the unconfirmed ids. Writes are idempotent: the same id is always the
        same Weaviate object.
        """
        records = documents_to_records(documents)
        with haystack_errors():
            summary = self.store.upsert(records, policy=_POLICIES[DuplicatePolicy(policy)])
        self.unchanged_not_rewritten += summary.unchanged
        return summary.stored

    async def write_documents_async(
        self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE
    ) -> int:
        return await asyncio.to_thread(self.write_documents, documents, policy)

    # ------------------------------------------------------------------------------------- retrieval
    def hybrid_retrieval(
        self,
        query: str,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        alpha: float = 0.7,
    ) -> list[Document]:
        """Weaviate's hybrid search (``alpha`` 1.0 = vector only, 0.0 = BM25 only), only when asked for.

        Scores are Weaviate's fused scores, not similarities.
        """
        with haystack_errors():
            result = self.store.hybrid_search(query, query_embedding, top_k=top_k, filters=filters, alpha=alpha)
        return result_to_documents(result, return_embedding=False)

    async def hybrid_retrieval_async(
        self,
        query: str,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        alpha: float = 0.7,
    ) -> list[Document]:
        return await asyncio.to_thread(self.hybrid_retrieval, query, query_embedding, filters, top_k, alpha)

    def keyword_retrieval(self, query: str, filters: dict[str, Any] | None = None, top_k: int = 10) -> list[Document]:
        """Weaviate's BM25 over ``content``; scores are BM25 scores."""
        with haystack_errors():
            result = self.store.keyword_search(query, top_k=top_k, filters=filters)
        return result_to_documents(result, return_embedding=False)


def _resolver(value: Secret | str | None) -> Callable[[], str | None] | str | None:
    """A string as is; a ``Secret`` as a function resolving it on first use (``None`` when its variable is unset,
    so the store's own message says which variable to set)."""
    if not isinstance(value, Secret):
        return value

    def resolve() -> str | None:
        try:
            return value.resolve_value()
        except ValueError:
            return None

    return resolve
