"""Metadata filters: one syntax for the CLI and the Python API (and a future HTTP API), resolved to chunk ids by the store (store/filter_sql.py).

Canonical form (Python dicts, or the same as JSON)::

    {"lang": "en"}                          equality (a list-valued field matches if it contains it)
    {"lang": ["en", "de"]}                  membership (same as {"lang": {"in": [...]}})
    {"year": {"gte": 2020, "lt": 2024}}     numeric ranges: gt, gte, lt, lte
    {"date": {"gte": "2024-01-01"}}         ISO dates compare as text; mtime accepts ISO dates
    {"source": {"prefix": "docs/"}}         under a path, by components (relative paths also match their absolute form)
    {"lang": {"ne": "fr"}}                  inequality

CLI shorthand, one condition per --filter, all must hold: `lang=en`, `lang!=fr`, `lang in en,de`,
`year>=2020`, `year<2024`, `source^=docs/`.

Fields: doc_id, source, title, page, mtime, file; anything else is looked up in the chunk's metadata,
then its document's (CSV/JSON columns, front matter...).
"""

from __future__ import annotations

import json
import re

from ..errors import QueryError
from ..store.filter_sql import SQL_COMPARE, Condition

OPERATORS = {"eq", "ne", "in", "gt", "gte", "lt", "lte", "prefix"}
SHORTHAND = re.compile(r"^\s*([\w.\-]+)\s*(\^=|!=|>=|<=|=|>|<|\s+in\s+)\s*(.*?)\s*$", re.IGNORECASE)
SHORTHAND_OPS = {"^=": "prefix", "!=": "ne", ">=": "gte", "<=": "lte", "=": "eq", ">": "gt", "<": "lt"}


def _scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    try:
        number = json.loads(text)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            return number
    except ValueError:
        pass
    return text


def parse_expression(text: str) -> Condition:
    """One CLI --filter expression, e.g. `year>=2020` or `lang in en,de`."""
    match = SHORTHAND.match(text or "")
    if not match or not match.group(3) or match.group(3)[0] in "<>=!^":
        raise QueryError(
            f"--filter {text!r} is not a condition; write field=value, field!=value, field in a,b, "
            "field>=number (also >, <, <=) or source^=prefix"
        )
    field, op, value = match.group(1), match.group(2).strip().lower(), match.group(3)
    if op == "in":
        return Condition(field, "in", [_scalar(v) for v in value.split(",") if v.strip()])
    return Condition(field, SHORTHAND_OPS[op], _scalar(value))


def normalize(filters) -> list[Condition]:
    """Accept the dict form, a list of shorthand strings, or one string; return conditions."""
    if not filters:
        return []
    if isinstance(filters, str):
        return [parse_expression(filters)]
    if isinstance(filters, (list, tuple)):
        return [c for item in filters for c in normalize(item)]
    if not isinstance(filters, dict):
        raise QueryError(f"filters must be a dict like {{'lang': 'en'}} or strings like 'lang=en', got {type(filters).__name__}")
    conditions = []
    for field, spec in filters.items():
        if isinstance(spec, dict):
            for op, value in spec.items():
                if op not in OPERATORS:
                    raise QueryError(f"filter on {field!r}: unknown operator {op!r}; use one of {sorted(OPERATORS)}")
                conditions.append(Condition(field, op, value))
        elif isinstance(spec, (list, tuple)):
            conditions.append(Condition(field, "in", list(spec)))
        else:
            conditions.append(Condition(field, "eq", spec))
    for condition in conditions:
        _check(condition)
    return conditions


def _check(condition: Condition) -> None:
    if condition.op in SQL_COMPARE and not isinstance(condition.value, (int, float, str)):
        raise QueryError(f"filter {condition.field} {condition.op}: needs a number or an ISO date, got {condition.value!r}")
    if condition.op == "in" and not isinstance(condition.value, list):
        raise QueryError(f"filter {condition.field} in: needs a list of values")
    if condition.op == "prefix" and not isinstance(condition.value, str):
        raise QueryError(f"filter {condition.field} prefix: needs text")
