"""Encoder fingerprints: a stable identity for a document embedding space.

A vector is only meaningful next to other vectors from the same document encoder. The fingerprint makes
that identity explicit so stores and retrievers can refuse to mix spaces instead of returning wrong results.

``document_space`` covers everything that decides where a document lands: the document tower's weights
and module configuration (module by module, so the same tower inside or outside a ``Router`` hashes the
same), the document prompt (its resolved text, however it was chosen), normalisation, output dimension,
similarity and truncation length.

It leaves out the backend that computes the vectors (``EncoderConfig.backend``), although the backends do not
all run the same numbers: ``openvino`` and ``openvino-bf16`` run the model's weights at another arithmetic
precision, and ``openvino-int8`` runs a quantised copy of the fully connected layers' weights. The digest is
always taken from the model's reference weights (the float32 torch weights, which stay loaded under every
backend), and every backend computes an approximation of that one function. The fingerprint guards against
vectors that cannot be compared (other weights, prompt, normalisation, truncation); a backend's deviation is
bounded and small, so its vectors stay comparable with the reference ones (cosine to float32 and nDCG@10 of
each backend: ``benchmarks/README.md``, Faster CPU encoding). Leaving it out is what lets an index built on
one machine be queried on another whose CPU gets another backend (``"auto"``), and what makes a change of
backend re-encode nothing. The price: a store written with several backends holds vectors that differ from the
reference within that tolerance, and scores move by as much. Anyone who needs bit-identical vectors fixes
``backend`` in the encoder definition.

A query tower is **compatible** with a stored space when the encoder it belongs to reports the same
``document_space``: it was saved together with exactly that document tower. A light query tower trained
against a frozen document tower therefore keeps working with an existing index, while any change to the
document side (other weights, other prompt, other truncation) yields a new space.

Example::

    fingerprint = encoder.fingerprint
    meta = {DOCUMENT_SPACE_META_KEY: fingerprint.document_space}
    check_space_compatible(fingerprint, stored_space=meta[DOCUMENT_SPACE_META_KEY], stored_dimension=384)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from dual_encoder.errors import DimensionMismatchError, EncoderMismatchError

#: Meta key under which embedded documents carry their document-space fingerprint.
DOCUMENT_SPACE_META_KEY = "encoder_fingerprint"
#: Meta key holding a digest of the exact text that was embedded (content, meta fields and prompt).
EMBEDDED_INPUT_META_KEY = "encoder_input_digest"

_FINGERPRINT_VERSION = "1"


@dataclass(frozen=True)
class EncoderFingerprint:
    """Identity of a dual encoder's embedding space.

    :param document_space: Identifier of the space documents are embedded into (``ds1-`` + 24 hex digits).
    :param query_tower: Identifier of the query tower and query prompt (``qt1-`` + 24 hex digits).
    :param dimension: Embedding dimension.
    :param similarity: ``"cosine"`` or ``"dot"``.
    """

    document_space: str
    query_tower: str
    dimension: int
    similarity: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderFingerprint:
        return cls(**data)

    def describe(self) -> str:
        return (
            f"document space {self.document_space} ({self.dimension}-d, {self.similarity}), "
            f"query tower {self.query_tower}"
        )


def modules_digest(modules: Iterable[Any]) -> str:
    """Hash a sequence of sentence-transformers modules by type, configuration and weights.

    State-dict keys are taken relative to each module, so wrapping the same modules in a ``Router`` does
    not change the digest.
    """
    import torch

    digest = hashlib.sha256()
    for position, module in enumerate(modules):
        digest.update(f"{position}:{type(module).__name__}".encode())
        get_config = getattr(module, "get_config_dict", None)
        config = get_config() if callable(get_config) else {}
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, tensor in sorted(module.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            # Viewing as bytes hashes the exact stored bits for every dtype, bfloat16 included.
            digest.update(tensor.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def document_space_id(
    *, tower_digest: str, prompt: str, normalize: bool, dimension: int, similarity: str, max_seq_length: int | None
) -> str:
    payload = json.dumps(
        {
            "version": _FINGERPRINT_VERSION,
            "tower": tower_digest,
            "prompt": prompt,
            "normalize": normalize,
            "dimension": dimension,
            "similarity": similarity,
            "max_seq_length": max_seq_length,
        },
        sort_keys=True,
    )
    return f"ds{_FINGERPRINT_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def query_tower_id(*, tower_digest: str, prompt: str, normalize: bool, max_seq_length: int | None) -> str:
    payload = json.dumps(
        {"tower": tower_digest, "prompt": prompt, "normalize": normalize, "max_seq_length": max_seq_length},
        sort_keys=True,
    )
    return f"qt{_FINGERPRINT_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def check_space_compatible(
    encoder: EncoderFingerprint,
    *,
    stored_space: str | None,
    stored_dimension: int | None,
    where: str = "the document store",
) -> None:
    """Refuse to query or write ``where`` with an encoder from another embedding space.

    ``None`` for either stored value means "unknown" and is not checked.
    """
    if stored_dimension is not None and stored_dimension != encoder.dimension:
        raise DimensionMismatchError(
            f"Embedding dimension mismatch: {where} holds {stored_dimension}-d embeddings, but this encoder "
            f"produces {encoder.dimension}-d embeddings ({encoder.describe()}). Use the encoder the documents "
            f"were embedded with, or re-index the documents with this one."
        )
    if stored_space is not None and stored_space != encoder.document_space:
        raise EncoderMismatchError(
            f"Encoder mismatch: {where} holds documents embedded in space {stored_space}, but this encoder's "
            f"query tower {encoder.query_tower} belongs to space {encoder.document_space}. Its vectors would "
            f"not be comparable. Use the encoder the documents were embedded with, or re-index them with this one."
        )


def check_documents_compatible(encoder: EncoderFingerprint, spaces: Iterable[str | None], where: str) -> int:
    """Check the fingerprints carried by retrieved documents; return how many carried none."""
    unknown = 0
    for space in spaces:
        if space is None:
            unknown += 1
        else:
            check_space_compatible(encoder, stored_space=space, stored_dimension=None, where=where)
    return unknown


@dataclass(frozen=True)
class StoredSpace:
    """What a document store knows about the embeddings it holds (``None``: not known yet)."""

    document_space: str | None
    dimension: int | None
    similarity: str | None = None


def check_store_compatible(encoder: EncoderFingerprint, stored: StoredSpace | None, where: str) -> None:
    """Refuse an encoder whose space, dimension or similarity differs from what a store holds."""
    if stored is None:
        return
    check_space_compatible(encoder, stored_space=stored.document_space, stored_dimension=stored.dimension, where=where)
    if stored.similarity is not None and stored.similarity != encoder.similarity:
        raise EncoderMismatchError(
            f"Similarity mismatch: {where} scores with {stored.similarity!r}, but this encoder uses "
            f"{encoder.similarity!r}. Create the store with similarity={encoder.similarity!r}."
        )


def space_of_documents(
    documents: Iterable[tuple[str, str | None, int | None]], recorded: StoredSpace | None, where: str
) -> StoredSpace | None:
    """Check that ``(id, fingerprint, dimension)`` triples agree with each other and with ``recorded``.

    Returns the space they establish (``recorded`` when it was known), so a store can record it before its
    first write. Raises on the first document from another space or of another dimension.
    """
    space = recorded.document_space if recorded else None
    dimension = recorded.dimension if recorded else None
    for doc_id, fingerprint, doc_dimension in documents:
        if doc_dimension is not None:
            if dimension is None:
                dimension = doc_dimension
            elif doc_dimension != dimension:
                raise DimensionMismatchError(
                    f"Document '{doc_id}' has a {doc_dimension}-d embedding but {where} holds {dimension}-d "
                    f"embeddings. Embed it with the same encoder as the stored documents, or use a new collection."
                )
        if fingerprint is not None and doc_dimension is not None:
            if space is None:
                space = fingerprint
            elif fingerprint != space:
                raise EncoderMismatchError(
                    f"Encoder mismatch: document '{doc_id}' was embedded in space {fingerprint}, but {where} holds "
                    f"documents from space {space}. Re-embed it with the collection's encoder, or use a new collection."
                )
    if space is None and dimension is None:
        return recorded
    return StoredSpace(document_space=space, dimension=dimension, similarity=recorded.similarity if recorded else None)
