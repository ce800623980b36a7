"""Errors raised by the dual-encoder core.

Every error names what went wrong and how to fix it. They subclass ``ValueError`` (bad input) or
``RuntimeError`` (bad state) so callers that already catch those keep working.
"""

from __future__ import annotations


class DualEncoderError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(DualEncoderError, ValueError):
    """An encoder definition or component parameter is invalid."""


class ModelNotFoundError(DualEncoderError, ValueError):
    """A model name is neither a local folder, a known alias, nor reachable on the Hugging Face Hub."""


class NotAModelError(DualEncoderError, ValueError):
    """A folder exists but does not hold a loadable sentence-transformers model."""


class EmptyTextError(DualEncoderError, ValueError):
    """A query or document text is empty, whitespace-only or not a string."""


class InvalidDocumentError(DualEncoderError, ValueError):
    """A document cannot be embedded as given (wrong content type, unusable meta field...)."""


class EncoderMismatchError(DualEncoderError, ValueError):
    """Stored embeddings come from a different document encoder than the one used to query or write."""


class DimensionMismatchError(EncoderMismatchError):
    """An embedding's dimension differs from the dimension of the stored embeddings."""


class FilterError(DualEncoderError, ValueError):
    """A metadata filter is malformed or uses an unknown operator."""


class DuplicateIdError(DualEncoderError, ValueError):
    """A document id is already stored and the duplicate policy is ``fail``."""


class StoreFormatError(DualEncoderError, RuntimeError):
    """An embedded-store directory is missing files or was written by an incompatible version."""
