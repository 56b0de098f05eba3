"""Filter conditions (retrieve/filters.py parses them) as SQL over chunks `c` joined with documents `d`.

Fields: doc_id, source, title, page, mtime, file are columns; anything else is looked up in the chunk's
metadata JSON, then its document's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import QueryError
from .paths import prefix_sql

COLUMNS = {"doc_id": "d.doc_id", "source": "d.source", "title": "d.title", "page": "c.page",
           "mtime": "d.mtime", "file": "d.file_path"}
SQL_COMPARE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any


def _metadata_path(field: str) -> str:
    return '$."' + field.replace('"', '\\"') + '"'


def _expression(field: str, params: list) -> str:
    """SQL for a field's value; pushes its own parameters, so build SQL left to right."""
    if field in COLUMNS:
        return COLUMNS[field]
    path = _metadata_path(field)
    params.extend([path, path])
    return "COALESCE(json_extract(c.metadata, ?), json_extract(d.metadata, ?))"


def _membership(field: str, values: list, params: list) -> str:
    # `year=2020` also matches "2020" stored as text (CSV columns arrive as text)
    values = list(dict.fromkeys([*values, *(str(v) for v in values if isinstance(v, (int, float)))]))
    marks = ",".join("?" * len(values))
    if field in COLUMNS:
        params.extend(values)
        return f"{COLUMNS[field]} IN ({marks})"
    path = _metadata_path(field)
    params.extend([path, *values, path, *values])  # scalars and arrays alike, chunk then document
    return (f"(EXISTS (SELECT 1 FROM json_each(c.metadata, ?) WHERE value IN ({marks})) OR "
            f"EXISTS (SELECT 1 FROM json_each(d.metadata, ?) WHERE value IN ({marks})))")


def _to_sql(condition: Condition, params: list) -> str:
    field, op, value = condition.field, condition.op, condition.value
    if field == "mtime" and isinstance(value, str) and op in SQL_COMPARE:
        try:
            value = datetime.fromisoformat(value).timestamp()
        except ValueError as exc:
            raise QueryError(f"filter mtime: {value!r} is not an ISO date (2024-01-31) or a number") from exc
    if op == "eq":
        return _membership(field, [value], params)
    if op == "in":
        return _membership(field, list(value), params) if value else "0"
    if op == "ne":
        return f"NOT {_membership(field, [value], params)}"
    if op == "prefix" and field in ("source", "file"):
        # paths compare by components, exactly as sync does (store/paths.py)
        prefixes = [value]
        if not os.path.isabs(value):
            prefixes.append(os.path.abspath(value) + (os.sep if value.endswith(("/", os.sep)) else ""))
        return "(" + " OR ".join(prefix_sql(COLUMNS[field], prefix, params) for prefix in prefixes) + ")"
    if op == "prefix":
        expression = _expression(field, params)
        params.extend([len(value), value])
        return f"substr({expression}, 1, ?) = ?"
    if isinstance(value, (int, float)):
        # numbers compare numerically whether stored as JSON numbers or as numeric text
        present, compared = _expression(field, params), _expression(field, params)
        params.append(value)
        return f"({present} IS NOT NULL AND CAST({compared} AS REAL) {SQL_COMPARE[op]} ?)"
    expression = _expression(field, params)
    params.append(value)
    return f"{expression} {SQL_COMPARE[op]} ?"


def where_clause(conditions: list[Condition], params: list) -> str:
    """The WHERE clause for all `conditions` (pushing their parameters onto `params`)."""
    return " AND ".join(_to_sql(c, params) for c in conditions)
