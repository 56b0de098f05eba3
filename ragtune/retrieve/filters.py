"""Metadata filters: one syntax for the CLI and the Python API (and a future HTTP API), resolved to chunk ids in SQLite.

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
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from ..errors import QueryError
from ..store.paths import prefix_sql

COLUMNS = {"doc_id": "d.doc_id", "source": "d.source", "title": "d.title", "page": "c.page",
           "mtime": "d.mtime", "file": "d.file_path"}
OPERATORS = {"eq", "ne", "in", "gt", "gte", "lt", "lte", "prefix"}
SQL_COMPARE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
SHORTHAND = re.compile(r"^\s*([\w.\-]+)\s*(\^=|!=|>=|<=|=|>|<|\s+in\s+)\s*(.*?)\s*$", re.IGNORECASE)
SHORTHAND_OPS = {"^=": "prefix", "!=": "ne", ">=": "gte", "<=": "lte", "=": "eq", ">": "gt", "<": "lt"}


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any


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


def allowed_chunk_ids(store, conditions: list[Condition]) -> np.ndarray:
    """Chunk ids that satisfy every condition (sorted int64)."""
    params: list = []
    where = " AND ".join(_to_sql(c, params) for c in conditions)
    sql = f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE {where} ORDER BY c.id"
    rows = store.conn.execute(sql, params).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
