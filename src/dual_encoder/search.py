"""Indexing into and searching the embedded store with a dual encoder, without any framework.

Example::

    encoder = DualEncoder("all-MiniLM-L6-v2")
    index = EmbeddedIndex("my-index")
    index_documents(encoder, index, read_documents("notes/"))
    for hit in search(encoder, index, "How do heat pumps work?", top_k=3):
        print(hit.score, hit.record.id)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dual_encoder.documents import DocumentInput, embed_documents
from dual_encoder.encoder import DualEncoder
from dual_encoder.filters import compile_filter
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY, check_store_compatible
from dual_encoder.index import DuplicatePolicy, EmbeddedIndex, IndexRecord, SearchHit

ENCODER_METADATA_KEY = "encoder"


@dataclass(frozen=True)
class IndexingSummary:
    encoded: int
    unchanged: int
    without_text: int
    written: int


def index_documents(
    encoder: DualEncoder,
    index: EmbeddedIndex,
    documents: Sequence[DocumentInput],
    *,
    meta_fields_to_embed: Sequence[str] = (),
    progress_bar: bool = False,
) -> IndexingSummary:
    """Embed ``documents`` with the document tower and upsert them; re-running skips unchanged ones."""
    check_store_compatible(encoder.fingerprint, index.stored_space, where=f"the embedded store at '{index.path}'")
    stored = index.stored_meta(doc.id for doc in documents)
    # Carry the stored fingerprint meta, so unchanged documents are recognised and not encoded again.
    known = [
        DocumentInput(
            id=doc.id,
            content=doc.content,
            meta={**_fingerprint_meta(stored.get(doc.id)), **doc.meta},
            has_embedding=doc.id in stored and stored[doc.id][1],
        )
        for doc in documents
    ]
    outcomes = embed_documents(encoder, known, meta_fields_to_embed=meta_fields_to_embed, progress_bar=progress_bar)
    records = []
    for doc, outcome in zip(known, outcomes):
        if outcome.status == "unchanged":
            continue
        records.append(IndexRecord(id=doc.id, content=doc.content, meta=outcome.meta, embedding=outcome.embedding))
    index.metadata[ENCODER_METADATA_KEY] = encoder.config.to_dict()
    written = 0
    if records:
        written = index.upsert(records, policy=DuplicatePolicy.OVERWRITE)
    elif index.path is not None:
        index.save()  # nothing changed but the recorded encoder definition
    return IndexingSummary(
        encoded=sum(o.status == "encoded" for o in outcomes),
        unchanged=sum(o.status == "unchanged" for o in outcomes),
        without_text=sum(o.status == "empty" for o in outcomes),
        written=written,
    )


def _fingerprint_meta(stored: tuple[dict[str, Any], bool] | None) -> dict[str, Any]:
    if stored is None:
        return {}
    meta = stored[0]
    return {key: meta[key] for key in (DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY) if key in meta}


def search(
    encoder: DualEncoder,
    index: EmbeddedIndex,
    query: str,
    *,
    top_k: int = 10,
    filters: Mapping[str, Any] | None = None,
) -> list[SearchHit]:
    """Encode ``query`` with the query tower and return the ``top_k`` best hits, after the fingerprint check."""
    compile_filter(filters)
    check_store_compatible(encoder.fingerprint, index.stored_space, where=f"the embedded store at '{index.path}'")
    return index.search(encoder.encode_query(query), top_k=top_k, filters=filters)
