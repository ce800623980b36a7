"""On-disk pieces of the embedded store: the SQLite database, the raw vector file and the writer lock.

A store directory holds:

- ``store.sqlite`` (SQLite in WAL mode): one row per document (id, insertion sequence, content, meta,
  extra fields as JSON, the vector's norm and CRC-32), the store's facts (``info``: format, similarity,
  dimension, document space, free-form metadata, a write generation) and a change log (``changes``: which
  row slots each write generation touched, so other processes apply only what changed). The database is
  the commit point: a document exists when its row is committed.
- ``vectors-<id>.f32``: a raw float32 matrix, one row per slot (``slot * dimension * 4`` bytes in). It is
  memory-mapped read-only; writes go through ``pwrite`` into slots that no committed row uses, are flushed
  with ``fdatasync``, and only then does the database transaction that points rows at them commit. A crash
  at any point therefore exposes either the old rows or the new ones, never a half-written vector.
- ``store.lock``: ``flock``-ed by whichever process is writing (one write at a time per directory).
- ``slots.npz`` (optional): a checkpoint of the per-slot arrays (live, insertion order, norm) at one
  write generation, so reopening a large store reads a few arrays plus the change log since, instead of
  one database row per document. It is a cache: when it is missing, damaged or too old the store reads
  the database instead.

Example::

    database = open_database(Path("my-index") / DATABASE_FILE)
    vectors = VectorFile(Path("my-index") / "vectors-1a2b.f32", dimension=384)
    vectors.ensure_capacity(10)
    vectors.write_rows(np.arange(10), np.zeros((10, 384), np.float32))
    vectors.sync()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dual_encoder.errors import DualEncoderError, StoreFormatError

FORMAT_NAME = "dual-encoder-embedded-store"
FORMAT_VERSION = 1
DATABASE_FILE = "store.sqlite"
LOCK_FILE = "store.lock"
CHECKPOINT_FILE = "slots.npz"
VECTOR_FILE_PREFIX = "vectors-"
VECTOR_FILE_SUFFIX = ".f32"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    slot INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    content TEXT,
    meta TEXT NOT NULL,
    extra TEXT NOT NULL,
    has_vector INTEGER NOT NULL,
    norm REAL NOT NULL,
    crc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_seq ON docs (seq);
CREATE TABLE IF NOT EXISTS changes (gen INTEGER NOT NULL, slot INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS changes_gen ON changes (gen);
"""


def checked_rows(
    slots: np.ndarray, vectors: np.ndarray, dimension: int, *, call: str, unit: str
) -> tuple[np.ndarray, np.ndarray]:
    """``slots`` as int64 and ``vectors`` as float32 ``(n, dimension)``, one vector per distinct non-negative slot,
    for a derived index's write ``call``; ``unit`` names a slot in the messages ("slot", "position").

    :raises ValueError: the shapes disagree, a slot is negative, or a slot repeats.
    """
    slots = np.asarray(slots, dtype=np.int64).reshape(-1)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(slots), dimension):
        raise ValueError(
            f"{call}() needs one {dimension}-d vector per {unit}: got {len(slots)} {unit}s and vectors of "
            f"shape {vectors.shape}."
        )
    if len(slots) and slots.min() < 0:
        raise ValueError(f"{unit.capitalize()}s must be non-negative integers (the store's row slots).")
    if len(np.unique(slots)) != len(slots):
        raise ValueError(f"{call}() got the same {unit} twice in one call: pass each {unit} once.")
    return slots, vectors


def save_arrays_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as one ``.npz`` file that a crash leaves either whole or as it was: written beside
    ``path``, flushed to disk, then renamed over it."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]  # numpy's stub fears a key could fill allow_pickle
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def load_checked_arrays(
    path: Path,
    *,
    what: str,
    file_format: str,
    version: int | tuple[int, ...],
    dimension: int,
    similarity: str,
    skip: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and the arrays (except ``skip``) of a file :func:`save_arrays_atomically` wrote for a
    derived index (``what``: how messages name it), checked to be ``file_format`` at ``version`` (or one of a
    tuple of versions) for ``dimension``-d ``similarity`` vectors.

    :raises ValueError: naming the file and saying that deleting it makes the store rebuild it, when it cannot
        be read, is another format or version, or was written for another dimension or similarity.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name not in skip}
        header = json.loads(arrays["header"].tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Cannot read the {what} '{path}' ({error}). Delete it: the store rebuilds it from its vectors."
        ) from error
    versions = version if isinstance(version, tuple) else (version,)
    if not isinstance(header, dict) or header.get("format") != file_format or header.get("version") not in versions:
        names = " or ".join(str(number) for number in versions)
        raise ValueError(f"'{path}' is not a version-{names} {what} file. Delete it: the store rebuilds it.")
    if header.get("dimension") != int(dimension) or header.get("similarity") != similarity:
        raise ValueError(
            f"The {what} '{path}' holds {header.get('dimension')}-d {header.get('similarity')} vectors, not "
            f"{dimension}-d {similarity}. Delete it: the store rebuilds it."
        )
    return header, arrays


class StoreLockedError(DualEncoderError, RuntimeError):
    """Another process is writing to the same embedded-store directory and did not finish in time."""


def open_database(file: Path | None, *, timeout: float) -> sqlite3.Connection:
    """A connection to the store database at ``file`` (``None``: in memory), schema created if missing.

    Autocommit mode: every transaction is explicit (``BEGIN IMMEDIATE`` for writes).
    :raises StoreFormatError: the file is not a SQLite database (naming it).
    """
    with database_errors(file):
        connection = sqlite3.connect(
            ":memory:" if file is None else str(file), isolation_level=None, check_same_thread=False, timeout=timeout
        )
        if file is not None:
            # WAL: readers never block the writer and see only committed transactions; FULL syncs the log
            # on every commit, so a returned write survives power loss, not only a killed process.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return connection


@contextlib.contextmanager
def database_errors(file: Path | None) -> Iterator[None]:
    """Translate SQLite's damage reports into :class:`StoreFormatError` naming the file, and a database
    that stays locked into :class:`StoreLockedError`."""
    try:
        yield
    except sqlite3.OperationalError as error:
        message = str(error).lower()
        if "locked" in message or "busy" in message:
            raise StoreLockedError(
                f"The embedded store database '{file}' stayed locked by another process ({error}). Wait for the "
                f"other writer to finish, or raise lock_timeout."
            ) from error
        if "disk i/o" in message or "malformed" in message or "not a database" in message or "corrupt" in message:
            raise _damaged(file, error) from error
        raise
    except sqlite3.DatabaseError as error:
        raise _damaged(file, error) from error


def _damaged(file: Path | None, error: Exception) -> StoreFormatError:
    return StoreFormatError(
        f"The embedded store database '{file}' is damaged ({type(error).__name__}: {error}). Nothing was changed. "
        f"Restore the directory from a backup, or re-index into a new directory."
    )


def read_info(connection: sqlite3.Connection) -> dict[str, Any]:
    """Every ``info`` fact, JSON-decoded."""
    return {key: json.loads(value) for key, value in connection.execute("SELECT key, value FROM info")}


def write_info(connection: sqlite3.Connection, facts: dict[str, Any]) -> None:
    """Set ``info`` facts (inside the caller's transaction)."""
    connection.executemany(
        "INSERT INTO info (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(key, json.dumps(value, ensure_ascii=False, allow_nan=False)) for key, value in facts.items()],
    )


class VectorFile:
    """A raw float32 matrix in a file (or in memory when ``file`` is ``None``), one row per slot.

    Reads go through a read-only memory map (:attr:`matrix`), so the rows live in the page cache once and
    reopening costs nothing until a search touches them. Writes use ``pwrite`` into the file, which the map
    sees at once. The file only grows (shrinking it under another process's map would crash that process).
    """

    def __init__(self, file: Path | None, dimension: int) -> None:
        self.file = file
        self.dimension = dimension
        self.row_bytes = 4 * dimension
        self._fd: int | None = None
        self._memory = np.zeros((0, dimension), dtype=np.float32)
        self.matrix = self._memory
        #: The same rows, mapped for reading a few scattered rows (see :meth:`_remap`).
        self.scattered_rows = self._memory
        if file is not None:
            self._fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
            self._remap()

    @property
    def capacity(self) -> int:
        """Rows the file (or buffer) can hold without growing."""
        if self._fd is None:
            return self._memory.shape[0]
        return os.fstat(self._fd).st_size // self.row_bytes

    def check_holds(self, rows: int) -> None:
        """Refuse a file too short for ``rows`` committed rows (truncated or replaced)."""
        if self._fd is not None and self.capacity < rows:
            raise StoreFormatError(
                f"The embedded store's vector file '{self.file}' is truncated: it holds {self.capacity} rows but the "
                f"database refers to {rows}. Restore the directory from a backup, or re-index into a new directory."
            )

    def ensure_capacity(self, rows: int) -> None:
        """Grow to hold at least ``rows`` rows (by half again, so appends are amortised)."""
        capacity = self.capacity
        if rows > capacity:
            new_capacity = max(rows, capacity + capacity // 2, 1024)
            if self._fd is None:
                grown = np.zeros((new_capacity, self.dimension), dtype=np.float32)
                grown[:capacity] = self._memory
                self._memory = self.matrix = self.scattered_rows = grown
                return
            os.ftruncate(self._fd, new_capacity * self.row_bytes)
        self.refresh_map(rows)

    def refresh_map(self, rows: int) -> None:
        """Map the file again if another writer grew it beyond the current map and ``rows`` need it."""
        if self._fd is not None and self.matrix.shape[0] < rows:
            self._remap()

    def _remap(self) -> None:
        assert self._fd is not None and self.file is not None
        capacity = self.capacity
        if capacity == 0:
            self.matrix = self.scattered_rows = np.zeros((0, self.dimension), dtype=np.float32)
            return
        # A plain ndarray over the map (numpy's memmap subclass adds overhead to every row gather). Arrays
        # that running searches hold keep their map alive after a remap.
        mapped = mmap.mmap(self._fd, capacity * self.row_bytes, prot=mmap.PROT_READ)
        self.matrix = np.frombuffer(mapped, dtype=np.float32).reshape(capacity, self.dimension)
        # A second map of the same pages for rescoring a few scattered rows: on a cold page cache the kernel's
        # readahead makes every row read pull in the pages after it too, which a scan wants and a gather of a
        # thousand scattered rows (the first search after reopening a large store) does not. Both maps share
        # the page cache, so this costs address space, not memory.
        scattered = mmap.mmap(self._fd, capacity * self.row_bytes, prot=mmap.PROT_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            scattered.madvise(mmap.MADV_RANDOM)
        self.scattered_rows = np.frombuffer(scattered, dtype=np.float32).reshape(capacity, self.dimension)

    def write_rows(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Write ``vectors[i]`` into row ``slots[i]``; runs of consecutive slots go in one call."""
        if len(slots) == 0:
            return
        order = np.argsort(slots, kind="stable")
        slots, vectors = slots[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
        if self._fd is None:
            self._memory[slots] = vectors
            return
        breaks = np.flatnonzero(np.diff(slots) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(slots)]):
            data = vectors[start:stop].tobytes()
            offset = int(slots[start]) * self.row_bytes
            while data:
                written = os.pwrite(self._fd, data, offset)
                data, offset = data[written:], offset + written

    def sync(self) -> None:
        """Make written rows durable before the database commit that makes them live."""
        if self._fd is not None:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.matrix = self.scattered_rows = np.zeros((0, self.dimension), dtype=np.float32)

    def __del__(self) -> None:  # a store dropped without close() must not leak its descriptor
        with contextlib.suppress(Exception):
            self.close()


class WriterLock:
    """An exclusive ``flock`` on ``store.lock``, re-entrant within one holder, waiting up to ``timeout`` s."""

    def __init__(self, file: Path | None, timeout: float, location: str) -> None:
        self.file = file
        self.timeout = timeout
        self.location = location
        self._fd: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        if self.file is None:
            return
        if self._depth:
            self._depth += 1
            return
        if self._fd is None:
            self._fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        pause = 0.002
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"{self.location} is being written by another process (it holds '{self.file}'); waited "
                        f"{self.timeout:g} s. Let that writer finish, open the store with a longer lock_timeout, or "
                        f"write from one process only (readers never need the lock)."
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        self._depth = 1

    def release(self) -> None:
        if self.file is None or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also drops the lock
            self._fd = None
            self._depth = 0

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_CHECKPOINT_ARRAYS = ("live", "has_vector", "seq", "inv_norms")


def write_checkpoint(file: Path, generation: int, vectors_file: str | None, arrays: dict[str, np.ndarray]) -> None:
    """Save the per-slot arrays of the committed state at ``generation`` (atomically: temp file, rename),
    unless a checkpoint of a later generation (another process's) is already there."""
    existing = read_checkpoint_generation(file)
    if existing is not None and existing >= generation:
        return
    temporary = file.with_name(f".{file.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            # The ignore below: numpy's stub fears a key of **arrays could fill allow_pickle.
            np.savez(
                handle,
                generation=np.array([generation], dtype=np.int64),
                vectors_file=np.frombuffer((vectors_file or "").encode(), dtype=np.uint8),
                **{name: arrays[name] for name in _CHECKPOINT_ARRAYS},  # type: ignore[arg-type]
            )
        os.replace(temporary, file)
    finally:
        temporary.unlink(missing_ok=True)


def read_checkpoint_generation(file: Path) -> int | None:
    """The generation of the checkpoint at ``file`` (``None``: none or unreadable); reads only that entry."""
    try:
        with np.load(file, allow_pickle=False) as data:
            return int(data["generation"][0])
    except (OSError, ValueError, KeyError, EOFError, IndexError):
        return None


def read_checkpoint(file: Path) -> dict[str, Any] | None:
    """The checkpoint at ``file``, or ``None`` when it is missing or unreadable (the caller reads the database)."""
    try:
        with np.load(file, allow_pickle=False) as data:
            checkpoint: dict[str, Any] = {name: data[name] for name in _CHECKPOINT_ARRAYS}
            checkpoint["generation"] = int(data["generation"][0])
            checkpoint["vectors_file"] = data["vectors_file"].tobytes().decode() or None
    except (OSError, ValueError, KeyError, EOFError, IndexError, UnicodeDecodeError):
        return None
    sizes = {len(checkpoint[name]) for name in _CHECKPOINT_ARRAYS}
    return checkpoint if len(sizes) == 1 else None
