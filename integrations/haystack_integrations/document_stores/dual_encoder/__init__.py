from dual_encoder._optional import requires_extra

with requires_extra("haystack", package="haystack-ai", extra="haystack", needed_by=__name__):
    from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore

__all__ = ["DualEncoderWeaviateDocumentStore", "EmbeddedDocumentStore"]


def __getattr__(name: str) -> type:
    # Weaviate's client is imported only by those who use it.
    if name == "DualEncoderWeaviateDocumentStore":
        needed_by = f"{__name__}.{name}"
        with requires_extra("weaviate", package="weaviate-client", extra="weaviate", needed_by=needed_by):
            from haystack_integrations.document_stores.dual_encoder.weaviate_store import (
                DualEncoderWeaviateDocumentStore,
            )

        return DualEncoderWeaviateDocumentStore
    raise AttributeError(name)
