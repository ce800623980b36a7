"""Haystack filter dicts as weaviate-client v4 typed filters (``weaviate.classes.query.Filter``).

Every comparison keeps Haystack's semantics (``haystack.utils.filters.document_matches_filter``), which the
embedded store follows too:

- ``==`` / ``!=`` with ``None`` test whether the field is unset; ``!=`` a value also matches documents that
  lack the field; ``not in`` matches them as well;
- ``>``, ``>=``, ``<``, ``<=`` never match ``None`` or a missing field; strings only order when they are ISO
  dates (anything else is a ``FilterError``);
- ``NOT`` is the complement of its conditions (Weaviate's own ``Not`` operator), unset fields included.

Fields: ``id`` is the ``_original_id`` property, ``content`` the ``content`` property, ``meta.x`` (or ``x``)
the flattened property ``x`` (a meta key Weaviate reserves, such as ``id``, is the property ``_meta_id``).
A date-typed property compares as a date (naive ISO strings count as UTC).
Unset-value tests need the collection's ``indexNullState``, which collections created here have.

Example::

    where = to_weaviate_filter({"field": "meta.year", "operator": ">=", "value": 2020}, {"year": "int"})
    collection.query.fetch_objects(filters=where)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from weaviate.classes.query import Filter

from dual_encoder.errors import FilterError
from dual_encoder.filters import compile_filter

#: The property holding the document id (Weaviate's own object id is a uuid5 of it).
ID_PROPERTY = "_original_id"


def property_name(field: str) -> str:
    """The Weaviate property a Haystack filter field refers to."""
    from dual_encoder_weaviate.collection import CONTENT_PROPERTY, meta_property

    if field == "id":
        return ID_PROPERTY
    if field == "content":
        return CONTENT_PROPERTY
    return meta_property(field[len("meta.") :] if field.startswith("meta.") else field)


def to_weaviate_filter(filters: Mapping[str, Any] | None, property_types: Mapping[str, str] | None = None) -> Any:
    """The typed Weaviate filter for Haystack-syntax ``filters`` (``None`` for no filter).

    :param property_types: The collection's properties by name, with their Weaviate data types (``"int"``,
        ``"date"``, ``"text[]"``...); they decide how values compare, and a field that is not among them is
        treated as unset on every document. Empty or ``None``: properties are assumed to exist, typed by the
        value (an ISO string orders as a date).
    :raises FilterError: a malformed filter, or an ordering comparison on a string that is not an ISO date.
    """
    compile_filter(filters)  # validates the whole filter first, with the same messages as every store
    if not filters:
        return None
    return _convert(filters, property_types or {})


def _convert(node: Mapping[str, Any], types: Mapping[str, str]) -> Any:
    if "field" in node:
        return _comparison(property_name(node["field"]), node["operator"], node["value"], types)
    children = [_convert(child, types) for child in node["conditions"]]
    operator = node["operator"]
    if operator == "AND":
        return Filter.all_of(children) if children else _everything()
    if operator == "OR":
        return Filter.any_of(children) if children else _nothing()
    # Haystack's NOT negates the AND of its conditions.
    combined = children[0] if len(children) == 1 else (Filter.all_of(children) if children else _everything())
    return Filter.not_(combined)


def _comparison(name: str, operator: str, value: Any, types: Mapping[str, str]) -> Any:
    if types and name and name not in types:
        return _on_missing_property(name, operator, value)
    data_type = types.get(name)
    prop = Filter.by_property(name)
    if operator == "==":
        return prop.is_none(True) if value is None else prop.equal(_value(value, data_type, name))
    if operator == "!=":
        if value is None:
            return prop.is_none(False)
        return Filter.any_of([prop.not_equal(_value(value, data_type, name)), prop.is_none(True)])
    if operator in ("in", "not in"):
        matches = [_comparison(name, "==", element, types) for element in value]
        found = (Filter.any_of(matches) if len(matches) > 1 else matches[0]) if matches else _nothing()
        return found if operator == "in" else Filter.not_(found)
    # Ordering: None never orders (Haystack: no document matches).
    if value is None:
        return _nothing()
    _check_orderable(name, operator, value)
    typed = _value(value, data_type, name, ordering=True)
    return {">": prop.greater_than, ">=": prop.greater_or_equal, "<": prop.less_than, "<=": prop.less_or_equal}[
        operator
    ](typed)


def _check_orderable(name: str, operator: str, value: Any) -> None:
    if isinstance(value, (list, tuple, dict)):
        raise FilterError(f"Filter value can't be of type {type(value).__name__} using operator {operator!r}.")
    if isinstance(value, str) and _parse_date(value) is None:
        raise FilterError(
            f"Can't compare strings using operator {operator!r} on '{name}': strings only order when they are ISO "
            f"formatted dates, got {value!r}."
        )


def _on_missing_property(name: str, operator: str, value: Any) -> Any:
    """A comparison on a property the collection does not have: every document lacks the field (Weaviate
    itself would refuse the query)."""
    if operator in (">", ">=", "<", "<="):
        if value is not None:
            _check_orderable(name, operator, value)
        return _nothing()
    if operator in ("==", "!="):
        matches_all = (value is None) == (operator == "==")
    else:
        matches_all = (None in value) == (operator == "in")
    return _everything() if matches_all else _nothing()


def _value(value: Any, data_type: str | None, name: str, *, ordering: bool = False) -> Any:
    """``value`` in the Python type that makes the client send it as ``data_type``."""
    base = (data_type or "").removesuffix("[]")
    if isinstance(value, str) and (base == "date" or (base == "" and ordering)):
        parsed = _parse_date(value)
        if parsed is not None:
            return parsed
    if base == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _parse_date(text: str) -> datetime | None:
    """An ISO 8601 string as an aware datetime (naive ones are UTC), or ``None`` when it is not a date."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _nothing() -> Any:
    # Every object has an id property, so "unset and set at once" matches none of them.
    return Filter.all_of(
        [Filter.by_property(ID_PROPERTY).is_none(True), Filter.by_property(ID_PROPERTY).is_none(False)]
    )


def _everything() -> Any:
    return Filter.by_property(ID_PROPERTY).is_none(False)
