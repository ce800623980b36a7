"""Embedding documents: building the text, skipping unchanged work, refusing bad input up front.

Framework adapters (Haystack, LangChain) map their document type to :class:`DocumentInput`, call
:func:`embed_documents`, and map the outcomes back. All validation happens before any encoding starts, so
a bad document fails the whole call at once instead of half-way through.

Example::

    outcomes = embed_documents(
        encoder,
        [DocumentInput(id="1", content="Paris is in France.", meta={"title": "Paris"}, has_embedding=False)],
        meta_fields_to_embed=["title"],
    )
    outcomes[0].embedding      # float32 vector
    outcomes[0].meta           # {"title": "Paris", "encoder_fingerprint": "ds1-...", "encoder_input_digest": ...}
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import InvalidDocumentError
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY
from dual_encoder.stores.contract import StoredRecord

logger = logging.getLogger(__name__)

_TEXT_LIKE = (str, int, float, bool)


@dataclass(frozen=True)
class DocumentInput:
    """What the core needs to know about one document."""

    id: str
    content: Any
    meta: Mapping[str, Any] = field(default_factory=dict)
    has_embedding: bool = False


@dataclass(frozen=True)
class DocumentOutcome:
    """What happened to one document.

    ``status`` is ``"encoded"`` (``embedding`` is new), ``"unchanged"`` (same text, same document space and
    it already carries an embedding: keep the document as it is), ``"reused"`` (it arrived without an
    embedding, but the store holds one for the same id, text and document space: ``embedding`` is that
    stored vector) or ``"empty"`` (no text to embed: the document passes on without an embedding and
    without a fingerprint, never dropped). ``meta`` is the document's complete new meta.
    """

    status: Literal["encoded", "unchanged", "reused", "empty"]
    embedding: np.ndarray | None
    meta: dict[str, Any]


def build_document_text(document: DocumentInput, meta_fields_to_embed: Sequence[str], separator: str) -> str:
    """The text the document tower sees: chosen meta fields, then the content, joined by ``separator``."""
    if document.content is not None and not isinstance(document.content, str):
        raise InvalidDocumentError(
            f"Document '{document.id}' has content of type {type(document.content).__name__}; only text can be "
            f"embedded. Convert it to a string first (for example with a Haystack converter)."
        )
    parts: list[str] = []
    for name in meta_fields_to_embed:
        value = document.meta.get(name)
        if value is None:
            continue
        if not isinstance(value, _TEXT_LIKE):
            raise InvalidDocumentError(
                f"Document '{document.id}': meta field '{name}' listed in meta_fields_to_embed holds a "
                f"{type(value).__name__} ({value!r:.60}); only strings, numbers and booleans can be embedded. "
                f"Store it as a string, or remove '{name}' from meta_fields_to_embed."
            )
        parts.append(str(value))
    if document.content:
        parts.append(document.content)
    return separator.join(parts)


def input_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def embed_documents(
    encoder: DualEncoder,
    documents: Sequence[DocumentInput],
    *,
    meta_fields_to_embed: Sequence[str] = (),
    separator: str = "\n",
    progress_bar: bool = False,
    stored: Mapping[str, StoredRecord] | None = None,
) -> list[DocumentOutcome]:
    """Embed documents with the document tower; one outcome per input, in order.

    ``stored`` is what the destination store already holds, by document id (``Store.stored_versions``). A
    document that arrives without an embedding (fresh from a converter, say) but whose stored copy was
    embedded from the same text in the same document space gets that stored embedding back instead of being
    encoded again, so re-indexing an unchanged corpus encodes nothing.
    """
    texts = [build_document_text(document, meta_fields_to_embed, separator) for document in documents]
    space = encoder.fingerprint.document_space
    stored = stored or {}

    outcomes: list[DocumentOutcome | None] = [None] * len(documents)
    to_encode: list[int] = []
    empty_ids: list[str] = []
    for position, (document, text) in enumerate(zip(documents, texts)):
        if not text.strip():
            empty_ids.append(document.id)
            stale_keys = (DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY)
            meta = {key: value for key, value in document.meta.items() if key not in stale_keys}
            outcomes[position] = DocumentOutcome(status="empty", embedding=None, meta=meta)
            continue
        digest = input_digest(text)
        if (
            document.has_embedding
            and document.meta.get(DOCUMENT_SPACE_META_KEY) == space
            and document.meta.get(EMBEDDED_INPUT_META_KEY) == digest
        ):
            outcomes[position] = DocumentOutcome(status="unchanged", embedding=None, meta=dict(document.meta))
            continue
        previous = stored.get(document.id)
        if (
            not document.has_embedding
            and previous is not None
            and previous.embedding is not None
            and len(previous.embedding) == encoder.dimension
            and previous.meta.get(DOCUMENT_SPACE_META_KEY) == space
            and previous.meta.get(EMBEDDED_INPUT_META_KEY) == digest
        ):
            outcomes[position] = DocumentOutcome(
                status="reused",
                embedding=np.asarray(previous.embedding, dtype=np.float32),
                meta={**document.meta, DOCUMENT_SPACE_META_KEY: space, EMBEDDED_INPUT_META_KEY: digest},
            )
            continue
        to_encode.append(position)

    if empty_ids:
        shown = ", ".join(repr(doc_id) for doc_id in empty_ids[:5])
        more = f" and {len(empty_ids) - 5} more" if len(empty_ids) > 5 else ""
        logger.warning(
            "%d document(s) have no text to embed (empty or missing content and no meta_fields_to_embed "
            "values): %s%s. They are passed on without an embedding, so embedding retrieval will not find "
            "them; give them content or drop them before indexing.",
            len(empty_ids),
            shown,
            more,
        )

    if to_encode:
        vectors = encoder.encode_documents([texts[i] for i in to_encode], progress_bar=progress_bar)
        for row, position in enumerate(to_encode):
            outcomes[position] = DocumentOutcome(
                status="encoded",
                embedding=vectors[row],
                meta={
                    **documents[position].meta,
                    DOCUMENT_SPACE_META_KEY: space,
                    EMBEDDED_INPUT_META_KEY: input_digest(texts[position]),
                },
            )
    return outcomes  # type: ignore[return-value]
