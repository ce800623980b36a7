"""LangChain ``Embeddings`` over a dual encoder: queries through the query tower, documents through the
document tower, each with its own prompt.

Example::

    embeddings = DualEncoderEmbeddings({"model": "all-MiniLM-L6-v2", "query_prompt": "query: "})
    embeddings.embed_query("What causes tides?")            # 384 floats, from the query tower
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings

from dual_encoder.config import EncoderConfig
from dual_encoder.encoder import DualEncoder
from dual_encoder.fingerprint import EncoderFingerprint


class DualEncoderEmbeddings(Embeddings):
    """``embed_query`` uses the query tower and query prompt; ``embed_documents`` the document tower and
    document prompt. Built from the same encoder definition (or model folder) as the Haystack components, it
    shares their loaded model within the process.

    Example::

        embeddings = DualEncoderEmbeddings({"model": "all-MiniLM-L6-v2", "query_prompt": "query: "})
        vectors = embeddings.embed_documents(["Tides are caused by the Moon."])
        question = embeddings.embed_query("What causes tides?")

    :param encoder: An ``EncoderConfig``, its dict form, or a model name / folder. A model folder's named
        prompts are chosen there: ``{"model": ..., "query_prompt_name": "query", "document_prompt_name": "passage"}``.
    :param progress_bar: Show a progress bar while embedding documents.
    """

    def __init__(
        self, encoder: EncoderConfig | dict[str, Any] | str = "all-MiniLM-L6-v2", *, progress_bar: bool = False
    ) -> None:
        self.encoder = DualEncoder(encoder)
        self.progress_bar = progress_bar

    @property
    def fingerprint(self) -> EncoderFingerprint:
        return self.encoder.fingerprint

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Document vectors, in order. Empty, whitespace-only or non-text entries are refused by position."""
        return self.encoder.encode_documents(list(texts), progress_bar=self.progress_bar).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The query vector. Empty, whitespace-only or non-text queries are refused."""
        return self.encoder.encode_query(text).tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
