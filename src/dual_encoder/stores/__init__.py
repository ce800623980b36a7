"""Document stores: the contract every store implements (:mod:`dual_encoder.stores.contract`)."""

from dual_encoder.stores.contract import (
    DuplicatePolicy,
    KeywordSearchUnsupportedError,
    NativeHybridUnsupportedError,
    SearchHit,
    SearchResult,
    Store,
    StoreClosedError,
    StoredRecord,
    TenantsUnsupportedError,
    WriteSummary,
    check_json_safe,
    validate_search,
    verify_hits,
)

__all__ = [
    "DuplicatePolicy",
    "KeywordSearchUnsupportedError",
    "NativeHybridUnsupportedError",
    "SearchHit",
    "SearchResult",
    "Store",
    "StoreClosedError",
    "StoredRecord",
    "TenantsUnsupportedError",
    "WriteSummary",
    "check_json_safe",
    "validate_search",
    "verify_hits",
]
