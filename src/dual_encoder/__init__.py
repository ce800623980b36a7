"""dual_encoder: dual-encoder retrieval without a framework.

The public API, importable from here:

- the encoder definition: :class:`EncoderConfig` (with :data:`BACKENDS`, :data:`SIMILARITIES`);
- the encoder: :class:`DualEncoder`, and its identity :class:`EncoderFingerprint`;
- the store contract: :class:`Store`, :class:`StoredRecord`, :class:`SearchHit`, :class:`SearchResult`,
  :class:`WriteSummary`, :class:`DuplicatePolicy`;
- the embedded store: :func:`open_embedded_store` (and :class:`EmbeddedStore`);
- the errors, all subclasses of :class:`DualEncoderError`;
- ``__version__``: the installed version of the ``dual-encoder-retrieval`` distribution.

Importing this package is cheap: it loads neither torch nor sentence-transformers (nor NumPy). Each name
other than the definition and the errors is imported on first use, so a process that only reads a store
or answers queries without torch never pays for them.

Example::

    import dual_encoder

    encoder = dual_encoder.DualEncoder(dual_encoder.EncoderConfig(model="all-MiniLM-L6-v2"))
    store = dual_encoder.open_embedded_store("my-index")
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from dual_encoder.config import BACKENDS, SIMILARITIES, EncoderConfig
from dual_encoder.errors import (
    ConfigurationError,
    DimensionMismatchError,
    DualEncoderError,
    DuplicateIdError,
    EmptyTextError,
    EncoderMismatchError,
    FilterError,
    InvalidDocumentError,
    ModelNotFoundError,
    NotAModelError,
    StoreFormatError,
)

DISTRIBUTION = "dual-encoder-retrieval"


def _installed_version() -> str:
    try:
        return _metadata.version(DISTRIBUTION)
    except _metadata.PackageNotFoundError:
        # Run from a source tree that was never installed: say so rather than guess a number.
        return "0+unknown"


__version__: str = _installed_version()

__all__ = [
    "BACKENDS",
    "DISTRIBUTION",
    "DOCUMENT_SPACE_META_KEY",
    "EMBEDDED_INPUT_META_KEY",
    "SIMILARITIES",
    "ConfigurationError",
    "DimensionMismatchError",
    "DualEncoder",
    "DualEncoderError",
    "DuplicateIdError",
    "DuplicatePolicy",
    "EmbeddedStore",
    "EmptyTextError",
    "EncoderConfig",
    "EncoderFingerprint",
    "EncoderMismatchError",
    "FilterError",
    "InvalidDocumentError",
    "KeywordSearchUnsupportedError",
    "ModelNotFoundError",
    "NativeHybridUnsupportedError",
    "NotAModelError",
    "SearchHit",
    "SearchResult",
    "Store",
    "StoreClosedError",
    "StoreFormatError",
    "StoreLockedError",
    "StoredRecord",
    "StoredSpace",
    "TenantsUnsupportedError",
    "WriteSummary",
    "__version__",
    "open_embedded_store",
]

# The modules that define the public names not imported above, each imported on first use (PEP 562).
_LAZY_MODULES: dict[str, tuple[str, ...]] = {
    "dual_encoder.encoder": ("DualEncoder",),
    "dual_encoder.fingerprint": (
        "EncoderFingerprint",
        "StoredSpace",
        "DOCUMENT_SPACE_META_KEY",
        "EMBEDDED_INPUT_META_KEY",
    ),
    "dual_encoder.embedded": ("open_embedded_store", "EmbeddedStore", "StoreLockedError"),
}
#: Public name -> the module it is imported from on first access. Every other public name not defined here is
#: one of the store contract's, which ``dual_encoder.stores`` exports, so that package's list is the only one.
_LAZY: dict[str, str] = {name: module for module, names in _LAZY_MODULES.items() for name in names}
_LAZY.update({name: "dual_encoder.stores" for name in __all__ if name not in globals() and name not in _LAZY})


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used, and keep the value here."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'dual_encoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # Type checkers and IDEs see the lazy names as ordinary imports.
    from dual_encoder.embedded import EmbeddedStore, StoreLockedError, open_embedded_store
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.fingerprint import (
        DOCUMENT_SPACE_META_KEY,
        EMBEDDED_INPUT_META_KEY,
        EncoderFingerprint,
        StoredSpace,
    )
    from dual_encoder.stores import (
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
    )
