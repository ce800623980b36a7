"""The embedded default store: exact vector search in-process, persisted to a directory.

All embeddings live in one contiguous float32 matrix that grows by doubling and is updated in place on
write and delete; a query is one matrix-vector product plus a partial sort, never a rebuild. Documents are
kept in insertion order. With ``path`` set, every change is written as a new snapshot (JSON lines for the
records, ``.npy`` for the matrix, no pickle) and switched to atomically, so a crash mid-write leaves the
previous snapshot intact.

Scores: ``cosine`` gives the cosine similarity in [-1, 1]; ``dot`` gives the raw dot product.

Example::

    index = EmbeddedIndex(path="my-index", similarity="cosine")
    index.upsert([IndexRecord(id="a", content="Paris is in France.", meta={}, embedding=vector)])
    for hit in index.search(query_vector, top_k=5):
        print(hit.record.id, hit.score)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from dual_encoder.config import SIMILARITIES, validate_top_k
from dual_encoder.errors import (
    ConfigurationError,
    DimensionMismatchError,
    DuplicateIdError,
    EncoderMismatchError,
    InvalidDocumentError,
    StoreFormatError,
)
from dual_encoder.filters import compile_filter
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, StoredSpace, space_of_documents

FORMAT_NAME = "dual-encoder-embedded-index"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"


class DuplicatePolicy(str, Enum):
    """What to do when a written id is already stored."""

    OVERWRITE = "overwrite"
    SKIP = "skip"
    FAIL = "fail"


@dataclass
class IndexRecord:
    """One stored document. ``extra`` carries adapter-specific JSON-safe fields (a blob, a sparse vector)."""

    id: str
    content: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    embedding: np.ndarray | Sequence[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_filterable(self) -> dict[str, Any]:
        return {"id": self.id, "content": self.content, "meta": self.meta}


@dataclass(frozen=True)
class SearchHit:
    record: IndexRecord
    score: float
    embedding: np.ndarray


class EmbeddedIndex:
    """Exact top-k search over a contiguous embedding matrix, with filters and directory persistence.

    :param path: Directory to persist to and load from. ``None`` keeps everything in memory.
    :param similarity: ``"cosine"`` or ``"dot"``, fixed for the life of the index. ``None`` takes the
        similarity of the index saved at ``path``, or ``"cosine"`` for a new one.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, similarity: str | None = None) -> None:
        if similarity is not None and similarity not in SIMILARITIES:
            raise ConfigurationError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
        self.path = Path(path) if path is not None else None
        self.similarity = similarity or "cosine"
        self._requested_similarity = similarity
        self._lock = threading.RLock()
        self._records: list[IndexRecord] = []
        self._position: dict[str, int] = {}
        self._dimension: int | None = None
        self._document_space: str | None = None
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._norms = np.zeros(0, dtype=np.float32)
        self._has_vector = np.zeros(0, dtype=bool)
        #: Free-form JSON-safe facts saved with the index, such as the encoder definition that filled it.
        self.metadata: dict[str, Any] = {}
        # (snapshot name, manifest mtime) of what this instance holds, to notice other processes' writes.
        self._snapshot_seen: tuple[str, int] | None = None
        if self.path is not None and (self.path / _MANIFEST).exists():
            self._load()

    def refresh(self) -> None:
        """Reload when another process has saved a newer snapshot at ``path`` (a cheap stat otherwise)."""
        if self.path is None:
            return
        try:
            modified = (self.path / _MANIFEST).stat().st_mtime_ns
        except FileNotFoundError:
            return
        if self._snapshot_seen is not None and self._snapshot_seen[1] == modified:
            return
        with self._lock:
            snapshot = _read_manifest(self.path).get("snapshot")
            if self._snapshot_seen is not None and snapshot == self._snapshot_seen[0]:
                self._snapshot_seen = (snapshot, modified)
                return
            try:
                self._load()
            except StoreFormatError:
                # The writer may have replaced the snapshot between our manifest read and file reads.
                self._load()

    # ------------------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        self.refresh()
        return len(self._records)

    @property
    def dimension(self) -> int | None:
        return self._dimension

    @property
    def stored_space(self) -> StoredSpace:
        self.refresh()
        return StoredSpace(document_space=self._document_space, dimension=self._dimension, similarity=self.similarity)

    def records(self, filters: Mapping[str, Any] | None = None) -> list[IndexRecord]:
        """Copies of the stored records matching ``filters`` (with their embeddings), in insertion order."""
        matches = compile_filter(filters)
        self.refresh()
        wanted_ids = _ids_selected_by(filters)
        with self._lock:
            if wanted_ids is not None:
                # Looking documents up by id (an embedder checking for unchanged documents, say) goes through the
                # id map instead of testing every record, so it costs the ids asked for, not the store's size.
                positions = sorted({self._position[i] for i in wanted_ids if isinstance(i, str) and i in self._position})
                return [replace(self._records[p], embedding=self._row(p)) for p in positions]
            return [
                replace(record, embedding=self._row(position))
                for position, record in enumerate(self._records)
                if matches is None or matches(record.as_filterable())
            ]

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        matches = compile_filter(filters)
        self.refresh()
        with self._lock:
            if matches is None:
                return len(self._records)
            return sum(1 for record in self._records if matches(record.as_filterable()))

    def stored_meta(self, ids: Iterable[str]) -> dict[str, tuple[dict[str, Any], bool]]:
        """For each stored id among ``ids``: its meta and whether it has an embedding (no vectors copied)."""
        self.refresh()
        with self._lock:
            found = {}
            for record_id in ids:
                position = self._position.get(record_id)
                if position is not None:
                    found[record_id] = (self._records[position].meta, bool(self._has_vector[position]))
            return found

    def _row(self, position: int) -> np.ndarray | None:
        return self._matrix[position].copy() if self._has_vector[position] else None

    # ------------------------------------------------------------------------------------------- search
    def search(
        self, query: np.ndarray | Sequence[float], *, top_k: int, filters: Mapping[str, Any] | None = None
    ) -> list[SearchHit]:
        """The ``top_k`` records closest to ``query``, best first; records without embeddings never match."""
        validate_top_k(top_k)
        matches = compile_filter(filters)
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        self.refresh()
        with self._lock:
            count = len(self._records)
            if count == 0 or self._dimension is None:
                return []
            if vector.shape[0] != self._dimension:
                raise DimensionMismatchError(
                    f"Query embedding has {vector.shape[0]} dimensions but the embedded store holds "
                    f"{self._dimension}-d embeddings. Query with the encoder the documents were embedded with."
                )
            with _blas_threads_for(count * self._dimension):
                scores = self._matrix[:count] @ vector
            if self.similarity == "cosine":
                query_norm = float(np.linalg.norm(vector)) or 1.0
                with np.errstate(divide="ignore", invalid="ignore"):
                    scores = scores / (self._norms[:count] * query_norm)
            valid = self._has_vector[:count].copy()
            if matches is not None:
                valid &= np.fromiter(
                    (matches(record.as_filterable()) for record in self._records), dtype=bool, count=count
                )
            scores = np.where(valid, scores, -np.inf)
            candidates = int(valid.sum())
            k = min(top_k, candidates)
            if k == 0:
                return []
            if k < count:
                top = np.argpartition(-scores, k - 1)[:k]
            else:
                top = np.flatnonzero(valid)
            # Stable order for ties: higher score first, then insertion order.
            top = top[np.lexsort((top, -scores[top]))]
            return [
                SearchHit(record=self._records[p], score=float(scores[p]), embedding=self._matrix[p].copy())
                for p in top
            ]

    # ------------------------------------------------------------------------------------------- writing
    def upsert(self, records: Sequence[IndexRecord], policy: DuplicatePolicy | str = DuplicatePolicy.OVERWRITE) -> int:
        """Write records; returns how many were written. Validates everything before changing anything."""
        policy = DuplicatePolicy(policy)
        self.refresh()
        vectors = [self._validated_vector(record) for record in records]
        for record in records:
            _check_json_safe(record)
        with self._lock:
            established = space_of_documents(
                (
                    (record.id, record.meta.get(DOCUMENT_SPACE_META_KEY), None if vector is None else vector.shape[0])
                    for record, vector in zip(records, vectors)
                ),
                self.stored_space if self._dimension is not None else None,
                where="the embedded store",
            )
            dimension = established.dimension if established else None
            space = established.document_space if established else None
            if policy is DuplicatePolicy.FAIL:
                seen: set[str] = set()
                duplicates = []
                for record in records:
                    if record.id in self._position or record.id in seen:
                        duplicates.append(record.id)
                    seen.add(record.id)
                if duplicates:
                    raise DuplicateIdError(
                        f"{len(duplicates)} document id(s) already stored: {duplicates[:5]}. Nothing was written. "
                        f"Use the overwrite or skip policy to replace or keep the stored documents."
                    )
            if dimension is not None and self._dimension is None:
                self._allocate(dimension, capacity=max(1024, self._has_vector.shape[0]))
            self._document_space = space
            written = 0
            for record, vector in zip(records, vectors):
                position = self._position.get(record.id)
                if position is not None and policy is DuplicatePolicy.SKIP:
                    continue
                if position is None:
                    position = len(self._records)
                    self._ensure_capacity(position + 1)
                    self._records.append(record)
                    self._position[record.id] = position
                else:
                    self._records[position] = record
                self._set_row(position, vector)
                record.embedding = None  # the matrix row is the single copy
                written += 1
            if written:
                self._persist()
            return written

    def delete(self, ids: Iterable[str]) -> int:
        """Delete records by id (unknown ids are ignored); returns how many were deleted."""
        self.refresh()
        with self._lock:
            doomed = {self._position[i] for i in set(ids) if i in self._position}
            if not doomed:
                return 0
            count = len(self._records)
            keep = np.ones(count, dtype=bool)
            keep[list(doomed)] = False
            kept = int(keep.sum())
            self._matrix[:kept] = self._matrix[:count][keep]
            self._norms[:kept] = self._norms[:count][keep]
            self._has_vector[:kept] = self._has_vector[:count][keep]
            self._has_vector[kept:count] = False
            self._records = [record for record, k in zip(self._records, keep) if k]
            self._position = {record.id: p for p, record in enumerate(self._records)}
            if not self._has_vector[:kept].any():
                self._document_space = None
            self._persist()
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self.delete([record.id for record in self._records])

    # ---------------------------------------------------------------------------------------- internals
    def _validated_vector(self, record: IndexRecord) -> np.ndarray | None:
        if not isinstance(record.id, str) or not record.id:
            raise InvalidDocumentError(f"Every stored document needs a non-empty string id, got {record.id!r}.")
        if record.embedding is None:
            return None
        vector = np.asarray(record.embedding, dtype=np.float32)
        if vector.ndim != 1 or vector.shape[0] == 0:
            raise InvalidDocumentError(
                f"Document '{record.id}' has an embedding of shape {vector.shape}; expected a flat list of floats."
            )
        if not np.isfinite(vector).all():
            raise InvalidDocumentError(f"Document '{record.id}' has NaN or infinite values in its embedding.")
        return vector

    def _allocate(self, dimension: int, capacity: int = 1024) -> None:
        self._dimension = dimension
        self._matrix = np.zeros((capacity, dimension), dtype=np.float32)
        self._norms = np.zeros(capacity, dtype=np.float32)
        # Documents written before the first embedding have no vector; they keep "no vector" here.
        self._has_vector = np.zeros(capacity, dtype=bool)

    def _ensure_capacity(self, rows: int) -> None:
        capacity = self._has_vector.shape[0]
        if rows <= capacity:
            return
        new_capacity = max(rows, 2 * capacity, 1024)
        width = self._dimension or 0
        matrix = np.zeros((new_capacity, width), dtype=np.float32)
        matrix[:capacity] = self._matrix[:capacity]
        norms = np.zeros(new_capacity, dtype=np.float32)
        norms[:capacity] = self._norms
        has_vector = np.zeros(new_capacity, dtype=bool)
        has_vector[:capacity] = self._has_vector
        self._matrix, self._norms, self._has_vector = matrix, norms, has_vector

    def _set_row(self, position: int, vector: np.ndarray | None) -> None:
        if vector is None:
            if self._dimension is not None:
                self._matrix[position] = 0.0
            self._norms[position] = 0.0
            self._has_vector[position] = False
            return
        self._matrix[position] = vector
        self._norms[position] = float(np.linalg.norm(vector))
        self._has_vector[position] = True

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write a snapshot to ``path`` (or the index's own path)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigurationError("This embedded store has no path; pass one to save() or create it with path=...")
        with self._lock:
            snapshot = _write_snapshot(self, target)
            if target == self.path:
                self._snapshot_seen = snapshot

    def _persist(self) -> None:
        if self.path is not None:
            self._snapshot_seen = _write_snapshot(self, self.path)

    def _load(self) -> None:
        assert self.path is not None
        manifest = _read_manifest(self.path)
        if self._requested_similarity is None:
            self.similarity = manifest.get("similarity", self.similarity)
        if manifest.get("similarity") != self.similarity:
            raise ConfigurationError(
                f"The embedded store at '{self.path}' was created with similarity {manifest.get('similarity')!r}, "
                f"not {self.similarity!r}. Open it with similarity={manifest.get('similarity')!r}."
            )
        snapshot = self.path / manifest["snapshot"]
        records: list[IndexRecord] = []
        try:
            with open(snapshot / "documents.jsonl", encoding="utf-8") as handle:
                for line in handle:
                    data = json.loads(line)
                    records.append(
                        IndexRecord(id=data["id"], content=data.get("content"), meta=data.get("meta") or {},
                                    extra=data.get("extra") or {})
                    )
            matrix = np.load(snapshot / "embeddings.npy", allow_pickle=False)
            has_vector = np.load(snapshot / "has_embedding.npy", allow_pickle=False)
        except (OSError, ValueError, KeyError) as error:
            raise StoreFormatError(
                f"The embedded store at '{self.path}' is damaged ({type(error).__name__}: {error}). Re-index into a "
                f"new directory."
            ) from error
        if len(records) != manifest["count"] or len(has_vector) != manifest["count"]:
            raise StoreFormatError(
                f"The embedded store at '{self.path}' is inconsistent: the manifest says {manifest['count']} "
                f"documents, the files hold {len(records)} records and {len(has_vector)} rows. Re-index it."
            )
        self._records = records
        self._position = {record.id: p for p, record in enumerate(records)}
        self._snapshot_seen = (manifest["snapshot"], (self.path / _MANIFEST).stat().st_mtime_ns)
        self._document_space = manifest.get("document_space")
        self.metadata = manifest.get("metadata") or {}
        if manifest.get("dimension") is not None:
            self._allocate(int(manifest["dimension"]), capacity=max(1024, len(records)))
            self._matrix[: len(records)] = matrix
            self._has_vector[: len(records)] = has_vector
            self._norms[: len(records)] = np.linalg.norm(matrix, axis=1) if len(records) else 0.0
        else:
            self._dimension = None
            self._matrix = np.zeros((len(records), 0), dtype=np.float32)
            self._norms = np.zeros(len(records), dtype=np.float32)
            self._has_vector = np.zeros(len(records), dtype=bool)


# Below this many matrix elements one BLAS thread is fastest: OpenBLAS worker threads keep spinning after
# a call and, on a small machine, steal the cores the next query encoding needs (measured: encoding
# 8 ms -> 15 ms with a 5k x 384 matrix). Above it the product is long enough for two threads to pay off.
_SINGLE_THREAD_MAX_ELEMENTS = 8_000_000
_blas_controller = None


def _blas_threads_for(elements: int):
    global _blas_controller
    if elements > _SINGLE_THREAD_MAX_ELEMENTS:
        return contextlib.nullcontext()
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController().select(user_api="blas")
    return _blas_controller.limit(limits=1)


_open_lock = threading.Lock()
_open_indexes: dict[Path, EmbeddedIndex] = {}


def _ids_selected_by(filters: Mapping[str, Any] | None) -> list[Any] | None:
    """The ids of a filter that only selects by id (``id == x`` or ``id in [...]``), else ``None``.

    Call it after ``compile_filter`` has validated ``filters``."""
    if not isinstance(filters, Mapping) or filters.get("field") != "id":
        return None
    if filters.get("operator") == "==":
        return [filters.get("value")]
    if filters.get("operator") == "in" and isinstance(filters.get("value"), list):
        return filters["value"]
    return None


def open_index(path: str | os.PathLike[str] | None, *, similarity: str | None = None) -> EmbeddedIndex:
    """The process-wide index for ``path``: every opener of one directory shares one instance, so a
    query pipeline sees what an indexing pipeline in the same process wrote. ``None`` gives a new
    in-memory index."""
    if path is None:
        return EmbeddedIndex(None, similarity=similarity)
    key = Path(path).expanduser().resolve()
    with _open_lock:
        index = _open_indexes.get(key)
        if index is None:
            index = _open_indexes[key] = EmbeddedIndex(key, similarity=similarity)
        elif similarity is not None and similarity != index.similarity:
            raise ConfigurationError(
                f"The embedded store at '{path}' uses similarity {index.similarity!r}, not {similarity!r}. Open it "
                f"with similarity={index.similarity!r} (or leave similarity unset)."
            )
        return index


def _check_json_safe(record: IndexRecord) -> None:
    try:
        json.dumps({"content": record.content, "meta": record.meta, "extra": record.extra}, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidDocumentError(
            f"Document '{record.id}' cannot be stored: its content or meta is not JSON-serialisable ({error}). "
            f"Store dates as ISO strings and other objects as strings, numbers, lists or dicts."
        ) from error


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StoreFormatError(f"Cannot read '{path / _MANIFEST}': {error}. Is this an embedded store directory?") from error
    if manifest.get("format") != FORMAT_NAME:
        raise StoreFormatError(f"'{path}' is not an embedded dual-encoder store (manifest format {manifest.get('format')!r}).")
    if manifest.get("version") != FORMAT_VERSION:
        raise StoreFormatError(
            f"The embedded store at '{path}' has format version {manifest.get('version')}; this version of "
            f"dual-encoder reads version {FORMAT_VERSION}. Re-index with this version."
        )
    return manifest


def _write_snapshot(index: EmbeddedIndex, path: Path) -> tuple[str, int]:
    path.mkdir(parents=True, exist_ok=True)
    count = len(index._records)
    name = f"snapshot-{uuid.uuid4().hex[:12]}"
    snapshot = path / name
    snapshot.mkdir()
    with open(snapshot / "documents.jsonl", "w", encoding="utf-8") as handle:
        for record in index._records:
            handle.write(
                json.dumps({"id": record.id, "content": record.content, "meta": record.meta, "extra": record.extra},
                           ensure_ascii=False)
            )
            handle.write("\n")
    width = index._dimension or 0
    np.save(snapshot / "embeddings.npy", index._matrix[:count] if width else np.zeros((count, 0), np.float32))
    np.save(snapshot / "has_embedding.npy", index._has_vector[:count] if width else np.zeros(count, bool))
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "snapshot": name,
        "count": count,
        "dimension": index._dimension,
        "similarity": index.similarity,
        "document_space": index._document_space,
        "metadata": index.metadata,
    }
    temporary = path / f".{_MANIFEST}.{name}"
    temporary.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(temporary, path / _MANIFEST)
    for old in path.glob("snapshot-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return name, (path / _MANIFEST).stat().st_mtime_ns
