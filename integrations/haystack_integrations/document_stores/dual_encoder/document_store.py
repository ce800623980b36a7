"""Haystack face of the embedded default store (:class:`dual_encoder.embedded.EmbeddedStore`)."""

from __future__ import annotations

from typing import Any

from haystack import default_from_dict, default_to_dict
from haystack_integrations.document_stores.dual_encoder.contract_adapter import ContractDocumentStore

from dual_encoder.embedded import open_embedded_store
from dual_encoder.errors import ConfigurationError
from dual_encoder.keyword import KeywordConfig, keyword_config_of


class EmbeddedDocumentStore(ContractDocumentStore):
    """An in-process document store with exact (and, for large stores, approximate) embedding search; no server.

    Embeddings are kept in one contiguous float32 matrix (so they come back as float32 values); filters are
    evaluated column by column, not document by document. With ``path`` set, every write is committed to an
    embedded database in that directory as it happens (a write costs what it writes, and a crash never leaves a
    half-written document). Stores opened on the same directory in one process share one instance; other
    processes may read the same directory while one writes (they see each committed write).

    Usage::

        store = EmbeddedDocumentStore(path="my-index")
        store.write_documents(embedded_documents)
        store.embedding_retrieval(query_embedding=[...], top_k=5)

    :param path: Directory to persist to; ``None`` keeps the store in memory only.
    :param similarity: ``"cosine"`` (scores are cosine similarities in [-1, 1]) or ``"dot"`` (raw dot
        products). ``None`` takes the similarity saved at ``path``, or cosine for a new store.
    :param approximate_threshold: From this many embedded documents on, searches that do not ask for exact
        results use the approximate index; below it every search is exact. ``None`` keeps the default
        (``dual_encoder.embedded.DEFAULT_APPROXIMATE_THRESHOLD``).
    :param keyword: How keyword (BM25) search tokenises and scores: a :class:`dual_encoder.keyword.KeywordConfig`
        or a dict of its fields (``stemmer``, ``stopwords``, ``pattern``, ``k1``, ``b``).
        ``None`` keeps the settings saved with the store (English stemming and stopwords for a new one); other
        settings are saved with the store and rebuild its keyword index.
    """

    def __init__(
        self,
        path: str | None = None,
        similarity: str | None = None,
        approximate_threshold: int | None = None,
        keyword: dict[str, Any] | KeywordConfig | None = None,
    ) -> None:
        if approximate_threshold is not None and (isinstance(approximate_threshold, bool) or approximate_threshold < 0):
            raise ConfigurationError(
                f"approximate_threshold must be a document count >= 0 (or None for the default), got "
                f"{approximate_threshold!r}."
            )
        self.path = path
        self.similarity = similarity
        self.approximate_threshold = approximate_threshold
        self.keyword = keyword_config_of(keyword)
        self.store = open_embedded_store(path, similarity=similarity, keyword=self.keyword)
        if approximate_threshold is not None:
            # The store is shared by every opener of the directory in this process; the last setting wins.
            self.store.approximate_threshold = approximate_threshold

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            path=self.path,
            similarity=self.similarity,
            approximate_threshold=self.approximate_threshold,
            keyword=None if self.keyword is None else self.keyword.to_dict(),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddedDocumentStore:
        return default_from_dict(cls, data)
