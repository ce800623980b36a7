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
from langchain_dual_encoder.vectorstore import DualEncoderVectorStore, search_request

#: Options passed on only when given: each has a meaning only beside another (``hybrid_alpha``, ``mmr_lambda``),
#: so one given alone is refused rather than ignored.
_WHEN_GIVEN = ("hybrid_fusion", "hybrid_candidates", "mmr_lambda", "fetch_k")


class DualEncoderRetriever(BaseRetriever):
    """First-stage retriever for LangChain chains: pure vector search (hybrid only with ``hybrid_alpha``),
    metadata filters, fingerprint check. Each returned document's ``metadata["score"]`` holds its similarity (the
    fused score for a hybrid search, whose documents also hold ``"vector_score"`` and ``"keyword_score"``) and
    ``metadata["search_method"]`` how it was found (``"exact"``, ``"approximate"`` or ``"hybrid"``). Every option
    is checked when the retriever is built.

    :param vectorstore: The vector store to search.
    :param k: How many documents to return (a positive integer).
    :param filter: Haystack filter syntax, or a plain ``{"key": value}`` mapping (equality on each key).
    :param hybrid_alpha: For a store with keyword search: weight of vector (1.0) against BM25 (0.0); ``"auto"``:
        the weight recorded with the model; ``None``: vector search.
    :param hybrid_fusion: ``"weighted"`` or ``"rrf"`` (only with ``hybrid_alpha``; ``None``: the default or the
        model's recorded fusion).
    :param hybrid_candidates: Documents taken from each side before fusing (only with ``hybrid_alpha``).
    :param mmr_lambda: ``None``: ranked by relevance. From 0 (diversity only) to 1 (relevance only): ``k``
        documents picked by maximal marginal relevance among the ``fetch_k`` best (relevance: the similarity, or
        the fused score with ``hybrid_alpha``); ``score`` stays the similarity or fused score.
    :param fetch_k: MMR's candidates (only with ``mmr_lambda``).
    :param exact: ``True`` scores every document, ``False`` asks for the approximate index, ``None`` lets the
        store choose.
    :param tenant: Search only this tenant's documents, in a store with tenants (see
        ``DualEncoderVectorStore.with_tenant``); ``invoke(query, tenant=...)`` overrides it for one call.
    :raises ConfigurationError: a bad option, or one given without the option it belongs to.
    """

    vectorstore: DualEncoderVectorStore
    k: int = 4
    filter: dict[str, Any] | None = None
    # Plain str (not Literal) so that a bad value gets the vector store's ConfigurationError naming the choices.
    hybrid_alpha: float | str | None = None
    hybrid_fusion: str | None = None
    hybrid_candidates: int | None = None
    mmr_lambda: float | None = None
    fetch_k: int = 20
    exact: bool | None = None
    tenant: str | None = None

    def model_post_init(self, __context: Any) -> None:
        validate_top_k(self.k)
        search_request(type(self).__name__, self.k, self.filter, self._options(), mmr=True)
        if self.tenant is not None:
            self.vectorstore.with_tenant(self.tenant)  # a store without tenants refuses one now, not at the first query

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        tenant: str | None = None,
    ) -> list[Document]:
        """``k`` and ``tenant`` given to ``invoke`` override the retriever's own for that call, as LangChain's
        retrievers do with ``k``."""
        return self._with_scores(
            *self.vectorstore.similarity_search_with_method(query, self._top_k(k), self.filter, **self._options(tenant))
        )

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        tenant: str | None = None,
    ) -> list[Document]:
        return self._with_scores(
            *await self.vectorstore.asimilarity_search_with_method(
                query, self._top_k(k), self.filter, **self._options(tenant)
            )
        )

    def _options(self, tenant: str | None = None) -> dict[str, Any]:
        options: dict[str, Any] = {"exact": self.exact, "hybrid_alpha": self.hybrid_alpha}
        options["tenant"] = self.tenant if tenant is None else tenant
        for name in _WHEN_GIVEN:
            if name in self.model_fields_set or (name == "fetch_k" and self.mmr_lambda is not None):
                options[name] = getattr(self, name)
        return options

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
