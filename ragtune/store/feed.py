"""What derived indexes read from the store: the chunk change log, and chunk vectors/texts in bulk.

Indexes remember the last log sequence number they applied. Catching up means replaying the log
after that number; a pruned log (floor above the index's position) or any doubt means a rebuild.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

BATCH = 20_000


@dataclass
class Changes:
    """Net effect of the log after some position: chunk ids now present, and ids gone."""

    position: int
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)


@contextmanager
def snapshot(store):
    """A read transaction: every read inside sees one consistent state (WAL snapshot)."""
    if store.conn.in_transaction:
        yield store
        return
    store.conn.execute("BEGIN")
    try:
        yield store
    finally:
        store.conn.execute("COMMIT")


def log_position(store) -> int:
    """Sequence number of the newest logged change (0 when nothing was ever logged)."""
    row = store.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunk_log'").fetchone()
    return int(row[0]) if row else 0


def log_floor(store) -> int:
    """Changes at or below this number were pruned: an index older than it must rebuild."""
    return int(store.get_meta("chunk_log_floor", "0"))


def changes_since(store, position: int) -> Changes:
    """Replay the log after `position`; chunk ids are never reused, so the last event wins."""
    state: dict[int, bool] = {}
    newest = position
    for seq, chunk_id, added in store.conn.execute(
        "SELECT seq, chunk_id, added FROM chunk_log WHERE seq > ? ORDER BY seq", (position,)
    ):
        state[chunk_id] = bool(added)
        newest = seq
    changes = Changes(newest)
    for chunk_id, present in state.items():
        (changes.added if present else changes.removed).append(chunk_id)
    return changes


def prune_log(store, upto: int) -> None:
    """Forget log entries every index has applied (called by writers after saving indexes)."""
    if upto <= log_floor(store):
        return
    with store.transaction():
        store.conn.execute("DELETE FROM chunk_log WHERE seq <= ?", (upto,))
        store.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('chunk_log_floor', ?)", (str(upto),))


def chunk_count(store) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


def _select_in(store, sql: str, ids: list[int]) -> Iterator:
    for i in range(0, len(ids), 900):
        part = ids[i : i + 900]
        yield from store.conn.execute(sql.format(marks=",".join("?" * len(part))), part)


def iter_vectors(store, ids: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(chunk ids as int64, float32 matrix) in batches; all chunks, or only `ids` that still exist."""
    base = "SELECT c.id, t.vector FROM chunks c JOIN contents t ON t.hash = c.content_hash"
    rows = store.conn.execute(base + " ORDER BY c.id") if ids is None else _select_in(
        store, base + " WHERE c.id IN ({marks})", ids)
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield _as_arrays(batch)
            batch = []
    if batch:
        yield _as_arrays(batch)


def _as_arrays(rows) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    return ids, matrix


def iter_texts(store, ids: list[int] | None = None) -> Iterator[list[tuple[int, str]]]:
    """[(chunk id, text to index lexically)] in batches; chunks after the first also carry the
    document title (the first chunk already starts with it), as BEIR's BM25 baselines index titles."""
    base = ("SELECT c.id, CASE WHEN c.ordinal = 0 OR d.title IS NULL THEN t.text "
            "ELSE d.title || char(10) || t.text END FROM chunks c "
            "JOIN contents t ON t.hash = c.content_hash JOIN documents d ON d.id = c.document_id")
    rows = store.conn.execute(base + " ORDER BY c.id") if ids is None else _select_in(
        store, base + " WHERE c.id IN ({marks})", ids)
    batch: list = []
    for row in rows:
        batch.append((row[0], row[1]))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
