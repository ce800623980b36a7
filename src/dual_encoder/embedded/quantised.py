"""An exact first pass for the embedded store's exact search: 8-bit codes with a guaranteed error bound.

Exact float32 top-k over a large store is bound by memory bandwidth (every query reads the whole float32
matrix). :class:`QuantisedVectors` keeps one byte per dimension per row instead (a quarter of the bytes) and
answers "which rows can be in the exact top k?" with a candidate set that provably contains them; the store
then scores only those candidates in float32, so the result is the exact float32 top k, ties included.

**Codes.** Each dimension ``i`` has a range ``[lower_i, lower_i + width_i]`` (the vectors' own range at the
last (re)build, widened by a margin) cut into 255 steps of ``step_i = width_i / 255``; a value ``v`` is stored
as ``c = floor((v - lower_i) / step_i)`` and read back as ``lower_i + (c + 0.5) * step_i`` (faiss's
``QT_8bit`` scalar quantiser decodes exactly so, and scans the codes). For cosine the unit vectors
``v / |v|`` are encoded (a zero vector stays zero), for dot the raw vectors.

**The bound.** For a row ``d`` whose every component lies in its range, each decoded component is within
``step_i / 2`` of the true one, so for any query ``q``::

    |q . d - q . d_hat| <= sum_i |q_i| * step_i / 2 =: B(q)

and also ``<= |q| * |d - d_hat| <= |q| * R`` with ``R`` the largest residual norm of any encoded in-range row.
The error bound is ``E(q) = min(B(q), |q| * R)`` plus the float32 rounding of both scores (``4 * dim * 2**-24 *
|q| * M``, ``M`` bounding every row's and decoded row's norm). Rows with a component outside its range
("outliers", rare: the ranges carry a margin) are not covered by ``E``; they are always candidates.

**The candidate set.** The scan returns the ``K`` best approximate scores among the allowed rows. With ``t``
the ``k``-th best approximate score of a non-outlier row, at least ``k`` rows score exactly ``>= t - E``, so
the exact ``k``-th best is ``>= t - E``; a row can reach it only if its approximate score is ``>= t - 2E``.
Every row the scan did not return scores at most the ``K``-th returned approximate score ``m``, so when
``m + E < t - E`` the returned rows with approximate score ``>= t - 2E`` plus the outliers hold every row that
scores at least the exact ``k``-th best (all ties with it included). Otherwise ``K`` grows, and past
``max_candidates`` :meth:`QuantisedVectors.candidates` returns ``None``: the caller scans in float32.

**The scan.** faiss's scanner for these codes runs over row ranges of the code buffer. Rows that must not be
scanned (not allowed, or outliers) are skipped through a bitmap, unless they are few (at most 1/64 of the
rows): then they are scanned too and dropped from the result, which is a little longer to make room, and a
range whose result held too many of them to keep ``K`` others is scanned again with the bitmap. A scan of at
least :data:`TWO_THREAD_MIN_ROWS` rows is cut into a few chunks holding as many scanned rows each, which the
calling thread and one helper thread take one at a time (faiss releases the GIL while it scans); the chunks'
top-``K`` lists are merged. Every row's approximate score is the same whichever chunk holds it, so the merged
top ``K`` and the candidate set equal a single scan's. The helper thread is one per process, shared by every
:class:`QuantisedVectors`: a query that finds it busy with another query scans every chunk itself, and a query
never waits for the helper to start (a helper that starts after the caller took the last chunk does nothing),
so concurrent searches never wait for each other and never run more than one scanning thread beyond their own.
A process allowed a single CPU (affinity mask or cgroup quota) always scans on one thread. Faiss's OpenMP
threads are never used.

**Keeping current.** :meth:`set_rows` encodes new rows in place (rows past the capacity copy the codes into a
larger buffer; searches running meanwhile keep the old one); when outliers exceed ``max(1024, rows / 200)``
the ranges are recomputed from every encoded row (read back through ``vectors``) and all rows re-encoded.
:meth:`clear_rows` forgets rows. :meth:`save` writes one ``.npz`` (no pickle) atomically; :meth:`load` reads it.

Thread safety: writes (:meth:`set_rows`, :meth:`clear_rows`, :meth:`rebuild`) must be serialised by the caller;
:meth:`candidates` may run concurrently with them and with itself. It reads one consistent state, except that
:meth:`set_rows` writes the codes of rows that fit the capacity in place: a search that allows a slot which is
cleared and set again while it runs may rank that slot by its new code, so a caller that reuses slots must
discard a result when one of the returned candidates changed meanwhile (the store does).

Example::

    import numpy as np
    from dual_encoder.embedded.quantised import QuantisedVectors

    matrix = np.random.default_rng(0).standard_normal((50_000, 384), dtype=np.float32)
    codes = QuantisedVectors(384, "dot", vectors=lambda slots: matrix[slots])
    codes.set_rows(np.arange(len(matrix)), matrix)
    allowed = np.ones(len(matrix), dtype=bool)
    slots = codes.candidates(matrix[7], k=10, allowed=allowed)   # superset of the exact top 10, or None
    scores = matrix[slots] @ matrix[7]                            # rank these exactly
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dual_encoder.cpus import usable_cpus
from dual_encoder.embedded.storage import checked_rows, load_checked_arrays, save_arrays_atomically

try:
    import faiss
except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
    raise ImportError("dual_encoder.embedded.quantised needs faiss-cpu: pip install 'faiss-cpu>=1.15,<1.16'") from error

__all__ = ["TWO_THREAD_MIN_ROWS", "QuantisedVectors"]

_FORMAT = "dual-encoder-quantised-vectors"
_FORMAT_VERSION = 1
_SIMILARITIES = ("cosine", "dot")
_LEVELS = 255
# Each range is widened by this fraction of its width on both sides, so later rows rarely fall outside it.
_RANGE_MARGIN = 1 / 16
# Outliers (rows with a component outside its range) tolerated before every row is re-encoded.
_MAX_OUTLIERS_MIN = 1024
_MAX_OUTLIERS_FRACTION = 0.005
# Rows encoded per numpy block (bounds the temporary float32 arrays).
_ENCODE_BLOCK = 32_768
# Bytes read from a saved file at a time.
_READ_CHUNK = 1 << 24
# The unit roundoff of float32.
_UNIT_ROUNDOFF = 2.0**-24
#: Rows a query's scan must cover before its two halves run on two threads (when the process may use two
#: CPUs): below it, handing half to the helper thread costs more than it saves (benchmarks/exact_threads.py).
TWO_THREAD_MIN_ROWS = 16_384
# Rows inside the scanned range that are not scanned (not allowed, or outliers) are skipped through a bitmap,
# which costs every row a lookup; when they are at most 1/_BITMAP_FREE_MAX_FRACTION of the range, scanning them
# too is cheaper. Each chunk's result then grows by up to _BITMAP_FREE_EXTRA rows to make room for excluded rows
# among the best, which are dropped; a chunk that had more of them is scanned again with the bitmap.
_BITMAP_FREE_MAX_FRACTION = 64
_BITMAP_FREE_EXTRA = 64
# A two-thread scan is cut into chunks that the two threads take one at a time, so a helper thread that starts
# late (or never, on a busy machine) leaves its share to the calling thread instead of holding the query up.
# Chunks hold at least _CHUNK_MIN_ROWS scanned rows (each costs a scanner and a result list) and there are at
# most _CHUNKS_MAX of them.
_CHUNK_MIN_ROWS = 16_384
_CHUNKS_MAX = 8
# Chunk boundaries fall on multiples of this many rows: a whole 64-bit word of the packed bitmap.
_CHUNK_ALIGNMENT = 64


@dataclasses.dataclass(frozen=True)
class _Book:
    """Everything a search reads, replaced as a whole when the ranges or the capacity change (so a search
    that started on the old one finishes on a consistent state)."""

    lower: np.ndarray  # float32 (d,)
    width: np.ndarray  # float32 (d,)
    index: Any  # faiss.IndexScalarQuantizer whose codes are `codes`
    codes: np.ndarray  # uint8 (capacity, d), a view of the faiss index's own code buffer
    encoded: np.ndarray  # bool (capacity,): whether a row holds a current code
    residual_max: float  # largest |d - d_hat| over encoded rows inside the ranges
    norm_max: float  # largest |d| and |d_hat| over encoded rows
    outliers: np.ndarray  # int64 sorted: encoded rows with a component outside its range

    @property
    def capacity(self) -> int:
        return int(self.codes.shape[0])


class QuantisedVectors:
    """8-bit codes of float32 rows keyed by slot, for exact top-k candidates (see the module docstring).

    :param dimension: Vector dimension.
    :param similarity: ``"cosine"`` (rows and queries are compared as unit vectors) or ``"dot"``.
    :param vectors: ``f(slots: int64 array) -> float32 (len(slots), dimension)``: the current rows, read when
        the ranges are recomputed. Without it the ranges are never recomputed (outliers stay outliers).
    :param max_candidates: Largest scan result tried before :meth:`candidates` gives up (returns ``None``).
    :param scan_threads: Threads one query's scan may use: ``None`` (default) uses two when the scan covers at
        least :data:`TWO_THREAD_MIN_ROWS` rows, ``1`` always one, ``2`` two whenever the scan has two ranges
        worth splitting. Capped by the CPUs the process may use either way. Settable later as an attribute.
    """

    def __init__(
        self,
        dimension: int,
        similarity: str,
        *,
        vectors: Callable[[np.ndarray], np.ndarray] | None = None,
        max_candidates: int = 8192,
        scan_threads: int | None = None,
    ) -> None:
        if similarity not in _SIMILARITIES:
            raise ValueError(f"Unknown similarity {similarity!r}: use 'cosine' or 'dot'.")
        if int(dimension) <= 0:
            raise ValueError(f"dimension must be positive, got {dimension}.")
        if int(max_candidates) < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}.")
        if scan_threads not in (None, 1, 2):
            raise ValueError(f"scan_threads must be None (automatic), 1 or 2, got {scan_threads!r}.")
        self.dimension = int(dimension)
        self.similarity = similarity
        self.max_candidates = int(max_candidates)
        self.scan_threads = scan_threads
        self._vectors_of = vectors
        self._book: _Book | None = None
        self.rebuilds = 0  # how often the ranges were recomputed after construction (observable in tests)
        # Scans cut into chunks for two threads (observable in tests and benchmarks).
        self.two_thread_scans = 0

    # ------------------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
        book = self._book
        return 0 if book is None else int(np.count_nonzero(book.encoded))

    @property
    def outliers(self) -> int:
        """Encoded rows outside the ranges (always rescored exactly)."""
        return 0 if self._book is None else len(self._book.outliers)

    def __repr__(self) -> str:
        return (
            f"QuantisedVectors(dimension={self.dimension}, similarity={self.similarity!r}, {len(self)} rows, "
            f"{self.outliers} outliers)"
        )

    def encoded(self, size: int) -> np.ndarray:
        """Bool mask of length ``size``: which slots hold a current code."""
        mask = np.zeros(size, dtype=bool)
        book = self._book
        if book is not None:
            shared = min(size, book.capacity)
            mask[:shared] = book.encoded[:shared]
        return mask

    # ------------------------------------------------------------------------------------------ writes
    def set_rows(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Encode ``vectors`` (float32 ``(n, dimension)``, raw: cosine normalises them here) as the rows of
        ``slots`` (distinct, non-negative), replacing what those slots held."""
        slots, vectors = checked_rows(slots, vectors, self.dimension, call="set_rows", unit="slot")
        if len(slots) == 0:
            return
        prepared = self._prepare(vectors)
        book = self._book
        if book is None:
            book = self._new_book(prepared, int(slots.max()) + 1)
        elif int(slots.max()) >= book.capacity:
            book = self._grown(book, int(slots.max()) + 1)
        residual, norm, outside = self._encode_into(book, slots, prepared)
        outliers = book.outliers
        kept_out = outliers[~np.isin(outliers, slots)] if len(outliers) else outliers
        new_out = slots[outside]
        inside = ~outside
        book = dataclasses.replace(
            book,
            residual_max=max(book.residual_max, float(residual[inside].max()) if inside.any() else 0.0),
            norm_max=max(book.norm_max, norm),
            outliers=np.union1d(kept_out, new_out).astype(np.int64) if len(new_out) else kept_out,
        )
        self._book = book
        book.encoded[slots] = True
        rows = int(np.count_nonzero(book.encoded))
        if len(book.outliers) > max(_MAX_OUTLIERS_MIN, _MAX_OUTLIERS_FRACTION * rows) and self._vectors_of is not None:
            self.rebuild()

    def clear_rows(self, slots: np.ndarray) -> None:
        """Forget the rows of ``slots`` (slots without a code are ignored)."""
        book = self._book
        if book is None:
            return
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        slots = slots[(slots >= 0) & (slots < book.capacity)]
        if len(slots) == 0:
            return
        # A new mask, not an in-place change: a search running meanwhile may still allow these slots.
        encoded = book.encoded.copy()
        encoded[slots] = False
        outliers = book.outliers
        if len(outliers) and np.isin(outliers, slots).any():
            outliers = outliers[~np.isin(outliers, slots)]
        self._book = dataclasses.replace(book, encoded=encoded, outliers=outliers)

    def rebuild(self) -> None:
        """Recompute the ranges from every encoded row (read through ``vectors``) and re-encode them all."""
        book = self._book
        if book is None or self._vectors_of is None:
            return
        slots = np.flatnonzero(book.encoded)
        if len(slots) == 0:
            self._book = None
            return
        lower, upper = None, None
        for start in range(0, len(slots), _ENCODE_BLOCK):
            block = self._prepare(self._rows(slots[start : start + _ENCODE_BLOCK]))
            low, high = block.min(axis=0), block.max(axis=0)
            lower = low if lower is None else np.minimum(lower, low)
            upper = high if upper is None else np.maximum(upper, high)
        assert lower is not None and upper is not None  # set by the first block: there is at least one slot
        fresh = self._empty_book(lower, upper, book.capacity)
        residual_max, norm_max, outliers = 0.0, 0.0, []
        for start in range(0, len(slots), _ENCODE_BLOCK):
            block = slots[start : start + _ENCODE_BLOCK]
            residual, norm, outside = self._encode_into(fresh, block, self._prepare(self._rows(block)))
            inside = ~outside
            if inside.any():
                residual_max = max(residual_max, float(residual[inside].max()))
            norm_max = max(norm_max, norm)
            outliers.append(block[outside])
        fresh.encoded[slots] = True
        self._book = dataclasses.replace(
            fresh, residual_max=residual_max, norm_max=norm_max, outliers=np.concatenate(outliers).astype(np.int64)
        )
        self.rebuilds += 1

    # ------------------------------------------------------------------------------------------ search
    def error_bound(self, query: np.ndarray) -> float:
        """``E(q)``: a bound on ``|q . d - approximate score|`` for every encoded row inside the ranges, float32
        rounding of both scores included. ``query`` as given to :meth:`candidates`."""
        book = self._book
        if book is None:
            return math.inf
        return self._bound(book, np.asarray(query, dtype=np.float64).reshape(-1))

    def candidates(self, query: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray | None:
        """Slots (int64, ascending) among which the exact top ``k`` of the ``allowed`` slots lie, with every row
        tied with the exact ``k``-th best; ``None`` when the scan cannot narrow it down (score every allowed row).

        :param query: float32 query of the index's dimension; for cosine, scaled to unit length by the caller
            (the scores compared are ``query . d / |d|``).
        :param k: How many best rows the caller wants.
        :param allowed: Bool mask by slot; every allowed slot must hold a code (else ``ValueError``).
        """
        book = self._book
        query = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if query.shape[1] != self.dimension:
            raise ValueError(f"Query has dimension {query.shape[1]}; these codes hold {self.dimension}-d vectors.")
        allowed = np.asarray(allowed, dtype=bool).reshape(-1)
        size = len(allowed)
        if book is None or k <= 0:
            return None
        if size > book.capacity and allowed[book.capacity :].any():
            raise ValueError("candidates(): some allowed slots lie beyond the encoded rows.")
        allowed = allowed[: book.capacity]
        if (allowed & ~book.encoded[: len(allowed)]).any():
            raise ValueError("candidates(): some allowed slots hold no code; set_rows() them first.")
        count = int(np.count_nonzero(allowed))
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        outliers = book.outliers
        outliers = outliers[outliers < len(allowed)] if len(outliers) else outliers
        outliers = outliers[allowed[outliers]] if len(outliers) else outliers
        scanned = allowed
        if len(outliers):
            scanned = allowed.copy()
            scanned[outliers] = False
        scanned_count = count - len(outliers)
        if scanned_count < k:
            return np.flatnonzero(allowed).astype(np.int64)
        bound = self._bound(book, query[0].astype(np.float64))
        if not math.isfinite(bound):
            return None
        plan = _plan_scan(scanned, scanned_count, self._threads_for(scanned_count))
        # A longer result costs the scan almost nothing, and one that is too short means a second scan.
        wanted = min(scanned_count, max(4 * k, k + 256))
        while True:
            scores, found = _scan_top(book, query[0], plan, wanted)
            self.two_thread_scans += len(plan.chunks) > 1
            if len(found) < k:  # cannot happen while every allowed slot holds a code; never guess
                return None
            # k-th best approximate score minus the bound: the exact k-th best is at least this.
            floor = scores[k - 1] - bound
            everything = len(found) < wanted or wanted >= scanned_count
            if everything or scores[-1] + bound < floor:
                chosen = found[scores + bound >= floor]
                return np.union1d(chosen.astype(np.int64), outliers)
            if wanted >= self.max_candidates:
                return None
            wanted = min(scanned_count, self.max_candidates, wanted * 4)

    # ------------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the codes to one ``.npz`` file at ``path`` (atomically: a temporary file, then a rename)."""
        path = Path(path)
        book = self._book
        header: dict[str, Any] = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "dimension": self.dimension,
            "similarity": self.similarity,
            "empty": book is None,
        }
        arrays: dict[str, np.ndarray] = {}
        if book is not None:
            header.update(residual_max=book.residual_max, norm_max=book.norm_max)
            rows = np.flatnonzero(book.encoded)
            end = int(rows.max()) + 1 if len(rows) else 0
            arrays.update(
                lower=book.lower,
                width=book.width,
                codes=book.codes[:end],
                encoded=book.encoded[:end],
                outliers=book.outliers,
            )
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        save_arrays_atomically(path, arrays)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        dimension: int,
        similarity: str,
        *,
        vectors: Callable[[np.ndarray], np.ndarray] | None = None,
        max_candidates: int = 8192,
        scan_threads: int | None = None,
    ) -> QuantisedVectors:
        """Read codes written by :meth:`save`. Raises ``ValueError`` naming the file when it is not such a file,
        is damaged, or was written for another dimension or similarity."""
        path = Path(path)
        # The codes (the bulk of the file) are read later, straight into the scan's buffer.
        header, arrays = load_checked_arrays(
            path,
            what="quantised vectors",
            file_format=_FORMAT,
            version=_FORMAT_VERSION,
            dimension=dimension,
            similarity=similarity,
            skip=frozenset({"codes"}),
        )
        loaded = cls(dimension, similarity, vectors=vectors, max_candidates=max_candidates, scan_threads=scan_threads)
        if header["empty"]:
            return loaded
        try:
            lower, width = arrays["lower"], arrays["width"]
            encoded, outliers = arrays["encoded"], arrays["outliers"]
            consistent = (
                lower.shape == width.shape == (dimension,)
                and encoded.dtype == bool
                and (len(outliers) == 0 or (outliers.min() >= 0 and outliers.max() < len(encoded)))
                and bool(np.all(width > 0))
            )
        except KeyError as error:
            raise ValueError(
                f"The quantised vectors '{path}' lack {error} (truncated or damaged). Delete it: the store rebuilds it."
            ) from error
        if not consistent:
            raise ValueError(f"The quantised vectors '{path}' are inconsistent. Delete it: the store rebuilds it.")
        book = loaded._empty_book(
            lower.astype(np.float32),
            (lower + width).astype(np.float32),
            len(encoded),
            margin=False,
            width=width.astype(np.float32),
        )
        _read_codes(path, book.codes[: len(encoded)])
        book.encoded[: len(encoded)] = encoded
        loaded._book = dataclasses.replace(
            book,
            residual_max=float(header["residual_max"]),
            norm_max=float(header["norm_max"]),
            outliers=outliers.astype(np.int64),
        )
        return loaded

    # ------------------------------------------------------------------------------------------ internals
    def _threads_for(self, rows: int) -> int:
        """Threads the scan of ``rows`` scanned rows runs on: 1 or 2."""
        if self.scan_threads == 1 or rows < 2 * _CHUNK_ALIGNMENT:
            return 1
        if self.scan_threads is None and rows < TWO_THREAD_MIN_ROWS:
            return 1
        return 2 if usable_cpus() >= 2 else 1

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Rows as encoded: unit rows for cosine (zero rows stay zero), unchanged for dot."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.similarity != "cosine":
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors * np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)

    def _rows(self, slots: np.ndarray) -> np.ndarray:
        assert self._vectors_of is not None
        rows = np.asarray(self._vectors_of(slots), dtype=np.float32)
        if rows.shape != (len(slots), self.dimension):
            raise ValueError(
                f"The vectors= function returned shape {rows.shape} for {len(slots)} slots; it must return one "
                f"{self.dimension}-d row per slot."
            )
        return rows

    def _bound(self, book: _Book, query: np.ndarray) -> float:
        length = float(np.linalg.norm(query))
        per_dimension = float(np.abs(query) @ _allowed_error(book.lower, book.width))
        residual = length * book.residual_max
        # Both scores are float32 sums of `dimension` products: each is within dimension * u * |q| * |row| of
        # the real value (u: float32 unit roundoff); decoding adds a few u more.
        rounding = 4 * self.dimension * _UNIT_ROUNDOFF * length * (book.norm_max + book.residual_max)
        return min(per_dimension, residual) + rounding

    def _empty_book(
        self,
        lower: np.ndarray,
        upper: np.ndarray,
        capacity: int,
        *,
        margin: bool = True,
        width: np.ndarray | None = None,
    ) -> _Book:
        lower = np.asarray(lower, dtype=np.float32)
        if width is None:
            width = np.asarray(upper, dtype=np.float32) - lower
            if margin:
                pad = width * np.float32(_RANGE_MARGIN)
                # A constant dimension still gets a small range, so nearby later values fit.
                pad = np.maximum(pad, np.float32(1e-6) * np.maximum(np.abs(lower), np.float32(1e-3)))
                lower = lower - pad
                width = width + 2 * pad
        width = np.asarray(width, dtype=np.float32)
        index = faiss.IndexScalarQuantizer(self.dimension, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(np.concatenate([lower, width]).astype(np.float32), index.sq.trained)
        index.is_trained = True
        capacity = max(int(capacity), 1)
        index.codes.resize(capacity * self.dimension)
        index.ntotal = capacity
        # Zero-filled by the resize; rows only count once `encoded` says so.
        codes = faiss.rev_swig_ptr(index.codes.data(), capacity * self.dimension).reshape(capacity, self.dimension)
        return _Book(
            lower=lower,
            width=width,
            index=index,
            codes=codes,
            encoded=np.zeros(capacity, dtype=bool),
            residual_max=0.0,
            norm_max=0.0,
            outliers=np.zeros(0, dtype=np.int64),
        )

    def _new_book(self, prepared: np.ndarray, rows: int) -> _Book:
        return self._empty_book(prepared.min(axis=0), prepared.max(axis=0), max(rows, 1024))

    def _grown(self, book: _Book, rows: int) -> _Book:
        capacity = max(rows, book.capacity + book.capacity // 2)
        grown = self._empty_book(book.lower, None, capacity, margin=False, width=book.width)  # type: ignore[arg-type]
        grown.codes[: book.capacity] = book.codes
        grown.encoded[: book.capacity] = book.encoded
        return dataclasses.replace(
            grown, residual_max=book.residual_max, norm_max=book.norm_max, outliers=book.outliers
        )

    def _encode_into(
        self, book: _Book, slots: np.ndarray, prepared: np.ndarray
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Write the codes of ``prepared`` rows at ``slots``; returns each row's residual norm, the largest norm
        of a row or its decoding, and which rows have a component outside its range."""
        scale = np.float32(_LEVELS) / book.width
        allowed_error = _allowed_error(book.lower, book.width).astype(np.float32)
        residuals = np.empty(len(slots), dtype=np.float64)
        outside = np.empty(len(slots), dtype=bool)
        norm = 0.0
        for start in range(0, len(slots), _ENCODE_BLOCK):
            rows = prepared[start : start + _ENCODE_BLOCK]
            codes = rows - book.lower
            codes *= scale
            np.floor(codes, out=codes)
            np.clip(codes, 0, _LEVELS, out=codes)
            book.codes[slots[start : start + len(rows)]] = codes.astype(np.uint8)
            # Decoded exactly as faiss's QT_8bit decodes: lower + ((c + 0.5) / 255) * width; `codes` becomes the
            # error row - decoded.
            codes += np.float32(0.5)
            codes /= np.float32(_LEVELS)
            codes *= book.width
            codes += book.lower
            np.subtract(rows, codes, out=codes)
            outside[start : start + len(rows)] = (np.abs(codes) > allowed_error).any(axis=1)
            # float32 sums of squares: a relative 1e-4 covers their rounding.
            residuals[start : start + len(rows)] = np.sqrt(np.einsum("ij,ij->i", codes, codes)) * (1 + 1e-4)
            lengths = np.sqrt(np.einsum("ij,ij->i", rows, rows)) * (1 + 1e-4)
            # |decoded| <= |row| + |error|.
            norm = max(norm, float((lengths + residuals[start : start + len(rows)]).max()))
        return residuals, norm, outside


def _allowed_error(lower: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Per dimension, the largest ``|v - decoded|`` of a value inside the range: half a step, plus a few float32
    roundings of numbers as large as the range's ends (computing the code and decoding it round)."""
    lower64 = lower.astype(np.float64)
    width64 = width.astype(np.float64)
    return width64 / (2 * _LEVELS) + 8 * _UNIT_ROUNDOFF * (np.abs(lower64) + np.abs(lower64 + width64) + width64)


@dataclasses.dataclass(frozen=True)
class _ScanPlan:
    """Which rows one query's scan covers and how: every row of ``chunks`` (consecutive row ranges covering
    ``0:len(scanned)``; more than one only for a scan on two threads) whose ``scanned`` flag is set."""

    scanned: np.ndarray  # bool (rows,)
    # ``scanned`` packed for faiss's bitmap selector (bit i of byte i // 8 is row i); None: the scan reads every
    # row of the chunks, and the `skipped` rows it must not report are dropped from its result afterwards.
    bitmap: np.ndarray | None
    skipped: int  # rows whose flag is not set
    chunks: tuple[tuple[int, int], ...]


def _plan_scan(scanned: np.ndarray, scanned_count: int, threads: int) -> _ScanPlan:
    """How to scan the rows flagged in ``scanned`` (``scanned_count`` of them) on ``threads`` threads."""
    rows = len(scanned)
    skipped = rows - scanned_count
    bitmap = None
    if skipped > rows // _BITMAP_FREE_MAX_FRACTION:
        bitmap = _packed(scanned)
    chunks: tuple[tuple[int, int], ...] = ((0, rows),)
    if threads >= 2:
        parts = min(_CHUNKS_MAX, max(2, scanned_count // _CHUNK_MIN_ROWS))
        cuts = [0, *_balanced_cuts(bitmap, rows, parts), rows]
        chunks = tuple((begin, stop) for begin, stop in zip(cuts, cuts[1:]) if stop > begin)
    return _ScanPlan(scanned=scanned, bitmap=bitmap, skipped=skipped, chunks=chunks)


def _packed(scanned: np.ndarray) -> np.ndarray:
    """``scanned`` as faiss's bitmap selector reads it: bit ``i % 8`` of byte ``i // 8`` is row ``i``."""
    return np.packbits(scanned, bitorder="little")


def _balanced_cuts(bitmap: np.ndarray | None, rows: int, parts: int) -> list[int]:
    """``parts - 1`` ascending rows, multiples of :data:`_CHUNK_ALIGNMENT` inside ``0..rows``, that cut the
    scanned rows into ``parts`` nearly equal runs (cut all ``rows`` evenly without a bitmap: then nearly every
    row is scanned)."""
    fractions = np.arange(1, parts) / parts
    if bitmap is None:
        cuts = (fractions * rows) // _CHUNK_ALIGNMENT * _CHUNK_ALIGNMENT
    else:
        word = _CHUNK_ALIGNMENT // 8
        padded = np.zeros(-(-len(bitmap) // word) * word, dtype=np.uint8)
        padded[: len(bitmap)] = bitmap
        per_word = np.cumsum(np.bitwise_count(padded.view(np.uint64)), dtype=np.int64)
        # After the first word whose end brings the count to the fraction.
        cuts = (np.searchsorted(per_word, fractions * per_word[-1]) + 1) * _CHUNK_ALIGNMENT
    return sorted({int(cut) for cut in np.clip(cuts, 0, rows)})


def _scan_top(book: _Book, query: np.ndarray, plan: _ScanPlan, wanted: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``wanted`` best approximate scores (float64, best first) among the scanned rows and their rows
    (int64); fewer when fewer rows are scanned."""
    # Without a bitmap the excluded rows a chunk reports are dropped afterwards: a longer result leaves room.
    length = wanted + (min(plan.skipped, _BITMAP_FREE_EXTRA) if plan.bitmap is None else 0)
    if len(plan.chunks) == 1:
        parts = [_scan_range(book, query, *plan.chunks[0], plan.bitmap, length)]
    else:
        parts = _SharedScan(book, query, plan, length).run()
    if plan.bitmap is None and plan.skipped:
        kept = []
        for chunk_scores, chunk_rows in parts:
            keep = plan.scanned[chunk_rows]
            # A chunk that filled its result holds its best `keep.sum()` scanned rows; fewer than `wanted` of
            # them may leave out some of the overall best `wanted`.
            if len(chunk_rows) == length and np.count_nonzero(keep) < wanted:
                return _scan_top(book, query, dataclasses.replace(plan, bitmap=_packed(plan.scanned)), wanted)
            kept.append((chunk_scores[keep], chunk_rows[keep]))
        parts = kept
    scores = np.concatenate([part[0] for part in parts]) if len(parts) > 1 else parts[0][0]
    rows = np.concatenate([part[1] for part in parts]) if len(parts) > 1 else parts[0][1]
    if len(scores) > wanted:
        # Which of several rows tied with the last kept score stay out does not matter: the caller keeps no
        # row scoring as low as the last one unless the result holds every scanned row.
        best = np.argpartition(-scores, wanted - 1)[:wanted]
        scores, rows = scores[best], rows[best]
    order = np.lexsort((rows, -scores))
    return scores[order].astype(np.float64), rows[order]


class _SharedScan:
    """The chunks of one query's scan, taken one at a time by the calling thread (:meth:`run`) and, if it is
    free and starts in time, the process's helper thread (:meth:`help`). The caller never waits for the helper
    to start: once every chunk is taken (or its own scan failed) it closes the scan, and a helper starting later
    does nothing; it only waits for the result of a chunk the helper is scanning."""

    def __init__(self, book: _Book, query: np.ndarray, plan: _ScanPlan, length: int) -> None:
        self._book, self._query, self._plan, self._length = book, query, plan, length
        self._lock = threading.Lock()
        self._next = 0
        self._closed = False
        self._helping = False
        self._helper_done = threading.Event()
        self._helper_error: BaseException | None = None
        self._results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(plan.chunks)

    def run(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every chunk's best scores and rows, scanned with the helper's help when it is free."""
        busy = _helper_busy
        borrowed = busy.acquire(blocking=False)
        helping = False
        try:
            if borrowed:
                try:
                    _helper().submit(self.help)
                except RuntimeError:  # the interpreter is shutting down: no new threads, scan alone
                    pass
            try:
                self._scan_chunks()
            finally:
                with self._lock:
                    self._closed = True
                    helping = self._helping
                if helping:
                    self._helper_done.wait()
        finally:
            if borrowed:
                busy.release()
        if self._helper_error is not None:
            raise self._helper_error
        results = [result for result in self._results if result is not None]
        assert len(results) == len(self._results)  # every chunk was taken, and each taker finished it
        return results

    def help(self) -> None:
        """The helper thread's share: chunks until none is left (nothing when the caller already closed)."""
        with self._lock:
            if self._closed:
                return
            self._helping = True
        try:
            self._scan_chunks()
        except BaseException as error:  # handed to the caller, which raises it
            self._helper_error = error
        finally:
            self._helper_done.set()

    def _scan_chunks(self) -> None:
        while True:
            with self._lock:
                number = self._next
                if number >= len(self._results):
                    return
                self._next += 1
            begin, stop = self._plan.chunks[number]
            self._results[number] = _scan_range(self._book, self._query, begin, stop, self._plan.bitmap, self._length)


def _scan_range(
    book: _Book, query: np.ndarray, start: int, stop: int, bitmap: np.ndarray | None, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``length`` approximate scores (float32, unordered) of rows ``start:stop`` (those set in
    ``bitmap``, or all) and their rows; fewer when the range holds fewer. Runs on the calling thread only."""
    scores = np.full(length, np.finfo(np.float32).min, dtype=np.float32)  # an empty min-heap, as faiss fills it
    labels = np.full(length, -1, dtype=np.int64)
    selector = None
    if bitmap is not None:
        # `start` is a multiple of 8: the chunk's bits begin at a byte, and faiss numbers its rows from 0.
        part = bitmap[start // 8 : -(-stop // 8)]
        selector = faiss.IDSelectorBitmap(len(part), faiss.swig_ptr(part))
    codes = book.codes[start:stop]
    # The scanner reads the trained ranges of `book.index` and the query by pointer: both outlive it here.
    scanner = book.index.sq.select_InvertedListScanner(faiss.METRIC_INNER_PRODUCT, None, True, selector, False)
    try:
        scanner.set_list(0, 0.0)  # store_pairs=True, list 0: a row's label is its position in `codes`
        scanner.set_query(faiss.swig_ptr(query))
        scanner.scan_codes(
            stop - start, faiss.swig_ptr(codes), None, faiss.swig_ptr(scores), faiss.swig_ptr(labels), length
        )
    finally:
        # faiss hands the scanner over without telling SWIG, and taking ownership through `scanner.this.own()`
        # breaks SWIG's type table for every later scanner: free it explicitly.
        type(scanner).__swig_destroy__(scanner)
    found = labels >= 0
    return scores[found], labels[found] + start


# The one helper thread of the process and whether a query is using it (see the module docstring).
_helper_busy = threading.Lock()
_helper_guard = threading.Lock()
_helper_executor: ThreadPoolExecutor | None = None


def _helper() -> ThreadPoolExecutor:
    global _helper_executor
    with _helper_guard:
        if _helper_executor is None:
            _helper_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantised-scan")
        return _helper_executor


def _forget_helper_after_fork() -> None:
    """A forked child has no helper thread (only the forking thread survives) and may inherit a held lock."""
    global _helper_busy, _helper_guard, _helper_executor
    _helper_busy, _helper_guard, _helper_executor = threading.Lock(), threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper_after_fork)


def _read_codes(path: Path, out: np.ndarray) -> None:
    """Read the ``codes`` array of the ``.npz`` at ``path`` into ``out`` (uint8, its exact shape), with no
    intermediate copy. Raises ``ValueError`` naming the file when the member is missing or does not fit."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("codes.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            if tuple(shape) != out.shape or dtype != np.uint8 or fortran:
                raise ValueError(f"codes of shape {tuple(shape)} and type {dtype}, expected {out.shape} uint8")
            target = memoryview(out).cast("B")  # type: ignore[arg-type]  # ndarray's stub lacks __buffer__ before 3.12
            read = 0
            while read < out.nbytes:  # in slices: one read() of everything would hold two more copies
                chunk = member.read(min(out.nbytes - read, _READ_CHUNK))
                if not chunk:
                    raise ValueError(f"{read} of {out.nbytes} code bytes")
                target[read : read + len(chunk)] = chunk
                read += len(chunk)
    except (OSError, KeyError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise ValueError(
            f"The quantised vectors '{path}' hold unreadable codes ({error}; truncated or damaged). Delete it: the "
            "store rebuilds it."
        ) from error
