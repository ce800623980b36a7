"""Columnar, numpy-vectorized evaluation of Haystack filter dicts over the rows of a store.

``MetaColumns`` copies the meta values of a store's rows into typed columns, one per meta path (nested
paths included): one ``int8`` kind per row (missing, number, string, other), a ``float64`` array for numbers
(ints, floats and bools, exact up to 2**53) and codes into a dictionary of the distinct strings. A filter
then costs a few numpy passes over those arrays instead of a Python call per record. ISO date strings are
parsed once per distinct string, and ordering compares per-row microsecond arrays. Paths that only a few
rows hold stay sparse (row -> value) until they fill up. The meta mappings themselves are not kept; ``id``
and ``content`` are kept by reference. Or, given a ``values`` source, nothing per row is kept: a field's
column is built from the source on the first filter that names it, and writes update only built columns.

Semantics are exactly those of :func:`dual_encoder.filters.compile_filter` (Haystack's): for every
occupied row, ``mask(filters)[row] == compile_filter(filters)(record)``, including the ``FilterError`` the
reference raises when it orders a value it cannot compare (AND/OR short-circuit decides which rows are
evaluated, as in the reference). Values the fast paths do not cover (lists, dicts, ints beyond 2**53,
strings that only dateutil's lenient parser reads, time zones without a fixed offset) are evaluated with
the reference comparator on just those rows.

Writes update the columns in place (arrays grow by a quarter), so a small write costs microseconds per meta
path. All methods hold one internal lock, so the object may be shared between threads.

Example::

    columns = MetaColumns()
    columns.set_rows([0, 1, 2], [("a", "x", {"year": 2020}), ("b", "y", {"year": 2010}), ("c", None, {})])
    columns.mask({"field": "meta.year", "operator": ">=", "value": 2015}, size=4)
    # array([ True, False, False, False])
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from itertools import chain, filterfalse, repeat
from typing import Any

import numpy as np
from dateutil import tz as _dateutil_tz

from dual_encoder.errors import FilterError
from dual_encoder.filters import _COMPARATORS, _as_iso_date, _parse_for_ordering, compile_filter

__all__ = ["MetaColumns"]

# Row kinds in a column.
_MISSING, _NUM, _STR, _OTHER = 0, 1, 2, 3
_INT = 4  # transient, while classifying: an int still to be range-checked
_TYPE_KIND: dict[type, int] = {type(None): _MISSING, bool: _NUM, float: _NUM, int: _INT, str: _STR}
# Ints beyond this magnitude are not all exact in float64: they go to the reference path.
_EXACT_INT = 2**53

# Date kinds per distinct string.
_NOT_DATE, _NAIVE, _AWARE, _SLOW = 0, 1, 2, 3

# Writes of at least this many rows update a built column with numpy instead of row by row.
_BULK = 64
# Meta paths with values in at most this many rows (or a sixteenth of the slots) stay sparse.
_SPARSE_LIMIT = 1024
# Up to this many candidates, `in` ORs equality masks instead of a lookup table or np.isin.
_FEW = 4

_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_FIXED_TZ = (timezone, _dateutil_tz.tzutc, _dateutil_tz.tzoffset)

_NUMPY_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
}
_SCALAR_TYPES = (type(None), bool, int, float, str, datetime)
# Types of meta values that are never mappings (JSON leaves and lists).
_LEAF_TYPES = frozenset({type(None), bool, int, float, str, list})

_STRINGS_NOT_ORDERABLE = (
    "Can't compare strings using operators '>', '>=', '<', '<='. Strings are only comparable if they are ISO "
    "formatted dates."
)
_DATETIME_VS_OTHER = "Can't compare a datetime with a non-datetime value using operators '>', '>=', '<', '<='."

Record = tuple[str, "str | None", "Mapping[str, Any] | None"]


def _field_path(field: str) -> tuple[str, ...] | None:
    """The column key of a filter field, with the reference's rules (``None``: a field that is always missing)."""
    if field in ("id", "content"):
        return (field,)
    parts = field.split(".")
    if parts[0] == "meta" and len(parts) > 1:
        return ("meta", *parts[1:])
    if len(parts) == 1:
        return ("meta", field)
    return None


def _wall_and_offset(moment: datetime) -> tuple[int, int | None] | None:
    """Local wall-clock time and UTC offset in microseconds (offset ``None`` when naive); ``None`` for a time
    zone whose offset depends on the date, which the vectorized comparison cannot align."""
    zone = moment.tzinfo
    wall = (moment.replace(tzinfo=None) - _EPOCH) // _MICROSECOND
    if zone is None:
        return wall, None
    if not isinstance(zone, _FIXED_TZ):
        return None
    offset = moment.utcoffset()
    if offset is None:
        return None
    return wall, offset // _MICROSECOND


def _as_float(value: bool | int | float) -> tuple[float, bool]:
    """``value`` as the nearest float64 and whether that float equals it exactly (big ints may not)."""
    if type(value) is not int:
        return float(value), True
    try:
        number = float(value)
    except OverflowError:
        number = float("inf") if value > 0 else float("-inf")
    return number, number == value


def _equals_any(values: np.ndarray, candidates: list[Any]) -> np.ndarray:
    """``values`` equal to any of ``candidates``; a few comparisons beat ``np.isin``'s sort for short lists."""
    if len(candidates) > _FEW:
        return np.isin(values, candidates)
    hit = values == candidates[0]
    for candidate in candidates[1:]:
        hit |= values == candidate
    return hit


def _order_numbers(numbers: np.ndarray, operator: str, value: bool | int | float) -> np.ndarray:
    """``numbers <op> value`` exactly as Python compares floats with ints, even for ints no float equals."""
    number, exact = _as_float(value)
    if exact:
        return _NUMPY_ORDER[operator](numbers, number)
    # `value` lies strictly between two floats and `number` is the nearest one; rows are floats, so they are
    # never equal to `value` and only the side of `number` matters.
    if number > value:
        return numbers < number if operator in ("<", "<=") else numbers >= number
    return numbers <= number if operator in ("<", "<=") else numbers > number


class _DateTable:
    """Parsed dates of a column's distinct strings, extended as the dictionary grows."""

    __slots__ = ("count_aware", "count_slow", "instant", "kind", "ready", "wall")

    def __init__(self) -> None:
        self.kind = np.zeros(0, np.int8)
        self.wall = np.zeros(0, np.int64)
        self.instant = np.zeros(0, np.int64)
        self.ready = 0
        self.count_aware = 0
        self.count_slow = 0

    def extend(self, vocabulary: list[str], parse: Callable[[str], datetime | None], unparsed: int) -> None:
        """Parse ``vocabulary[self.ready:]``; strings ``parse`` rejects get kind ``unparsed``."""
        size = len(vocabulary)
        if self.ready == size:
            return
        if self.kind.size < size:
            capacity = max(size, 2 * self.kind.size, 64)
            for name in ("kind", "wall", "instant"):
                grown = np.zeros(capacity, getattr(self, name).dtype)
                grown[: self.ready] = getattr(self, name)[: self.ready]
                setattr(self, name, grown)
        kinds, walls, instants = [], [], []
        for moment in map(parse, vocabulary[self.ready : size]):
            if moment is not None and moment.tzinfo is None:  # the common case, inlined
                wall = (moment - _EPOCH) // _MICROSECOND
                kinds.append(_NAIVE)
                walls.append(wall)
                instants.append(wall)
                continue
            split = None if moment is None else _wall_and_offset(moment)
            if split is None:
                kinds.append(unparsed if moment is None else _SLOW)
                walls.append(0)
                instants.append(0)
                continue
            wall, offset = split  # aware, with a fixed offset
            assert offset is not None  # moment carries a time zone, so its split has an offset
            kinds.append(_AWARE)
            walls.append(wall)
            instants.append(wall - offset)
        kind = np.array(kinds, dtype=np.int8)
        self.kind[self.ready : size] = kind
        self.wall[self.ready : size] = walls
        self.instant[self.ready : size] = instants
        self.count_aware += int(np.count_nonzero(kind == _AWARE))
        self.count_slow += int(np.count_nonzero(kind == _SLOW))
        self.ready = size

    def compare(self, compare: Callable[[Any, Any], Any], moment: tuple[int, int | None], size: int) -> np.ndarray:
        """Per distinct string: ``parsed <compare> moment`` after the reference's time-zone alignment (a naive
        side takes the other side's zone, which for fixed offsets means comparing wall-clock times)."""
        wall, offset = moment
        kind = self.kind[:size]
        if offset is None:
            return ((kind == _NAIVE) | (kind == _AWARE)) & compare(self.wall[:size], wall)
        return ((kind == _NAIVE) & compare(self.wall[:size], wall)) | (
            (kind == _AWARE) & compare(self.instant[:size], wall - offset)
        )


def _parse_ordering_date(text: str) -> datetime | None:
    # Only the strict ISO parser is cached; strings it rejects go to the reference per row, because dateutil's
    # lenient parser fills missing parts from today's date (so its result is not a constant).
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class _Column:
    """One field over rows ``0..n-1``: kinds, numbers, string codes, and the values of rows of other kinds."""

    __slots__ = (
        "code",
        "codes_of",
        "count_number",
        "count_string",
        "equal_dates",
        "kind",
        "number",
        "order_dates",
        "order_instant",
        "order_kind",
        "order_wall",
        "other",
        "vocabulary",
    )

    def __init__(self, capacity: int) -> None:
        self.kind = np.zeros(capacity, np.int8)
        self.number: np.ndarray | None = None
        self.code: np.ndarray | None = None
        self.other: dict[int, Any] = {}
        self.vocabulary: list[str] = []
        self.codes_of: dict[str, int] = {}
        self.count_number = 0
        self.count_string = 0
        self.equal_dates = _DateTable()
        self.order_dates = _DateTable()
        # Per row, the ordering parse of the row's string (kind 0 for rows that hold no string): built on the
        # first ordering filter, so that ordering compares row arrays instead of gathering from the dictionary.
        self.order_kind: np.ndarray | None = None
        self.order_wall: np.ndarray | None = None
        self.order_instant: np.ndarray | None = None

    @classmethod
    def of(cls, values: list[Any], capacity: int | None = None) -> _Column:
        """A column holding ``values`` at rows ``0..len(values)-1``."""
        column = cls(len(values) if capacity is None else capacity)
        if values:
            column.assign(np.arange(len(values)), values)
        return column

    def grow(self, capacity: int) -> None:
        for name in ("kind", "number", "code", "order_kind", "order_wall", "order_instant"):
            array = getattr(self, name)
            if array is not None and array.size < capacity:
                grown = np.zeros(capacity, array.dtype)
                grown[: array.size] = array
                setattr(self, name, grown)

    def _numbers(self) -> np.ndarray:
        if self.number is None:
            self.number = np.zeros(self.kind.size, np.float64)
        return self.number

    def _codes(self) -> np.ndarray:
        if self.code is None:
            # intp codes: np.take(..., mode="clip") on intp indices is several times faster than on int32.
            self.code = np.zeros(self.kind.size, np.intp)
        return self.code

    def value_at(self, row: int) -> Any:
        """The row's value as the reference sees it (numbers come back as floats, which compare the same)."""
        kind = self.kind[row]
        if kind == _NUM:
            return float(self._numbers()[row])
        if kind == _STR:
            return self.vocabulary[self._codes()[row]]
        if kind == _OTHER:
            return self.other[row]
        return None

    def encode(self, text: str) -> int:
        code = self.codes_of.get(text)
        if code is None:
            code = self.codes_of[text] = len(self.vocabulary)
            self.vocabulary.append(text)
        return code

    def put(self, row: int, value: Any) -> None:
        """Store ``value`` at ``row``, replacing what the row held."""
        old = self.kind[row]
        if old == _NUM:
            self.count_number -= 1
        elif old == _STR:
            self.count_string -= 1
        elif old == _OTHER:
            del self.other[row]
        kind = _TYPE_KIND.get(type(value), _OTHER)
        if kind == _INT:
            kind = _NUM if -_EXACT_INT <= value <= _EXACT_INT else _OTHER
        self.kind[row] = kind
        if kind == _NUM:
            self._numbers()[row] = value
            self.count_number += 1
        elif kind == _STR:
            code = self._codes()[row] = self.encode(value)
            self.count_string += 1
        elif kind == _OTHER:
            self.other[row] = value
        if self.order_kind is not None:
            assert self.order_wall is not None  # allocated together with order_kind, in ordering_rows
            if kind != _STR:
                self.order_kind[row] = 0
                return
            dates = self.order_dates
            dates.extend(self.vocabulary, _parse_ordering_date, _SLOW)
            if self.order_instant is None and dates.count_aware:
                self._order_rows(np.array([row], dtype=np.intp))  # allocates the instants
                return
            self.order_kind[row] = dates.kind[code]
            self.order_wall[row] = dates.wall[code]
            if self.order_instant is not None:
                self.order_instant[row] = dates.instant[code]

    def assign(self, rows: np.ndarray, values: list[Any]) -> None:
        """Store ``values[i]`` at ``rows[i]`` (distinct rows), replacing what they held: the bulk ``put``."""
        count = len(values)
        old = self.kind[rows]
        self.count_number -= int(np.count_nonzero(old == _NUM))
        self.count_string -= int(np.count_nonzero(old == _STR))
        if self.other:
            for row in rows[old == _OTHER].tolist():
                del self.other[row]
        kind = np.fromiter(map(_TYPE_KIND.get, map(type, values), repeat(_OTHER)), np.int8, count)
        int_at = np.flatnonzero(kind == _INT)
        if int_at.size:
            ints = [values[at] for at in int_at.tolist()]
            try:
                as_int64 = np.array(ints, dtype=np.int64)
                exact = (as_int64 >= -_EXACT_INT) & (as_int64 <= _EXACT_INT)
            except OverflowError:
                exact = np.fromiter((-_EXACT_INT <= value <= _EXACT_INT for value in ints), bool, len(ints))
            kind[int_at] = np.where(exact, _NUM, _OTHER)
        self.kind[rows] = kind
        number_at = np.flatnonzero(kind == _NUM)
        if number_at.size:
            numbers = values if number_at.size == count else [values[at] for at in number_at.tolist()]
            self._numbers()[rows[number_at]] = np.array(numbers, dtype=np.float64)
            self.count_number += number_at.size
        string_at = np.flatnonzero(kind == _STR)
        if string_at.size:
            texts = values if string_at.size == count else [values[at] for at in string_at.tolist()]
            self._codes()[rows[string_at]] = self.encode_many(texts)
            self.count_string += string_at.size
        for at in np.flatnonzero(kind == _OTHER).tolist():
            self.other[int(rows[at])] = values[at]
        if self.order_kind is not None:
            self.order_kind[rows] = 0
            if string_at.size:
                self._order_rows(rows[string_at])

    def encode_many(self, texts: list[str]) -> np.ndarray:
        """Dictionary codes of ``texts``, adding the strings not seen before."""
        codes_of = self.codes_of
        fresh = dict.fromkeys(filterfalse(codes_of.__contains__, texts) if codes_of else texts)
        start = len(self.vocabulary)
        codes_of.update(zip(fresh, range(start, start + len(fresh))))
        self.vocabulary.extend(fresh)
        return np.fromiter(map(codes_of.__getitem__, texts), np.intp, len(texts))

    def _order_rows(self, rows: np.ndarray) -> None:
        """Refresh the per-row ordering parse of ``rows``, which hold strings."""
        dates = self.order_dates
        dates.extend(self.vocabulary, _parse_ordering_date, _SLOW)
        codes = self._codes()[rows]
        assert self.order_kind is not None and self.order_wall is not None  # callers allocate them first
        self.order_kind[rows] = dates.kind[codes]
        self.order_wall[rows] = dates.wall[codes]
        if self.order_instant is not None:
            self.order_instant[rows] = dates.instant[codes]
        elif dates.count_aware:
            # Instants differ from wall-clock times only for zone-aware strings: kept once the first one appears.
            self.order_instant = np.zeros(self.kind.size, np.int64)
            every = np.flatnonzero(self.kind == _STR)
            self.order_instant[every] = dates.instant[self._codes()[every]]

    def ordering_rows(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per-row date kind, wall-clock and instant microseconds of the first ``size`` rows' strings (instants
        are ``None`` while no string of the column carries a time zone)."""
        if self.order_kind is None:
            capacity = self.kind.size
            self.order_kind = np.zeros(capacity, np.int8)
            self.order_wall = np.zeros(capacity, np.int64)
            self._order_rows(np.flatnonzero(self.kind == _STR))
        instant = None if self.order_instant is None else self.order_instant[:size]
        assert self.order_kind is not None and self.order_wall is not None  # allocated together, above
        return self.order_kind[:size], self.order_wall[:size], instant

    def shrink_vocabulary(self) -> None:
        """Drop the strings no row uses any more, once they outnumber the used ones (amortized O(1) per write)."""
        if len(self.vocabulary) <= 2 * self.count_string + 4096:
            return
        rows = np.flatnonzero(self.kind == _STR)
        used, codes = np.unique(self._codes()[rows], return_inverse=True)
        self._codes()[rows] = codes
        self.vocabulary = [self.vocabulary[code] for code in used.tolist()]
        self.codes_of = {text: code for code, text in enumerate(self.vocabulary)}
        # Date tables are indexed by code: parse again on demand. Per-row ordering caches stay valid.
        self.equal_dates = _DateTable()
        self.order_dates = _DateTable()
        if self.order_kind is not None:
            self.order_dates.extend(self.vocabulary, _parse_ordering_date, _SLOW)


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or (type(value) not in _LEAF_TYPES and isinstance(value, Mapping))


def _flatten(metas: Sequence[Any]) -> dict[tuple[str, ...], tuple[list[int], list[Any]]]:
    """Every meta path of a batch: ``path -> (indices into metas, values)``. Nested mappings give both their own
    path and their children's, as the reference reads ``meta.a`` and ``meta.a.b``."""
    found: dict[tuple[str, ...], tuple[list[int], list[Any]]] = {}
    pending: list[tuple[tuple[str, ...], list[int], list[Mapping[str, Any]]]] = []
    if set(map(type, metas)) == {dict}:
        pending.append((("meta",), list(range(len(metas))), list(metas)))
    else:
        top = [(index, meta) for index, meta in enumerate(metas) if meta and _is_mapping(meta)]
        if top:
            pending.append((("meta",), [index for index, _ in top], [meta for _, meta in top]))
    while pending:
        prefix, indices, mappings = pending.pop()
        for key in set(chain.from_iterable(mappings)):
            if not isinstance(key, str):
                continue  # filter fields are strings: such a key can never be named
            try:
                at_indices, values = indices, [mapping[key] for mapping in mappings]
            except KeyError:
                present = [(index, mapping[key]) for index, mapping in zip(indices, mappings) if key in mapping]
                at_indices, values = [index for index, _ in present], [value for _, value in present]
            path = (*prefix, key)
            found[path] = (at_indices, values)
            if not _LEAF_TYPES.issuperset(map(type, values)):
                nested = [(index, value) for index, value in zip(at_indices, values) if value and _is_mapping(value)]
                if nested:
                    pending.append((path, [index for index, _ in nested], [value for _, value in nested]))
    return found


class MetaColumns:
    """Row-aligned columnar copy of id, content and meta of a store's rows, for vectorized filters.

    Without ``values``, meta values are copied into typed columns on write (one per path, including nested
    paths; the meta mappings are not kept), and ``id`` and ``content`` are kept by reference and turned into
    columns on the first filter that names them.

    With ``values``, nothing per row is kept: ``values(field)`` is called (from inside ``mask``, in the
    caller's thread) with ``"id"``, ``"content"`` or a dotted ``"meta.<path>"`` and must return
    ``(positions, values)``: one value per occupied slot, read as the reference reads it (``None`` for a
    missing field or a non-mapping on the way; JSON true/false may come back as 1/0, which compare the same).
    A meta field's column is then kept and updated by later writes; ``id`` and ``content`` are fetched for
    every filter that names them (they may be large). ``set_rows`` still declares which slots hold documents;
    its records only update columns already built, so before the first filter they may be
    ``(None, None, None)``.
    """

    def __init__(self, values: Callable[[str], tuple[np.ndarray | Sequence[int], Sequence[Any]]] | None = None) -> None:
        self._lock = threading.RLock()
        self._size = 0
        self._occupied = np.zeros(0, bool)
        self._source = values
        self._texts: dict[str, list[Any]] = {} if values is not None else {"id": [], "content": []}
        # With a source: the meta paths whose column exists (dense, sparse, or sparse and empty).
        self._built: set[tuple[str, ...]] = set()
        # Meta paths holding values in many rows: dense columns over all slots.
        self._dense: dict[tuple[str, ...], _Column] = {}
        # Meta paths holding values in few rows: row -> value, turned into a compact column when filtered on.
        self._sparse: dict[tuple[str, ...], dict[int, Any]] = {}
        self._compact: dict[tuple[str, ...], tuple[np.ndarray, _Column]] = {}
        self._text_columns: dict[str, _Column] = {}

    def __len__(self) -> int:
        """Rows known (slots), occupied or not."""
        return self._size

    # ------------------------------------------------------------------------------------------ updates
    def set_rows(self, positions: Sequence[int], records: Sequence[Record]) -> None:
        """Store ``(id, content, meta)`` of each record at its slot position (growing as needed), replacing
        what the slot held; a position given twice keeps its last record."""
        if len(positions) != len(records):
            raise ValueError(f"set_rows got {len(positions)} positions for {len(records)} records; pass one each.")
        if not len(positions):
            return
        rows = np.asarray(positions, dtype=np.intp).reshape(-1)
        first, last = int(rows.min()), int(rows.max())
        contiguous = last - first + 1 == len(rows) and bool((np.diff(rows) == 1).all())
        listed = rows.tolist()
        if not contiguous and len(set(listed)) != len(listed):
            latest = dict(zip(listed, records))
            listed, records = list(latest), list(latest.values())
            rows = np.array(listed, dtype=np.intp)
        if first < 0:
            raise ValueError(f"Slot positions must be >= 0, got {first}.")
        with self._lock:
            self._grow(last + 1)
            self._occupied[rows] = True
            for name, at in (("id", 0), ("content", 1)):
                values = [record[at] for record in records]
                if name in self._texts:
                    target = self._texts[name]
                    if contiguous:
                        target[first : last + 1] = values
                    else:
                        for position, value in zip(listed, values):
                            target[position] = value
                if name in self._text_columns:
                    self._write(self._text_columns[name], listed, rows, values)
            self._write_meta(listed, rows, [record[2] for record in records])

    def clear_rows(self, positions: Sequence[int]) -> None:
        """Mark slots as holding no document: they never match any filter. Unknown positions are ignored."""
        with self._lock:
            listed = sorted({int(position) for position in positions if 0 <= int(position) < self._size})
            if not listed:
                return
            rows = np.array(listed, dtype=np.intp)
            self._occupied[rows] = False
            nothing = [None] * len(listed)
            for target in self._texts.values():
                for position in listed:
                    target[position] = None
            for column in self._text_columns.values():
                self._write(column, listed, rows, nothing)
            self._write_meta(listed, rows, nothing)

    def _grow(self, size: int) -> None:
        if size <= self._size:
            return
        if size > self._occupied.size:
            # Growing by a quarter keeps appends amortized O(1) while leaving at most a fifth of the columns unused.
            capacity = max(size, self._occupied.size + self._occupied.size // 4, 1024)
            occupied = np.zeros(capacity, bool)
            occupied[: self._size] = self._occupied[: self._size]
            self._occupied = occupied
            for column in (*self._dense.values(), *self._text_columns.values()):
                column.grow(capacity)
        for target in self._texts.values():
            target.extend(repeat(None, size - self._size))
        self._size = size

    @staticmethod
    def _write(column: _Column, listed: list[int], rows: np.ndarray, values: list[Any]) -> None:
        if len(listed) < _BULK:
            for position, value in zip(listed, values):
                column.put(position, value)
        else:
            column.assign(rows, values)
        column.shrink_vocabulary()

    def _write_meta(self, listed: list[int], rows: np.ndarray, metas: list[Any]) -> None:
        """Replace the meta values of rows ``listed`` by those of ``metas`` (``None``: no meta) in every path."""
        if self._source is not None and not self._built:
            return  # nothing to update: the source answers for fields filtered on later
        found = _flatten(metas)
        for path in self._dense.keys() | self._sparse.keys() | (self._built if self._source else found.keys()):
            indices, values = found.get(path, ([], []))
            if len(indices) == len(listed):
                batch = values
            else:
                batch = [None] * len(listed)
                for index, value in zip(indices, values):
                    batch[index] = value
            column = self._dense.get(path)
            if column is None and path not in self._sparse and len(indices) > max(_SPARSE_LIMIT, self._size // 16):
                column = self._dense[path] = _Column(self._occupied.size)
            if column is not None:
                self._write(column, listed, rows, batch)
                continue
            entries = self._sparse.setdefault(path, {})
            changed = False
            for position, value in zip(listed, batch):
                if value is not None:
                    entries[position] = value
                    changed = True
                elif position in entries:
                    del entries[position]
                    changed = True
            if changed:
                self._compact.pop(path, None)
            if len(entries) > max(_SPARSE_LIMIT, self._size // 16):
                column = _Column(self._occupied.size)
                column.assign(np.fromiter(entries, np.intp, len(entries)), list(entries.values()))
                self._dense[path] = column
                del self._sparse[path]
            elif not entries:
                del self._sparse[path]

    # ------------------------------------------------------------------------------------------ reading
    def _text_column(self, name: str) -> tuple[_Column, np.ndarray | None]:
        """The column of ``id`` or ``content``, with the rows it covers (``None``: all slots)."""
        column = self._text_columns.get(name)
        if column is not None:
            return column, None
        if self._source is None:
            column = _Column.of(self._texts[name], self._occupied.size)
            self._text_columns[name] = column
            return column, None
        positions, values = self._source(name)
        return _Column.of(list(values)), np.asarray(positions, dtype=np.intp).reshape(-1)

    def _meta_column(self, path: tuple[str, ...]) -> tuple[_Column | None, np.ndarray | None]:
        column = self._dense.get(path)
        if column is not None:
            return column, None
        entries = self._sparse.get(path)
        if entries is None and self._source is not None and path not in self._built:
            self._built.add(path)
            positions, values = self._source(".".join(path))
            rows = np.asarray(positions, dtype=np.intp).reshape(-1)
            values = list(values)
            inside = (rows >= 0) & (rows < self._size)  # slots this object does not know hold nothing
            if not inside.all():
                values = [value for value, keep in zip(values, inside.tolist()) if keep]
                rows = rows[inside]
            if len(values) - values.count(None) > max(_SPARSE_LIMIT, self._size // 16):
                column = self._dense[path] = _Column(self._occupied.size)
                column.assign(rows, values)
                return column, None
            entries = {row: value for row, value in zip(rows.tolist(), values) if value is not None}
            if entries:
                self._sparse[path] = entries
        if not entries:
            return None, np.zeros(0, np.intp)
        compact = self._compact.get(path)
        if compact is None:
            compact = self._compact[path] = (
                np.fromiter(entries, np.intp, len(entries)),
                _Column.of(list(entries.values())),
            )
        return compact[1], compact[0]

    # ------------------------------------------------------------------------------------------ filtering
    def mask(self, filters: Mapping[str, Any] | None, size: int) -> np.ndarray:
        """Boolean array of length ``size``: True where the slot holds a document matching ``filters``.

        ``filters`` is a Haystack filter dict (``None`` or ``{}``: every occupied slot). Slots at or beyond
        ``len(self)`` are False. Raises ``FilterError`` for a malformed filter, and where the reference
        predicate would raise on some document (ordering a value that is not comparable).
        """
        with self._lock:
            predicate = compile_filter(filters)  # validates the whole filter, as the reference does
            out = np.zeros(size, bool)
            count = min(size, self._size)
            alive = self._occupied[: self._size].copy()
            if predicate is not None and filters is not None and alive.any():
                alive &= self._evaluate(filters, alive.copy())
            out[:count] = alive[:count]
            return out

    def _evaluate(self, node: Mapping[str, Any], alive: np.ndarray) -> np.ndarray:
        """Result of ``node`` for the rows where ``alive`` is True (other rows: anything). ``alive`` marks the
        rows the reference would evaluate this node for; only those can raise."""
        if "field" in node:
            return self._compare(node["field"], node["operator"], node["value"], alive)
        operator, children = node["operator"], node["conditions"]
        if operator == "OR":
            undecided = alive.copy()
            result = np.zeros(alive.size, bool)
            for child in children:
                if not undecided.any():
                    break
                hit = self._evaluate(child, undecided) & undecided
                result |= hit
                undecided &= ~hit
            return result
        passing = alive.copy()
        for child in children:
            if not passing.any():
                break
            passing &= self._evaluate(child, passing)
        return passing if operator == "AND" else ~passing

    def _compare(self, field: str, operator: str, value: Any, alive: np.ndarray) -> np.ndarray:
        path = _field_path(field)
        rows: np.ndarray | None
        if path is None:
            column, rows = None, np.zeros(0, np.intp)
        elif path[0] == "meta":
            column, rows = self._meta_column(path)
        else:
            column, rows = self._text_column(path[0])
        if rows is None:
            assert column is not None  # only a column over every row comes back without its rows
            return _compare_column(column, operator, value, alive)
        # A column over some rows only: the others hold no value, which compares as None (and never raises).
        out = np.full(self._size, _COMPARATORS[operator](None, value), bool)
        if column is not None and rows.size:
            inside = (rows >= 0) & (rows < self._size)  # a values source may know slots this object does not
            evaluated = np.zeros(rows.size, bool)
            evaluated[inside] = alive[rows[inside]]
            result = _compare_column(column, operator, value, evaluated, rows.size)
            out[rows[inside]] = result[inside]
        return out


def _compare_column(
    column: _Column, operator: str, value: Any, alive: np.ndarray, size: int | None = None
) -> np.ndarray:
    """``<row value> operator value`` for rows ``0..size-1`` of ``column`` (``alive``: the rows evaluated)."""
    size = alive.size if size is None else size
    if operator in ("==", "!="):
        equal = _equal(column, [value], alive, size)
        return equal if operator == "==" else ~equal
    if operator in ("in", "not in"):
        found = _equal(column, value, alive, size)
        return found if operator == "in" else ~found
    return _order(column, operator, value, alive, size)


def _reference(column: _Column, operator: str, value: Any, rows: np.ndarray, out: np.ndarray) -> None:
    """Evaluate the reference comparator on ``rows`` (a bool mask) and write the results into ``out``."""
    compare = _COMPARATORS[operator]
    for row in np.flatnonzero(rows).tolist():
        out[row] = compare(column.value_at(row), value)


def _other_rows(column: _Column, size: int) -> np.ndarray:
    rows = np.zeros(size, bool)
    rows[[row for row in column.other if row < size]] = True
    return rows


def _equal(column: _Column, candidates: list[Any], alive: np.ndarray, size: int) -> np.ndarray:
    """Rows equal (in the reference's ``_equal`` sense) to any of ``candidates``: ``==`` is ``in [value]``."""
    kind = column.kind[:size]
    out = np.zeros(size, bool)
    if any(type(candidate) not in _SCALAR_TYPES and type(candidate) not in (list, dict) for candidate in candidates):
        _reference(column, "in", candidates, alive, out)
        return out
    if any(candidate is None for candidate in candidates):
        out |= kind == _MISSING
    if column.count_number:
        numbers = []
        for candidate in candidates:
            if type(candidate) in (bool, int, float):
                number, exact = _as_float(candidate)
                if exact and not math.isnan(number):  # no float equals NaN or an int it cannot represent
                    numbers.append(number)
        if numbers:
            out |= (kind == _NUM) & _equals_any(column._numbers()[:size], numbers)
    if column.count_string:
        _equal_strings(column, candidates, alive, kind, out, size)
    if column.other:
        _reference(column, "in", candidates, _other_rows(column, size) & alive, out)
    return out


def _equal_strings(
    column: _Column, candidates: list[Any], alive: np.ndarray, kind: np.ndarray, out: np.ndarray, size: int
) -> None:
    codes: list[int] = []
    moments: list[tuple[int, int | None]] = []
    slow = False
    for candidate in candidates:
        if type(candidate) is str:
            code = column.codes_of.get(candidate)
            if code is not None:
                codes.append(code)
            moment = _as_iso_date(candidate)
        elif type(candidate) is datetime:
            moment = candidate
        else:
            continue
        if moment is not None:
            split = _wall_and_offset(moment)
            if split is None:
                slow = True
            else:
                moments.append(split)
    string_rows = kind == _STR
    if slow:
        _reference(column, "in", candidates, string_rows & alive, out)
        return
    row_codes = column._codes()[:size]
    if not moments:
        if len(codes) <= _FEW:
            if codes:
                out |= string_rows & _equals_any(row_codes, codes)
            return
        table = np.zeros(len(column.vocabulary), bool)
        table[codes] = True
        out |= string_rows & np.take(table, row_codes, mode="clip")
        return
    vocabulary_size = len(column.vocabulary)
    dates = column.equal_dates
    dates.extend(column.vocabulary, _as_iso_date, _NOT_DATE)
    table = np.zeros(vocabulary_size, bool)
    table[codes] = True
    for wanted in moments:
        table |= dates.compare(np.equal, wanted, vocabulary_size)
    out |= string_rows & np.take(table, row_codes, mode="clip")
    if dates.count_slow:
        slow_codes = dates.kind[:vocabulary_size] == _SLOW
        _reference(column, "in", candidates, string_rows & alive & np.take(slow_codes, row_codes, mode="clip"), out)


def _order(column: _Column, operator: str, value: Any, alive: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, bool)
    if value is None:
        return out
    kind = column.kind[:size]
    value_type = type(value)
    if value_type not in _SCALAR_TYPES:
        _reference(column, operator, value, alive & (kind != _MISSING), out)
        return out
    if value_type in (bool, int, float):
        if column.count_number:
            out |= (kind == _NUM) & _order_numbers(column._numbers()[:size], operator, value)
        if column.count_string and (alive & (kind == _STR)).any():
            # The reference parses the string as a date, then fails to parse the number as one.
            raise FilterError(_STRINGS_NOT_ORDERABLE)
    else:
        if column.count_number and (alive & (kind == _NUM)).any():
            raise FilterError(_STRINGS_NOT_ORDERABLE if value_type is str else _DATETIME_VS_OTHER)
        if column.count_string:
            _order_strings(column, operator, value, alive, kind, out, size)
    if column.other:
        _reference(column, operator, value, _other_rows(column, size) & alive, out)
    return out


def _order_strings(
    column: _Column,
    operator: str,
    value: str | datetime,
    alive: np.ndarray,
    kind: np.ndarray,
    out: np.ndarray,
    size: int,
) -> None:
    moment = value if type(value) is datetime else None
    if moment is None:
        try:
            moment = _parse_for_ordering(value)
        except FilterError:
            if (alive & (kind == _STR)).any():
                raise
            return
    split = _wall_and_offset(moment)
    if split is None:
        _reference(column, operator, value, (kind == _STR) & alive, out)
        return
    row_kind, wall, instant = column.ordering_rows(size)
    compare = _NUMPY_ORDER[operator]
    moment_wall, offset = split
    if column.order_dates.count_aware:
        # A naive side takes the other side's zone: with fixed offsets, aware against aware compares
        # instants and every other pairing compares wall-clock times.
        if offset is None:
            out |= ((row_kind == _NAIVE) | (row_kind == _AWARE)) & compare(wall, moment_wall)
        else:
            out |= ((row_kind == _NAIVE) & compare(wall, moment_wall)) | (
                (row_kind == _AWARE) & compare(instant, moment_wall - offset)
            )
    else:
        out |= (row_kind == _NAIVE) & compare(wall, moment_wall)
    if column.order_dates.count_slow:
        _reference(column, operator, value, alive & (row_kind == _SLOW), out)
