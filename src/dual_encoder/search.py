"""Indexing into and searching any store of the contract with a dual encoder, without a framework.

Example::

    encoder = DualEncoder("all-MiniLM-L6-v2")
    store = open_embedded_store("my-index")
    passages = PassageSplitter.for_encoder(encoder).split_documents(read_documents("notes/"))
    index_documents(encoder, store, passages, replace_sources=True)
    for hit in search(encoder, store, "How do heat pumps work?", top_k=3).hits:
        print(hit.score, hit.record.id)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dual_encoder.chunking import stale_passage_ids
from dual_encoder.documents import DocumentInput, embed_documents
from dual_encoder.encoder import DualEncoder
from dual_encoder.stores.contract import DuplicatePolicy, SearchResult, Store, StoredRecord, validate_search

#: Where the CLI records, in an embedded store's metadata, the encoder definition that filled it.
ENCODER_METADATA_KEY = "encoder"


@dataclass(frozen=True)
class IndexingSummary:
    """What :func:`index_documents` did: documents ``encoded`` now, stored ``unchanged`` (nothing written),
    ``without_text`` (stored without an embedding), ``written`` (new or changed), and stale passages
    ``removed`` (``replace_sources=True`` only)."""

    encoded: int
    unchanged: int
    without_text: int
    written: int
    removed: int = 0


def index_documents(
    encoder: DualEncoder,
    store: Store,
    documents: Sequence[DocumentInput],
    *,
    meta_fields_to_embed: Sequence[str] = (),
    progress_bar: bool = False,
    replace_sources: bool = False,
) -> IndexingSummary:
    """Embed ``documents`` with the document tower and upsert them into ``store``.

    Documents the store already holds with the same text and document space keep their stored embedding
    (nothing is encoded) and are not written again, so re-running over an unchanged corpus costs lookups only.

    :param replace_sources: ``documents`` are passages from :class:`~dual_encoder.chunking.PassageSplitter`
        and hold *every* passage of their sources: after writing them, delete the stored passages of those
        sources that are not among them (a document that got shorter leaves none behind). Leave it off when
        writing a source's passages in several calls.
    """
    store.check_encoder(encoder.fingerprint)
    fresh = [DocumentInput(id=doc.id, content=doc.content, meta=doc.meta) for doc in documents]
    stored = store.stored_versions(doc.id for doc in documents)
    outcomes = embed_documents(
        encoder, fresh, meta_fields_to_embed=meta_fields_to_embed, progress_bar=progress_bar, stored=stored
    )
    records = [
        StoredRecord(id=doc.id, content=doc.content, meta=outcome.meta, embedding=outcome.embedding)
        for doc, outcome in zip(fresh, outcomes)
    ]
    summary = store.upsert(records, policy=DuplicatePolicy.OVERWRITE, stored=stored)
    removed = store.delete(stale_passage_ids(store, fresh)) if replace_sources else 0
    return IndexingSummary(
        encoded=sum(o.status == "encoded" for o in outcomes),
        unchanged=summary.unchanged,
        without_text=sum(o.status == "empty" for o in outcomes),
        written=summary.written,
        removed=removed,
    )


def search(
    encoder: DualEncoder,
    store: Store,
    query: str,
    *,
    top_k: int = 10,
    filters: Mapping[str, Any] | None = None,
    exact: bool | None = None,
) -> SearchResult:
    """Encode ``query`` with the query tower and return the ``top_k`` best hits, after the fingerprint check.

    Filters and ``top_k`` are validated before the query is encoded.
    """
    validate_search(top_k, filters)
    store.check_encoder(encoder.fingerprint)
    return store.vector_search(encoder.encode_query(query), top_k=top_k, filters=filters, exact=exact)
