"""Reading the old embedded-index format and migrating it to the embedded store, crash-safely.

The old format (``dual_encoder.index.EmbeddedIndex``) kept a directory with ``manifest.json`` (format
``dual-encoder-embedded-index``, version 1) naming a ``snapshot-*/`` directory of ``documents.jsonl``,
``embeddings.npy`` and ``has_embedding.npy``. :func:`migrate` builds the new store in a hidden
``.migration-*`` directory beside it and moves its files in, the database last: the database's arrival is
the commit point. A crash before it leaves the old snapshot untouched (the next open migrates again);
after it, the old files are removed as leftovers.

Example::

    if is_legacy_store(path):
        migrate(path)          # then EmbeddedStore(path) opens the migrated store
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dual_encoder.errors import StoreFormatError

logger = logging.getLogger(__name__)

LEGACY_FORMAT_NAME = "dual-encoder-embedded-index"
LEGACY_FORMAT_VERSION = 1
LEGACY_MANIFEST = "manifest.json"
_MIGRATION_PREFIX = ".migration-"
_BATCH = 10_000


def is_legacy_store(path: Path) -> bool:
    """Whether ``path`` holds an old-format index (a ``manifest.json``)."""
    return (path / LEGACY_MANIFEST).is_file()


def read_manifest(path: Path) -> dict[str, Any]:
    """The old manifest, checked. :raises StoreFormatError: naming the file and what is wrong."""
    file = path / LEGACY_MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StoreFormatError(
            f"Cannot read the old-format index manifest '{file}' ({error}). Restore it from a backup, or delete the "
            f"directory and re-index."
        ) from error
    if manifest.get("format") != LEGACY_FORMAT_NAME or manifest.get("version") != LEGACY_FORMAT_VERSION:
        raise StoreFormatError(
            f"'{file}' is not an old-format embedded index this version can migrate (format "
            f"{manifest.get('format')!r}, version {manifest.get('version')!r}). Re-index into a new directory."
        )
    return manifest


def read_records(path: Path, manifest: dict[str, Any]) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """``(record fields, embedding or None)`` for every document of the old snapshot, in stored order."""
    snapshot = path / str(manifest.get("snapshot"))
    count = int(manifest.get("count", 0))
    embeddings: np.ndarray | None = None
    has_embedding: np.ndarray | None = None
    if manifest.get("dimension") is not None:
        embeddings = _load_array(snapshot / "embeddings.npy", mmap=True)
        has_embedding = _load_array(snapshot / "has_embedding.npy", mmap=False)
        if embeddings.shape[0] != count or has_embedding.shape[0] != count:
            raise StoreFormatError(
                f"The old-format index at '{path}' is inconsistent: its manifest says {count} documents, "
                f"'{snapshot / 'embeddings.npy'}' holds {embeddings.shape[0]} rows and "
                f"'{snapshot / 'has_embedding.npy'}' {has_embedding.shape[0]}. Restore it from a backup or re-index."
            )
    documents = snapshot / "documents.jsonl"
    seen = 0
    try:
        with open(documents, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                try:
                    data = json.loads(line)
                    fields = {
                        "id": data["id"],
                        "content": data.get("content"),
                        "meta": data.get("meta") or {},
                        "extra": data.get("extra") or {},
                    }
                except (ValueError, KeyError, TypeError) as error:
                    raise StoreFormatError(
                        f"Line {line_number} of '{documents}' is not a document record ({error}). Restore the file "
                        f"from a backup or re-index."
                    ) from error
                vector = None
                if embeddings is not None and has_embedding is not None and seen < count and has_embedding[seen]:
                    vector = np.array(embeddings[seen], dtype=np.float32)
                seen += 1
                yield fields, vector
    except OSError as error:
        raise StoreFormatError(f"Cannot read '{documents}' ({error}). Restore it from a backup or re-index.") from error
    if seen != count:
        raise StoreFormatError(
            f"'{documents}' holds {seen} records but '{path / LEGACY_MANIFEST}' says {count}: the old index is "
            f"truncated. Restore it from a backup or re-index. Nothing was migrated."
        )


def _load_array(file: Path, *, mmap: bool) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as error:
        raise StoreFormatError(f"Cannot read '{file}' ({error}). Restore it from a backup or re-index.") from error


def migrate(path: Path, *, similarity: str | None = None) -> None:
    """Convert the old-format index at ``path`` into an embedded store in place (see the module docstring).

    The caller holds the store's writer lock. :raises StoreFormatError: the old files are damaged (the old
    index is left as it was).
    """
    from dual_encoder.embedded.storage import CHECKPOINT_FILE, DATABASE_FILE, VECTOR_FILE_PREFIX
    from dual_encoder.embedded.store import EmbeddedStore
    from dual_encoder.fingerprint import StoredSpace
    from dual_encoder.stores.contract import DuplicatePolicy, StoredRecord

    manifest = read_manifest(path)
    for stale in path.glob(f"{_MIGRATION_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = path / f"{_MIGRATION_PREFIX}{uuid.uuid4().hex[:12]}"
    # No approximate index during the migration: the migrated store builds it when it needs it.
    store = EmbeddedStore(
        staging, similarity=manifest.get("similarity") or similarity or "cosine", approximate_threshold=2**62
    )
    try:
        if manifest.get("dimension") is not None:
            store._record_space(
                StoredSpace(document_space=manifest.get("document_space"), dimension=int(manifest["dimension"]))
            )
        batch: list[StoredRecord] = []
        count = 0
        for fields, vector in read_records(path, manifest):
            batch.append(StoredRecord(embedding=vector, **fields))
            if len(batch) >= _BATCH:
                store._write(batch, DuplicatePolicy.OVERWRITE)
                count += len(batch)
                batch = []
        if batch:
            store._write(batch, DuplicatePolicy.OVERWRITE)
            count += len(batch)
        for key, value in (manifest.get("metadata") or {}).items():
            store.set_metadata(key, value)
        # A self-contained database file (no write-ahead log beside it), so moving the one file moves it all.
        store._db.execute("PRAGMA journal_mode=DELETE")
    finally:
        store.close()
    for file in [*staging.glob(f"{VECTOR_FILE_PREFIX}*"), *staging.glob(CHECKPOINT_FILE)]:
        os.replace(file, path / file.name)
    _sync_directory(path)
    os.replace(staging / DATABASE_FILE, path / DATABASE_FILE)  # the commit point
    _sync_directory(path)
    logger.warning(
        "Migrated the old-format embedded index at '%s' (%d documents) to the embedded store format.", path, count
    )
    remove_leftovers(path)


def remove_leftovers(path: Path) -> None:
    """Delete old-format files and migration staging once the new database exists at ``path``."""
    from dual_encoder.embedded.storage import DATABASE_FILE

    if not (path / DATABASE_FILE).exists():
        return
    for stale in path.glob(f"{_MIGRATION_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if (path / LEGACY_MANIFEST).exists():
        (path / LEGACY_MANIFEST).unlink(missing_ok=True)
    for stale in path.glob(".manifest.json.*"):
        stale.unlink(missing_ok=True)
    for stale in path.glob("snapshot-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
