"""The embedded default store: SQLite for documents, a memory-mapped float32 matrix for vectors.

:class:`EmbeddedStore` implements the store contract (:class:`dual_encoder.stores.contract.Store`) on one
machine, in-process, for up to millions of documents:

- **Writes cost what they write.** A document is a row in a SQLite database (WAL mode) plus a row slot in
  a raw float32 vector file. A write puts its vectors into free slots, flushes them, then commits one
  database transaction that makes them live, so a crash never exposes a half-written document (see
  :mod:`dual_encoder.embedded.storage`).
- **Exact search is one matrix-vector product** over the memory-mapped matrix (no second copy), with
  ties broken by insertion order. Stores with at least ``quantised_threshold`` embedded documents also keep
  8-bit codes of every vector (a quarter of the matrix's bytes, :mod:`dual_encoder.embedded.quantised`):
  exact search scans the codes, whose error bound tells which rows can be in the top k, and scores only those
  rows in float32, so the result is the same exact answer for a quarter of the memory traffic. Filters
  (Haystack syntax) are evaluated on columns held in memory and score only the matching rows. Stores with
  at least ``approximate_threshold`` embedded documents answer from an approximate (ANN) index when one is
  available, rescoring its candidates exactly; ``exact=True`` always gives the exact answer.
- **One writer, many readers.** Any number of processes can open one directory. Writes take a file lock
  (waiting up to ``lock_timeout`` seconds, then :class:`StoreLockedError`); every operation first applies
  the writes other processes committed since the last one (from a change log in the database).
- **Reopening is lazy**: opening reads the per-slot arrays from a checkpoint (``slots.npz``, written on
  :meth:`close`, after bulk writes and every few hundred writes) plus the change log since, or else one
  small database row per document; the vectors are paged in by the first search, the filter columns are
  built by the first filtered call, the approximate index is loaded (saved file plus change log) or built
  by the first approximate search, and the codes likewise by the first exact search. A write that takes the
  store past ``approximate_threshold`` (``quantised_threshold``) in bulk builds the approximate index (the
  codes) as it goes, and every later write keeps it current.

Scores: ``cosine`` gives the cosine similarity in [-1, 1] (0 for a zero vector); ``dot`` the raw dot
product.

Example::

    store = open_embedded_store("my-index")             # or EmbeddedStore(None) for memory only
    store.upsert([StoredRecord(id="a", content="Paris is in France.", meta={"year": 2021}, embedding=vector)])
    result = store.vector_search(query_vector, top_k=5, filters={"field": "meta.year", "operator": ">=",
                                                                  "value": 2020})
    for hit in result.hits:
        print(hit.record.id, hit.score, result.method)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from dual_encoder.config import SIMILARITIES
from dual_encoder.embedded import legacy
from dual_encoder.embedded.keyword_search import KeywordSearchMixin
from dual_encoder.embedded.storage import (
    CHECKPOINT_FILE,
    DATABASE_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_FILE,
    VECTOR_FILE_PREFIX,
    VECTOR_FILE_SUFFIX,
    StoreLockedError,
    VectorFile,
    WriterLock,
    database_errors,
    open_database,
    read_checkpoint,
    read_info,
    write_checkpoint,
    write_info,
)
from dual_encoder.errors import (
    ConfigurationError,
    DimensionMismatchError,
    EncoderMismatchError,
    InvalidDocumentError,
    StoreFormatError,
)
from dual_encoder.filters import compile_filter
from dual_encoder.fingerprint import StoredSpace
from dual_encoder.keyword import KeywordConfig, keyword_config_of
from dual_encoder.stores.contract import (
    DuplicatePolicy,
    SearchHit,
    SearchMethod,
    SearchResult,
    Store,
    StoredRecord,
    check_json_safe,
)

logger = logging.getLogger(__name__)

#: Stores holding at least this many embedded documents answer ``exact=None`` searches from the approximate
#: index (when the ANN module is installed); below it exact search is fast enough and is the default.
DEFAULT_APPROXIMATE_THRESHOLD = 200_000
#: How long a write waits for another process's write to the same directory before StoreLockedError.
DEFAULT_LOCK_TIMEOUT = 10.0
#: Stores holding at least this many embedded documents keep 8-bit codes of their vectors beside the float32
#: matrix, so exact search scans a quarter of the bytes and rescores only the rows that can be in the top k
#: (:mod:`dual_encoder.embedded.quantised`); below it scanning the float32 matrix is as fast (through the store
#: on an AVX2 machine: 0.97x at 5,000 rows, 1.5x faster at 10,000, 2.2x at 20,000;
#: benchmarks/results/quantised_threshold.json).
DEFAULT_QUANTISED_THRESHOLD = 10_000

# A write touching more slots than this tells other processes to reload everything instead of logging
# each slot (a bulk load would otherwise double the database with log rows).
_BULK_WRITE_SLOTS = 20_000
# Change-log generations kept for readers that fall behind; older readers reload everything.
_LOG_KEEP_GENERATIONS = 5_000
# SQLite's default limit on bound parameters is 32766; stay well below it.
_SQL_CHUNK = 900
# Reads retried this often when another process reuses a slot they looked at, before taking the writer lock.
_READ_ATTEMPTS = 4
# Below this many matrix elements one BLAS thread is fastest: OpenBLAS worker threads keep spinning after
# a call and, on a small machine, steal the cores the next query encoding needs. Above it the product is
# long enough for two threads to pay off.
_SINGLE_THREAD_MAX_ELEMENTS = 8_000_000
# Filtered exact search gathers the matching rows block by block (so no large copy) when at most this
# fraction of rows match; above it, scoring every row and masking reads less memory.
_GATHER_MAX_FRACTION = 0.5
_GATHER_BLOCK_ROWS = 1024
# Reads of up to this many rows for a derived index (candidates to rescore) go through the map without
# readahead; longer ones (rebuilding an index from every row) are scans and keep it.
_SCATTERED_READ_MAX_ROWS = 16_384
# Stores with fewer slots than this are not checkpointed (reading their rows is fast).
_CHECKPOINT_MIN_SLOTS = 10_000
# A checkpoint is refreshed after this many write generations, so reopening replays a short log.
_CHECKPOINT_EVERY_GENERATIONS = 500
# The saved approximate index: ann.json names the file and the write generation it reflects.
_ANN_POINTER = "ann.json"
_ANN_PREFIX = "ann-"
# The saved codes of the exact search's first pass, likewise.
_QUANTISED_POINTER = "quantised.json"
_QUANTISED_PREFIX = "quantised-"
# Filtered exact search scores the matching rows straight from the float32 matrix when at most this fraction
# of rows match (reading them costs less than scanning every code); above it the codes are scanned.
_GATHER_BEFORE_CODES_FRACTION = 1 / 12

_ROW_COLUMNS = "slot, id, content, meta, extra, has_vector, crc"


@dataclasses.dataclass(frozen=True)
class _DerivedIndex:
    """An index derived from the store's vectors (the approximate index, exact search's codes): held in memory
    in the store attribute ``attribute``, kept current by every change (through its methods named ``add``,
    called with slots and their vectors, and ``remove``, called with slots), saved beside the store as
    ``<prefix><generation>-<tag>.npz`` named by the pointer file ``pointer`` with the generation it reflects,
    and loaded (plus the change log since that generation) by the next process that needs it. ``label``
    names it in log messages."""

    attribute: str
    pointer: str
    prefix: str
    label: str
    add: str
    remove: str


_APPROXIMATE_INDEX = _DerivedIndex("_ann", _ANN_POINTER, _ANN_PREFIX, "approximate index", "add", "remove")
_EXACT_SEARCH_CODES = _DerivedIndex(
    "_quantised", _QUANTISED_POINTER, _QUANTISED_PREFIX, "exact-search codes", "set_rows", "clear_rows"
)
_DERIVED_INDEXES = (_APPROXIMATE_INDEX, _EXACT_SEARCH_CODES)


class EmbeddedStore(KeywordSearchMixin, Store):
    """The embedded store (see the module docstring).

    :param path: Directory to persist to (created if missing). ``None`` keeps everything in memory. A
        directory in the old snapshot format (``manifest.json``) is migrated on open.
    :param similarity: ``"cosine"`` or ``"dot"``. ``None`` takes the similarity saved at ``path``
        (``"cosine"`` for a new store); a value that differs from a non-empty saved store's raises
        :class:`~dual_encoder.errors.ConfigurationError`.
    :param approximate_threshold: Embedded-document count from which ``exact=None`` searches use the
        approximate index.
    :param lock_timeout: Seconds a write waits for another process's write before
        :class:`StoreLockedError`.
    :param quantised_threshold: Embedded-document count from which exact search scans 8-bit codes first and
        rescores only the rows that can be in the top k (the result is still exact); ``None`` for the default.
    :param keyword: How keyword search tokenises and scores (a :class:`~dual_encoder.keyword.KeywordConfig` or
        its dict). ``None`` keeps the settings saved with the store (the English defaults for a new one); other
        settings are saved with the store and its keyword index is rebuilt with them on the next keyword search.
    """

    supports_keyword_search = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        similarity: str | None = None,
        approximate_threshold: int | None = DEFAULT_APPROXIMATE_THRESHOLD,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        quantised_threshold: int | None = DEFAULT_QUANTISED_THRESHOLD,
        keyword: KeywordConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if similarity is not None and similarity not in SIMILARITIES:
            raise ConfigurationError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
        if lock_timeout < 0:
            raise ConfigurationError(f"lock_timeout must be >= 0 seconds, got {lock_timeout!r}.")
        self.path: Path | None = Path(path).expanduser() if path is not None else None
        # Kept, not derived per use: every search names it several times (error context), and a Path join costs.
        self._database_file: Path | None = self.path / DATABASE_FILE if self.path is not None else None
        self.location = (
            f"the embedded store at '{self.path}'" if self.path is not None else "the in-memory embedded store"
        )
        self.similarity = similarity or "cosine"
        self.approximate_threshold = (
            DEFAULT_APPROXIMATE_THRESHOLD if approximate_threshold is None else int(approximate_threshold)
        )
        self.lock_timeout = float(lock_timeout)
        self.quantised_threshold = (
            DEFAULT_QUANTISED_THRESHOLD if quantised_threshold is None else int(quantised_threshold)
        )
        self._requested_similarity = similarity
        self._requested_keyword = keyword_config_of(keyword)
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._vectors: VectorFile | None = None
        self._writer = WriterLock(None, self.lock_timeout, self.location)
        self._info: dict[str, Any] = {}
        self._generation = 0
        self._data_version = -1
        self._end = 0  # one past the highest slot that may hold a document
        self._checkpoint_generation = -1
        # The generation of each derived index's saved file (by attribute), once this process saved or loaded it.
        self._saved_generation: dict[str, int] = {}
        self._searchable_cache: tuple[tuple[int, int, int], np.ndarray, int] | None = None
        self._arrays_epoch = 0  # counts reallocations of the per-slot arrays (part of that cache's key)
        self._allocate_arrays(0)
        self._columns: Any = None
        self._columns_on_demand = False
        self._ann: Any = None
        self._ann_unavailable = False
        self.approximate_index_source: str | None = None
        self._quantised: Any = None
        self._quantised_unavailable = False
        # How the codes came to be: "loaded" (saved file plus change log) or "built" (from the vectors).
        self.quantised_source: str | None = None
        self._open()

    # ------------------------------------------------------------------------------------ opening
    @property
    def _db(self) -> sqlite3.Connection:
        """The open database connection; only valid after :meth:`_ready` (or :meth:`_open`)."""
        if self._connection is None:
            raise RuntimeError(f"{self.location} is closed here; public methods reopen it before reading or writing.")
        return self._connection

    @property
    def _vector_file(self) -> VectorFile:
        """The open vector file; only valid once the store has recorded its embedding space."""
        if self._vectors is None:
            raise RuntimeError(
                f"{self.location} has no vector file open yet; it is created when the first embedding is written."
            )
        return self._vectors

    def _open(self) -> None:
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._writer = WriterLock(self.path / LOCK_FILE, self.lock_timeout, self.location)
            if not (self.path / DATABASE_FILE).exists() and legacy.is_legacy_store(self.path):
                with self._writer.held():
                    if not (self.path / DATABASE_FILE).exists():
                        legacy.migrate(self.path, similarity=self._requested_similarity)
        self._connection = open_database(self._database_file, timeout=self.lock_timeout)
        with database_errors(self._database_file):
            info = read_info(self._connection)
            if not info:
                with self._writer.held():
                    info = read_info(self._connection)
                    if not info:
                        info = self._create_info()
            self._check_format(info)
            saved = info["similarity"]
            if self._requested_similarity is None:
                self.similarity = saved
            elif self._requested_similarity != saved:
                with self._writer.held():
                    empty = self._db.execute("SELECT NOT EXISTS (SELECT 1 FROM docs)").fetchone()[0]
                    if not empty:
                        raise ConfigurationError(
                            f"{self.location} was created with similarity {saved!r}, not "
                            f"{self._requested_similarity!r}. Open it with similarity={saved!r} (or leave it unset)."
                        )
                    self._transaction(lambda: write_info(self._db, {"similarity": self._requested_similarity}))
            self._settle_keyword_config(info)
            self._full_load()
        if self.path is not None:
            legacy.remove_leftovers(self.path)
            self._remove_orphan_vector_files()

    def _settle_keyword_config(self, info: dict[str, Any]) -> None:
        """The keyword settings: the requested ones (saved when they differ from the store's), else the saved."""
        saved = KeywordConfig.from_dict(info["keyword"]) if info.get("keyword") else KeywordConfig()
        requested = self._requested_keyword
        if requested is None or requested == saved:
            self.keyword_config = saved
            return
        # Saved before the keyword index reads it, so every later opener (and this one's rebuild) agrees.
        with self._writer.held():
            self._transaction(lambda: write_info(self._db, {"keyword": requested.to_dict()}))
        self.keyword_config = requested

    def _create_info(self) -> dict[str, Any]:
        info = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "similarity": self.similarity,
            "dimension": None,
            "document_space": None,
            "metadata": {},
            "generation": 0,
            "reload_generation": 0,
            "log_floor": 1,
            "next_seq": 0,
            "vectors_file": None,
            "vectors_dimension": None,
        }
        self._transaction(lambda: write_info(self._db, info))
        return info

    def _check_format(self, info: dict[str, Any]) -> None:
        if info.get("format") != FORMAT_NAME:
            raise StoreFormatError(
                f"'{self._database_file}' is not an embedded dual-encoder store (format {info.get('format')!r}). "
                f"Open the directory that holds the store, or a new one."
            )
        if info.get("version") != FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.location} has format version {info.get('version')}; this version of dual-encoder reads "
                f"version {FORMAT_VERSION}. Upgrade dual-encoder, or re-index into a new directory."
            )

    def _allocate_arrays(self, capacity: int) -> None:
        self._arrays_epoch += 1
        self._live = np.zeros(capacity, dtype=bool)
        self._has_vector = np.zeros(capacity, dtype=bool)
        self._seq = np.zeros(capacity, dtype=np.int64)
        self._inv_norms = np.zeros(capacity, dtype=np.float32)  # 1/|vector|, 0 for none
        # The generation at which each slot last changed: a read that looked at a slot is only valid if
        # the slot did not change while it ran.
        self._slot_gen = np.zeros(capacity, dtype=np.int64)

    def _grow_arrays(self, rows: int) -> None:
        capacity = self._live.shape[0]
        if rows <= capacity:
            return
        new_capacity = max(rows, capacity + capacity // 2, 1024)
        self._arrays_epoch += 1
        for name in ("_live", "_has_vector", "_seq", "_inv_norms", "_slot_gen"):
            old = getattr(self, name)
            grown = np.zeros(new_capacity, dtype=old.dtype)
            grown[:capacity] = old
            # Rebinding (not resizing) keeps arrays that running searches hold intact.
            setattr(self, name, grown)

    def _full_load(self) -> None:
        """Read the whole state in one read transaction (so it is consistent): the per-slot arrays from the
        checkpoint plus the change log since it when that is usable, else one database row per document."""
        assert self._connection is not None
        checkpoint = read_checkpoint(self.path / CHECKPOINT_FILE) if self.path is not None else None
        with database_errors(self._database_file):
            data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            self._db.execute("BEGIN")
            try:
                info = read_info(self._connection)
                self._check_format(info)
                if checkpoint is not None and not _checkpoint_usable(checkpoint, info):
                    checkpoint = None
                if checkpoint is None:
                    rows = self._db.execute("SELECT slot, seq, norm, has_vector FROM docs").fetchall()
                else:
                    changed = [
                        row[0]
                        for row in self._db.execute(
                            "SELECT DISTINCT slot FROM changes WHERE gen > ?", (checkpoint["generation"],)
                        )
                    ]
                    changed_rows = self._select_by_slots(
                        "slot, seq, norm, has_vector, id, content, meta", changed, order=False
                    )
            finally:
                self._db.execute("COMMIT")
        self._columns = None
        self._forget_derived_indexes()
        self._keyword_forget()
        self._data_version = data_version
        if checkpoint is None:
            table = np.array(rows, dtype=np.float64).reshape(-1, 4)
            slots = table[:, 0].astype(np.int64)
            end = int(slots.max()) + 1 if len(slots) else 0
            self._allocate_arrays(max(1024, end + end // 4))
            self._live[slots] = True
            self._seq[slots] = table[:, 1].astype(np.int64)
            norms = table[:, 2]
            self._inv_norms[slots] = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
            self._has_vector[slots] = table[:, 3] != 0
            embedded = slots[table[:, 3] != 0]
            generation = info["generation"]
        else:
            size = len(checkpoint["live"])
            self._allocate_arrays(max(1024, size + size // 4))
            for name in ("live", "has_vector", "seq", "inv_norms"):
                getattr(self, f"_{name}")[:size] = checkpoint[name]
            live = np.flatnonzero(checkpoint["live"])
            end = int(live.max()) + 1 if len(live) else 0
            embedded = np.flatnonzero(checkpoint["has_vector"])
            generation = checkpoint["generation"]
        self._slot_gen[:] = generation
        self._end = end
        self._generation = generation
        self._open_vectors(info, check_rows=int(embedded.max()) + 1 if len(embedded) else 0)
        self._info = info
        self._checkpoint_generation = generation if checkpoint is not None else -1
        if checkpoint is not None and info["generation"] != generation:
            self._apply_changes(changed, changed_rows, info)

    def _write_checkpoint(self) -> None:
        """Save the per-slot arrays for fast reopening (large stores only: small ones load fast anyway)."""
        if self.path is None or self._end < _CHECKPOINT_MIN_SLOTS or self._checkpoint_generation == self._generation:
            return
        end = self._end
        with contextlib.suppress(OSError):
            write_checkpoint(
                self.path / CHECKPOINT_FILE,
                self._generation,
                self._info.get("vectors_file"),
                {
                    "live": self._live[:end],
                    "has_vector": self._has_vector[:end],
                    "seq": self._seq[:end],
                    "inv_norms": self._inv_norms[:end],
                },
            )
            self._checkpoint_generation = self._generation

    def _open_vectors(self, info: dict[str, Any], *, check_rows: int = 0) -> None:
        """Map the vector file ``info`` names (reusing the open one when it is the same), checking that it
        holds ``check_rows`` rows."""
        name, dimension = info.get("vectors_file"), info.get("vectors_dimension")
        if self._vectors is not None and (
            self._info.get("vectors_file") != name or self._vectors.dimension != dimension
        ):
            self._vectors.close()
            self._vectors = None
        if name is None or dimension is None:
            return
        if self._vectors is None:
            if self.path is None:
                self._vectors = VectorFile(None, dimension)
            else:
                file = self.path / name
                if not file.exists():
                    raise StoreFormatError(
                        f"The embedded store's vector file '{file}' is missing (the database '{self._database_file}' "
                        f"refers to it). Restore the directory from a backup, or re-index into a new directory."
                    )
                self._vectors = VectorFile(file, dimension)
        self._vectors.check_holds(check_rows)
        self._vectors.refresh_map(min(self._end, self._vectors.capacity))

    def _remove_orphan_vector_files(self) -> None:
        """Vector files no committed state refers to (a crash between creating one and committing)."""
        assert self.path is not None
        current = self._info.get("vectors_file")
        orphans = [
            file for file in self.path.glob(f"{VECTOR_FILE_PREFIX}*{VECTOR_FILE_SUFFIX}") if file.name != current
        ]
        # Temporary files of a process killed while saving a checkpoint or the approximate index.
        stale = [file for file in self.path.glob(".*.tmp") if time.time() - _mtime(file) > 600]
        for kind in _DERIVED_INDEXES:
            stale += [file for file in self.path.glob(f"{kind.prefix}*.tmp") if time.time() - _mtime(file) > 600]
        if not orphans and not stale:
            return
        with contextlib.suppress(StoreLockedError), self._short_writer_lock():
            self._refresh()
            for file in orphans:
                if file.name != self._info.get("vectors_file"):
                    file.unlink(missing_ok=True)
            for file in stale:
                if time.time() - _mtime(file) > 600:
                    file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _short_writer_lock(self) -> Iterator[None]:
        saved = self._writer.timeout
        self._writer.timeout = 0.0
        try:
            with self._writer.held():
                yield
        finally:
            self._writer.timeout = saved

    def _ready(self) -> None:
        """Reopen after :meth:`close`, then apply what other processes committed. Call under ``_lock``."""
        if self._connection is None:
            self._open()
        self._refresh()

    # ------------------------------------------------------------------------ following other writers
    def _refresh(self) -> None:
        """Apply the writes other processes committed since this instance last looked (cheap when none)."""
        if self.path is None or self._connection is None:
            return
        connection = self._connection
        with database_errors(self._database_file):
            data_version = connection.execute("PRAGMA data_version").fetchone()[0]
            if data_version == self._data_version:
                return
            connection.execute("BEGIN")
            try:
                info = read_info(connection)
                if info.get("generation") == self._generation:
                    self._data_version = data_version
                    self._info = info
                    return
                reload = (
                    info.get("reload_generation", 0) > self._generation
                    or info.get("log_floor", 1) > self._generation + 1
                    or info.get("vectors_file") != self._info.get("vectors_file")
                )
                if not reload:
                    changed = [
                        row[0]
                        for row in connection.execute(
                            "SELECT DISTINCT slot FROM changes WHERE gen > ?", (self._generation,)
                        )
                    ]
                    rows = self._select_by_slots("slot, seq, norm, has_vector, id, content, meta", changed, order=False)
            finally:
                connection.execute("COMMIT")
        if reload:
            self._full_load()
            return
        self._data_version = data_version
        self._apply_changes(changed, rows, info)

    def _apply_changes(self, changed: list[int], rows: list[tuple], info: dict[str, Any]) -> None:
        generation = info["generation"]
        present = {row[0]: row for row in rows}
        freed = np.array([slot for slot in changed if slot not in present], dtype=np.int64)
        top = max(changed, default=-1) + 1
        self._grow_arrays(top)
        self._live[freed] = False
        self._has_vector[freed] = False
        self._slot_gen[np.asarray(changed, dtype=np.int64)] = generation
        slots = np.array(list(present), dtype=np.int64)
        for slot, seq, norm, has_vector, *_ in rows:
            self._live[slot] = True
            self._seq[slot] = seq
            self._inv_norms[slot] = _inverse(norm)
            self._has_vector[slot] = bool(has_vector)
        self._end = max(self._end, int(slots.max()) + 1 if len(slots) else 0)
        self._generation = generation
        embedded = slots[self._has_vector[slots]] if len(slots) else slots
        self._open_vectors(info, check_rows=int(embedded.max()) + 1 if len(embedded) else 0)
        self._info = info
        if self._columns is not None:
            if len(freed):
                self._columns.clear_rows(freed)
            if len(slots):
                self._columns.set_rows(slots, [(row[4], row[5], _loads(row[6])) for row in present.values()])
        self._derived_indexes_changed(freed, slots)
        self._keyword_changed(freed, list(present), [row[5] for row in present.values()])

    # ------------------------------------------------------------------------------- contract: space
    def _recorded_space(self) -> StoredSpace:
        with self._lock:
            self._ready()
            return StoredSpace(
                document_space=self._info.get("document_space"),
                dimension=self._info.get("dimension"),
                similarity=self.similarity,
            )

    def _record_space(self, space: StoredSpace) -> None:
        with self._lock, self._writer.held():
            self._ready()
            dimension = self._info.get("dimension")
            if dimension is not None:
                if dimension != space.dimension:
                    raise DimensionMismatchError(
                        f"{self.location} now holds {dimension}-d embeddings (another process wrote first), not "
                        f"{space.dimension}-d. Embed with the store's encoder, or use a new directory."
                    )
                recorded = self._info.get("document_space")
                if recorded is not None and space.document_space is not None and recorded != space.document_space:
                    raise EncoderMismatchError(
                        f"{self.location} now holds documents from space {recorded} (another process wrote first), "
                        f"not {space.document_space}. Re-embed with the store's encoder, or use a new directory."
                    )
                return
            facts: dict[str, Any] = {"dimension": space.dimension, "document_space": space.document_space}
            old_file = self._info.get("vectors_file")
            if old_file is None or self._info.get("vectors_dimension") != space.dimension:
                name = f"{VECTOR_FILE_PREFIX}{uuid.uuid4().hex[:12]}{VECTOR_FILE_SUFFIX}"
                if self.path is not None:
                    # Created before the commit that names it: a crash leaves an orphan, removed on open.
                    assert space.dimension is not None  # upsert() records a space only once it knows the dimension
                    created = VectorFile(self.path / name, space.dimension)
                    created.ensure_capacity(self._end)
                    created.close()
                facts.update(vectors_file=name, vectors_dimension=space.dimension)
            generation = self._generation + 1
            facts["generation"] = generation
            if "vectors_file" in facts:
                facts["reload_generation"] = generation
            self._transaction(lambda: write_info(self._db, facts))
            self._generation = generation
            info = {**self._info, **facts}
            if "vectors_file" in facts:
                if self._vectors is not None:
                    self._vectors.close()
                    self._vectors = None
                self._open_vectors(info)
                self._vector_file.ensure_capacity(self._end)
                self._slot_gen[:] = generation
                # Indexes of the old vectors (another dimension) are of no use.
                self._forget_derived_indexes()
                if old_file is not None and self.path is not None:
                    (self.path / old_file).unlink(missing_ok=True)
            self._info = info

    # ------------------------------------------------------------------------------ contract: reading
    def _fetch(self, ids: Sequence[str]) -> dict[str, StoredRecord]:
        records = self._consistent_read(lambda: self._rows_where_ids(list(ids)))
        return {record.id: record for record in records}

    def _count(self, filters: Mapping[str, Any] | None) -> int:
        with self._lock:
            self._ready()
            if filters is None:
                return int(np.count_nonzero(self._live[: self._end]))
            return int(np.count_nonzero(self._filter_mask(filters, self._end)))

    def _list(self, filters: Mapping[str, Any] | None) -> list[StoredRecord]:
        def read() -> tuple[list[StoredRecord], np.ndarray]:
            if filters is None:
                rows = self._db.execute(f"SELECT {_ROW_COLUMNS} FROM docs ORDER BY seq").fetchall()
                return self._records_from_rows(rows)
            slots = np.flatnonzero(self._filter_mask(filters, self._end))
            slots = slots[np.argsort(self._seq[slots], kind="stable")]
            return self._records_from_rows(self._select_by_slots(_ROW_COLUMNS, slots.tolist(), order=True))

        return self._consistent_read(read)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Free-form JSON facts saved with the store (read-only; change them with :meth:`set_metadata`)."""
        with self._lock:
            self._ready()
            return MappingProxyType(self._info.get("metadata") or {})

    def set_metadata(self, key: str, value: Any) -> None:
        """Save ``value`` (JSON-safe) under ``key`` in the store's metadata, durably."""
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InvalidDocumentError(
                f"Store metadata '{key}' must be JSON-serialisable ({error}). Use strings, numbers, lists or dicts."
            ) from error
        with self._lock, self._writer.held():
            self._ready()
            metadata = {**(self._info.get("metadata") or {}), key: value}
            generation = self._generation + 1
            facts = {"metadata": metadata, "generation": generation}
            self._transaction(lambda: write_info(self._db, facts))
            self._generation = generation
            self._info = {**self._info, **facts}

    # ------------------------------------------------------------------------------ contract: writing
    def _check_record(self, record: StoredRecord) -> None:
        check_json_safe(record)

    def _write(self, records: Sequence[StoredRecord], policy: DuplicatePolicy) -> None:
        if not records:
            return
        with self._lock, self._writer.held():
            self._ready()
            connection = self._db
            existing = {
                row[1]: row for row in self._select_in("slot, id, seq, has_vector, crc", "id", [r.id for r in records])
            }
            in_place: list[tuple[int, StoredRecord]] = []
            placed: list[tuple[StoredRecord, int | None, int | None]] = []  # record, old slot, kept seq
            crcs: dict[str, int] = {}
            for record in records:
                crc = _crc(record.embedding)
                crcs[record.id] = crc
                old = existing.get(record.id)
                if old is not None and self._same_vector(old, record, crc):
                    in_place.append((old[0], record))
                elif old is not None:
                    placed.append((record, old[0], old[2]))
                else:
                    placed.append((record, None, None))
            slots = self._free_slots(len(placed))
            top = max(self._end, int(slots.max()) + 1 if len(slots) else 0)
            with_vectors = [i for i, (record, _, _) in enumerate(placed) if record.embedding is not None]
            new_vectors = [record.embedding for record, _, _ in placed if record.embedding is not None]
            if self._vectors is not None:
                self._vectors.ensure_capacity(top)
            if with_vectors:
                if self._vectors is None:
                    # Another process emptied the store since upsert() recorded the space: record it again.
                    first = placed[with_vectors[0]][0]
                    self._record_space(
                        StoredSpace(document_space=first.document_space, dimension=int(new_vectors[0].shape[0]))
                    )
                    self._vector_file.ensure_capacity(top)
                self._vector_file.write_rows(slots[with_vectors], np.stack(new_vectors))
                self._vector_file.sync()
            generation = self._generation + 1
            next_seq = int(self._info.get("next_seq", 0))
            inserts = []
            for (record, _, kept_seq), slot in zip(placed, slots.tolist()):
                seq = kept_seq if kept_seq is not None else next_seq
                if kept_seq is None:
                    next_seq += 1
                inserts.append((slot, seq, record))
            old_slots = [old for _, old, _ in placed if old is not None]
            touched = old_slots + [slot for slot, _, _ in inserts] + [slot for slot, _ in in_place]
            facts: dict[str, Any] = {"generation": generation, "next_seq": next_seq}
            if self._info.get("document_space") is None:
                spaces = [r.document_space for r in records if r.embedding is not None and r.document_space]
                if spaces:
                    facts["document_space"] = spaces[0]
            bulk = len(touched) > _BULK_WRITE_SLOTS
            if bulk:
                facts["reload_generation"] = generation
            if generation % 1000 == 0:
                facts["log_floor"] = max(1, generation - _LOG_KEEP_GENERATIONS)

            def commit() -> None:
                connection.executemany(
                    "UPDATE docs SET content = ?, meta = ?, extra = ? WHERE slot = ?",
                    [(r.content, _json(r.meta), _json(r.extra), slot) for slot, r in in_place],
                )
                connection.executemany("DELETE FROM docs WHERE slot = ?", [(slot,) for slot in old_slots])
                connection.executemany(
                    "INSERT INTO docs (slot, id, seq, content, meta, extra, has_vector, norm, crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            slot,
                            r.id,
                            seq,
                            r.content,
                            _json(r.meta),
                            _json(r.extra),
                            r.embedding is not None,
                            _norm(r.embedding),
                            crcs[r.id],
                        )
                        for slot, seq, r in inserts
                    ],
                )
                if not bulk:
                    connection.executemany(
                        "INSERT INTO changes (gen, slot) VALUES (?, ?)", [(generation, slot) for slot in touched]
                    )
                if "log_floor" in facts:
                    connection.execute("DELETE FROM changes WHERE gen < ?", (facts["log_floor"],))
                write_info(connection, facts)

            self._transaction(commit)
            # Committed: mirror it in memory.
            self._generation = generation
            self._info = {**self._info, **facts}
            self._grow_arrays(top)
            freed = np.array(old_slots, dtype=np.int64)
            self._live[freed] = False
            self._has_vector[freed] = False
            for slot, seq, record in inserts:
                self._live[slot] = True
                self._seq[slot] = seq
                self._has_vector[slot] = record.embedding is not None
                self._inv_norms[slot] = _inverse(_norm(record.embedding))
            self._slot_gen[np.asarray(touched, dtype=np.int64)] = generation
            self._end = top
            if self._columns is not None:
                if len(freed):
                    self._columns.clear_rows(freed)
                changed = [(slot, record) for slot, record in in_place] + [(slot, r) for slot, _, r in inserts]
                self._columns.set_rows(
                    np.array([slot for slot, _ in changed], dtype=np.int64),
                    [(r.id, r.content, r.meta) for _, r in changed],
                )
            self._derived_indexes_changed(freed, np.array([slot for slot, _, _ in inserts], dtype=np.int64))
            self._keyword_changed(
                freed,
                [slot for slot, _ in in_place] + [slot for slot, _, _ in inserts],
                [r.content for _, r in in_place] + [r.content for _, _, r in inserts],
            )
            if bulk or generation - max(self._checkpoint_generation, 0) >= _CHECKPOINT_EVERY_GENERATIONS:
                self._write_checkpoint()
            # An ingestion that takes the store past the threshold builds the approximate index as it goes
            # (then every write keeps it current). A small write never pays for a build: the first
            # approximate search loads the saved index and replays the change log, or builds it.
            if (
                bulk
                and self._ann is None
                and not self._ann_unavailable
                and self._vectors is not None
                and self._searchable()[1] >= self.approximate_threshold
            ):
                self._ann_index()
            if bulk and self._quantised is None:
                self._quantised_index()  # builds the codes once the store is large enough
            if bulk:
                # Other processes reload after a bulk write (it is not in the change log): give them current
                # files to load from.
                self._save_derived_indexes()
                self._save_keyword()

    def _same_vector(self, old: tuple, record: StoredRecord, crc: int) -> bool:
        """Whether ``record``'s embedding is the one stored in ``old``'s slot (so the slot can be kept)."""
        _, _, _, has_vector, stored_crc = old
        if record.embedding is None or not has_vector:
            return record.embedding is None and not has_vector
        if stored_crc != crc or self._vectors is None:
            return False
        return bool(np.array_equal(self._vectors.matrix[old[0]], record.embedding))

    def _free_slots(self, count: int) -> np.ndarray:
        """``count`` slots no committed document uses: holes left by deletes first, then new ones at the end."""
        holes = np.flatnonzero(~self._live[: self._end])[:count]
        extra = count - len(holes)
        return np.concatenate([holes, np.arange(self._end, self._end + extra)]).astype(np.int64)

    def _delete(self, ids: Sequence[str]) -> int:
        with self._lock, self._writer.held():
            self._ready()
            slots = [row[0] for row in self._select_in("slot", "id", list(ids))]
            if not slots:
                return 0
            generation = self._generation + 1
            facts: dict[str, Any] = {"generation": generation}

            def commit() -> None:
                self._db.executemany("DELETE FROM docs WHERE slot = ?", [(slot,) for slot in slots])
                self._db.executemany(
                    "INSERT INTO changes (gen, slot) VALUES (?, ?)", [(generation, slot) for slot in slots]
                )
                embedded = self._db.execute("SELECT EXISTS (SELECT 1 FROM docs WHERE has_vector)").fetchone()
                if not embedded[0]:
                    # Nothing embedded is left to protect: the next write may establish another space.
                    facts.update(dimension=None, document_space=None)
                write_info(self._db, facts)

            self._transaction(commit)
            self._generation = generation
            self._info = {**self._info, **facts}
            freed = np.array(slots, dtype=np.int64)
            self._live[freed] = False
            self._has_vector[freed] = False
            self._slot_gen[freed] = generation
            if self._columns is not None:
                self._columns.clear_rows(freed)
            self._derived_indexes_changed(freed, np.zeros(0, dtype=np.int64))
            self._keyword_changed(freed, [], [])
            return len(slots)

    def _delete_all(self) -> None:
        with self._lock, self._writer.held():
            self._ready()
            generation = self._generation + 1
            old_file = self._info.get("vectors_file")
            facts = {
                "generation": generation,
                "reload_generation": generation,
                "dimension": None,
                "document_space": None,
                "vectors_file": None,
                "vectors_dimension": None,
            }

            def commit() -> None:
                self._db.execute("DELETE FROM docs")
                self._db.execute("DELETE FROM changes")
                write_info(self._db, facts)

            self._transaction(commit)
            if self._vectors is not None:
                self._vectors.close()
                self._vectors = None
            if old_file is not None and self.path is not None:
                # Other processes' maps of the unlinked file stay valid until they reload.
                (self.path / old_file).unlink(missing_ok=True)
            self._info = {**self._info, **facts}
            self._full_load()

    def _transaction(self, body: Callable[[], None]) -> None:
        connection = self._db
        assert connection is not None
        with database_errors(self._database_file):
            connection.execute("BEGIN IMMEDIATE")
            try:
                body()
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    # ------------------------------------------------------------------------------- contract: search
    def _vector_search(
        self, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None, exact: bool | None
    ) -> SearchResult:
        for _ in range(_READ_ATTEMPTS):
            result = self._search_once(vector, top_k, filters, exact, locked=False)
            if result is not None:
                return result
        # Other processes kept rewriting slots this search looked at: search under the writer lock.
        with self._lock, self._writer.held():
            result = self._search_once(vector, top_k, filters, exact, locked=True)
        assert result is not None
        return result

    def _searchable(self) -> tuple[np.ndarray, int]:
        """The slots a search may return (live, with a vector) over ``[0, end)``, and how many there are.

        Kept until the next change: at a million slots each pass over the flags costs a search a fraction of a
        millisecond, and a search needs the mask and its count several times. Every change to the flags comes
        with a new generation or new arrays, which is the key. Read-only: callers combine, never modify it.
        Call under ``_lock``."""
        key = (self._generation, self._end, self._arrays_epoch)
        if self._searchable_cache is None or self._searchable_cache[0] != key:
            mask = self._live[: self._end] & self._has_vector[: self._end]
            mask.flags.writeable = False
            self._searchable_cache = (key, mask, int(np.count_nonzero(mask)))
        return self._searchable_cache[1], self._searchable_cache[2]

    def _search_once(
        self, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None, exact: bool | None, *, locked: bool
    ) -> SearchResult | None:
        """One search; ``None`` when a slot it scored changed meanwhile (then the caller searches again)."""
        with self._lock:
            self._ready()
            generation, end = self._generation, self._end
            if self._vectors is None or end == 0:
                return SearchResult(hits=[], method="exact")
            end = min(end, self._vectors.matrix.shape[0])
            matrix, inv_norms, seq = self._vectors.matrix[:end], self._inv_norms[:end], self._seq[:end]
            scattered = self._vectors.scattered_rows[:end]
            searchable, embedded = self._searchable()
            valid = searchable[:end]
            if filters is not None:
                valid = valid & self._filter_mask(filters, end)
            # Counted once for both ways of searching; known without a pass unless a filter or a short vector
            # file narrowed the rows.
            allowed = embedded if filters is None and end == self._end else int(np.count_nonzero(valid))
            found = self._approximate(vector, top_k, valid, exact, filters is not None, embedded, allowed)
            quantised = self._quantised_index() if found is None else None
        method: SearchMethod = "approximate" if found is not None else "exact"
        examined: list[np.ndarray] = []
        if found is None:
            # The long part runs without the lock, so searches overlap each other and writes.
            found = _exact_top(
                matrix,
                inv_norms,
                seq,
                valid,
                vector,
                top_k,
                self.similarity,
                quantised,
                examined,
                scattered=scattered,
                allowed=allowed,
            )
        slots, scores = found
        with self._lock:
            records: dict[int, StoredRecord] = {}
            if len(slots):
                rows = self._select_by_slots(_ROW_COLUMNS, slots.tolist(), order=False)
                try:
                    records = {row[0]: record for row, record in zip(rows, self._records_from_rows(rows)[0])}
                except StoreFormatError:
                    # A row failing its checksum may be one another process is rewriting right now.
                    self._refresh()
                    if locked or self._generation == generation:
                        raise
                    return None
            if not locked:
                self._refresh()
                if len(records) != len(slots) or self._changed_since(slots, generation):
                    return None
                if examined and self._changed_since(examined[0], generation):
                    return None
            return SearchResult(
                hits=[SearchHit(record=records[int(s)], score=float(v)) for s, v in zip(slots, scores)], method=method
            )

    def _changed_since(self, slots: np.ndarray, generation: int) -> bool:
        if len(slots) == 0:
            return False
        if int(slots.max()) >= self._slot_gen.shape[0]:
            return True
        return bool((self._slot_gen[slots] > generation).any())

    # ------------------------------------------------------------------------------- approximate index
    def _approximate(
        self,
        vector: np.ndarray,
        top_k: int,
        valid: np.ndarray,
        exact: bool | None,
        filtered: bool,
        embedded: int,
        allowed: int,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Candidates from the ANN index, rescored exactly; ``None`` when exact search should answer.
        ``embedded``: how many slots are searchable; ``allowed``: how many of them ``valid`` keeps."""
        if exact is True:
            return None
        if exact is None and embedded < self.approximate_threshold:
            return None
        if allowed == 0:
            return None
        index = self._ann_index()
        if index is None:
            return None
        end = self._end
        if filtered and exact is None and _prefers_exact(allowed, len(index)):
            return None  # so few rows pass the filter that scoring them exactly is cheaper (and exact)
        wanted = min(top_k, allowed)
        # The index holds exactly the live embedded slots (kept in step on every change), so only a filter
        # needs a mask; a mask makes the scan test every code against it.
        positions, _ = index.search(vector, wanted, valid if filtered else None)
        positions = np.asarray(positions, dtype=np.int64)
        positions = positions[(positions >= 0) & (positions < end)]
        positions = positions[valid[positions]]
        if len(positions) == 0:
            return None
        matrix = self._vector_file.matrix
        scores = _scores(matrix[positions], self._inv_norms[positions], vector, self.similarity)
        order = np.lexsort((self._seq[positions], -scores))[:top_k]
        return positions[order], scores[order]

    def _ann_index(self) -> Any:
        """The approximate index over every embedded slot (``None``: the ANN module is not installed).

        Loaded from the one saved with the store when that is recent enough (then brought up to date from
        the change log), else built from the matrix and saved. Call under ``_lock``."""
        if self._ann is not None or self._ann_unavailable or self._vectors is None:
            return self._ann
        try:
            from dual_encoder.embedded.ann import ApproximateIndex
        except ImportError:
            self._ann_unavailable = True
            return None
        index = self._load_saved(_APPROXIMATE_INDEX, ApproximateIndex)
        # How the approximate index came to be: "loaded" (saved file plus change log) or "built" (from vectors).
        self.approximate_index_source = "loaded" if index is not None else "built"
        if index is None:
            # The index rescoring reads the store's own matrix: no second float32 copy.
            index = ApproximateIndex(self._vectors.dimension, self.similarity, vectors=self._ann_rows)
            slots = np.flatnonzero(self._searchable()[0])
            for start in range(0, len(slots), 65_536):
                block = slots[start : start + 65_536]
                index.add(block, np.asarray(self._vectors.matrix[block], dtype=np.float32))
            self._ann = index
            self._save_derived(_APPROXIMATE_INDEX)  # building is the expensive part: keep it for the next open
        self._ann = index
        return index

    def _ann_rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows of the store's matrix, for the derived indexes to read vectors from (called under ``_lock``)."""
        assert self._vectors is not None
        few = len(positions) <= _SCATTERED_READ_MAX_ROWS
        return (self._vectors.scattered_rows if few else self._vectors.matrix)[positions]

    # ------------------------------------------------------------------------------- derived indexes
    def _derived_indexes_changed(self, removed: np.ndarray, added: np.ndarray) -> None:
        """Mirror a committed change in every derived index held in memory: ``removed`` slots lost their
        document, ``added`` slots hold a new one (with or without a vector). Call under ``_lock``."""
        for kind in _DERIVED_INDEXES:
            index = getattr(self, kind.attribute)
            if index is None:
                continue
            if len(removed):
                getattr(index, kind.remove)(removed)
            vectors = added[self._has_vector[added]] if len(added) else added
            if len(vectors):
                getattr(index, kind.add)(vectors, np.asarray(self._vector_file.matrix[vectors], dtype=np.float32))

    def _forget_derived_indexes(self) -> None:
        """Drop the derived indexes held in memory (the next use loads or builds them again)."""
        for kind in _DERIVED_INDEXES:
            setattr(self, kind.attribute, None)
        self._saved_generation = {}

    def _save_derived_indexes(self) -> None:
        for kind in _DERIVED_INDEXES:
            self._save_derived(kind)

    def _load_saved(self, kind: _DerivedIndex, index_class: Any) -> Any:
        """``kind``'s index saved beside the store, brought up to date from the change log; ``None`` when there is
        none, it cannot be brought up to date (a bulk write or ``delete_all`` since), or it does not load."""
        if self.path is None:
            return None
        try:
            pointer = json.loads((self.path / kind.pointer).read_text(encoding="utf-8"))
            generation = int(pointer["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        usable = (
            _checkpoint_usable({"generation": generation, "vectors_file": pointer.get("vectors_file")}, self._info)
            and generation <= self._generation
            and pointer.get("similarity") == self.similarity
            and pointer.get("dimension") == self._vector_file.dimension
        )
        if not usable:
            return None
        try:
            index = index_class.load(
                self.path / str(pointer["file"]), self._vector_file.dimension, self.similarity, vectors=self._ann_rows
            )
        except Exception as error:  # a damaged or foreign file is only a cache: rebuild it
            logger.warning(
                "Rebuilding the %s of %s: the saved one did not load (%s).", kind.label, self.location, error
            )
            return None
        if generation < self._generation:
            with database_errors(self._database_file):
                changed = np.array(
                    [
                        row[0]
                        for row in self._db.execute(
                            "SELECT DISTINCT slot FROM changes WHERE gen > ? AND gen <= ?",
                            (generation, self._generation),
                        )
                    ],
                    dtype=np.int64,
                )
            keep = np.zeros(len(changed), dtype=bool)
            inside = changed < self._end
            keep[inside] = self._live[changed[inside]] & self._has_vector[changed[inside]]
            if len(changed[~keep]):
                getattr(index, kind.remove)(changed[~keep])
            if len(changed[keep]):
                rows = np.asarray(self._vector_file.matrix[changed[keep]], dtype=np.float32)
                getattr(index, kind.add)(changed[keep], rows)
        self._saved_generation[kind.attribute] = generation
        return index

    def _save_derived(self, kind: _DerivedIndex) -> None:
        """Save ``kind``'s index beside the store, tagged with the generation it reflects."""
        index = getattr(self, kind.attribute)
        if self.path is None or index is None or self._saved_generation.get(kind.attribute) == self._generation:
            return
        pointer_file = self.path / kind.pointer
        try:
            newer = json.loads(pointer_file.read_text(encoding="utf-8"))["generation"] > self._generation
        except (OSError, ValueError, KeyError, TypeError):
            newer = False
        if newer:  # another process saved a later state: keep it
            return
        name = f"{kind.prefix}{self._generation}-{uuid.uuid4().hex[:8]}.npz"
        try:
            index.save(self.path / name)
            pointer = {
                "file": name,
                "generation": self._generation,
                "vectors_file": self._info.get("vectors_file"),
                "similarity": self.similarity,
                "dimension": self._vectors.dimension if self._vectors is not None else None,
            }
            temporary = self.path / f".{kind.pointer}.{name}.tmp"
            temporary.write_text(json.dumps(pointer), encoding="utf-8")
            os.replace(temporary, pointer_file)
        except OSError as error:
            logger.warning(
                "Could not save the %s of %s (%s); it is rebuilt when needed.", kind.label, self.location, error
            )
            return
        self._saved_generation[kind.attribute] = self._generation
        for old in self.path.glob(f"{kind.prefix}*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------ exact search codes
    def _quantised_index(self) -> Any:
        """The 8-bit codes of every embedded slot for exact search's first pass, or ``None`` when the store is
        below ``quantised_threshold`` (or NumKong is missing).

        Loaded from the file saved with the store when that is recent enough (then brought up to date from the
        change log), else built from the matrix and saved. Call under ``_lock``."""
        if self._quantised_unavailable or self._vectors is None:
            return None
        if self._quantised is not None:
            return self._quantised if self._end >= self.quantised_threshold else None
        end = self._end
        if end < self.quantised_threshold:
            return None
        searchable, _ = self._searchable()
        embedded = np.flatnonzero(searchable)
        if len(embedded) < self.quantised_threshold:
            return None
        try:
            from dual_encoder.embedded.quantised import QuantisedVectors
        except ImportError:
            self._quantised_unavailable = True
            return None
        index = self._load_saved(_EXACT_SEARCH_CODES, QuantisedVectors)
        if index is not None and not np.array_equal(index.encoded(end), searchable):
            logger.warning(
                "Rebuilding the exact-search codes of %s: the saved ones do not match the documents.", self.location
            )
            index = None
        self.quantised_source = "loaded" if index is not None else "built"
        if index is None:
            logger.info(
                "Encoding %d vectors of %s for exact search (once: the codes are kept current and saved "
                "beside the store).",
                len(embedded),
                self.location,
            )
            index = QuantisedVectors(self._vectors.dimension, self.similarity, vectors=self._ann_rows)
            for start in range(0, len(embedded), 65_536):
                block = embedded[start : start + 65_536]
                index.set_rows(block, np.asarray(self._vectors.matrix[block], dtype=np.float32))
            self._quantised = index
            self._save_derived(_EXACT_SEARCH_CODES)
        self._quantised = index
        return index

    # ------------------------------------------------------------------------------------- filters
    def _filter_mask(self, filters: Mapping[str, Any], size: int) -> np.ndarray:
        """Rows (``< size``) that hold a document matching ``filters``. Call under ``_lock``."""
        ids = _ids_selected_by(filters)
        mask = np.zeros(size, dtype=bool)
        if ids is not None:
            wanted = [i for i in ids if isinstance(i, str)]
            slots = [row[0] for row in self._select_in("slot", "id", wanted)]
            slots = [slot for slot in slots if slot < size]
            mask[slots] = True
            return mask & self._live[:size]
        columns = self._filter_columns()
        mask = np.asarray(columns.mask(filters, size), dtype=bool)
        return mask & self._live[:size]

    def _filter_columns(self) -> Any:
        """The in-memory filter columns, created on first use and kept current by every change after.

        The columns read a field's values from the database the first time a filter names it (see
        :meth:`_column_values`), so they hold typed columns of the filtered fields only, never per-row
        objects. Call under ``_lock``."""
        if self._columns is None:
            columns, needs_records = _new_columns(self._column_values)
            self._columns_on_demand = not needs_records
            with database_errors(self._database_file):
                if needs_records:
                    rows = self._db.execute("SELECT slot, id, content, meta FROM docs").fetchall()
                    records = [(row[1], row[2], _loads(row[3])) for row in rows]
                else:
                    rows = self._db.execute("SELECT slot FROM docs").fetchall()
                    records = [(None, None, None)] * len(rows)  # occupancy only: values come on demand
            if rows:
                columns.set_rows(np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows)), records)
            self._columns = columns
        return self._columns

    def _column_values(self, field: str) -> tuple[np.ndarray, list[Any]]:
        """One field's value in every stored document, by slot, read as Haystack's filters read it (``None``
        when missing). Called by the filter columns from inside ``mask``, so under ``_lock``."""
        with database_errors(self._database_file):
            if field in ("id", "content"):
                rows = self._db.execute(f"SELECT slot, {field} FROM docs").fetchall()
                return _slots_of(rows), [row[1] for row in rows]
            parts = field.split(".")
            if parts[0] == "meta" and len(parts) > 1:
                keys = parts[1:]
            elif len(parts) == 1:
                keys = parts
            else:  # a dotted field outside meta names nothing a document holds
                rows = self._db.execute("SELECT slot FROM docs").fetchall()
                return _slots_of(rows), [None] * len(rows)
            if any('"' in key for key in keys):
                # SQLite's JSON paths cannot quote a key holding '"': walk the parsed meta instead.
                rows = self._db.execute("SELECT slot, meta FROM docs").fetchall()
                return _slots_of(rows), [_walk(_loads(row[1]), keys) for row in rows]
            path = "$" + "".join(f'."{key}"' for key in keys)
            # `->` returns the value's JSON text (NULL when missing or under a non-object), parsed here exactly
            # as the stored meta would be (big integers, true/false and nested values included).
            rows = self._db.execute("SELECT slot, meta -> ? FROM docs", (path,)).fetchall()
        return _slots_of(rows), [None if row[1] is None else _loads(row[1]) for row in rows]

    # ------------------------------------------------------------------------------------- row access
    def _select_in(self, columns: str, key: str, values: Sequence[Any]) -> list[tuple]:
        rows: list[tuple] = []
        with database_errors(self._database_file):
            for start in range(0, len(values), _SQL_CHUNK):
                chunk = values[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows.extend(self._db.execute(f"SELECT {columns} FROM docs WHERE {key} IN ({marks})", chunk))
        return rows

    def _select_by_slots(self, columns: str, slots: Sequence[int], *, order: bool) -> list[tuple]:
        """Rows at ``slots``; ``order=True`` returns them in the order of ``slots``."""
        rows = self._select_in(columns, "slot", list(slots))
        if order:
            position = {slot: i for i, slot in enumerate(slots)}
            rows.sort(key=lambda row: position[row[0]])
        return rows

    def _rows_where_ids(self, ids: list[str]) -> tuple[list[StoredRecord], np.ndarray]:
        return self._records_from_rows(self._select_in(_ROW_COLUMNS, "id", ids))

    def _records_from_rows(self, rows: list[tuple]) -> tuple[list[StoredRecord], np.ndarray]:
        """Records (with vectors read from their slots and checked) and the slots they came from."""
        slots = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        if self._vectors is not None and len(slots):
            self._vectors.refresh_map(int(slots.max()) + 1)
        records = []
        for slot, record_id, content, meta, extra, has_vector, crc in rows:
            embedding = None
            if has_vector:
                if self._vectors is None or slot >= self._vectors.matrix.shape[0]:
                    raise StoreFormatError(
                        f"Document '{record_id}' in {self.location} points at vector row {slot}, which the vector "
                        f"file does not hold. Restore the directory from a backup, or re-index it."
                    )
                embedding = np.array(self._vectors.matrix[slot], dtype=np.float32)
                if zlib.crc32(embedding.tobytes()) != crc:
                    raise StoreFormatError(
                        f"The embedded store's vector file '{self._vectors.file}' is corrupt: row {slot} (document "
                        f"'{record_id}') does not match its checksum. Restore the directory from a backup, or "
                        f"re-index it."
                    )
            try:
                record = StoredRecord(
                    id=record_id, content=content, meta=_loads(meta), embedding=embedding, extra=_loads(extra)
                )
            except ValueError as error:
                raise StoreFormatError(
                    f"The embedded store database '{self._database_file}' holds unreadable JSON for document "
                    f"'{record_id}' ({error}). Restore the directory from a backup, or re-index it."
                ) from error
            records.append(record)
        return records, slots

    def _consistent_read(self, read: Callable[[], tuple[Any, np.ndarray]]) -> Any:
        """Run ``read`` (returns a result and the slots it used) until no other process changed those
        slots meanwhile; the last attempt holds the writer lock, so it cannot be disturbed."""
        for attempt in range(_READ_ATTEMPTS + 1):
            with contextlib.ExitStack() as held:
                held.enter_context(self._lock)
                if attempt == _READ_ATTEMPTS:
                    held.enter_context(self._writer.held())
                self._ready()
                generation = self._generation
                if attempt == _READ_ATTEMPTS:
                    return read()[0]
                try:
                    result, slots = read()
                except StoreFormatError:
                    # A row that fails its checksum may be one another process is rewriting right now: only
                    # a read that sees no concurrent change may call the store damaged.
                    self._refresh()
                    if self._generation != generation:
                        continue
                    raise
                self._refresh()
                if not self._changed_since(slots, generation):
                    return result
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release the database, the vector map and the lock file. A persisted store reopens on next use;
        an in-memory store keeps its documents (closing it does nothing)."""
        if self.path is None:
            return
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(StoreFormatError, StoreLockedError, sqlite3.Error):
                    self._refresh()
                    self._write_checkpoint()
                    self._save_derived_indexes()
                    self._save_keyword()
                with contextlib.suppress(sqlite3.Error):
                    self._connection.close()
                self._connection = None
            if self._vectors is not None:
                self._vectors.close()
                self._vectors = None
            self._writer.close()
            self._columns = None
            self._forget_derived_indexes()
            self._keyword_forget()
            self._info = {}
            self._data_version = -1

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.path) if self.path else None!r}, similarity={self.similarity!r})"


# ---------------------------------------------------------------------------------------- scoring
def _exact_top(
    matrix: np.ndarray,
    inv_norms: np.ndarray,
    seq: np.ndarray,
    valid: np.ndarray,
    query: np.ndarray,
    top_k: int,
    similarity: str,
    quantised: Any = None,
    examined: list[np.ndarray] | None = None,
    *,
    scattered: np.ndarray | None = None,
    allowed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Slots and scores of the ``top_k`` best valid rows: higher score first, then lower ``seq``.

    With ``quantised`` (:class:`~dual_encoder.embedded.quantised.QuantisedVectors` of every valid row) its
    codes are scanned first and only the rows that can be in the top k are scored; the result is the same.
    Those rows are appended to ``examined``: a write that changed one of them while the search ran may have
    misled the first pass, so the caller searches again. ``scattered`` (the same rows as ``matrix``, mapped for
    reading a few scattered rows) is where the rows the first pass leaves are read from. ``allowed``: the number
    of true entries in ``valid``, when the caller knows it."""
    end = matrix.shape[0]
    if allowed is None:
        allowed = int(np.count_nonzero(valid))
    k = min(top_k, allowed)
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    cosine = similarity == "cosine"
    if cosine:
        # Scaling the query once turns each dot product into a cosine after one multiply by 1/|row|.
        length = float(np.linalg.norm(query))
        query = query / np.float32(length) if length > 0 else query
    positions = None
    if quantised is not None and allowed > _GATHER_BEFORE_CODES_FRACTION * end:
        try:
            positions = quantised.candidates(query, k, valid)
        except ValueError as error:  # codes out of step with the rows: never answer from them
            logger.warning("Exact search scans the float32 vectors: %s", error)
        if positions is not None and examined is not None:
            examined.append(positions)
        if positions is not None and scattered is not None:
            matrix = scattered
    if positions is None and allowed <= _GATHER_MAX_FRACTION * end:
        positions = np.flatnonzero(valid)
    if positions is not None:
        scores = np.empty(len(positions), dtype=np.float32)
        _score_gathered(matrix, positions, query, scores)
        if cosine:
            scores *= inv_norms[positions]
    else:
        with _blas_threads_for(matrix.size):
            scores = np.asarray(matrix @ query, dtype=np.float32)
        if cosine:
            scores *= inv_norms
        if allowed < end:
            scores[~valid] = -np.inf
    if k < len(scores):
        threshold = scores[np.argpartition(scores, len(scores) - k)[len(scores) - k]]
        # Every row tied with the k-th score competes, so ties resolve by insertion order, not by chance.
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.flatnonzero(np.isfinite(scores)) if positions is None else np.arange(len(scores))
    slots = candidates if positions is None else positions[candidates]
    chosen = scores[candidates]
    order = np.lexsort((seq[slots], -chosen))[:k]
    top = chosen[order]
    return slots[order], np.clip(top, -1.0, 1.0) if cosine else top


def _score_blocks(matrix: np.ndarray, positions: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    for start in range(0, len(positions), _GATHER_BLOCK_ROWS):
        block = positions[start : start + _GATHER_BLOCK_ROWS]
        out[start : start + len(block)] = matrix[block] @ query


def _score_gathered(matrix: np.ndarray, positions: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = matrix[positions[i]] @ query``, gathered in cache-sized blocks, never as one big copy.

    A large gather runs its two halves on two threads, each with one BLAS thread: one thread cannot saturate
    the memory bus with gathers, and BLAS threads on 1,024-row blocks only add hand-over cost
    (benchmarks/README.md, Store scale).
    """
    elements = len(positions) * matrix.shape[1]
    if elements <= _SINGLE_THREAD_MAX_ELEMENTS:
        with _blas_threads_for(elements):
            _score_blocks(matrix, positions, query, out)
        return
    half = (len(positions) // 2 // _GATHER_BLOCK_ROWS) * _GATHER_BLOCK_ROWS
    with _blas_threads_for(0):  # one BLAS thread inside each of the two gathering threads
        other = _gather_pool().submit(_score_blocks, matrix, positions[:half], query, out[:half])
        _score_blocks(matrix, positions[half:], query, out[half:])
        other.result()


_gather_executor: ThreadPoolExecutor | None = None
_gather_executor_lock = threading.Lock()


def _gather_pool() -> ThreadPoolExecutor:
    global _gather_executor
    with _gather_executor_lock:
        if _gather_executor is None:
            _gather_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-store-gather")
        return _gather_executor


def _scores(rows: np.ndarray, inv_norms: np.ndarray, query: np.ndarray, similarity: str) -> np.ndarray:
    """Exact scores of ``rows`` (cosine in [-1, 1], 0 for a zero vector; or raw dot products)."""
    dots = np.asarray(rows @ query, dtype=np.float32)
    if similarity != "cosine":
        return dots
    length = float(np.linalg.norm(query))
    scores = dots * inv_norms / np.float32(length) if length > 0 else dots * 0
    return np.clip(scores, -1.0, 1.0)


def _inverse(norm: float) -> float:
    """1/|v| for cosine scoring; 0 for a zero vector, whose cosine is 0 (never NaN, which breaks ordering)."""
    return 1.0 / norm if norm > 0 else 0.0


_blas_libraries: list[Any] | None = None


def _blas_threads_for(elements: int) -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread for a product of at most ``_SINGLE_THREAD_MAX_ELEMENTS`` (see its comment); larger ones keep
    the libraries' own thread counts."""
    global _blas_libraries
    if elements > _SINGLE_THREAD_MAX_ELEMENTS:
        return contextlib.nullcontext()
    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController

        _blas_libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _one_blas_thread(_blas_libraries)


@contextlib.contextmanager
def _one_blas_thread(libraries: list[Any]) -> Iterator[None]:
    # The libraries' own getters and setters: threadpoolctl's `limit` re-reads every library's state on each
    # entry, which added a tenth to a SciFact-sized product (benchmarks/README.md, "Static query tower").
    lowered = []
    for library in libraries:
        threads = library.get_num_threads()
        if threads != 1:
            library.set_num_threads(1)
            lowered.append((library, threads))
    try:
        yield
    finally:
        for library, threads in lowered:
            library.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- helpers
def _checkpoint_usable(checkpoint: dict[str, Any], info: dict[str, Any]) -> bool:
    """Whether the change log since ``checkpoint`` brings it to the committed state ``info`` describes."""
    generation = checkpoint["generation"]
    return (
        generation <= info.get("generation", 0)
        and info.get("reload_generation", 0) <= generation
        and info.get("log_floor", 1) <= generation + 1
        and checkpoint["vectors_file"] == info.get("vectors_file")
    )


def _mtime(file: Path) -> float:
    try:
        return file.stat().st_mtime
    except OSError:
        return time.time()


def _crc(vector: np.ndarray | None) -> int:
    return 0 if vector is None else zlib.crc32(np.ascontiguousarray(vector, dtype=np.float32).tobytes())


def _norm(vector: np.ndarray | None) -> float:
    return 0.0 if vector is None else float(np.linalg.norm(vector))


_orjson: ModuleType | None
try:
    import orjson as _orjson
except ImportError:  # optional: only makes the first filtered call on a large store faster
    _orjson = None


def _loads(text: str) -> Any:
    """``json.loads``, through orjson when it is installed (it refuses integers beyond 64 bits: fall back)."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _ids_selected_by(filters: Mapping[str, Any] | None) -> list[Any] | None:
    """The ids of a filter that only selects by id (``id == x`` or ``id in [...]``), else ``None``."""
    if not isinstance(filters, Mapping) or filters.get("field") != "id":
        return None
    if filters.get("operator") == "==":
        return [filters.get("value")]
    if filters.get("operator") == "in" and isinstance(filters.get("value"), list):
        return filters["value"]
    return None


class _PredicateColumns:
    """Filter evaluation one record at a time, used when the vectorised columns module is missing.

    Same interface as :class:`dual_encoder.embedded.columns.MetaColumns`."""

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, Any]] = {}

    def set_rows(self, positions: np.ndarray, records: Sequence[tuple[str, str | None, dict[str, Any]]]) -> None:
        for position, (record_id, content, meta) in zip(positions.tolist(), records):
            self._rows[position] = {"id": record_id, "content": content, "meta": meta}

    def clear_rows(self, positions: np.ndarray) -> None:
        for position in np.asarray(positions).tolist():
            self._rows.pop(position, None)

    def mask(self, filters: Mapping[str, Any], size: int) -> np.ndarray:
        matches = compile_filter(filters)
        mask = np.zeros(size, dtype=bool)
        for position, record in self._rows.items():
            if position < size and (matches is None or matches(record)):
                mask[position] = True
        return mask


def _prefers_exact(allowed: int, total: int) -> bool:
    from dual_encoder.embedded.ann import prefers_exact

    return prefers_exact(allowed, total)


def _new_columns(values: Callable[[str], tuple[np.ndarray, list[Any]]]) -> tuple[Any, bool]:
    """Filter columns, and whether they need every row's (id, content, meta) handed to them up front."""
    try:
        from dual_encoder.embedded.columns import MetaColumns
    except ImportError:
        return _PredicateColumns(), True
    try:
        return MetaColumns(values=values), False
    except TypeError:  # a columns module without on-demand values
        return MetaColumns(), True


def _slots_of(rows: list[tuple]) -> np.ndarray:
    return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))


def _walk(meta: Any, keys: list[str]) -> Any:
    value = meta if isinstance(meta, Mapping) else {}
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


# ------------------------------------------------------------------------------------ process-wide
_open_lock = threading.Lock()
_open_stores: dict[Path, EmbeddedStore] = {}


def open_embedded_store(
    path: str | os.PathLike[str] | None, *, similarity: str | None = None, **options: Any
) -> EmbeddedStore:
    """The process-wide store for ``path``: every opener of one directory in one process shares one
    instance (so a query pipeline sees what an indexing pipeline wrote, and the matrix is held once).
    ``None`` gives a new in-memory store. ``options`` go to :class:`EmbeddedStore` on first open."""
    if path is None:
        return EmbeddedStore(None, similarity=similarity, **options)
    key = Path(path).expanduser().resolve()
    with _open_lock:
        store = _open_stores.get(key)
        if store is None:
            store = _open_stores[key] = EmbeddedStore(key, similarity=similarity, **options)
        elif similarity is not None and similarity != store.similarity:
            raise ConfigurationError(
                f"{store.location} uses similarity {store.similarity!r}, not {similarity!r}. Open it with "
                f"similarity={store.similarity!r} (or leave similarity unset)."
            )
        elif (keyword := keyword_config_of(options.get("keyword"))) is not None and keyword != store.keyword_config:
            raise ConfigurationError(
                f"{store.location} is open in this process with keyword settings {store.keyword_config.to_dict()}, "
                f"not {keyword.to_dict()}. One directory has one keyword index: open it with the same settings "
                f"(or leave keyword unset), or close the other user first."
            )
        return store


__all__ = [
    "DEFAULT_APPROXIMATE_THRESHOLD",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_QUANTISED_THRESHOLD",
    "EmbeddedStore",
    "StoreLockedError",
    "open_embedded_store",
]
