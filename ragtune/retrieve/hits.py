"""Search results and query checks shared by every retriever."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import QueryError

MAX_QUERY_CHARS = 10_000


@dataclass
class Hit:
    """One retrieved chunk, with where it sits in its document."""

    doc_id: str
    source: str
    chunk_id: int
    text: str
    score: float
    start: int
    end: int
    page: int | None
    title: str | None = None
    metadata: dict = field(default_factory=dict)
    ranks: dict = field(default_factory=dict)  # retriever -> {"rank": r, "score": s}, for --explain

    def as_dict(self, explain: bool = True) -> dict:
        data = asdict(self)
        if not explain:
            data.pop("ranks")
        return data


def check_query(query) -> str:
    """The query stripped, or a QueryError that says what to pass instead."""
    if isinstance(query, bytes):
        raise QueryError("query must be text, got bytes; decode it first (e.g. query.decode('utf-8'))")
    if not isinstance(query, str):
        raise QueryError(f"query must be text, got {type(query).__name__}")
    if not query.strip():
        raise QueryError("query is empty; pass the question or keywords to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}: shorten it")
    if "\x00" in query:
        raise QueryError("query contains a NUL character; pass plain text")
    return query.strip()


def hydrate(store, scored: list[tuple[int, float]], ranks: dict[int, dict]) -> list[Hit]:
    """Read hits back from SQLite in score order; chunks deleted meanwhile are dropped."""
    if not scored:
        return []
    rows = store.hit_rows([chunk_id for chunk_id, _ in scored])
    hits = []
    for chunk_id, score in scored:
        row = rows.get(chunk_id)
        if row is None:
            continue
        metadata = {**json.loads(row["document_metadata"] or "{}"), **json.loads(row["metadata"] or "{}")}
        hits.append(Hit(row["doc_id"], row["source"], chunk_id, row["text"], float(score), row["start_char"],
                        row["end_char"], row["page"], row["title"], metadata, ranks.get(chunk_id, {})))
    return hits
