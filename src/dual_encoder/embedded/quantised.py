"""An exact first pass for the embedded store's exact search: 8-bit codes with a guaranteed error bound.

Exact float32 top-k over a large store is bound by memory bandwidth (every query reads the whole float32
matrix). :class:`QuantisedVectors` keeps one byte per dimension per row instead (a quarter of the bytes) and
answers "which rows can be in the exact top k?" with a candidate set that provably contains them; the store
then scores only those candidates in float32, so the result is the exact float32 top k, ties included.

**Codes.** Each dimension ``i`` has a range ``[lower_i, lower_i + width_i]`` (the vectors' own range at the
last (re)build, widened by a margin) cut into 255 steps of ``step_i = width_i / 255``; a value ``v`` is coded
as ``c = floor((v - lower_i) / step_i)`` and read back as ``lower_i + (c + 0.5) * step_i``. The codes are kept
as signed bytes ``c - 128`` (in ``-128..127``), the form integer dot-product kernels take. For cosine the unit
vectors ``v / |v|`` are encoded (a zero vector stays zero), for dot the raw vectors.

**The codes' bound.** For a row ``d`` whose every component lies in its range, each decoded component is within
``step_i / 2`` of the true one, so for any query ``q``::

    |q . d - q . d_hat| <= sum_i |q_i| * step_i / 2 =: B(q)

and also ``<= |q| * |d - d_hat| <= |q| * R`` with ``R`` the largest residual norm of any encoded in-range row.
The error bound is ``E(q) = min(B(q), |q| * R)`` plus the float32 rounding of the exact score (``4 * dim * 2**-24
* |q| * M``, ``M`` bounding every row's and decoded row's norm). Rows with a component outside its range
("outliers", rare: the ranges carry a margin) are not covered by ``E``; they are always candidates.

**The scan: integer dot products.** With ``w_i = q_i * step_i`` the decoded score is
``q . d_hat = base(q) + sum_i w_i * (c_i - 128)``, where ``base(q)`` is the same for every row. The query's
weights are quantised too, ``w8 = round(w / s)`` with ``s = max|w| / 127``, and NumKong's int8 kernel computes
every row's integer dot ``D = w8 . (c - 128)`` exactly with the CPU's SIMD integer instructions (on AVX2: 1.9x
faster than faiss's 8-bit scanner at 100,000 rows on one thread, 2.8x at 1,000,000 on two; faiss decodes every
code to float first; benchmarks/results/int8_scan_store_*.json). Then
``|q . d_hat - base(q) - s * D| <= E_w(q)`` with ``r = w - s * w8`` and

    E_w(q) = min(128 * sum_i |r_i|, |r| * C)

(``C``: the largest ``|c - 128|`` norm of any encoded in-range row; the second form is about four times tighter on
embeddings, whose codes sit near the middle of their ranges), plus float64 rounding. So the row's exact score
is within ``T = E + E_w`` of ``base + s * D``.

**The candidate set.** With ``D_k`` the ``k``-th best integer dot among the scanned (allowed, non-outlier) rows,
at least ``k`` rows score exactly ``>= base + s * D_k - T``, so the exact ``k``-th best does too, and a row can
reach it only if ``D >= D_k - 2T / s``. Those rows plus the allowed outliers hold every row that scores at least
the exact ``k``-th best (all ties with it included). When they are more than :attr:`max_candidates` (near-ties
the bound cannot separate), :meth:`QuantisedVectors.candidates` returns ``None``: the caller scans in float32.
Rows that are not scanned are read but left out of the selection; when at most 1/:data:`_GATHER_MAX_FRACTION`
of the rows are scanned, their codes are gathered and only they are multiplied (cheaper than the whole buffer
below about 1/5 of the rows, measured at 1,000,000 x 384).

**Threads.** A scan of at least :data:`TWO_THREAD_MIN_ROWS` rows is cut into a few chunks, which the calling
thread and one helper thread take one at a time (NumKong releases the GIL); each chunk writes its rows' dots
into one shared array, so the result equals a single scan's. The helper thread is one per process, shared by
every :class:`QuantisedVectors`: a query that finds it busy with another query scans every chunk itself, and a
query never waits for the helper to start (a helper that starts after the caller took the last chunk does
nothing), so concurrent searches never wait for each other and never run more than one scanning thread beyond
their own. A process allowed a single CPU (affinity mask or cgroup quota) always scans on one thread.

**Keeping current.** :meth:`set_rows` encodes new rows in place (rows past the capacity copy the codes into a
larger buffer; searches running meanwhile keep the old one); when outliers exceed ``max(1024, rows / 200)``
the ranges are recomputed from every encoded row (read back through ``vectors``) and all rows re-encoded.
:meth:`clear_rows` forgets rows. :meth:`save` writes one ``.npz`` (no pickle) atomically; :meth:`load` reads it,
and converts the unsigned codes of a version-1 file (written before the integer scan) as it reads them.

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
import functools
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
    import numkong
except ImportError as error:  # pragma: no cover - numkong is a dependency
    raise ImportError("dual_encoder.embedded.quantised needs NumKong: pip install 'numkong>=7.8,<8'") from error

__all__ = ["TWO_THREAD_MIN_ROWS", "QuantisedVectors"]

_FORMAT = "dual-encoder-quantised-vectors"
# Version 1 held the codes unsigned (``c``); version 2 signed (``c - 128``).
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_SIMILARITIES = ("cosine", "dot")
_LEVELS = 255
# Codes are stored as ``c - _CODE_OFFSET`` (signed bytes).
_CODE_OFFSET = 128
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
# Below the largest integer dot a float32 holds exactly (2**24), the kernel writes float32 dots (half the bytes
# to select from); above it float64.
_FLOAT32_EXACT = 2**24
# When at most 1/_GATHER_MAX_FRACTION of the rows are scanned, their codes are gathered (in blocks of
# _GATHER_BLOCK_ROWS) and multiplied alone: at 1,000,000 x 384 gathering 1/12 of the rows took 14 ms against
# 32 ms for the whole buffer, 1/4 of them 33 ms against 29.
_GATHER_MAX_FRACTION = 6
_GATHER_BLOCK_ROWS = 16_384
#: Rows a query's scan must cover before its chunks run on two threads (when the process may use two CPUs):
#: from there two threads are faster (1.06x at 16,384 rows, 1.4x at 100,000 on an AVX2 machine:
#: benchmarks/results/first_pass_threads.json).
TWO_THREAD_MIN_ROWS = 16_384
# A two-thread scan is cut into chunks that the two threads take one at a time, so a helper thread that starts
# late (or never, on a busy machine) leaves its share to the calling thread instead of holding the query up.
# Chunks hold at least _CHUNK_MIN_ROWS scanned rows and there are at most _CHUNKS_MAX of them.
_CHUNK_MIN_ROWS = 16_384
_CHUNKS_MAX = 8
# The candidate limit when none is given: the former fixed limit, or an eighth of the scanned rows when that is
# more (not measured as a crossover: past it the caller's float32 scan of every allowed row is assumed cheaper).
_DEFAULT_MAX_CANDIDATES = 8192
_MAX_CANDIDATES_FRACTION = 8


@dataclasses.dataclass(frozen=True)
class _Book:
    """Everything a search reads, replaced as a whole when the ranges or the capacity change (so a search
    that started on the old one finishes on a consistent state)."""

    lower: np.ndarray  # float32 (d,)
    width: np.ndarray  # float32 (d,)
    codes: np.ndarray  # int8 (capacity, d): c - 128
    encoded: np.ndarray  # bool (capacity,): whether a row holds a current code
    residual_max: float  # largest |d - d_hat| over encoded rows inside the ranges
    norm_max: float  # largest |d| and |d_hat| over encoded rows
    code_norm_max: float  # largest |c - 128| norm over encoded rows inside the ranges
    outliers: np.ndarray  # int64 sorted: encoded rows with a component outside its range

    @property
    def capacity(self) -> int:
        return int(self.codes.shape[0])

    # Per-dimension arrays every query's bounds read: computed once per book, not per query.
    @functools.cached_property
    def step(self) -> np.ndarray:
        """float64 (d,): ``width / 255``, one code step per dimension."""
        return self.width.astype(np.float64) / _LEVELS

    @functools.cached_property
    def allowed_error(self) -> np.ndarray:
        """float64 (d,): :func:`_allowed_error` of the ranges."""
        return _allowed_error(self.lower, self.width)


class QuantisedVectors:
    """8-bit codes of float32 rows keyed by slot, for exact top-k candidates (see the module docstring).

    :param dimension: Vector dimension.
    :param similarity: ``"cosine"`` (rows and queries are compared as unit vectors) or ``"dot"``.
    :param vectors: ``f(slots: int64 array) -> float32 (len(slots), dimension)``: the current rows, read when
        the ranges are recomputed. Without it the ranges are never recomputed (outliers stay outliers).
    :param max_candidates: Most candidates :meth:`candidates` returns before it gives up (returns ``None``):
        ``None`` (default) allows ``max(8192, scanned rows / 8)``.
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
        max_candidates: int | None = None,
        scan_threads: int | None = None,
    ) -> None:
        if similarity not in _SIMILARITIES:
            raise ValueError(f"Unknown similarity {similarity!r}: use 'cosine' or 'dot'.")
        if int(dimension) <= 0:
            raise ValueError(f"dimension must be positive, got {dimension}.")
        if max_candidates is not None and int(max_candidates) < 1:
            raise ValueError(f"max_candidates must be >= 1 or None, got {max_candidates}.")
        if scan_threads not in (None, 1, 2):
            raise ValueError(f"scan_threads must be None (automatic), 1 or 2, got {scan_threads!r}.")
        self.dimension = int(dimension)
        self.similarity = similarity
        self.max_candidates = None if max_candidates is None else int(max_candidates)
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
        encoding = self._encode_into(book, slots, prepared)
        outliers = book.outliers
        kept_out = outliers[~np.isin(outliers, slots)] if len(outliers) else outliers
        new_out = slots[encoding.outside]
        book = dataclasses.replace(
            book,
            residual_max=max(book.residual_max, encoding.residual_max),
            norm_max=max(book.norm_max, encoding.norm_max),
            code_norm_max=max(book.code_norm_max, encoding.code_norm_max),
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
        residual_max, norm_max, code_norm_max, outliers = 0.0, 0.0, 0.0, []
        for start in range(0, len(slots), _ENCODE_BLOCK):
            block = slots[start : start + _ENCODE_BLOCK]
            encoding = self._encode_into(fresh, block, self._prepare(self._rows(block)))
            residual_max = max(residual_max, encoding.residual_max)
            norm_max = max(norm_max, encoding.norm_max)
            code_norm_max = max(code_norm_max, encoding.code_norm_max)
            outliers.append(block[encoding.outside])
        fresh.encoded[slots] = True
        self._book = dataclasses.replace(
            fresh,
            residual_max=residual_max,
            norm_max=norm_max,
            code_norm_max=code_norm_max,
            outliers=np.concatenate(outliers).astype(np.int64),
        )
        self.rebuilds += 1

    # ------------------------------------------------------------------------------------------ search
    def error_bound(self, query: np.ndarray) -> float:
        """``E(q)``: a bound on ``|q . d - q . d_hat|`` for every encoded row inside the ranges, float32
        rounding of the exact score included. ``query`` as given to :meth:`candidates`."""
        book = self._book
        if book is None:
            return math.inf
        return self._bound(book, np.asarray(query, dtype=np.float64).reshape(-1))

    def query_error_bound(self, query: np.ndarray) -> float:
        """``E_w(q)``: a bound on what quantising the query's weights adds, ``|q . d_hat - base - s * D|``, for
        every encoded row inside the ranges. ``query`` as given to :meth:`candidates`."""
        book = self._book
        if book is None:
            return math.inf
        return _QueryWeights.of(book, np.asarray(query, dtype=np.float64).reshape(-1)).error

    def candidates(self, query: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray | None:
        """Slots (int64, ascending) among which the exact top ``k`` of the ``allowed`` slots lie, with every row
        tied with the exact ``k``-th best; ``None`` when the scan cannot narrow it down (score every allowed row).

        :param query: float32 query of the index's dimension; for cosine, scaled to unit length by the caller
            (the scores compared are ``query . d / |d|``).
        :param k: How many best rows the caller wants.
        :param allowed: Bool mask by slot; every allowed slot must hold a code (else ``ValueError``).
        """
        book = self._book
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if len(query) != self.dimension:
            raise ValueError(f"Query has dimension {len(query)}; these codes hold {self.dimension}-d vectors.")
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
        query64 = query.astype(np.float64)
        bound = self._bound(book, query64)
        weights = _QueryWeights.of(book, query64)
        if not math.isfinite(bound + weights.error):
            return None
        positions = None
        if scanned_count * _GATHER_MAX_FRACTION <= len(scanned):
            positions = np.flatnonzero(scanned)
        dots = self._dots(book, weights.quantised, positions, len(scanned), scanned_count)
        # Rows read but not scanned (whole-buffer scans) are left out of the selection; filling their dots with
        # -inf instead would make np.partition 30x slower on its many equal values.
        skipped = positions is None and scanned_count < len(scanned)
        ranked = dots[scanned] if skipped else dots
        last = len(ranked) - k
        kth = float(np.partition(ranked, last)[last])
        # D >= D_k - 2T/s, as an integer: float32 dots hold integers below 2**24 exactly, so the comparison is.
        lowest = math.ceil(kth - 2 * (bound + weights.error) / weights.scale)
        if dots.dtype == np.float32:
            lowest = max(lowest, -_FLOAT32_EXACT)
        chosen = np.flatnonzero((dots >= lowest) & scanned if skipped else dots >= lowest)
        limit = self.max_candidates
        if limit is None:
            limit = max(_DEFAULT_MAX_CANDIDATES, scanned_count // _MAX_CANDIDATES_FRACTION)
        if len(chosen) > limit:
            return None
        if positions is not None:
            chosen = positions[chosen]
        return np.union1d(chosen.astype(np.int64), outliers)

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
            header.update(residual_max=book.residual_max, norm_max=book.norm_max, code_norm_max=book.code_norm_max)
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
        max_candidates: int | None = None,
        scan_threads: int | None = None,
    ) -> QuantisedVectors:
        """Read codes written by :meth:`save` (or by a version that kept them unsigned, converted here). Raises
        ``ValueError`` naming the file when it is not such a file, is damaged, or was written for another
        dimension or similarity."""
        path = Path(path)
        # The codes (the bulk of the file) are read later, straight into the scan's buffer.
        header, arrays = load_checked_arrays(
            path,
            what="quantised vectors",
            file_format=_FORMAT,
            version=_READABLE_VERSIONS,
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
        codes = book.codes[: len(encoded)]
        unsigned = header["version"] == 1
        _read_codes(path, codes.view(np.uint8) if unsigned else codes)
        if unsigned:
            codes.view(np.uint8)[...] ^= np.uint8(0x80)  # c - 128 in two's complement
        book.encoded[: len(encoded)] = encoded
        code_norm_max = header.get("code_norm_max")
        if code_norm_max is None:  # version 1 did not record it: measured over every encoded row, outliers too
            code_norm_max = _largest_code_norm(codes, encoded)
        loaded._book = dataclasses.replace(
            book,
            residual_max=float(header["residual_max"]),
            norm_max=float(header["norm_max"]),
            code_norm_max=float(code_norm_max),
            outliers=outliers.astype(np.int64),
        )
        return loaded

    # ------------------------------------------------------------------------------------------ internals
    def _threads_for(self, rows: int) -> int:
        """Threads the scan of ``rows`` scanned rows runs on: 1 or 2."""
        if self.scan_threads == 1 or rows < 2:
            return 1
        if self.scan_threads is None and rows < TWO_THREAD_MIN_ROWS:
            return 1
        return 2 if usable_cpus() >= 2 else 1

    def _dots(
        self, book: _Book, weights: np.ndarray, positions: np.ndarray | None, rows: int, scanned_count: int
    ) -> np.ndarray:
        """Every row's integer dot with ``weights`` (rows ``0:rows``, or ``positions`` only), float32 when that
        holds them exactly, else float64."""
        exact_in_float32 = self.dimension * _CODE_OFFSET * 127 < _FLOAT32_EXACT
        length = rows if positions is None else len(positions)
        dots = np.empty(length, dtype=np.float32 if exact_in_float32 else np.float64)
        threads = self._threads_for(scanned_count)
        parts = 1 if threads == 1 else min(_CHUNKS_MAX, max(2, scanned_count // _CHUNK_MIN_ROWS))
        cuts = [length * part // parts for part in range(parts + 1)]
        chunks = tuple((begin, stop) for begin, stop in zip(cuts, cuts[1:]) if stop > begin)
        if len(chunks) == 1:
            _scan_range(book.codes, weights, positions, *chunks[0], dots)
        else:
            _SharedScan(book.codes, weights, positions, chunks, dots).run()
            self.two_thread_scans += 1
        return dots

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
        per_dimension = float(np.abs(query) @ book.allowed_error)
        residual = length * book.residual_max
        # The exact score is a float32 sum of `dimension` products: within dimension * u * |q| * |row| of the
        # real value (u: float32 unit roundoff); the decoded rows the residuals were measured against add a few u.
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
        return _Book(
            lower=lower,
            width=np.asarray(width, dtype=np.float32),
            # Zero-filled; rows only count once `encoded` says so.
            codes=np.zeros((max(int(capacity), 1), self.dimension), dtype=np.int8),
            encoded=np.zeros(max(int(capacity), 1), dtype=bool),
            residual_max=0.0,
            norm_max=0.0,
            code_norm_max=0.0,
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
            grown,
            residual_max=book.residual_max,
            norm_max=book.norm_max,
            code_norm_max=book.code_norm_max,
            outliers=book.outliers,
        )

    def _encode_into(self, book: _Book, slots: np.ndarray, prepared: np.ndarray) -> _Encoding:
        """Write the codes of ``prepared`` rows at ``slots``."""
        scale = np.float32(_LEVELS) / book.width
        allowed_error = book.allowed_error.astype(np.float32)
        outside = np.empty(len(slots), dtype=bool)
        residual_max, norm_max, code_norm_max = 0.0, 0.0, 0.0
        for start in range(0, len(slots), _ENCODE_BLOCK):
            rows = prepared[start : start + _ENCODE_BLOCK]
            codes = rows - book.lower
            codes *= scale
            np.floor(codes, out=codes)
            np.clip(codes, 0, _LEVELS, out=codes)
            codes -= np.float32(_CODE_OFFSET)
            book.codes[slots[start : start + len(rows)]] = codes.astype(np.int8)
            code_norms = _code_norms(codes)
            # Decoded as lower + ((c + 0.5) / 255) * width; `codes` becomes the error row - decoded.
            codes += np.float32(_CODE_OFFSET + 0.5)
            codes /= np.float32(_LEVELS)
            codes *= book.width
            codes += book.lower
            np.subtract(rows, codes, out=codes)
            block_outside = (np.abs(codes) > allowed_error).any(axis=1)
            outside[start : start + len(rows)] = block_outside
            # float32 sums of squares: a relative 1e-4 covers their rounding.
            residuals = np.sqrt(np.einsum("ij,ij->i", codes, codes)) * (1 + 1e-4)
            lengths = np.sqrt(np.einsum("ij,ij->i", rows, rows)) * (1 + 1e-4)
            # |decoded| <= |row| + |error|.
            norm_max = max(norm_max, float((lengths + residuals).max()))
            inside = ~block_outside
            if inside.any():
                residual_max = max(residual_max, float(residuals[inside].max()))
                code_norm_max = max(code_norm_max, float(code_norms[inside].max()))
        return _Encoding(outside=outside, residual_max=residual_max, norm_max=norm_max, code_norm_max=code_norm_max)


@dataclasses.dataclass(frozen=True)
class _Encoding:
    """What encoding a block of rows found: which rows have a component outside its range, and, over the rows
    inside, the largest residual norm and code norm; the largest norm of a row or its decoding over all."""

    outside: np.ndarray
    residual_max: float
    norm_max: float
    code_norm_max: float


def _allowed_error(lower: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Per dimension, the largest ``|v - decoded|`` of a value inside the range: half a step, plus a few float32
    roundings of numbers as large as the range's ends (computing the code and decoding it round)."""
    lower64 = lower.astype(np.float64)
    width64 = width.astype(np.float64)
    return width64 / (2 * _LEVELS) + 8 * _UNIT_ROUNDOFF * (np.abs(lower64) + np.abs(lower64 + width64) + width64)


def _code_norms(codes: np.ndarray) -> np.ndarray:
    """Each row's ``|c - 128|`` norm (``codes``: float32 ``c - 128``), rounded up: the float64 sums are exact, and
    the relative 1e-4 covers the square root's rounding many times over."""
    return np.sqrt(np.einsum("ij,ij->i", codes, codes, dtype=np.float64)) * (1 + 1e-4)


def _largest_code_norm(codes: np.ndarray, rows: np.ndarray) -> float:
    """The largest ``|c - 128|`` norm among the ``rows`` (bool mask) of ``codes`` (int8)."""
    largest = 0.0
    for start in range(0, len(codes), _ENCODE_BLOCK):
        block = codes[start : start + _ENCODE_BLOCK][rows[start : start + _ENCODE_BLOCK]]
        if len(block):
            largest = max(largest, float(_code_norms(block.astype(np.float32)).max()))
    return largest


@dataclasses.dataclass(frozen=True)
class _QueryWeights:
    """A query's weights ``w_i = q_i * step_i`` quantised to int8: ``w ~ scale * quantised``, and ``error``
    (``E_w``, module docstring) bounding what that changes in any in-range row's decoded score."""

    quantised: np.ndarray  # int8 (1, d)
    scale: float
    error: float

    @classmethod
    def of(cls, book: _Book, query: np.ndarray) -> _QueryWeights:
        weights = query * book.step
        largest = float(np.abs(weights).max())
        scale = largest / 127 if largest > 0 else 1.0
        quantised = np.clip(np.rint(weights / scale), -127, 127)
        residual = weights - scale * quantised
        error = min(_CODE_OFFSET * float(np.abs(residual).sum()), float(np.linalg.norm(residual)) * book.code_norm_max)
        # float64 rounding of the weights, the residual and the sums: far below this margin.
        error = error * (1 + 1e-9) + 1e-12 * _CODE_OFFSET * float(np.abs(weights).sum())
        return cls(quantised=quantised.astype(np.int8)[None, :], scale=scale, error=error)


class _SharedScan:
    """The chunks of one query's scan, taken one at a time by the calling thread (:meth:`run`) and, if it is
    free and starts in time, the process's helper thread (:meth:`help`). The caller never waits for the helper
    to start: once every chunk is taken (or its own scan failed) it closes the scan, and a helper starting later
    does nothing; it only waits for a chunk the helper is scanning to finish."""

    def __init__(
        self,
        codes: np.ndarray,
        weights: np.ndarray,
        positions: np.ndarray | None,
        chunks: tuple[tuple[int, int], ...],
        out: np.ndarray,
    ) -> None:
        self._codes, self._weights, self._positions, self._chunks, self._out = codes, weights, positions, chunks, out
        self._lock = threading.Lock()
        self._next = 0
        self._finished = 0
        self._closed = False
        self._helping = False
        self._helper_done = threading.Event()
        self._helper_error: BaseException | None = None

    def run(self) -> None:
        """Fill ``out`` chunk by chunk, with the helper's help when it is free."""
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
        assert self._finished == len(self._chunks)  # every chunk was taken, and each taker finished it

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
                if number >= len(self._chunks):
                    return
                self._next += 1
            _scan_range(self._codes, self._weights, self._positions, *self._chunks[number], self._out)
            with self._lock:
                self._finished += 1


def _scan_range(
    codes: np.ndarray, weights: np.ndarray, positions: np.ndarray | None, start: int, stop: int, out: np.ndarray
) -> None:
    """``out[start:stop]``: the integer dots of ``weights`` (int8 ``(1, d)``) with the codes of rows
    ``start:stop`` (or of rows ``positions[start:stop]``)."""
    if positions is None:
        numkong.cdist(weights, codes[start:stop], metric="dot", out=out[None, start:stop])
        return
    for begin in range(start, stop, _GATHER_BLOCK_ROWS):
        end = min(stop, begin + _GATHER_BLOCK_ROWS)
        numkong.cdist(weights, codes[positions[begin:end]], metric="dot", out=out[None, begin:end])


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
    """Read the ``codes`` array of the ``.npz`` at ``path`` into ``out`` (its exact shape and byte type), with no
    intermediate copy. Raises ``ValueError`` naming the file when the member is missing or does not fit."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("codes.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            if tuple(shape) != out.shape or dtype != out.dtype or fortran:
                raise ValueError(f"codes of shape {tuple(shape)} and type {dtype}, expected {out.shape} {out.dtype}")
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
