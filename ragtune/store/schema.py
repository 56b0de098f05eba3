"""Append-only schema migrations. Never edit a released migration: add the next one.

`PRAGMA user_version` records how many migrations a database has applied.
"""

from __future__ import annotations

import logging
import sqlite3

from ..errors import KnowledgeBaseError

logger = logging.getLogger(__name__)

MIGRATIONS: list[str] = [
    # 1: documents, chunks and content-addressed chunk texts + vectors.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE files (
        path TEXT PRIMARY KEY,
        content_hash TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime REAL NOT NULL,
        documents INTEGER NOT NULL,
        ingested_at TEXT NOT NULL
    );
    CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        doc_id TEXT NOT NULL,
        source TEXT NOT NULL UNIQUE,
        file_path TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        title TEXT,
        mtime REAL,
        metadata TEXT NOT NULL DEFAULT '{}',
        duplicate_of INTEGER REFERENCES documents(id),
        chunk_count INTEGER NOT NULL DEFAULT 0,
        ingested_at TEXT NOT NULL
    );
    CREATE INDEX documents_doc_id ON documents(doc_id);
    CREATE INDEX documents_file ON documents(file_path);
    CREATE INDEX documents_hash ON documents(content_hash);
    CREATE TABLE contents (
        hash TEXT PRIMARY KEY,
        text TEXT NOT NULL,
        token_count INTEGER NOT NULL,
        vector BLOB NOT NULL
    );
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        ordinal INTEGER NOT NULL,
        content_hash TEXT NOT NULL REFERENCES contents(hash),
        start_char INTEGER NOT NULL,
        end_char INTEGER NOT NULL,
        page INTEGER,
        metadata TEXT NOT NULL DEFAULT '{}',
        UNIQUE (document_id, ordinal)
    );
    CREATE INDEX chunks_content ON chunks(content_hash);
    CREATE VIEW chunk_view AS
        SELECT c.id AS chunk_id, d.doc_id, d.source, d.title, c.ordinal, t.text, c.start_char,
               c.end_char, c.page, t.token_count, c.metadata, d.metadata AS document_metadata,
               c.content_hash, c.document_id
        FROM chunks c JOIN documents d ON d.id = c.document_id JOIN contents t ON t.hash = c.content_hash;
    """,
    # 2: an append-only log of chunk ids added and removed, written by triggers in the same
    # transaction as the change, so derived indexes (FAISS, lexical) can catch up incrementally
    # after any crash. Trigger bodies stay on one line: statements are split on ";\n".
    """
    CREATE TABLE chunk_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        chunk_id INTEGER NOT NULL,
        added INTEGER NOT NULL
    );
    CREATE TRIGGER chunk_log_insert AFTER INSERT ON chunks BEGIN INSERT INTO chunk_log(chunk_id, added) VALUES (new.id, 1); END;
    CREATE TRIGGER chunk_log_delete AFTER DELETE ON chunks BEGIN INSERT INTO chunk_log(chunk_id, added) VALUES (old.id, 0); END;
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction; returns the schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise KnowledgeBaseError(
            f"this knowledge base has schema version {version}, newer than this ragtune "
            f"({len(MIGRATIONS)}); upgrade ragtune"
        )
    applied = []
    for number in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have migrated meanwhile.
            if conn.execute("PRAGMA user_version").fetchone()[0] != number:
                conn.execute("ROLLBACK")
                continue
            for statement in MIGRATIONS[number].split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(number + 1)
    if applied and version == 0:
        logger.info("%s: created the schema (version %d)", _database_name(conn), applied[-1])
    elif applied:  # an existing knowledge base, upgraded by this ragtune
        logger.info("%s: migrated the schema from version %d to %d", _database_name(conn), applied[0] - 1, applied[-1])
    return len(MIGRATIONS)


def _database_name(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return (row[2] if row else "") or "in-memory database"
