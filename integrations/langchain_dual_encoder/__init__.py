"""LangChain adapters for dual encoders: the same encoders, stores and checks as the Haystack components,
without importing Haystack.

Example::

    from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderRetriever, DualEncoderVectorStore

    vectorstore = DualEncoderVectorStore.embedded(DualEncoderEmbeddings("all-MiniLM-L6-v2"), path="my-index")
    vectorstore.add_texts(["Tides are caused by the Moon."], metadatas=[{"topic": "sea"}], ids=["tides"])
    DualEncoderRetriever(vectorstore=vectorstore, k=5).invoke("What causes tides?")
"""

from dual_encoder._optional import requires_extra

with requires_extra("langchain_core", package="langchain-core", extra="langchain", needed_by=__name__):
    from langchain_dual_encoder.embeddings import DualEncoderEmbeddings
    from langchain_dual_encoder.retriever import DualEncoderRetriever
    from langchain_dual_encoder.vectorstore import DualEncoderVectorStore, as_store

__all__ = ["DualEncoderEmbeddings", "DualEncoderRetriever", "DualEncoderVectorStore", "as_store"]
