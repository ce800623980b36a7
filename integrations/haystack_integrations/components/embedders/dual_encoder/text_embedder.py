"""Haystack component: a query string in, a query-tower embedding out."""

from __future__ import annotations

import asyncio
from typing import Any

from haystack import component, default_from_dict, default_to_dict

from dual_encoder.config import EncoderConfig
from dual_encoder.encoder import DualEncoder


@component
class DualEncoderTextEmbedder:
    """Embeds a query with the **query tower** and query prompt of a dual encoder.

    Usage::

        embedder = DualEncoderTextEmbedder(encoder={"model": "all-MiniLM-L6-v2"})
        embedding = embedder.run(text="What causes tides?")["embedding"]

    :param encoder: The encoder definition (an ``EncoderConfig``, its dict form, or a model name); the same
        one the documents were embedded with. A model folder's named prompts are chosen there
        (``query_prompt_name``, ``document_prompt_name``), and serialised with it.
    """

    def __init__(self, encoder: EncoderConfig | dict[str, Any] | str = "all-MiniLM-L6-v2") -> None:
        self.encoder_config = EncoderConfig.coerce(encoder)
        self.encoder = DualEncoder(self.encoder_config)

    def warm_up(self) -> None:
        """Load the model (shared within the process); idempotent."""
        self.encoder.load()
        _ = self.encoder.fingerprint

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, encoder=self.encoder_config.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderTextEmbedder:
        return default_from_dict(cls, data)

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, list[float]]:
        """Embed one query.

        :param text: The query; empty or whitespace-only text is refused.
        :returns: ``embedding``: the query vector as a list of floats.
        :raises ValueError: ``text`` is empty, whitespace-only or not a string.
        """
        self.warm_up()
        return {"embedding": self.encoder.encode_query(text).tolist()}

    @component.output_types(embedding=list[float])
    async def run_async(self, text: str) -> dict[str, list[float]]:
        """Same as :meth:`run`, without blocking the event loop."""
        return await asyncio.to_thread(self.run, text)
