"""Storage: SQLite is the source of truth; derived indexes are rebuilt from it."""

from .database import ChunkRecord, Store, WriterLock

__all__ = ["ChunkRecord", "Store", "WriterLock"]
