"""What a Haystack document store already holds for some document ids, for the core's unchanged-document check.

Both the Haystack document embedder and the LangChain vector store hand the result to
:func:`dual_encoder.documents.embed_documents`, which reuses a stored embedding when the document's text and
encoder fingerprint are unchanged.

Example::

    stored = read_stored_versions(EmbeddedDocumentStore(path="my-index"), ["doc-1", "doc-2"])
    stored["doc-1"].embedding
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dual_encoder.documents import StoredDocument
from dual_encoder.errors import DualEncoderError

#: Ids per ``filter_documents`` call, so each store request (a Weaviate query, say) stays small.
LOOKUP_CHUNK = 500


def read_stored_versions(document_store: Any, ids: Sequence[str], *, reader: str) -> dict[str, StoredDocument]:
    """Stored meta and embedding of every id in ``ids`` that ``document_store`` holds.

    ``reader`` names the caller in the error message. Any other failure of the store is raised as a
    :class:`~dual_encoder.errors.DualEncoderError` that names the store and the way out; this package's own
    store errors (``WeaviateUnavailableError``) pass through as they are. Callers read before encoding, so
    nothing is encoded in vain.
    """
    stored: dict[str, StoredDocument] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), LOOKUP_CHUNK):
        chunk = unique[start:start + LOOKUP_CHUNK]
        try:
            found = document_store.filter_documents(filters={"field": "id", "operator": "in", "value": chunk})
        except DualEncoderError:
            raise  # already names the problem and the fix (an unreachable Weaviate, say)
        except Exception as error:
            raise DualEncoderError(
                f"{reader} could not read the stored versions of {len(chunk)} document(s) from "
                f"{type(document_store).__name__} ({type(error).__name__}: {error}). Nothing was encoded. Check "
                f"that the store is reachable, or stop passing the store for the unchanged-document check so that "
                f"every document is encoded."
            ) from error
        stored.update((doc.id, StoredDocument(meta=doc.meta, embedding=doc.embedding)) for doc in found)
    return stored
