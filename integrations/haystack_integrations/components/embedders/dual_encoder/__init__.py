from dual_encoder._optional import requires_extra

with requires_extra("haystack", package="haystack-ai", extra="haystack", needed_by=__name__):
    from haystack_integrations.components.embedders.dual_encoder.document_embedder import DualEncoderDocumentEmbedder
    from haystack_integrations.components.embedders.dual_encoder.text_embedder import DualEncoderTextEmbedder

__all__ = ["DualEncoderDocumentEmbedder", "DualEncoderTextEmbedder"]
