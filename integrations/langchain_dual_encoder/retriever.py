"""LangChain ``BaseRetriever`` over a :class:`~langchain_dual_encoder.DualEncoderVectorStore`.

Example::

    vectorstore = DualEncoderVectorStore.embedded(DualEncoderEmbeddings("all-MiniLM-L6-v2"), path="my-index")
    retriever = DualEncoderRetriever(vectorstore=vectorstore, k=5, filter={"topic": "sea"})
    for document in retriever.invoke("What causes tides?"):
        print(document.id, document.metadata["score"], document.metadata["search_method"])
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from dual_encoder.config import validate_top_k
from langchain_dual_encoder.vectorstore import DualEncoderVectorStore


class DualEncoderRetriever(BaseRetriever):
    """First-stage retriever for LangChain chains: pure vector search (hybrid only with ``hybrid_alpha``),
    metadata filters, fingerprint check. Each returned document's ``metadata["score"]`` holds its similarity
    and ``metadata["search_method"]`` how it was found (``"exact"``, ``"approximate"`` or ``"hybrid"``).

    :param vectorstore: The vector store to search.
    :param k: How many documents to return (a positive integer).
    :param filter: Haystack filter syntax, or a plain ``{"key": value}`` mapping (equality on each key).
    :param hybrid_alpha: For a store with keyword search: weight of vector (1.0) against BM25 (0.0).
    :param exact: ``True`` scores every document, ``False`` asks for the approximate index, ``None`` lets the
        store choose.
    """

    vectorstore: DualEncoderVectorStore
    k: int = 4
    filter: dict[str, Any] | None = None
    hybrid_alpha: float | None = None
    exact: bool | None = None

    def model_post_init(self, __context: Any) -> None:
        validate_top_k(self.k)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        """``k`` given to ``invoke`` overrides the retriever's own for that call, as LangChain's retrievers do."""
        return self._with_scores(
            *self.vectorstore.similarity_search_with_method(
                query, self._top_k(k), self.filter, self.hybrid_alpha, exact=self.exact
            )
        )

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return self._with_scores(
            *await self.vectorstore.asimilarity_search_with_method(
                query, self._top_k(k), self.filter, self.hybrid_alpha, exact=self.exact
            )
        )

    def _top_k(self, k: int | None) -> int:
        if k is None:
            return self.k
        validate_top_k(k)
        return k

    @staticmethod
    def _with_scores(found: list[tuple[Document, float]], method: str) -> list[Document]:
        return [
            Document(id=d.id, page_content=d.page_content, metadata={**d.metadata, "score": s, "search_method": method})
            for d, s in found
        ]
