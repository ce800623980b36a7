"""MetaColumns (vectorized filters of the embedded store) against the reference predicate of dual_encoder.filters.

The reference is the executable spec: for every occupied row, ``mask(filters)[row]`` must equal
``compile_filter(filters)(record)``, and ``mask`` must raise ``FilterError`` exactly when the reference raises
on some row. Random documents and filters cover every operator, nesting, mixed types, dates and updates.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

import numpy as np
import pytest

from dual_encoder.embedded import columns as columns_module
from dual_encoder.embedded.columns import MetaColumns
from dual_encoder.errors import FilterError
from dual_encoder.filters import _field_reader, compile_filter

NAN = float("nan")

# Values a meta field may hold (JSON data), chosen so that types collide: 1 == 1.0 == True, dates written in
# several ISO spellings and zones, strings only dateutil's lenient parser reads, ints beyond float precision.
SCALARS = [
    None,
    0,
    1,
    -2,
    3,
    7,
    2**53,
    2**53 + 1,
    -(2**60) - 1,
    10**400,
    0.0,
    1.0,
    2.5,
    -0.5,
    1e300,
    NAN,
    True,
    False,
    "a",
    "b",
    "en",
    "",
    "1",
    "100",
    "March 2020",
    "abc 12",
    "2020-13-01",
    "2020-01-01",
    "2020-01-01T00:00:00",
    "2020-01-01T10:00:00",
    "2020-01-01 10:00",
    "2020-01-01T10:00:00+02:00",
    "2020-01-01T08:00:00Z",
    "2020-01-01T08:00:00+00:00",
    "2019-12-31T23:59:59.999999",
    "1969-07-21T20:17:40",
    "2021-06-15T12:30:00-05:00",
    "2020-01-01T24:00:00",
]
COMPOUND = [[1, 2], ["a"], [], [1.0, 2.0], {"x": 1}, {"x": "a", "y": [1]}, [None]]


class SeasonalZone(tzinfo):
    """A zone whose offset depends on the date (like Europe/Berlin), which fixed-offset shortcuts can't align."""

    def utcoffset(self, moment: datetime | None) -> timedelta:
        return timedelta(hours=2 if moment is not None and 4 <= moment.month <= 9 else 1)

    def dst(self, moment: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, moment: datetime | None) -> str:
        return "seasonal"


FILTER_EXTRAS = [
    datetime(2020, 1, 1, 10, 0),
    datetime(2020, 1, 1, 8, 0, tzinfo=UTC),
    datetime(2020, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2))),
    2**53 - 1,
    -(2**60),
    1.5,
    datetime(2020, 1, 1, 9, 0, tzinfo=SeasonalZone()),
    datetime(2021, 6, 15, 19, 30, tzinfo=SeasonalZone()),
    date(2020, 1, 1),
    (1, 2),
]
FIELDS = [
    "meta.f",
    "f",
    "meta.g",
    "meta.n.x",
    "meta.n",
    "meta.n.y.z",
    "id",
    "content",
    "other.x",
    "meta.absent",
    "meta",
    "meta.h",
]
COMPARISONS = ["==", "!=", ">", ">=", "<", "<=", "in", "not in"]


def random_value(rng: random.Random, *, compound: float = 0.08) -> object:
    if rng.random() < compound:
        return rng.choice(COMPOUND)
    return rng.choice(SCALARS)


def random_meta(rng: random.Random, style: str) -> dict | None:
    if style == "numbers":
        pool = [None, 0, 1, 2, 3, 2.5, True, False]
        return {"f": rng.choice(pool), "g": rng.choice(pool)} if rng.random() < 0.9 else {}
    if style == "dates":
        pool = [value for value in SCALARS if isinstance(value, str) and value[:4].isdigit()] + [None]
        return {"f": rng.choice(pool), "g": rng.choice(pool)}
    if style == "clean_dates":  # only strings both parsers read, so ordering filters give masks
        pool = [
            value
            for value in SCALARS
            if isinstance(value, str) and value[:4].isdigit() and value not in ("2020-13-01", "2020-01-01T24:00:00")
        ] + [None]
        return {"f": rng.choice(pool), "g": rng.choice(pool)} if rng.random() < 0.9 else {}
    meta: dict = {}
    for key in ("f", "g", "h", "meta"):
        if rng.random() < 0.75:
            meta[key] = random_value(rng)
    roll = rng.random()
    if roll < 0.5:
        meta["n"] = {"x": random_value(rng), "y": {"z": random_value(rng)}} if rng.random() < 0.8 else {"x": 1}
    elif roll < 0.6:
        meta["n"] = random_value(rng)
    if rng.random() < 0.05:
        return None
    return meta


def random_record(rng: random.Random, number: int, style: str) -> tuple:
    content = rng.choice([f"text {number}", None, "2020-01-01", "a"])
    return (
        f"doc-{number}" if rng.random() < 0.9 else rng.choice(["a", "2020-01-01"]),
        content,
        random_meta(rng, style),
    )


def random_filter_value(rng: random.Random, operator: str) -> object:
    if operator in ("in", "not in"):
        return [random_filter_value(rng, "==") for _ in range(rng.randint(0, 7))]
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(FILTER_EXTRAS)
    if roll < 0.15 and operator in ("==", "!="):
        return rng.choice(COMPOUND)
    value = rng.choice(SCALARS)
    if operator in (">", ">=", "<", "<=") and rng.random() < 0.5:
        # Ordering mostly within one type family, so that most filters return a mask rather than an error.
        value = rng.choice([1, 2, 2.5, -1, True, "2020-01-01", "2020-01-01T10:00:00+02:00", "2019-12-31T23:59:59"])
    return value


def random_filter(rng: random.Random, depth: int = 0) -> dict:
    if depth < 3 and rng.random() < 0.35:
        operator = rng.choice(["AND", "OR", "NOT"])
        return {"operator": operator, "conditions": [random_filter(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
    operator = rng.choice(COMPARISONS)
    return {"field": rng.choice(FIELDS), "operator": operator, "value": random_filter_value(rng, operator)}


def reference(rows: dict[int, tuple], filters: dict | None, size: int) -> np.ndarray | type[BaseException]:
    """Expected mask, or the exception type the reference raises on some row."""
    predicate = compile_filter(filters)
    expected = np.zeros(size, bool)
    for position, (identifier, content, meta) in rows.items():
        try:
            expected[position] = (
                True if predicate is None else predicate({"id": identifier, "content": content, "meta": meta})
            )
        except Exception as error:
            return type(error)
    return expected


def check(columns: MetaColumns, rows: dict[int, tuple], filters: dict | None, extra: int = 3) -> str:
    size = len(columns) + extra
    expected = reference(rows, filters, size)
    if isinstance(expected, type):
        with pytest.raises(expected):
            columns.mask(filters, size)
        return "raised"
    got = columns.mask(filters, size)
    assert got.dtype == bool and got.shape == (size,)
    mismatched = np.flatnonzero(got != expected)
    assert not mismatched.size, (
        f"filter {filters!r}: rows {mismatched[:5].tolist()} differ; "
        f"records {[rows.get(int(i)) for i in mismatched[:3]]}, got {got[mismatched[:3]].tolist()}"
    )
    return "matched"


@pytest.fixture(params=["sparse", "dense", "both"])
def layout(request, monkeypatch) -> str:
    """Meta paths with few values are kept sparse (row -> value) and become dense columns past a limit: run
    each test with small stores kept sparse (the default), made dense at once, and crossing the limit."""
    limits = {"sparse": columns_module._SPARSE_LIMIT, "dense": 0, "both": 40}
    monkeypatch.setattr(columns_module, "_SPARSE_LIMIT", limits[request.param])
    return request.param


@pytest.mark.parametrize(
    "style, seed", [("mixed", 1), ("mixed", 2), ("mixed", 3), ("numbers", 4), ("dates", 5), ("clean_dates", 6)]
)
def test_random_filters_match_reference_through_updates(style: str, seed: int, layout: str) -> None:
    rng = random.Random(seed)
    rows: dict[int, tuple] = {}

    def source(field: str) -> tuple[list[int], list]:
        read = _field_reader(field)
        return list(rows), [
            read({"id": identifier, "content": content, "meta": meta}) for identifier, content, meta in rows.values()
        ]

    # Even seeds: nothing per row is kept, fields come from the owner on demand.
    columns = MetaColumns(source if seed % 2 == 0 else None)
    outcomes = {"raised": 0, "matched": 0}
    counter = 0
    highest = -1
    for round_number in range(6):
        # Writes: new slots (growing), overwrites of occupied slots, slots past a gap, and clears.
        # Small writes go row by row, writes of 64 rows and more through the bulk path; both repeat positions.
        count = rng.randint(1, 30) if rng.random() < 0.6 else rng.randint(64, 120)
        positions = rng.sample(range(len(columns) + count + 10), count)
        positions += rng.sample(positions, min(3, count - 1))
        records = []
        for _ in positions:
            counter += 1
            records.append(random_record(rng, counter, style))
        columns.set_rows(positions, records)
        rows.update(zip(positions, records))  # the last record of a repeated position wins, as in set_rows
        highest = max(highest, *positions)
        if rows and round_number % 2:
            cleared = rng.sample(sorted(rows), rng.randint(1, max(1, len(rows) // 3)))
            columns.clear_rows(cleared)
            for position in cleared:
                rows.pop(position)
        assert len(columns) == highest + 1
        for _ in range(45):
            outcomes[check(columns, rows, random_filter(rng))] += 1
    assert outcomes["matched"] > 100


def test_ordering_with_numbers_and_dates_mostly_matches_not_raises(layout: str) -> None:
    # Guards the random test's usefulness: on clean typed columns, ordering filters give masks.
    rng = random.Random(7)
    columns = MetaColumns()
    records = [random_record(rng, number, "numbers") for number in range(300)]
    columns.set_rows(range(300), records)
    rows = dict(enumerate(records))
    for value in (0, 1, 2.5, True, -1, 2**53 + 1, 10**400, NAN):
        for operator in (">", ">=", "<", "<="):
            assert check(columns, rows, {"field": "meta.f", "operator": operator, "value": value}) == "matched"


def test_date_columns_compare_as_instants_with_reference_zone_alignment(layout: str) -> None:
    dates = [
        "2020-01-01T10:00:00",
        "2020-01-01T10:00:00+02:00",
        "2020-01-01T08:00:00Z",
        "2020-01-01",
        "2019-12-31T23:00:00-05:00",
        "2020-01-01T24:00:00",
        None,
    ]
    columns = MetaColumns()
    records = [(str(i), None, {"date": value}) for i, value in enumerate(dates)]
    columns.set_rows(range(len(records)), records)
    rows = dict(enumerate(records))
    for value in [
        "2020-01-01T10:00:00",
        "2020-01-01T08:00:00+00:00",
        "2020-01-01T12:00:00+02:00",
        "2020-01-02",
        datetime(2020, 1, 1, 10),
        datetime(2020, 1, 1, 8, tzinfo=UTC),
    ]:
        for operator in COMPARISONS:
            filter_value = [value, "x"] if operator in ("in", "not in") else value
            outcome = check(columns, rows, {"field": "meta.date", "operator": operator, "value": filter_value})
            # Ordering "2020-01-01T24:00:00" fails in the reference (only equality reads it, as the next midnight).
            assert outcome == "matched" or operator in (">", ">=", "<", "<=")
    mask = columns.mask({"field": "meta.date", "operator": "==", "value": "2020-01-01T08:00:00+00:00"}, len(dates))
    # The naive 10:00 takes the filter's zone (UTC) and differs; the three instants at 08:00 UTC are equal.
    assert mask.tolist() == [False, True, True, False, False, False, False]
    midnight = columns.mask({"field": "meta.date", "operator": "==", "value": "2020-01-02T00:00:00"}, len(dates))
    assert midnight.tolist() == [False, False, False, False, False, True, False]


# ------------------------------------------------------------------- Haystack's FilterDocumentsTest cases
def filterable_records() -> list[tuple]:
    from haystack.testing.document_store import create_filterable_docs

    return [(doc.id, doc.content, doc.meta) for doc in create_filterable_docs()]


@pytest.fixture
def haystack_columns(layout: str) -> tuple[MetaColumns, list[tuple]]:
    records = filterable_records()
    columns = MetaColumns()
    columns.set_rows(range(len(records)), records)
    return columns, records


def number(meta: dict) -> object:
    return meta.get("number")


def parsed(meta: dict) -> datetime:
    return datetime.fromisoformat(meta["date"])


def matching_ids(columns: MetaColumns, records: list[tuple], filters: dict | None) -> list[str]:
    mask = columns.mask(filters, len(records))
    return [record[0] for record, hit in zip(records, mask) if hit]


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"field": "meta.number", "operator": "==", "value": 100}, lambda m: m.get("number") == 100),
        ({"field": "meta.number", "operator": "==", "value": None}, lambda m: m.get("number") is None),
        ({"field": "meta.number", "operator": "!=", "value": 100}, lambda m: m.get("number") != 100),
        ({"field": "meta.number", "operator": "!=", "value": None}, lambda m: m.get("number") is not None),
        ({"field": "meta.number", "operator": ">", "value": 0}, lambda m: number(m) is not None and number(m) > 0),
        ({"field": "meta.number", "operator": ">=", "value": 0}, lambda m: number(m) is not None and number(m) >= 0),
        ({"field": "meta.number", "operator": "<", "value": 0}, lambda m: number(m) is not None and number(m) < 0),
        ({"field": "meta.number", "operator": "<=", "value": 0}, lambda m: number(m) is not None and number(m) <= 0),
        ({"field": "meta.number", "operator": ">", "value": None}, lambda m: False),
        ({"field": "meta.number", "operator": "<=", "value": None}, lambda m: False),
        (
            {"field": "meta.date", "operator": ">", "value": "1972-12-11T19:54:58"},
            lambda m: m.get("date") is not None and parsed(m) > datetime(1972, 12, 11, 19, 54, 58),
        ),
        (
            {"field": "meta.date", "operator": ">=", "value": "1969-07-21T20:17:40"},
            lambda m: m.get("date") is not None and parsed(m) >= datetime(1969, 7, 21, 20, 17, 40),
        ),
        (
            {"field": "meta.date", "operator": "<", "value": "1969-07-21T20:17:40"},
            lambda m: m.get("date") is not None and parsed(m) < datetime(1969, 7, 21, 20, 17, 40),
        ),
        (
            {"field": "meta.date", "operator": "<=", "value": "1969-07-21T20:17:40"},
            lambda m: m.get("date") is not None and parsed(m) <= datetime(1969, 7, 21, 20, 17, 40),
        ),
        ({"field": "meta.number", "operator": "in", "value": [10, -10]}, lambda m: m.get("number") in [10, -10]),
        ({"field": "meta.number", "operator": "not in", "value": [9, 10]}, lambda m: m.get("number") not in [9, 10]),
        (
            {
                "operator": "AND",
                "conditions": [
                    {"field": "meta.number", "operator": "==", "value": 100},
                    {"field": "meta.name", "operator": "==", "value": "name_0"},
                ],
            },
            lambda m: m.get("number") == 100 and m.get("name") == "name_0",
        ),
        (
            {
                "operator": "OR",
                "conditions": [
                    {"field": "meta.number", "operator": "==", "value": 100},
                    {"field": "meta.name", "operator": "==", "value": "name_0"},
                ],
            },
            lambda m: m.get("number") == 100 or m.get("name") == "name_0",
        ),
        (
            {
                "operator": "NOT",
                "conditions": [
                    {"field": "meta.number", "operator": "==", "value": 100},
                    {"field": "meta.name", "operator": "==", "value": "name_0"},
                ],
            },
            lambda m: not (m.get("number") == 100 and m.get("name") == "name_0"),
        ),
        (None, lambda m: True),
        ({}, lambda m: True),
    ],
)
def test_haystack_filter_documents_cases(haystack_columns, filters, expected) -> None:
    columns, records = haystack_columns
    wanted = [record[0] for record in records if expected(record[2])]
    assert matching_ids(columns, records, filters) == wanted


@pytest.mark.parametrize(
    "filters",
    [
        {"field": "meta.number", "operator": ">", "value": "1"},
        {"field": "meta.number", "operator": ">=", "value": "1"},
        {"field": "meta.number", "operator": "<", "value": "1"},
        {"field": "meta.number", "operator": "<=", "value": "1"},
        {"field": "meta.number", "operator": ">", "value": [1]},
        {"field": "meta.number", "operator": "in", "value": 9},
        {"field": "meta.number", "operator": "not in", "value": (10, 11)},
        {"conditions": [{"field": "meta.name", "operator": "==", "value": "test"}]},
        {"operator": "AND"},
        {"operator": "AND", "conditions": [{"operator": "==", "value": "test"}]},
        {"operator": "AND", "conditions": [{"field": "meta.name", "value": "test"}]},
        {"operator": "AND", "conditions": [{"field": "meta.name", "operator": "=="}]},
        {"field": "meta.name", "operator": ">", "value": "name_0"},
        {"field": "meta.chapter", "operator": "<", "value": 3},
    ],
)
def test_haystack_filter_errors(haystack_columns, filters) -> None:
    columns, records = haystack_columns
    with pytest.raises(FilterError):
        columns.mask(filters, len(records))


def test_ordering_error_needs_a_row_that_is_evaluated(layout: str) -> None:
    # The reference raises only on rows it evaluates: missing values, AND short-circuit and empty stores don't.
    columns = MetaColumns()
    bad = {"field": "meta.lang", "operator": ">", "value": "en"}
    assert not columns.mask(bad, 0).any()
    columns.set_rows([0, 1], [("a", None, {"year": 1}), ("b", None, {"year": 2, "lang": "en"})])
    guarded = {"operator": "AND", "conditions": [{"field": "meta.year", "operator": "==", "value": 1}, bad]}
    assert columns.mask(guarded, 2).tolist() == [False, False]
    with pytest.raises(FilterError, match="ISO formatted dates"):
        columns.mask({"operator": "OR", "conditions": [{"field": "meta.year", "operator": "==", "value": 1}, bad]}, 2)
    columns.clear_rows([1])
    assert columns.mask(bad, 2).tolist() == [False, False]


def test_missing_fields_none_and_cross_type_equality(layout: str) -> None:
    columns = MetaColumns()
    records = [
        ("a", "x", {"v": 1}),
        ("b", "y", {"v": 1.0}),
        ("c", None, {"v": True}),
        ("d", None, {"v": "1"}),
        ("e", None, {}),
        ("f", None, {"v": None}),
        ("g", None, None),
        ("h", None, {"v": [1]}),
    ]
    columns.set_rows(range(len(records)), records)
    size = len(records)
    assert columns.mask({"field": "v", "operator": "==", "value": 1}, size).tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert columns.mask({"field": "meta.v", "operator": "==", "value": None}, size).tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert columns.mask({"field": "meta.v", "operator": "!=", "value": 1}, size).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert columns.mask({"field": "v", "operator": "==", "value": [1]}, size).tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    no_content = columns.mask({"field": "content", "operator": "==", "value": None}, size)
    assert no_content.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert columns.mask({"field": "other.v", "operator": "==", "value": None}, size).all()
    with pytest.raises(FilterError):
        columns.mask({"field": "meta.v", "operator": ">", "value": 0}, size)  # "1" and [1] can't be ordered


def test_writes_update_built_columns_in_place_and_mask_pads_to_size(layout: str) -> None:
    columns = MetaColumns()
    columns.set_rows(range(4), [(str(i), None, {"year": 2000 + i, "lang": "en"}) for i in range(4)])
    year = {"field": "meta.year", "operator": ">=", "value": 2002}
    assert columns.mask(year, 6).tolist() == [False, False, True, True, False, False]
    columns.set_rows([0, 9], [("0", None, {"year": 2010}), ("9", None, {"year": "2020-01-01"})])
    assert len(columns) == 10
    with pytest.raises(FilterError):  # row 9 now holds a string: ordering it against an int fails
        columns.mask(year, 10)
    columns.set_rows([9], [("9", None, {"year": 2030, "lang": "de"})])
    columns.clear_rows([3, 42])
    assert np.flatnonzero(columns.mask(year, 12)).tolist() == [0, 2, 9]
    assert np.flatnonzero(columns.mask({"field": "lang", "operator": "in", "value": ["de"]}, 12)).tolist() == [9]
    assert np.flatnonzero(columns.mask(None, 12)).tolist() == [0, 1, 2, 9]


def test_built_columns_follow_growth_past_their_capacity(layout: str) -> None:
    rng = random.Random(11)
    columns = MetaColumns()
    rows = {position: random_record(rng, position, "mixed") for position in range(50)}
    columns.set_rows(list(rows), list(rows.values()))
    filters = [{"field": field, "operator": "!=", "value": None} for field in ("f", "g", "n.x", "id")]
    for condition in filters:
        check(columns, rows, condition)
    grown = {position: random_record(rng, position, "mixed") for position in range(3000, 5000, 7)}
    columns.set_rows(list(grown), list(grown.values()))
    rows.update(grown)
    assert len(columns) == max(grown) + 1
    for condition in filters:
        assert check(columns, rows, condition) == "matched"
    for _ in range(100):
        check(columns, rows, random_filter(rng))


def test_string_dictionary_is_rebuilt_after_many_distinct_overwrites(monkeypatch) -> None:
    monkeypatch.setattr(columns_module, "_SPARSE_LIMIT", 0)
    columns = MetaColumns()
    columns.set_rows([0, 1], [("a", None, {"tag": "t0"}), ("b", None, {"tag": "keep"})])
    assert columns.mask({"field": "tag", "operator": "==", "value": "keep"}, 2).tolist() == [False, True]
    for number in range(6000):
        columns.set_rows([0], [("a", None, {"tag": f"t{number}"})])
    assert columns.mask({"field": "tag", "operator": "==", "value": "t5999"}, 2).tolist() == [True, False]
    assert columns.mask({"field": "tag", "operator": "in", "value": ["t1", "keep"]}, 2).tolist() == [False, True]
    assert len(columns._dense[("meta", "tag")].vocabulary) < 5000


def test_bulk_writes_and_ranges_update_built_columns(layout: str) -> None:
    rng = random.Random(5)
    clean_dates = [
        "2020-01-01",
        "2020-01-01T10:00:00",
        "2020-01-01T10:00:00+02:00",
        "2020-01-01T08:00:00Z",
        "2019-12-31T23:59:59.999999",
        "2021-06-15T12:30:00-05:00",
        None,
    ]

    def record(number: int, style: str) -> tuple:
        identifier, content, meta = random_record(rng, number, style)
        return identifier, content, {**(meta or {}), "d": rng.choice(clean_dates)}

    columns = MetaColumns()
    rows = {position: record(position, "mixed") for position in range(300)}
    columns.set_rows(range(300), list(rows.values()))
    on_dates = [
        {"field": "d", "operator": operator, "value": value}
        for operator in COMPARISONS[2:6]
        for value in ("2020-01-01T09:00:00", "2020-01-01T12:00:00+01:00")
    ]
    filters = [random_filter(rng) for _ in range(80)] + on_dates
    for condition in filters:
        check(columns, rows, condition)
    replaced = {position: record(1000 + position, "dates") for position in range(100, 400)}
    columns.set_rows(range(100, 400), list(replaced.values()))
    rows.update(replaced)
    cleared = list(range(0, 300, 2))
    columns.clear_rows(cleared)
    for position in cleared:
        rows.pop(position)
    for condition in filters:
        check(columns, rows, condition)
    for condition in on_dates:
        assert check(columns, rows, condition) == "matched"


def test_set_rows_rejects_mismatched_arguments() -> None:
    columns = MetaColumns()
    with pytest.raises(ValueError, match="positions"):
        columns.set_rows([0, 1], [("a", None, {})])
    with pytest.raises(ValueError, match=">= 0"):
        columns.set_rows([-1], [("a", None, {})])


def test_in_with_long_lists_of_strings_and_numbers(layout: str) -> None:
    words = [f"w{i}" for i in range(12)]
    records = [
        (str(i), None, {"tag": words[i % 12] if i % 5 else i % 7, "n": i % 9 if i % 4 else words[i % 12]})
        for i in range(200)
    ]
    columns = MetaColumns()
    columns.set_rows(range(200), records)
    rows = dict(enumerate(records))
    for candidates in (words[:6], words[3:10] + [1, 2, 3, 4, 5, 6.0, True], [0, 1, 2, 3, 4, 5, 6, 7], words + [None]):
        for operator in ("in", "not in"):
            for field in ("tag", "n"):
                assert check(columns, rows, {"field": field, "operator": operator, "value": candidates}) == "matched"


def test_zone_aware_dates_arriving_after_ordering_on_naive_ones(layout: str) -> None:
    columns = MetaColumns()
    rows = {i: (str(i), None, {"d": f"2020-01-{1 + i % 28:02d}T{i % 24:02d}:00:00"}) for i in range(100)}
    columns.set_rows(list(rows), list(rows.values()))
    filters = [
        {"field": "d", "operator": operator, "value": value}
        for operator in (">", "<=")
        for value in ("2020-01-10T05:00:00", "2020-01-10T05:00:00+03:00")
    ]
    for condition in filters:
        assert check(columns, rows, condition) == "matched"
    rows[7] = ("7", None, {"d": "2020-01-10T07:00:00+03:00"})  # one small write, then a bulk one
    columns.set_rows([7], [rows[7]])
    for condition in filters:
        assert check(columns, rows, condition) == "matched"
    bulk = {i: (str(i), None, {"d": f"2020-01-10T{i % 24:02d}:00:00-0{i % 5}:00"}) for i in range(100, 200)}
    columns.set_rows(list(bulk), list(bulk.values()))
    rows.update(bulk)
    for condition in filters:
        assert check(columns, rows, condition) == "matched"


def test_values_source_builds_columns_on_demand_and_keeps_them_current(layout: str) -> None:
    def record(number: int) -> tuple:
        meta = {"year": 2000 + number % 30, "flag": number % 3 == 0, "tags": {"lang": "en" if number % 2 else "de"}}
        return f"d{number}", f"text {number}", meta

    stored = {number: record(number) for number in range(200)}
    calls: list[str] = []

    def source(field: str) -> tuple[np.ndarray, list]:
        calls.append(field)
        read = _field_reader(field)
        values = [
            read({"id": identifier, "content": content, "meta": meta}) for identifier, content, meta in stored.values()
        ]
        # As SQLite's json_extract answers: JSON true/false come back as 1/0.
        return np.array(list(stored)), [int(value) if type(value) is bool else value for value in values]

    columns = MetaColumns(values=source)
    columns.set_rows(np.array(list(stored)), [(None, None, None)] * len(stored))  # declares the slots only
    filters = [
        {"field": "year", "operator": ">=", "value": 2015},
        {"field": "meta.flag", "operator": "==", "value": True},
        {"field": "meta.tags.lang", "operator": "in", "value": ["de"]},
    ]
    for condition in filters:
        assert check(columns, stored, condition) == "matched"
    assert calls == ["meta.year", "meta.flag", "meta.tags.lang"]
    stored[5] = ("d5", "changed", {"year": 1990, "tags": {"lang": "de"}})
    stored[300] = record(300)
    columns.set_rows([5, 300], [stored[5], stored[300]])
    columns.clear_rows([7])
    del stored[7]
    for condition in filters:
        assert check(columns, stored, condition) == "matched"
    assert calls == ["meta.year", "meta.flag", "meta.tags.lang"]  # built columns follow the writes
    assert check(columns, stored, {"field": "content", "operator": "==", "value": "changed"}) == "matched"
    assert calls[-1] == "content"
