"""Metadata filters in Haystack's filter syntax, evaluated without Haystack.

The syntax is the one every Haystack document store accepts, so the same filter dict works on the embedded
store, on other stores and from LangChain::

    {"field": "meta.year", "operator": ">=", "value": 2020}
    {"operator": "AND", "conditions": [
        {"field": "meta.topic", "operator": "in", "value": ["physics", "biology"]},
        {"operator": "NOT", "conditions": [{"field": "meta.draft", "operator": "==", "value": True}]},
    ]}

Comparison operators: ``==, !=, >, >=, <, <=, in, not in``; logical operators: ``AND, OR, NOT``.
Fields are ``id``, ``content``, ``meta.<name>`` (nested with more dots); a bare name means ``meta.<name>``.
Semantics follow ``haystack.utils.filters.document_matches_filter``: ``None`` never orders, strings only
order when both sides are ISO dates, ``in`` needs a list. The whole filter is checked when it is compiled,
so a malformed filter fails even on an empty store.

Example::

    matches = compile_filter({"field": "meta.lang", "operator": "==", "value": "en"})
    matches({"id": "1", "content": "...", "meta": {"lang": "en"}})  # True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from dual_encoder.errors import FilterError

Record = Mapping[str, Any]
Predicate = Callable[[Record], bool]

COMPARISON_OPERATORS = ("==", "!=", ">", ">=", "<", "<=", "in", "not in")
LOGICAL_OPERATORS = ("AND", "OR", "NOT")
_TOP_LEVEL_FIELDS = ("id", "content")


def compile_filter(filters: Mapping[str, Any] | None) -> Predicate | None:
    """Validate ``filters`` and return a predicate over records (``None`` when there is no filter)."""
    if filters is None or (isinstance(filters, Mapping) and not filters):
        return None
    return _compile(filters, path="filters")


def _compile(node: Any, path: str) -> Predicate:
    if not isinstance(node, Mapping):
        raise FilterError(
            f"{path} must be a dict with 'field'/'operator'/'value' or 'operator'/'conditions', got {node!r}."
        )
    if "field" in node:
        return _compile_comparison(node, path)
    if "operator" not in node:
        raise FilterError(
            f"'operator' key missing in {path}: {dict(node)}. Logical filters need 'operator' and 'conditions'."
        )
    if "conditions" not in node:
        raise FilterError(
            f"'conditions' key missing in {path}: {dict(node)}. Logical filters need a list of conditions."
        )
    operator = node["operator"]
    if operator not in LOGICAL_OPERATORS:
        raise FilterError(
            f"Unknown logical operator {operator!r} in {path}. Valid logical operators are: {list(LOGICAL_OPERATORS)}."
        )
    conditions = node["conditions"]
    if not isinstance(conditions, list):
        raise FilterError(f"'conditions' in {path} must be a list, got {type(conditions).__name__}.")
    children = [_compile(child, f"{path}.conditions[{i}]") for i, child in enumerate(conditions)]
    if operator == "AND":
        return lambda record: all(child(record) for child in children)
    if operator == "OR":
        return lambda record: any(child(record) for child in children)
    return lambda record: not all(child(record) for child in children)


def _compile_comparison(node: Mapping[str, Any], path: str) -> Predicate:
    for key in ("operator", "value"):
        if key not in node:
            raise FilterError(
                f"'{key}' key missing in {path}: {dict(node)}. Comparisons need 'field', 'operator' and 'value'."
            )
    field, operator, expected = node["field"], node["operator"], node["value"]
    if not isinstance(field, str) or not field:
        raise FilterError(f"'field' in {path} must be a non-empty string such as 'meta.year', got {field!r}.")
    if operator not in COMPARISON_OPERATORS:
        raise FilterError(
            f"Unknown comparison operator {operator!r} in {path}. Valid comparison operators are: "
            f"{list(COMPARISON_OPERATORS)}."
        )
    if operator in ("in", "not in") and not isinstance(expected, list):
        raise FilterError(
            f"Filter value must be a list when using operator '{operator}' ({path}), got {type(expected).__name__}."
        )
    if operator in (">", ">=", "<", "<=") and isinstance(expected, list):
        raise FilterError(f"Filter value can't be a list when using operator '{operator}' ({path}).")
    read = _field_reader(field)
    compare = _COMPARATORS[operator]
    return lambda record: compare(read(record), expected)


def _field_reader(field: str) -> Callable[[Record], Any]:
    if field in _TOP_LEVEL_FIELDS:
        return lambda record: record.get(field)
    parts = field.split(".")
    if parts[0] == "meta" and len(parts) > 1:
        keys = parts[1:]
    elif len(parts) == 1:
        keys = parts
    else:
        # A dotted field whose root is not `meta` names no document attribute we store: always missing.
        return lambda record: None

    def read(record: Record) -> Any:
        value: Any = record.get("meta") or {}
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return value

    return read


# ------------------------------------------------------------------------------- comparison semantics
def _looks_like_iso_date(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) >= 10
        and value[:4].isdigit()
        and value[4] == "-"
        and value[5:7].isdigit()
        and value[7] == "-"
        and value[8:10].isdigit()
        and (len(value) == 10 or value[10] in {"T", "t", " "})
    )


def _as_iso_date(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not _looks_like_iso_date(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        import dateutil.parser

        try:
            return dateutil.parser.isoparse(value)
        except (ValueError, OverflowError):
            return None


def _align_timezones(first: datetime, second: datetime) -> tuple[datetime, datetime]:
    if (first.tzinfo is None) == (second.tzinfo is None):
        return first, second
    if first.tzinfo is None:
        return first.replace(tzinfo=second.tzinfo), second
    return first, second.replace(tzinfo=first.tzinfo)


def _equal(value: Any, expected: Any) -> bool:
    if value == expected:
        return True
    first, second = _as_iso_date(value), _as_iso_date(expected)
    if first is None or second is None:
        return False
    first, second = _align_timezones(first, second)
    return first == second


def _parse_for_ordering(value: Any) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except (ValueError, TypeError):
        import dateutil.parser

        try:
            return dateutil.parser.parse(value)
        except (ValueError, TypeError, OverflowError) as error:
            raise FilterError(
                "Can't compare strings using operators '>', '>=', '<', '<='. Strings are only comparable if they "
                "are ISO formatted dates."
            ) from error


def _ordering(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(value: Any, expected: Any) -> bool:
        if value is None or expected is None:
            return False
        if isinstance(value, str) or isinstance(expected, str):
            if not isinstance(value, datetime):
                value = _parse_for_ordering(value)
            if not isinstance(expected, datetime):
                expected = _parse_for_ordering(expected)
        if isinstance(value, datetime) and isinstance(expected, datetime):
            value, expected = _align_timezones(value, expected)
        if isinstance(value, datetime) != isinstance(expected, datetime):
            raise FilterError(
                "Can't compare a datetime with a non-datetime value using operators '>', '>=', '<', '<='."
            )
        try:
            return op(value, expected)
        except TypeError as error:
            raise FilterError(
                f"Can't order {type(value).__name__} against {type(expected).__name__} with '>', '>=', '<', '<='."
            ) from error

    return compare


def _in(value: Any, expected: list[Any]) -> bool:
    return any(_equal(element, value) for element in expected)


_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "!=": lambda value, expected: not _equal(value, expected),
    ">": _ordering(lambda a, b: a > b),
    ">=": _ordering(lambda a, b: a >= b),
    "<": _ordering(lambda a, b: a < b),
    "<=": _ordering(lambda a, b: a <= b),
    "in": _in,
    "not in": lambda value, expected: not _in(value, expected),
}


def from_simple_mapping(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Accept LangChain-style ``{"key": value}`` filters (equality on every key, ``meta.`` implied) next to
    Haystack syntax, which passes through unchanged."""
    if not filters:
        return None
    if "field" in filters or "operator" in filters or "conditions" in filters:
        return dict(filters)
    conditions = [{"field": f"meta.{key}", "operator": "==", "value": value} for key, value in filters.items()]
    return conditions[0] if len(conditions) == 1 else {"operator": "AND", "conditions": conditions}
