from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore

__all__ = ["EmbeddedDocumentStore"]
