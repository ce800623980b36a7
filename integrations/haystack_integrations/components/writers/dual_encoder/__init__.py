from dual_encoder._optional import requires_extra

with requires_extra("haystack", package="haystack-ai", extra="haystack", needed_by=__name__):
    from haystack_integrations.components.writers.dual_encoder.document_writer import DualEncoderDocumentWriter

__all__ = ["DualEncoderDocumentWriter"]
