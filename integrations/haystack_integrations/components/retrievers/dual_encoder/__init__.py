from dual_encoder._optional import requires_extra

with requires_extra("haystack", package="haystack-ai", extra="haystack", needed_by=__name__):
    from haystack_integrations.components.retrievers.dual_encoder.dual_encoder_retriever import DualEncoderRetriever
    from haystack_integrations.components.retrievers.dual_encoder.hybrid_retriever import DualEncoderHybridRetriever
    from haystack_integrations.components.retrievers.dual_encoder.keyword_retriever import DualEncoderKeywordRetriever
    from haystack_integrations.components.retrievers.dual_encoder.store_embedding_retriever import (
        StoreEmbeddingRetriever,
    )

__all__ = [
    "DualEncoderHybridRetriever",
    "DualEncoderKeywordRetriever",
    "DualEncoderRetriever",
    "StoreEmbeddingRetriever",
]
