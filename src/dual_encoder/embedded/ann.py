"""Approximate nearest-neighbour search for the embedded store, on faiss.

:class:`ApproximateIndex` maps the store's stable row slots ("positions") to compressed codes and answers
top-k queries by scanning those codes, then rescoring the best candidates exactly in float32:

- **Codes**: faiss ``IndexIVFPQFastScan`` with 4-bit product quantisation, by default one sub-quantiser per
  two dimensions (96 bytes per 384-d vector; with the id maps, under 200 MB per million). The fast-scan
  kernels score the codes from SIMD registers, so scanning every code is cheap; by default every list is
  probed (``probe == lists``), so the scan is exhaustive, which keeps recall on unstructured vectors (where
  graph and cluster indexes degrade) and makes filters exact: an ``allowed`` mask is applied inside the scan,
  so a filtered query returns ``min(k, allowed rows)`` results whatever the selectivity. ``probe`` below
  ``lists`` trades recall for speed on clustered data at many millions of rows.
- **Parallel scan**: one list is scanned by one thread. With ``lists > 1`` the lists a query visits are
  shared out among ``threads`` threads (faiss's per-list parallel scan, each thread keeping its own best
  candidates, merged at the end), so the default ``lists=8, probe=8, threads=2`` is an exhaustive scan, with
  exact filters, on two cores (on one when the process may use only one CPU); several lists per thread keep
  the threads evenly loaded when the lists' sizes differ. Small jobs stay on one thread (scans of fewer than
  ``_PARALLEL_SCAN_MIN`` codes, adds of fewer than ``_PARALLEL_ENCODE_MIN`` vectors): waking a second thread,
  which may be busy elsewhere, costs more.
- **Exact scores**: the ``candidates`` best codes (per 10 results) are rescored exactly from float32 vectors.
  Pass ``vectors=`` (a function from positions to rows of the store's own float32 matrix) so the index keeps
  no second float32 copy; without it the index keeps its own copy of every vector it was given.
- **Incremental**: the product quantiser is trained once, on a sample of the first ``train_size`` vectors;
  until then searches are exact over the vectors added so far. After training, ``add`` only encodes the new
  vectors. ``remove`` (and replacing a position) marks the old code dead; dead codes are excluded inside
  the scan, so they cost scan time but never recall, and once they outnumber the live ones the codes are
  rebuilt from the live vectors (:meth:`compact`, also callable at a quiet moment). faiss's own in-place
  removal is not used: on fast-scan lists in faiss 1.15 it misplaces codes. If the data drifts far from the
  training sample, recall falls; build a new index (the vectors are the store's).
- **Persistence**: :meth:`save` writes one ``.npz`` file (faiss's own serialisation of the index, the
  positions, optionally the vectors, and a JSON header) atomically; no pickle.

Scores are on the exact-search scale: the cosine similarity for ``"cosine"`` (0 for a zero vector), the raw
dot product for ``"dot"``. Results are ordered by score, ties by position.

Filters: when every list is scanned (``probe >= lists``, as by default) every allowed row is
scanned, so results honour ``allowed`` and are as complete as an unfiltered search. With ``probe < lists`` a
very selective mask can leave fewer than ``k`` results; the caller should then score the allowed rows exactly.
For very selective masks, exact scoring of the allowed rows is also the faster answer: :func:`prefers_exact`
says when (measured in ``benchmarks/README.md``, "Approximate search").

Thread safety: concurrent searches are safe; ``add``/``remove``/``save`` must not run concurrently with
anything else on the same index (the store serialises them under its lock).

Example::

    import numpy as np
    from dual_encoder.embedded.ann import ApproximateIndex, prefers_exact

    matrix = np.random.default_rng(0).standard_normal((20_000, 384), dtype=np.float32)
    index = ApproximateIndex(384, "cosine", vectors=lambda positions: matrix[positions])
    index.add(np.arange(len(matrix)), matrix)
    positions, scores = index.search(matrix[7], k=10)            # positions[0] == 7, scores[0] ~ 1.0
    allowed = np.zeros(len(matrix), dtype=bool); allowed[:5_000] = True
    if not prefers_exact(int(allowed.sum()), len(index)):
        positions, scores = index.search(matrix[7], k=10, allowed=allowed)
    index.save("ann.npz")
    index = ApproximateIndex.load("ann.npz", 384, "cosine", vectors=lambda positions: matrix[positions])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dual_encoder.cpus import usable_cpus
from dual_encoder.embedded.storage import checked_rows, load_checked_arrays, save_arrays_atomically

try:
    import faiss
except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
    raise ImportError("dual_encoder.embedded.ann needs faiss-cpu: pip install 'faiss-cpu>=1.15,<1.16'") from error

__all__ = ["DEFAULT_PARAMETERS", "EXACT_BELOW_COUNT", "EXACT_BELOW_FRACTION", "ApproximateIndex", "prefers_exact"]

#: Defaults chosen by ``benchmarks/ann_choice.py`` (see benchmarks/README.md, "Approximate search").
DEFAULT_PARAMETERS: dict[str, Any] = {
    # Exactly rescored codes per 10 requested results (the main recall/latency knob): 300 keeps recall@10
    # at 0.98 on 1M random vectors (benchmarks/ann_fast.py).
    "candidates": 300,
    # Dimensions per 4-bit sub-quantiser: 2 gives d/2 sub-quantisers (d/4 bytes per vector).
    "dims_per_subquantizer": 2,
    # Inverted lists. All of them are probed by default, so the scan stays exhaustive (exact filters, robust
    # recall); 8 lists let one query's scan be shared by two threads.
    "lists": 8,
    # Lists scanned per query (at least `lists`: every list, an exhaustive scan).
    "probe": 8,
    # Vectors held before the quantiser is trained (and the sample it is trained on); searches are exact
    # until then.
    "train_size": 8192,
    # Most OpenMP threads per faiss call, capped by the CPUs the process may use (1 on a one-CPU container).
    "threads": 2,
}

#: Masks allowing fewer than this fraction of the indexed rows are answered faster by exact scoring.
EXACT_BELOW_FRACTION = 0.03
#: ... and so are masks allowing fewer rows than this, whatever the index size.
EXACT_BELOW_COUNT = 4096

# Vectors per add from which encoding uses ``threads`` threads, and codes from which a search does.
_PARALLEL_ENCODE_MIN = 4096
_PARALLEL_SCAN_MIN = 65_536

_FORMAT = "dual-encoder-ann"
# 2: dead codes stay in the faiss index, so the file maps code numbers to positions ("position_of").
_FORMAT_VERSION = 2
_STRUCTURAL = ("dims_per_subquantizer", "lists", "train_size")
_SIMILARITIES = ("cosine", "dot")


def prefers_exact(allowed_count: int, total: int) -> bool:
    """Whether exact scoring of ``allowed_count`` allowed rows beats an approximate search over ``total`` rows.

    :param allowed_count: Rows a filter allows.
    :param total: Rows in the approximate index (``len(index)``).
    :returns: ``True`` when the caller should score the allowed rows exactly instead of calling
        :meth:`ApproximateIndex.search` (the exact answer is then also cheaper).
    """
    return allowed_count < EXACT_BELOW_COUNT or allowed_count < EXACT_BELOW_FRACTION * total


class _OmpThreads:
    """Sets faiss's OpenMP thread count for one call on the calling thread, then restores it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.previous = 0

    def __enter__(self) -> None:
        self.previous = faiss.omp_get_max_threads()
        if self.previous != self.threads:
            faiss.omp_set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        if self.previous != self.threads:
            faiss.omp_set_num_threads(self.previous)


class ApproximateIndex:
    """Approximate top-k search over float32 vectors keyed by int64 positions (see the module docstring).

    :param dimension: Vector dimension.
    :param similarity: ``"cosine"`` (vectors and queries are normalised) or ``"dot"``.
    :param vectors: Optional ``f(positions: int64 array) -> float32 (len(positions), dimension)`` returning
        the current vector of each position, used to rescore candidates, to train and to compact. When
        given, the index keeps no float32 copy; it must return the vectors that were last ``add``-ed for
        those positions. When omitted, the index keeps its own float32 copy.
    :param params: Overrides of :data:`DEFAULT_PARAMETERS`.
    """

    def __init__(
        self,
        dimension: int,
        similarity: str,
        *,
        vectors: Callable[[np.ndarray], np.ndarray] | None = None,
        **params: Any,
    ) -> None:
        if similarity not in _SIMILARITIES:
            raise ValueError(f"Unknown similarity {similarity!r}: use 'cosine' or 'dot'.")
        if int(dimension) <= 0:
            raise ValueError(f"dimension must be positive, got {dimension}.")
        unknown = set(params) - set(DEFAULT_PARAMETERS)
        if unknown:
            raise ValueError(
                f"Unknown ApproximateIndex parameter(s) {sorted(unknown)}: use {sorted(DEFAULT_PARAMETERS)}."
            )
        self.dimension = int(dimension)
        self.similarity = similarity
        self.params: dict[str, Any] = {**DEFAULT_PARAMETERS, **params}
        for name in ("candidates", "dims_per_subquantizer", "lists", "probe", "train_size", "threads"):
            if int(self.params[name]) < 1:
                raise ValueError(f"ApproximateIndex parameter {name} must be >= 1, got {self.params[name]}.")
        if self.dimension % int(self.params["dims_per_subquantizer"]):
            raise ValueError(
                f"dims_per_subquantizer={self.params['dims_per_subquantizer']} does not divide the dimension "
                f"{self.dimension}: pick a divisor (1 always works)."
            )
        self._vectors_of = vectors
        # Indexed by position (dense row slots, grown on demand): whether it holds a vector, and its code.
        self._present = np.zeros(0, dtype=bool)
        self._code_of = np.zeros(0, dtype=np.int64)
        self._count = 0
        # Own float32 copy (only without `vectors`), indexed by position; normalised for cosine.
        self._own: np.ndarray | None = None if vectors is not None else np.zeros((0, self.dimension), np.float32)
        # Once trained: the faiss index, whose labels are code numbers 0..ntotal-1, and each code's position
        # (-1: dead). While every live code's number equals its position, filters need no translation.
        self._index: Any = None
        self._position_of = np.zeros(0, dtype=np.int64)
        self._codes = 0
        self._dead = 0
        self._identity = True
        self._live_bits: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self._count

    @property
    def trained(self) -> bool:
        """Whether the quantiser is trained (before that, searches are exact)."""
        return self._index is not None

    @property
    def dead_codes(self) -> int:
        """Codes of removed or replaced vectors still in the scan (excluded from results)."""
        return self._dead

    def __repr__(self) -> str:
        state = "trained" if self.trained else "untrained (exact)"
        return (
            f"ApproximateIndex(dimension={self.dimension}, similarity={self.similarity!r}, {len(self)} vectors, "
            f"{state})"
        )

    # ------------------------------------------------------------------------------------------ writes
    def add(self, positions: np.ndarray, vectors: np.ndarray) -> None:
        """Index ``vectors`` (float32, shape ``(n, dimension)``) under ``positions`` (int64, distinct).

        A position already in the index is replaced.
        """
        positions, vectors = checked_rows(positions, vectors, self.dimension, call="add", unit="position")
        if len(positions) == 0:
            return
        self._forget(positions)
        prepared = self._prepare(vectors)
        self._grow(int(positions.max()) + 1)
        if self._own is not None:
            self._own[positions] = prepared
        self._present[positions] = True
        self._count += len(positions)
        if self._index is not None:
            self._append_codes(positions, prepared)
            self._maybe_compact()
        elif self._count >= int(self.params["train_size"]):
            self._train()

    def remove(self, positions: np.ndarray) -> None:
        """Remove ``positions`` from the index; positions not in it are ignored."""
        self._forget(np.asarray(positions, dtype=np.int64).reshape(-1))
        self._maybe_compact()

    def compact(self) -> None:
        """Drop the dead codes by re-encoding the live vectors (reads every live vector once)."""
        if self._index is None or self._dead == 0:
            return
        index = _parallel_over_lists(faiss.clone_index(self._index))
        index.reset()  # keeps the trained quantisers
        positions = np.flatnonzero(self._present)
        self._index = index
        self._position_of = np.zeros(0, dtype=np.int64)
        self._codes = self._dead = 0
        self._identity = True
        self._live_bits = None
        self._code_of[:] = -1
        for start in range(0, len(positions), 65_536):
            block = positions[start : start + 65_536]
            self._append_codes(block, self._prepare(self._rows(block)))

    # ------------------------------------------------------------------------------------------ search
    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The (at most) ``k`` best positions for ``query`` and their exact scores, best first.

        :param query: float32 vector of the index's dimension.
        :param k: Results wanted.
        :param allowed: Optional bool mask indexed by position; only positions ``p < len(allowed)`` with
            ``allowed[p]`` are returned. When every list is scanned (``probe >= lists``) every allowed row is,
            so the result has ``min(k, allowed and indexed rows)`` entries; with ``probe < lists`` it can have
            fewer, and the caller should then score the allowed rows exactly (see :func:`prefers_exact`).
        :returns: ``(positions int64, scores float32)``.
        """
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise ValueError(f"Query has dimension {query.shape[0]}; this index holds {self.dimension}-d vectors.")
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        if k <= 0 or self._count == 0:
            return empty
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool).reshape(-1)
            if not allowed.any():
                return empty
        prepared = self._prepare(query[None, :])
        if self._index is None:
            candidates = np.flatnonzero(self._present)
            if allowed is not None:
                candidates = candidates[candidates < len(allowed)]
                candidates = candidates[allowed[candidates]]
        else:
            candidates = self._scan(prepared, k, allowed)
        if len(candidates) == 0:
            return empty
        scores = self._exact_scores(candidates, prepared[0])
        if len(candidates) > k:
            keep = np.argpartition(-scores, k - 1)[:k]
            candidates, scores = candidates[keep], scores[keep]
        order = np.lexsort((candidates, -scores))
        return candidates[order].astype(np.int64, copy=False), scores[order].astype(np.float32, copy=False)

    def _scan(self, prepared: np.ndarray, k: int, allowed: np.ndarray | None) -> np.ndarray:
        """Positions of the best codes for a prepared query (live and allowed only)."""
        wanted = min(self._count, max(k, math.ceil(int(self.params["candidates"]) * max(k, 10) / 10)))
        codes = self._codes
        if allowed is None:
            bitmap = self._live_bitmap() if self._dead else None
        else:
            if self._identity:
                # Code i is position i or dead.
                member = np.zeros(codes, dtype=bool)
                shared = min(codes, len(allowed))
                member[:shared] = allowed[:shared]
                if self._dead:
                    member &= self._position_of[:codes] >= 0
            else:
                owner = self._position_of[:codes]
                member = (owner >= 0) & (owner < len(allowed))
                member[member] = allowed[owner[member]]
            bitmap = np.packbits(member, bitorder="little")
        # Bit i of byte i // 8 is code i; codes past the bitmap are not members.
        selector = None if bitmap is None else faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        # faiss's generated stubs omit the keyword arguments its Python wrapper accepts.
        search_params = faiss.SearchParametersIVF(  # type: ignore[call-arg]
            sel=selector, nprobe=min(int(self.params["probe"]), int(self.params["lists"]))
        )
        # A small scan is over before a second thread would be up.
        threads = self._threads() if codes >= _PARALLEL_SCAN_MIN else 1
        with _OmpThreads(threads):
            _, found = self._index.search(prepared, wanted, params=search_params)
        found = found[0]
        # In row order, rescoring reads the float32 matrix front to back instead of jumping around it.
        return np.sort(self._position_of[found[found >= 0]])

    # ------------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to one ``.npz`` file at ``path`` (atomically: a temporary file, then a rename)."""
        path = Path(path)
        header = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "dimension": self.dimension,
            "similarity": self.similarity,
            "structure": {name: int(self.params[name]) for name in _STRUCTURAL},
            # The lists a search visits belong with the lists built: a file with several lists loaded under
            # default parameters must not silently drop from an exhaustive scan to one list.
            "probe": int(self.params["probe"]),
            "trained": self._index is not None,
            "own_vectors": self._own is not None,
        }
        arrays: dict[str, np.ndarray] = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "positions": np.flatnonzero(self._present).astype(np.int64),
        }
        if self._index is not None:
            arrays["faiss"] = faiss.serialize_index(self._index)
            arrays["position_of"] = self._position_of[: self._codes]
        if self._own is not None:
            arrays["vectors"] = self._own[arrays["positions"]]
        save_arrays_atomically(path, arrays)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        dimension: int,
        similarity: str,
        *,
        vectors: Callable[[np.ndarray], np.ndarray] | None = None,
        **params: Any,
    ) -> ApproximateIndex:
        """Read an index written by :meth:`save`.

        The structure (quantiser, lists, training size) comes from the file; search parameters
        (``candidates``, ``probe``, ``threads``) from ``params``, except that ``probe``, when not given, is the
        one saved with the index. Raises ``ValueError`` naming the file when it is not such an index, or was
        built for another dimension or similarity.
        """
        path = Path(path)
        header, arrays = load_checked_arrays(
            path,
            what="approximate index",
            file_format=_FORMAT,
            version=_FORMAT_VERSION,
            dimension=dimension,
            similarity=similarity,
        )
        for name, value in header["structure"].items():
            if name in params and int(params[name]) != value:
                raise ValueError(
                    f"The approximate index '{path}' was built with {name}={value}, not {params[name]}: delete it "
                    "to rebuild with the new value."
                )
        own = bool(header["own_vectors"])
        needed = ["positions"] + (["faiss", "position_of"] if header["trained"] else []) + (["vectors"] if own else [])
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise ValueError(
                f"The approximate index '{path}' lacks {missing} (truncated or damaged). Delete it: the store "
                "rebuilds it."
            )
        if not own and vectors is None:
            raise ValueError(
                f"The approximate index '{path}' was saved without vectors: pass vectors= (the store's rows) to "
                "load it."
            )
        saved_search = {"probe": int(header["probe"])} if "probe" in header else {}
        index = cls(
            dimension, similarity, vectors=None if own else vectors, **{**saved_search, **params, **header["structure"]}
        )
        positions = arrays["positions"]
        if len(positions):
            index._grow(int(positions.max()) + 1)
            index._present[positions] = True
            index._count = len(positions)
            if own:
                index._own[positions] = arrays["vectors"]  # type: ignore[index]
                if vectors is not None:
                    index._vectors_of = vectors
                    index._own = None
        if header["trained"]:
            position_of = arrays["position_of"].astype(np.int64)
            index._index = _parallel_over_lists(faiss.deserialize_index(arrays["faiss"]))
            live = position_of[position_of >= 0]
            if index._index.ntotal != len(position_of) or not np.array_equal(np.sort(live), positions):
                raise ValueError(
                    f"The approximate index '{path}' is inconsistent ({index._index.ntotal} codes, {len(live)} live, "
                    f"{len(positions)} positions). Delete it: the store rebuilds it."
                )
            index._position_of = position_of
            index._codes = len(position_of)
            index._dead = index._codes - len(live)
            numbers = np.flatnonzero(position_of >= 0)
            index._identity = bool(np.array_equal(numbers, live))
            index._code_of[live] = numbers
        return index

    # ------------------------------------------------------------------------------------------ internals
    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as indexed: normalised rows for cosine (zero rows stay zero), unchanged for dot."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.similarity != "cosine":
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        if self._own is not None:
            return self._own[positions]
        rows = np.asarray(self._vectors_of(positions), dtype=np.float32)  # type: ignore[misc]
        if rows.shape != (len(positions), self.dimension):
            raise ValueError(
                f"The vectors= function returned shape {rows.shape} for {len(positions)} positions; it must return "
                f"one {self.dimension}-d row per position."
            )
        return rows

    def _exact_scores(self, positions: np.ndarray, prepared_query: np.ndarray) -> np.ndarray:
        rows = self._rows(positions)
        scores = rows @ prepared_query
        if self.similarity == "cosine" and self._own is None:
            norms = np.linalg.norm(rows, axis=1)
            scores = np.where(norms > 0, scores / np.where(norms > 0, norms, 1.0), 0.0)
        return scores.astype(np.float32, copy=False)

    def _grow(self, size: int) -> None:
        if size <= len(self._present):
            return
        capacity = max(size, int(len(self._present) * 1.5) + 1024)
        present = np.zeros(capacity, dtype=bool)
        present[: len(self._present)] = self._present
        self._present = present
        code_of = np.full(capacity, -1, dtype=np.int64)
        code_of[: len(self._code_of)] = self._code_of
        self._code_of = code_of
        if self._own is not None:
            own = np.zeros((capacity, self.dimension), dtype=np.float32)
            own[: len(self._own)] = self._own
            self._own = own

    def _forget(self, positions: np.ndarray) -> None:
        """Mark ``positions`` absent and their codes dead (unknown positions ignored)."""
        positions = positions[(positions >= 0) & (positions < len(self._present))]
        positions = np.unique(positions[self._present[positions]])
        if len(positions) == 0:
            return
        self._present[positions] = False
        self._count -= len(positions)
        if self._index is not None:
            codes = self._code_of[positions]
            codes = codes[codes >= 0]
            self._position_of[codes] = -1
            self._code_of[positions] = -1
            self._dead += len(codes)
            self._live_bits = None

    def _append_codes(self, positions: np.ndarray, prepared: np.ndarray) -> None:
        """Encode ``prepared`` vectors as new codes owned by ``positions`` (which hold no live code)."""
        numbers = np.arange(self._codes, self._codes + len(positions), dtype=np.int64)
        if self._codes + len(positions) > len(self._position_of):
            grown = np.full(max(self._codes + len(positions), int(len(self._position_of) * 1.5) + 1024), -1, np.int64)
            grown[: self._codes] = self._position_of[: self._codes]
            self._position_of = grown
        # Threads only pay for bulk encoding: for a few vectors, waking a second thread (which may be busy
        # elsewhere) costs more than encoding them.
        threads = self._threads() if len(positions) >= _PARALLEL_ENCODE_MIN else 1
        with _OmpThreads(threads):
            self._index.add_with_ids(prepared, numbers)
        self._position_of[numbers] = positions
        self._code_of[positions] = numbers
        self._codes += len(positions)
        self._identity = self._identity and bool(np.array_equal(numbers, positions))
        self._live_bits = None

    def _maybe_compact(self) -> None:
        # Dead codes only cost scan time, so compaction waits until they are the majority (amortised: each
        # rebuild follows at least as many removals as it re-encodes live vectors).
        if self._index is not None and self._dead > max(self._count, int(self.params["train_size"])):
            self.compact()

    def _live_bitmap(self) -> np.ndarray:
        if self._live_bits is None:
            self._live_bits = np.packbits(self._position_of[: self._codes] >= 0, bitorder="little")
        return self._live_bits

    def _new_faiss_index(self) -> Any:
        subquantizers = self.dimension // int(self.params["dims_per_subquantizer"])
        lists = int(self.params["lists"])
        index = faiss.index_factory(self.dimension, f"IVF{lists},PQ{subquantizers}x4fs", faiss.METRIC_INNER_PRODUCT)
        return _parallel_over_lists(index)

    def _threads(self) -> int:
        """OpenMP threads for one faiss call: ``threads``, but no more than the CPUs this process may use."""
        return max(1, min(int(self.params["threads"]), usable_cpus()))

    def _train(self) -> None:
        """Train on a sample of the held vectors, then encode all of them."""
        positions = np.flatnonzero(self._present)
        rng = np.random.default_rng(len(positions))
        sample_size = min(len(positions), int(self.params["train_size"]))
        sample = np.sort(rng.choice(positions, sample_size, replace=False))
        index = self._new_faiss_index()
        with _OmpThreads(self._threads()):
            index.train(self._prepare(self._rows(sample)))
        self._index = index
        for start in range(0, len(positions), 65_536):
            block = positions[start : start + 65_536]
            self._append_codes(block, self._prepare(self._rows(block)))


def _parallel_over_lists(index: Any) -> Any:
    """Make a fast-scan IVF index with several lists scan one query's lists on several OpenMP threads.

    faiss's default implementation parallelises over queries only, so a single query would scan all of its
    lists on one thread; implementation 15 (not saved with the index, hence set on every new, cloned or
    loaded index) shares the (query, list) pairs among the threads and collects candidates in a reservoir,
    which suits the hundreds of candidates a search asks for. With one list it would only add a merge step.
    """
    if index.nlist > 1:
        index.implem = 15
    return index
