"""BM25 keyword search for the embedded store: a :class:`~dual_encoder.keyword.KeywordIndex` over the
``content`` of every stored document, keyed by the store's row slots.

The index tokenises and scores by the store's ``keyword_config`` (saved with the store; new settings rebuild it).
It is built on the first keyword search (from the database's content column, with a log message:
this is also how a store written before keyword search existed gets one), then kept current by every write
and delete of this process and by the change log of other processes' writes. It is saved beside the store
(``keyword-<generation>-<tag>/`` plus the pointer ``keyword.json``) on close and after bulk writes, tagged with
the store generation it reflects; on the next open it is loaded and the change log since that generation is
replayed. A saved index that cannot be brought up to date (a bulk write or ``delete_all`` since, or a damaged
file) is rebuilt. Filters are the store's own (the same mask as vector search).

Example::

    store = EmbeddedStore("my-index")
    store.keyword_search("vitamin D fracture", top_k=5)    # builds the index on first use
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dual_encoder.keyword import KeywordConfig, KeywordIndex
from dual_encoder.stores.contract import SearchHit, SearchResult

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path

    from dual_encoder.stores.contract import StoredRecord

logger = logging.getLogger(__name__)

_POINTER = "keyword.json"
_PREFIX = "keyword-"
_BUILD_CHUNK = 20_000


class KeywordSearchMixin:
    """Keyword search for :class:`~dual_encoder.embedded.EmbeddedStore` (the store calls the ``_keyword_*``
    hooks from its write, delete, reload and close paths, under its lock)."""

    supports_keyword_search = True
    _keyword: KeywordIndex | None = None
    _keyword_saved_generation: int = -1

    if TYPE_CHECKING:  # what the mixin reads from its host store
        path: Path | None
        location: str
        keyword_config: KeywordConfig
        _connection: sqlite3.Connection | None

        @property
        def _db(self) -> sqlite3.Connection: ...

        _end: int
        _generation: int
        _info: dict[str, Any]
        _live: np.ndarray

        def _filter_mask(self, filters: Mapping[str, Any], size: int) -> np.ndarray: ...
        def _select_by_slots(self, columns: str, slots: Sequence[int], *, order: bool) -> list[tuple]: ...
        def _records_from_rows(self, rows: list[tuple]) -> tuple[list[StoredRecord], np.ndarray]: ...
        def _consistent_read(self, read: Callable[[], tuple[Any, np.ndarray]]) -> Any: ...

    # ----------------------------------------------------------------------------------- the search
    def _keyword_search(self, text: str, top_k: int, filters: Mapping[str, Any] | None) -> SearchResult:
        from dual_encoder.embedded.store import _ROW_COLUMNS

        def read() -> tuple[SearchResult, np.ndarray]:
            index = self._keyword_index()
            end = self._end
            allowed = self._live[:end].copy() if filters is None else self._filter_mask(filters, end)
            slots, scores = index.search(text, top_k, allowed)
            if not len(slots):
                return SearchResult(hits=[], method="keyword"), slots
            rows = self._select_by_slots(_ROW_COLUMNS, slots.tolist(), order=True)
            records, used = self._records_from_rows(rows)
            by_slot = dict(zip(used.tolist(), records))
            hits = [
                SearchHit(record=by_slot[slot], score=float(score))
                for slot, score in zip(slots.tolist(), scores.tolist())
                if slot in by_slot
            ]
            return SearchResult(hits=hits, method="keyword"), slots

        return self._consistent_read(read)

    # ------------------------------------------------------------------------------ keeping current
    def _keyword_changed(self, cleared: np.ndarray, slots: Sequence[int], contents: Sequence[str | None]) -> None:
        """Mirror a committed change: ``cleared`` slots lost their document, ``slots`` hold ``contents`` now."""
        if self._keyword is None:
            return
        if len(cleared):
            self._keyword.clear_rows(cleared)
        if len(slots):
            self._keyword.set_rows(np.asarray(slots, dtype=np.int64), list(contents))

    def _keyword_forget(self) -> None:
        """Drop the in-memory index (a full reload; the next keyword search loads or builds it again)."""
        self._keyword = None
        self._keyword_saved_generation = -1

    # ------------------------------------------------------------------------------ building, loading
    def _keyword_index(self) -> KeywordIndex:
        """The index, loaded or built on first use. Call under ``_lock``."""
        if self._keyword is not None:
            return self._keyword
        index = self._load_saved_keyword()
        if index is None:
            index = KeywordIndex(self.keyword_config)
            count = self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
            if count:
                logger.info(
                    "Building the keyword index of %s over %d documents (once: it is kept current and saved "
                    "beside the store).",
                    self.location,
                    count,
                )
            cursor = self._db.execute("SELECT slot, content FROM docs")
            while rows := cursor.fetchmany(_BUILD_CHUNK):
                index.set_rows([row[0] for row in rows], [row[1] for row in rows])
            self._keyword = index
            self._save_keyword()
        self._keyword = index
        return index

    def _load_saved_keyword(self) -> KeywordIndex | None:
        if self.path is None:
            return None
        try:
            pointer = json.loads((self.path / _POINTER).read_text(encoding="utf-8"))
            generation = int(pointer["generation"])
            folder = self.path / str(pointer["folder"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        info = self._info
        if not (
            generation <= self._generation
            and info.get("reload_generation", 0) <= generation
            and info.get("log_floor", 1) <= generation + 1
        ):
            return None  # a bulk write or a reset since: the change log cannot bring it up to date
        try:
            index = KeywordIndex.load(folder)
        except Exception as error:  # only a cache: rebuild it
            logger.warning("Rebuilding the keyword index of %s: the saved one did not load (%s).", self.location, error)
            return None
        if index.config != self.keyword_config:
            logger.info(
                "Rebuilding the keyword index of %s with the new keyword settings %s.",
                self.location,
                self.keyword_config.to_dict(),
            )
            return None
        if generation < self._generation:
            changed = [
                row[0]
                for row in self._db.execute(
                    "SELECT DISTINCT slot FROM changes WHERE gen > ? AND gen <= ?", (generation, self._generation)
                )
            ]
            present = {row[0]: row[1] for row in self._select_by_slots("slot, content", changed, order=False)}
            index.clear_rows(np.array([slot for slot in changed if slot not in present], dtype=np.int64))
            if present:
                index.set_rows(list(present), list(present.values()))
        self._keyword_saved_generation = generation
        return index

    def _save_keyword(self) -> None:
        """Save the index beside the store, tagged with the generation it reflects."""
        if self.path is None or self._keyword is None or self._keyword_saved_generation == self._generation:
            return
        try:
            newer = json.loads((self.path / _POINTER).read_text(encoding="utf-8"))["generation"] > self._generation
        except (OSError, ValueError, KeyError, TypeError):
            newer = False
        if newer:  # another process saved a later state: keep it
            return
        name = f"{_PREFIX}{self._generation}-{uuid.uuid4().hex[:8]}"
        try:
            self._keyword.revision = self._generation
            self._keyword.save(self.path / name)
            temporary = self.path / f".{_POINTER}.{name}.tmp"
            temporary.write_text(json.dumps({"folder": name, "generation": self._generation}), encoding="utf-8")
            os.replace(temporary, self.path / _POINTER)
        except OSError as error:
            logger.warning(
                "Could not save the keyword index of %s (%s); it is rebuilt when needed.", self.location, error
            )
            return
        self._keyword_saved_generation = self._generation
        for old in self.path.glob(f"{_PREFIX}*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
