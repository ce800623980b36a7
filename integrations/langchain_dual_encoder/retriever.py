"""LangChain ``BaseRetriever`` over a :class:`DualEncoderVectorStore`."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from dual_encoder.config import validate_top_k


class DualEncoderRetriever(BaseRetriever):
    """First-stage retriever for LangChain chains: pure vector search (hybrid only with ``hybrid_alpha``),
    metadata filters, fingerprint check; each document's ``metadata["score"]`` holds its similarity.

    Example::

        retriever = DualEncoderRetriever(vectorstore=store, k=5, filter={"topic": "sea"})
        retriever.invoke("What causes tides?")
    """

    vectorstore: Any
    k: int = 4
    filter: dict[str, Any] | None = None
    hybrid_alpha: float | None = None

    def model_post_init(self, __context: Any) -> None:
        validate_top_k(self.k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self._with_scores(
            self.vectorstore.similarity_search_with_score(query, self.k, filter=self.filter, hybrid_alpha=self.hybrid_alpha)
        )

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        return self._with_scores(
            await self.vectorstore.asimilarity_search_with_score(
                query, self.k, filter=self.filter, hybrid_alpha=self.hybrid_alpha
            )
        )

    @staticmethod
    def _with_scores(found: list[tuple[Document, float]]) -> list[Document]:
        return [Document(id=d.id, page_content=d.page_content, metadata={**d.metadata, "score": s}) for d, s in found]
