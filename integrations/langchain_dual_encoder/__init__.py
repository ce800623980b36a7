"""LangChain adapters for dual encoders: the same encoders, stores and checks as the Haystack components."""

from langchain_dual_encoder.embeddings import DualEncoderEmbeddings
from langchain_dual_encoder.retriever import DualEncoderRetriever
from langchain_dual_encoder.vectorstore import DualEncoderVectorStore

__all__ = ["DualEncoderEmbeddings", "DualEncoderRetriever", "DualEncoderVectorStore"]
