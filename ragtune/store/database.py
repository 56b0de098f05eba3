"""SQLite, the knowledge base's source of truth: one writer, many readers (WAL).

Writes nest in one transaction per file (see `transaction`), so a reader, or a process resuming
after `kill -9`, sees each file either in its old version or in its new one. Writers also hold an OS file lock, so a
second concurrent writer gets a clear error instead of interleaving half-finished work.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import KnowledgeBaseError, WriterBusyError
from .paths import prefix_sql
from .reads import StoreReads
from .schema import migrate


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class WriterLock:
    """An exclusive flock on `<kb>/.writer.lock`; released by the OS even after kill -9."""

    def __init__(self, path: Path, wait_seconds: float = 0.0):
        self.path = path
        self.wait_seconds = wait_seconds
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    handle.close()
                    raise WriterBusyError(
                        f"{self.path.parent} is being written by {holder}; wait for it to finish "
                        f"or pass --wait SECONDS to queue behind it"
                    ) from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {_now()}")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


@dataclass
class ChunkRecord:
    ordinal: int
    content_hash: str
    text: str
    token_count: int
    start: int
    end: int
    page: int | None
    metadata: dict


class Store(StoreReads):
    """Documents, chunks and vectors in SQLite; derived indexes are rebuilt from here."""

    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise KnowledgeBaseError(f"{self.path} does not exist; create it with `ragtune init`")
            uri = f"file:{self.path}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self._depth = 0  # nesting level of transaction()
        self._orphan_candidates: set[str] = set()
        try:
            self.conn.execute("PRAGMA busy_timeout = 30000")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode: a kill -9 never corrupts or loses committed data.
                self.conn.execute("PRAGMA synchronous = NORMAL")
                migrate(self.conn)
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise KnowledgeBaseError(
                f"{self.path} cannot be opened as a SQLite database ({exc}); it was left untouched. "
                "Restore it from a backup, or ingest into a new knowledge base") from None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self):
        """One write transaction; nested uses join the outermost one, which commits or rolls back all.

        This is what makes a file's documents, chunks and vectors land together: the ingest pipeline
        opens one transaction per file and the per-document writes nest inside it. Content rows a
        deletion orphaned are collected just before the commit, after every insert of the
        transaction, so a text that moves between documents keeps its stored vector.
        """
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth, self._orphan_candidates = 1, set()
        try:
            yield self.conn
            self._drop_orphaned_contents()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
        self.conn.execute("COMMIT")

    # -- metadata -------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- files ----------------------------------------------------------------------------
    def file_state(self, path: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()

    def set_file_state(self, path: str, content_hash: str, size: int, mtime: float, documents: int) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO files(path, content_hash, size, mtime, documents, ingested_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (path, content_hash, size, mtime, documents, _now()),
            )

    def files_under(self, root: str) -> list[str]:
        """Files recorded at `root` or below it, compared by path components (see paths.py)."""
        params: list = []
        where = prefix_sql("path", root, params)
        return [r[0] for r in self.conn.execute(f"SELECT path FROM files WHERE {where} ORDER BY path", params)]

    def documents_under(self, root: str) -> int:
        """How many documents came from files at `root` or below it."""
        params: list = []
        where = prefix_sql("file_path", root, params)
        return int(self.conn.execute(f"SELECT COUNT(*) FROM documents WHERE {where}", params).fetchone()[0])

    # -- documents ------------------------------------------------------------------------
    def document(self, source: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM documents WHERE source = ?", (source,)).fetchone()

    def sources_of_file(self, file_path: str) -> list[str]:
        rows = self.conn.execute("SELECT source FROM documents WHERE file_path = ?", (file_path,))
        return [r[0] for r in rows]

    def known_contents(self, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self.conn.execute(f"SELECT hash FROM contents WHERE hash IN ({marks})", part))
        return found

    def stored_vectors(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """{content hash: vector} for the hashes already stored.

        Writers carry these along with freshly embedded vectors, so a write never depends on a
        content row surviving until it happens (the cause of the FOREIGN KEY failures on sync).
        """
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            for digest, blob in self.conn.execute(f"SELECT hash, vector FROM contents WHERE hash IN ({marks})", part):
                found[digest] = np.frombuffer(blob, dtype=np.float32)
        return found

    def duplicate_of(self, content_hash: str, source: str) -> int | None:
        """The canonical document with this content at another source, if any."""
        row = self.conn.execute(
            "SELECT id FROM documents WHERE content_hash = ? AND duplicate_of IS NULL AND source != ? LIMIT 1",
            (content_hash, source),
        ).fetchone()
        return row[0] if row else None

    def write_document(self, doc, batches) -> str:
        """Replace the document at `doc.source` in one transaction; returns added|updated|duplicate.

        `batches` yields (chunk records, {content hash: vector}) and is consumed inside the
        transaction, so a huge document streams into the database without sitting in memory.
        """
        with self.transaction():
            previous = self.document(doc.source)
            if previous is not None:
                self._delete_document_row(previous)
            canonical = self.duplicate_of(doc.content_hash, doc.source)
            cursor = self.conn.execute(
                "INSERT INTO documents(doc_id, source, file_path, content_hash, title, mtime, metadata,"
                " duplicate_of, chunk_count, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    doc.doc_id, doc.source, doc.file_path, doc.content_hash, doc.title, doc.mtime,
                    json.dumps(doc.metadata, default=str), canonical, _now(),
                ),
            )
            if canonical is None:
                count = 0
                for chunks, vectors in batches:
                    self._insert_chunks(cursor.lastrowid, chunks, vectors)
                    count += len(chunks)
                self.conn.execute("UPDATE documents SET chunk_count = ? WHERE id = ?", (count, cursor.lastrowid))
        if canonical is not None:
            return "duplicate"
        return "updated" if previous is not None else "added"

    def _insert_chunks(self, document_id: int, chunks: list[ChunkRecord], vectors) -> None:
        missing = {c.content_hash for c in chunks if c.content_hash not in vectors}
        if missing and len(self.known_contents(sorted(missing))) != len(missing):
            raise KnowledgeBaseError(f"internal error: {len(missing)} chunk(s) arrived without a vector; nothing was written")
        self.conn.executemany(
            "INSERT OR IGNORE INTO contents(hash, text, token_count, vector) VALUES (?, ?, ?, ?)",
            [
                (c.content_hash, c.text, c.token_count, vectors[c.content_hash].astype(np.float32).tobytes())
                for c in chunks
                if c.content_hash in vectors
            ],
        )
        self.conn.executemany(
            "INSERT INTO chunks(document_id, ordinal, content_hash, start_char, end_char, page, metadata)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (document_id, c.ordinal, c.content_hash, c.start, c.end, c.page, json.dumps(c.metadata))
                for c in chunks
            ],
        )

    def delete_document(self, source: str) -> bool:
        with self.transaction():
            row = self.document(source)
            if row is None:
                return False
            self._delete_document_row(row)
            return True

    def _delete_document_row(self, row: sqlite3.Row) -> None:
        """Delete one document; promote a duplicate to canonical; drop orphaned contents."""
        doc_pk = row["id"]
        heir = self.conn.execute(
            "SELECT id FROM documents WHERE duplicate_of = ? ORDER BY id LIMIT 1", (doc_pk,)
        ).fetchone()
        if heir is not None:
            self.conn.execute("UPDATE chunks SET document_id = ? WHERE document_id = ?", (heir[0], doc_pk))
            self.conn.execute("UPDATE documents SET duplicate_of = ? WHERE duplicate_of = ?", (heir[0], doc_pk))
            self.conn.execute(
                "UPDATE documents SET duplicate_of = NULL, chunk_count = ? WHERE id = ?",
                (row["chunk_count"], heir[0]),
            )
            self.conn.execute("DELETE FROM documents WHERE id = ?", (doc_pk,))
            return
        self._orphan_candidates.update(
            r[0] for r in self.conn.execute("SELECT content_hash FROM chunks WHERE document_id = ?", (doc_pk,)))
        self.conn.execute("DELETE FROM chunks WHERE document_id = ?", (doc_pk,))
        self.conn.execute("DELETE FROM documents WHERE id = ?", (doc_pk,))

    def _drop_orphaned_contents(self) -> None:
        """Delete content rows (text + vector) that no chunk references any more; runs before COMMIT."""
        hashes, self._orphan_candidates = sorted(self._orphan_candidates), set()
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            self.conn.execute(
                f"DELETE FROM contents WHERE hash IN ({marks}) "
                "AND NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.content_hash = contents.hash)",
                part,
            )

    def forget_file(self, path: str) -> int:
        """Delete every document of a file and its file row, all in one transaction."""
        with self.transaction():
            removed = 0
            for source in self.sources_of_file(path):
                removed += self.delete_document(source)
            self.conn.execute("DELETE FROM files WHERE path = ?", (path,))
        return removed

    # -- reading --------------------------------------------------------------------------
    def stats(self) -> dict:
        one = lambda sql: self.conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "documents": one("SELECT COUNT(*) FROM documents"),
            "duplicate_documents": one("SELECT COUNT(*) FROM documents WHERE duplicate_of IS NOT NULL"),
            "chunks": one("SELECT COUNT(*) FROM chunks"),
            "unique_chunks": one("SELECT COUNT(*) FROM contents"),
            "files": one("SELECT COUNT(*) FROM files"),
            "tokens": one("SELECT COALESCE(SUM(t.token_count), 0) FROM chunks c JOIN contents t ON t.hash = c.content_hash"),
            "database_bytes": self.path.stat().st_size if self.path.exists() else 0,
        }

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every stored vector with its content hash (for rebuilding dense indexes)."""
        rows = self.conn.execute("SELECT hash, vector FROM contents ORDER BY rowid").fetchall()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        matrix = np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return [r[0] for r in rows], matrix

    def chunk_rows(self):
        """Every chunk with its document, by source then position (RAFT re-cuts documents from these)."""
        return self.conn.execute(
            "SELECT chunk_id, doc_id, source, title, ordinal, text, start_char, end_char FROM chunk_view "
            "ORDER BY source, ordinal")
