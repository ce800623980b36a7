"""Filter mask cost of the embedded store's columnar filters (``MetaColumns``) beside the reference predicate.

Measures, at 100,000 and 1,000,000 synthetic rows, the time to compute the boolean mask of a Haystack filter
with ``dual_encoder.embedded.columns.MetaColumns.mask`` and with the per-record reference predicate
(``dual_encoder.filters.compile_filter``, what the store used before), for an int range, a string equality,
an ``in``, an AND of two, a date range over day strings and over second-resolution timestamps (each about 25%
of rows match). Also: the cost of copying all rows in (``set_rows``), the first filter per field (which builds
per-row date caches), the same first filters when the owner answers fields on demand (``values=``), the
cost of a 10-row ``set_rows`` and ``clear_rows``, and the bytes the columns hold.

Run from the repository root (about 4 minutes)::

    .venv/bin/python benchmarks/filter_mask.py            # writes benchmarks/results/filter_mask.json
    .venv/bin/python benchmarks/filter_mask.py --quick    # 100,000 rows only, not written
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

from dual_encoder.embedded.columns import MetaColumns
from dual_encoder.filters import compile_filter

RESULTS = Path(__file__).resolve().parent / "results"
LANGS = ["en", "de", "fr", "es"]
SOURCES = [f"source-{i:02d}" for i in range(40)]
DAY0 = date(2010, 1, 1)
SECOND0 = datetime(2015, 1, 1)

FILTERS = {
    "int_range": {"field": "meta.year", "operator": ">=", "value": 2020},
    "string_equal": {"field": "meta.lang", "operator": "==", "value": "en"},
    "in_10_of_40": {"field": "meta.source", "operator": "in", "value": SOURCES[:10]},
    "and_of_two": {
        "operator": "AND",
        "conditions": [
            {"field": "meta.year", "operator": ">=", "value": 2010},
            {"field": "meta.lang", "operator": "in", "value": ["en", "de"]},
        ],
    },
    "date_range_days": {
        "operator": "AND",
        "conditions": [
            {"field": "meta.date", "operator": ">=", "value": "2012-01-01"},
            {"field": "meta.date", "operator": "<", "value": "2014-07-02"},
        ],
    },
    "date_range_timestamps": {
        "operator": "AND",
        "conditions": [
            {"field": "meta.timestamp", "operator": ">=", "value": "2016-01-01T00:00:00"},
            {"field": "meta.timestamp", "operator": "<", "value": "2016-12-31T12:00:00"},
        ],
    },
}


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def synthetic_records(count: int, seed: int) -> list[tuple[str, str, dict]]:
    """Rows whose fields each split about 25/75 under the filters above: years 1990-2029, 4 languages,
    40 sources, day dates over 2010-2019, second timestamps over 2015-2018."""
    rng = np.random.default_rng(seed)
    years = rng.integers(1990, 2030, count).tolist()
    langs = rng.integers(0, len(LANGS), count).tolist()
    sources = rng.integers(0, len(SOURCES), count).tolist()
    days = rng.integers(0, 3650, count).tolist()
    seconds = rng.integers(0, 4 * 365 * 86400, count).tolist()
    day_strings = [(DAY0 + timedelta(days=day)).isoformat() for day in range(3650)]
    return [
        (
            f"doc-{i}",
            f"content {i}",
            {
                "year": years[i],
                "lang": LANGS[langs[i]],
                "source": SOURCES[sources[i]],
                "date": day_strings[days[i]],
                "timestamp": (SECOND0 + timedelta(seconds=seconds[i])).isoformat(),
            },
        )
        for i in range(count)
    ]


def median_ms(function, repeat: int) -> tuple[float, list[float]]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 3), [round(sample, 3) for sample in samples]


def column_bytes(columns: MetaColumns) -> dict[str, int]:
    """Bytes held by each meta column: numpy arrays (with the per-row date caches of ordered fields) and the
    string dictionary (list, dict and the distinct strings themselves, which the columns keep alive)."""
    sizes = {}
    for path, column in columns._dense.items():
        arrays = sum(
            array.nbytes
            for array in (
                column.kind,
                column.number,
                column.code,
                column.order_kind,
                column.order_wall,
                column.order_instant,
            )
            if array is not None
        )
        dates = sum(
            array.nbytes
            for table in (column.equal_dates, column.order_dates)
            for array in (table.kind, table.wall, table.instant)
        )
        dictionary = (
            sys.getsizeof(column.vocabulary)
            + sys.getsizeof(column.codes_of)
            + sum(map(sys.getsizeof, column.vocabulary))
        )
        sizes[".".join(path)] = arrays + dates + dictionary
    return sizes


def run_size(count: int, repeat: int, reference_repeat: int) -> dict:
    records = synthetic_records(count, seed=count)
    columns = MetaColumns()
    started = time.perf_counter()
    columns.set_rows(range(count), records)
    load_rows_ms = (time.perf_counter() - started) * 1000
    dicts = [{"id": identifier, "content": content, "meta": meta} for identifier, content, meta in records]

    result: dict = {"rows": count, "set_rows_all_ms": round(load_rows_ms, 1), "filters": {}}
    for name, filters in FILTERS.items():
        started = time.perf_counter()
        first = columns.mask(filters, count)
        first_ms = (time.perf_counter() - started) * 1000
        predicate = compile_filter(filters)
        expected = np.fromiter((predicate(record) for record in dicts), bool, count)
        assert np.array_equal(first, expected), f"{name}: mask differs from the reference predicate"
        ours, ours_samples = median_ms(lambda: columns.mask(filters, count), repeat)
        reference, reference_samples = median_ms(lambda: [predicate(record) for record in dicts], reference_repeat)
        result["filters"][name] = {
            "filter": filters,
            "match_fraction": round(float(first.mean()), 4),
            "mask_p50_ms": ours,
            "mask_min_ms": min(ours_samples),
            "reference_p50_ms": reference,
            "speedup": round(reference / ours, 1),
            "first_use_ms": round(first_ms, 1),
            "mask_samples_ms": ours_samples,
            "reference_samples_ms": reference_samples,
        }
        print(
            f"{count:>9,} {name:<22} mask {ours:8.3f} ms (min {min(ours_samples):.3f})   "
            f"reference {reference:9.1f} ms   first use {first_ms:8.1f} ms   match {first.mean():.3f}",
            flush=True,
        )

    # The owner answers fields on demand (MetaColumns(values=...)): no per-row objects are kept, and a field's
    # column is built on its first filter. The source here answers from memory, so only our build is timed.
    by_field = {f"meta.{key}": [meta[key] for _, _, meta in records] for key in records[0][2]}
    on_demand = MetaColumns(values=lambda field: (range(count), by_field[field]))
    on_demand.set_rows(range(count), [(None, None, None)] * count)
    result["values_source_first_use_ms"] = {}
    for name, filters in FILTERS.items():
        expected = columns.mask(filters, count)
        started = time.perf_counter()
        got = on_demand.mask(filters, count)
        result["values_source_first_use_ms"][name] = round((time.perf_counter() - started) * 1000, 1)
        assert np.array_equal(got, expected), f"{name}: on-demand columns differ"
    result["values_source_column_megabytes_total"] = round(sum(column_bytes(on_demand).values()) / 1e6, 1)
    on_demand = by_field = None

    # A 10-row write once five fields have built columns: new rows at the end, and overwrites in the middle.
    rng = np.random.default_rng(1)
    fresh = synthetic_records(10 * repeat * 2, seed=7)
    appended, overwritten = [], []
    for step in range(repeat):
        batch = fresh[10 * step : 10 * step + 10]
        started = time.perf_counter()
        columns.set_rows(range(count + 10 * step, count + 10 * step + 10), batch)
        appended.append((time.perf_counter() - started) * 1000)
        positions = rng.integers(0, count, 10).tolist()
        batch = fresh[10 * (repeat + step) : 10 * (repeat + step) + 10]
        started = time.perf_counter()
        columns.set_rows(positions, batch)
        overwritten.append((time.perf_counter() - started) * 1000)
    result["set_rows_10_append_p50_ms"] = round(statistics.median(appended), 4)
    result["set_rows_10_overwrite_p50_ms"] = round(statistics.median(overwritten), 4)
    result["clear_rows_10_ms"] = round(
        median_ms(lambda: columns.clear_rows(rng.integers(0, count, 10).tolist()), repeat)[0], 4
    )
    sizes = column_bytes(columns)
    result["column_bytes"] = sizes
    result["column_megabytes_total"] = round(sum(sizes.values()) / 1e6, 1)
    # id and content are kept by reference (list slots only; the strings belong to the caller's records).
    result["id_content_reference_megabytes"] = round(2 * 8 * len(columns) / 1e6, 1)
    print(
        f"{count:>9,} set_rows 10 rows: append {result['set_rows_10_append_p50_ms']} ms, overwrite "
        f"{result['set_rows_10_overwrite_p50_ms']} ms; columns {result['column_megabytes_total']} MB",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows only; results are not written")
    arguments = parser.parse_args()
    plan = [(100_000, 21, 5)] if arguments.quick else [(100_000, 21, 5), (1_000_000, 11, 3)]
    payload = {"machine": machine(), "load_before": load(), "sizes": []}
    for count, repeat, reference_repeat in plan:
        payload["sizes"].append(run_size(count, repeat, reference_repeat))
    payload["load_after"] = load()
    if not arguments.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / "filter_mask.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path.relative_to(Path(__file__).resolve().parents[1])}")


if __name__ == "__main__":
    main()
