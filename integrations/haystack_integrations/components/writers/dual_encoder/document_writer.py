"""Haystack component: write documents into this project's stores, into one tenant per run if asked."""

from __future__ import annotations

import asyncio
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.document_stores.dual_encoder.contract_adapter import (
    _POLICIES,
    ContractDocumentStore,
    StoreComponentLifecycle,
    documents_to_records,
    haystack_errors,
)

from dual_encoder.stores.contract import scoped_to_tenant


@component
class DualEncoderDocumentWriter(StoreComponentLifecycle):
    """Haystack's ``DocumentWriter`` for this package's stores, with a tenant per write.

    Without a tenant it writes exactly as ``DocumentWriter`` does (``document_store.write_documents``). With one
    (at init, or per run) it writes into that tenant of a store with tenants, through the same checks: the
    encoder fingerprint guard, the unchanged-document skip and the duplicate policy. Whether a missing tenant is
    created by the write or refused is the store's setting (``auto_create_tenants`` of a multi-tenant
    ``DualEncoderWeaviateDocumentStore``). A store without tenants (``EmbeddedDocumentStore``) refuses a tenant with
    ``TenantsUnsupportedError`` (a ``ValueError``): at init when given at init.

    Usage::

        store = DualEncoderWeaviateDocumentStore(collection_name="Articles", multi_tenancy=True)
        writer = DualEncoderDocumentWriter(document_store=store, policy=DuplicatePolicy.OVERWRITE)
        embedded = DualEncoderDocumentEmbedder().run(documents=documents)["documents"]
        writer.run(documents=embedded, tenant="customer-a")["documents_written"]

    :param document_store: A document store of this package (``EmbeddedDocumentStore``,
        ``DualEncoderWeaviateDocumentStore``).
    :param policy: What a write does with an id that is already stored (``NONE`` means ``FAIL``).
    :param tenant: The tenant every run writes into unless the run names another; ``None``: the document
        store's own tenant, if any.
    """

    def __init__(
        self,
        document_store: ContractDocumentStore,
        policy: DuplicatePolicy | str = DuplicatePolicy.NONE,
        tenant: str | None = None,
    ) -> None:
        if not isinstance(document_store, ContractDocumentStore):
            raise TypeError(
                f"document_store must be a document store of this package (EmbeddedDocumentStore, "
                f"DualEncoderWeaviateDocumentStore), got {type(document_store).__name__}. For other stores use "
                f"Haystack's DocumentWriter."
            )
        self.document_store = document_store
        self.policy = _as_policy(policy)
        self.tenant = tenant
        scoped_to_tenant(document_store.store, tenant)  # a store without tenants refuses one now, not at run time

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, document_store=self.document_store.to_dict(), policy=self.policy.name, tenant=self.tenant
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderDocumentWriter:
        parameters = data.get("init_parameters", {})
        if isinstance(parameters.get("policy"), str):
            parameters["policy"] = _as_policy(parameters["policy"])
        return default_from_dict(cls, data)

    @component.output_types(documents_written=int)
    def run(
        self, documents: list[Document], policy: DuplicatePolicy | None = None, tenant: str | None = None
    ) -> dict[str, int]:
        """Write ``documents``; nothing is written when any document is refused.

        :param documents: Documents, usually embedded by ``DualEncoderDocumentEmbedder``.
        :param policy: Overrides the ``policy`` given at init for this run.
        :param tenant: Write into this tenant; overrides the ``tenant`` given at init for this run.
        :returns: ``documents_written``: how many documents the store now holds as given (documents stored exactly
            as given count, without being sent again; documents ``SKIP`` kept do not).
        :raises DuplicateDocumentError: an id is already stored and the policy is ``NONE`` or ``FAIL``.
        :raises ValueError: documents from another encoder or dimension than the store's (``EncoderMismatchError``),
            or a tenant for a store without tenants (``TenantsUnsupportedError``).
        """
        policy = self.policy if policy is None else _as_policy(policy)
        tenant = self.tenant if tenant is None else tenant
        if tenant is None:
            return {"documents_written": self.document_store.write_documents(documents, policy=policy)}
        store = scoped_to_tenant(self.document_store.store, tenant)
        records = documents_to_records(documents)
        with haystack_errors():
            summary = store.upsert(records, policy=_POLICIES[policy])
        return {"documents_written": summary.stored}

    @component.output_types(documents_written=int)
    async def run_async(
        self, documents: list[Document], policy: DuplicatePolicy | None = None, tenant: str | None = None
    ) -> dict[str, int]:
        """Same as :meth:`run`, without blocking the event loop."""
        return await asyncio.to_thread(self.run, documents, policy, tenant)


def _as_policy(policy: DuplicatePolicy | str) -> DuplicatePolicy:
    """A ``DuplicatePolicy`` from itself, its name (``"OVERWRITE"``, as pipeline files hold it) or its value."""
    if isinstance(policy, DuplicatePolicy):
        return policy
    if isinstance(policy, str):
        for candidate in DuplicatePolicy:
            if policy.lower() in (candidate.name.lower(), candidate.value):
                return candidate
    names = ", ".join(candidate.name for candidate in DuplicatePolicy)
    raise ValueError(f"policy must be a DuplicatePolicy or one of {names}, got {policy!r}.")
