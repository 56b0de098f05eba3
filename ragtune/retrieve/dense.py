"""Exact dense retrieval with FAISS over the vectors stored in SQLite."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field



from ..errors import QueryError

MAX_QUERY_CHARS = 10_000


@dataclass
class Hit:
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
    ranks: dict = field(default_factory=dict)  # retriever -> (rank, score)

    def as_dict(self) -> dict:
        return asdict(self)


def check_query(query) -> str:
    if not isinstance(query, str):
        raise QueryError(f"query must be text, got {type(query).__name__}")
    if not query.strip():
        raise QueryError("query is empty; pass the question or keywords to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}: shorten it")
    return query.strip()


def dense_search(store, embedder, query: str, k: int) -> list[Hit]:
    import faiss

    query = check_query(query)
    hashes, matrix = store.vectors()
    if not hashes:
        return []
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(matrix)
    vector = embedder.encode([query])
    scores, positions = index.search(vector, min(k, len(hashes)))
    hits = []
    for rank, (score, position) in enumerate(zip(scores[0], positions[0]), start=1):
        if position < 0:
            continue
        row = store.conn.execute(
            "SELECT * FROM chunk_view WHERE content_hash = ? ORDER BY chunk_id LIMIT 1", (hashes[position],)
        ).fetchone()
        metadata = json.loads(row["metadata"])
        hits.append(
            Hit(row["doc_id"], row["source"], row["chunk_id"], row["text"], float(score), row["start_char"],
                row["end_char"], row["page"], row["title"], metadata, {"dense": (rank, float(score))})
        )
    return hits


