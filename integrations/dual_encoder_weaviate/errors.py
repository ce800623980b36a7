"""Errors of the Weaviate store, beside the core's (every one is a ``DualEncoderError``).

Example::

    try:
        store.upsert(records)
    except WeaviateUnavailableError as error:
        retry_later(error.unconfirmed_ids)     # writes are idempotent: send these again
    except PartialWriteError as error:
        for doc_id, reason in error.failed.items():
            print(doc_id, reason)
"""

from __future__ import annotations

from dual_encoder.errors import DualEncoderError


class WeaviateUnavailableError(DualEncoderError, ConnectionError):
    """Weaviate could not be reached, refused the connection, or went away during a call.

    ``unconfirmed_ids`` lists the documents a failed write may not have stored.
    """

    def __init__(self, message: str, unconfirmed_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.unconfirmed_ids = list(unconfirmed_ids or [])


class PartialWriteError(DualEncoderError, RuntimeError):
    """Weaviate refused some objects of a write; ``failed`` maps each unwritten document id to the reason.

    The other documents of the write were stored.
    """

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = dict(failed)
        listed = "; ".join(f"'{doc_id}': {reason}" for doc_id, reason in list(failed.items())[:20])
        more = f" (and {len(failed) - 20} more)" if len(failed) > 20 else ""
        super().__init__(
            f"{len(failed)} document(s) were not written to Weaviate: {listed}{more}. The other documents of the "
            f"write were stored. Fix these documents and write them again (writes are idempotent)."
        )


class ReplicaUnavailableError(WeaviateUnavailableError):
    """The node answered, but too few replicas of the data were reachable for the consistency level asked
    (two of three nodes down at ``QUORUM``, say): no partial result is returned as if it were complete."""


class TenantNotFoundError(DualEncoderError, LookupError):
    """The tenant a store is bound to does not exist (and is not created on first use), or the collection has no
    tenants at all."""
