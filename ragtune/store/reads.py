"""The store's read queries for retrieval and serving: hits by chunk id, filters, listings, passages.

A mixin of `Store` (store/database.py), so every SQL statement lives in store/ and the layers above
ask for rows by name instead of writing queries against the schema.
"""

from __future__ import annotations

import sqlite3

import numpy as np


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching text that starts with `prefix` (with ESCAPE '\\')."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class StoreReads:
    conn: sqlite3.Connection

    def vector_dimension(self) -> int | None:
        """Dimension of the stored vectors (float32), None while nothing is stored."""
        row = self.conn.execute("SELECT length(vector) / 4 FROM contents LIMIT 1").fetchone()
        return int(row[0]) if row else None

    def hit_rows(self, chunk_ids: list[int]) -> dict[int, sqlite3.Row]:
        """Chunk id -> the chunk with its document (text, position, metadata) for the ids still stored."""
        rows: dict[int, sqlite3.Row] = {}
        for start in range(0, len(chunk_ids), 900):  # SQLite's bound-parameter limit
            part = chunk_ids[start:start + 900]
            rows.update((row["chunk_id"], row) for row in self.conn.execute(
                "SELECT chunk_id, doc_id, source, title, text, start_char, end_char, page, metadata, "
                f"document_metadata FROM chunk_view WHERE chunk_id IN ({','.join('?' * len(part))})", part))
        return rows

    def matching_chunk_ids(self, conditions: list) -> np.ndarray:
        """Chunk ids (sorted int64) whose chunk or document satisfies every filter condition."""
        from .filter_sql import where_clause

        params: list = []
        where = where_clause(conditions, params)
        rows = self.conn.execute(f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE {where} "
                                 "ORDER BY c.id", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def documents(self, *, limit: int = 100, offset: int = 0, prefix: str | None = None) -> tuple[list[dict], int]:
        """One page of stored documents by source (those under `prefix` when given), and how many in all."""
        where, params = "", []
        if prefix:
            where, params = "WHERE source LIKE ? ESCAPE '\\'", [like_prefix(prefix)]
        total = self.conn.execute(f"SELECT COUNT(*) FROM documents {where}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT doc_id, source, title, file_path, chunk_count, ingested_at, duplicate_of FROM documents {where} "
            "ORDER BY source LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
        return [dict(r) for r in rows], int(total)

    def documents_named(self, name: str) -> list[dict]:
        """Documents whose doc id or source is `name`."""
        rows = self.conn.execute("SELECT doc_id, source, file_path FROM documents WHERE doc_id = ? OR source = ?",
                                 (name, name)).fetchall()
        return [dict(r) for r in rows]

    def passage(self, chunk_id: int, *, context: int = 1) -> tuple[dict, list[dict]] | None:
        """A chunk with its document, and the chunks `context` positions either side of it (itself
        included) in text order; None when the chunk is not stored."""
        row = self.conn.execute("SELECT chunk_id, doc_id, source, title, ordinal, text, start_char, end_char, page, "
                                "document_id FROM chunk_view WHERE chunk_id = ?", (chunk_id,)).fetchone()
        if row is None:
            return None
        around = self.conn.execute("SELECT chunk_id, text, start_char, end_char FROM chunk_view WHERE document_id = ? "
                                   "AND ordinal BETWEEN ? AND ? ORDER BY start_char",
                                   (row["document_id"], row["ordinal"] - context, row["ordinal"] + context)).fetchall()
        return dict(row), [dict(r) for r in around]
