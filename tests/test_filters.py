import pytest

from dual_encoder.errors import FilterError
from dual_encoder.filters import compile_filter

RECORDS = [
    {
        "id": "a",
        "content": "alpha",
        "meta": {"year": 2020, "lang": "en", "date": "2021-05-01T00:00:00", "nested": {"x": 1}},
    },
    {"id": "b", "content": "beta", "meta": {"year": 2023, "lang": "de", "draft": True}},
    {"id": "c", "content": "gamma", "meta": {"lang": "en"}},
]


def matching(filters):
    predicate = compile_filter(filters)
    return [r["id"] for r in RECORDS if predicate(r)]


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"field": "meta.lang", "operator": "==", "value": "en"}, ["a", "c"]),
        ({"field": "meta.lang", "operator": "!=", "value": "en"}, ["b"]),
        ({"field": "meta.year", "operator": ">", "value": 2020}, ["b"]),
        ({"field": "meta.year", "operator": ">=", "value": 2020}, ["a", "b"]),
        ({"field": "meta.year", "operator": "<", "value": 2023}, ["a"]),
        ({"field": "meta.year", "operator": "<=", "value": 2023}, ["a", "b"]),
        ({"field": "meta.year", "operator": "==", "value": None}, ["c"]),
        ({"field": "meta.lang", "operator": "in", "value": ["de", "fr"]}, ["b"]),
        ({"field": "meta.lang", "operator": "not in", "value": ["de"]}, ["a", "c"]),
        ({"field": "meta.date", "operator": ">", "value": "2020-01-01T00:00:00"}, ["a"]),
        ({"field": "meta.nested.x", "operator": "==", "value": 1}, ["a"]),
        ({"field": "lang", "operator": "==", "value": "de"}, ["b"]),
        ({"field": "id", "operator": "in", "value": ["a", "c"]}, ["a", "c"]),
        ({"field": "content", "operator": "==", "value": "beta"}, ["b"]),
        (
            {
                "operator": "AND",
                "conditions": [
                    {"field": "meta.lang", "operator": "==", "value": "en"},
                    {"field": "meta.year", "operator": ">=", "value": 2000},
                ],
            },
            ["a"],
        ),
        (
            {
                "operator": "OR",
                "conditions": [
                    {"field": "meta.draft", "operator": "==", "value": True},
                    {"field": "meta.year", "operator": "==", "value": None},
                ],
            },
            ["b", "c"],
        ),
        ({"operator": "NOT", "conditions": [{"field": "meta.lang", "operator": "==", "value": "en"}]}, ["b"]),
    ],
)
def test_operators(filters, expected):
    assert matching(filters) == expected


def test_no_filter_means_everything():
    assert compile_filter(None) is None and compile_filter({}) is None


@pytest.mark.parametrize(
    "filters, message",
    [
        (
            {"field": "meta.lang", "operator": "=~", "value": "en"},
            "Unknown comparison operator '=~'.*Valid comparison operators",
        ),
        ({"operator": "XOR", "conditions": []}, "Unknown logical operator 'XOR'"),
        ({"operator": "AND"}, "'conditions' key missing"),
        ({"conditions": []}, "'operator' key missing"),
        ({"field": "meta.lang", "value": "en"}, "'operator' key missing"),
        ({"field": "meta.lang", "operator": "=="}, "'value' key missing"),
        ({"field": "meta.lang", "operator": "in", "value": "en"}, "must be a list"),
        ({"field": "meta.year", "operator": ">", "value": [1]}, "can't be a list"),
    ],
)
def test_malformed_filters_fail_at_compile_time(filters, message):
    with pytest.raises(FilterError, match=message):
        compile_filter(filters)


def test_ordering_strings_that_are_not_dates_fails():
    predicate = compile_filter({"field": "meta.lang", "operator": ">", "value": "en"})
    with pytest.raises(FilterError, match="ISO formatted dates"):
        predicate(RECORDS[0])
