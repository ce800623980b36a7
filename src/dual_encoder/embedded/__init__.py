"""The embedded store: documents in SQLite, vectors in a memory-mapped matrix, one directory per store.

Example::

    from dual_encoder.embedded import open_embedded_store

    store = open_embedded_store("my-index")
    print(store.count(), store.similarity, dict(store.metadata))
"""

from dual_encoder.embedded.storage import StoreLockedError
from dual_encoder.embedded.store import (
    DEFAULT_APPROXIMATE_THRESHOLD,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_QUANTISED_THRESHOLD,
    EmbeddedStore,
    open_embedded_store,
)

__all__ = [
    "DEFAULT_APPROXIMATE_THRESHOLD",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_QUANTISED_THRESHOLD",
    "EmbeddedStore",
    "StoreLockedError",
    "open_embedded_store",
]
