from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore

__all__ = ["DualEncoderWeaviateDocumentStore", "EmbeddedDocumentStore"]


def __getattr__(name: str) -> type:
    # Weaviate's client is imported only by those who use it.
    if name == "DualEncoderWeaviateDocumentStore":
        from haystack_integrations.document_stores.dual_encoder.weaviate_store import DualEncoderWeaviateDocumentStore

        return DualEncoderWeaviateDocumentStore
    raise AttributeError(name)
