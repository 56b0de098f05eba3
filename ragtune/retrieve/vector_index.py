"""The vector index protocol: what retrieval needs from a vector store, and one way to keep any of them
equal to SQLite.

SQLite is the source of truth; a vector index (FAISS files in the KB, or a Milvus collection) is
derived from it. Every backend implements the few primitives below; `sync` is written once on top
of them: open the persisted index, replay the store's chunk change log after the position the index
last made durable (replaying is idempotent, so a kill between writing vectors and recording the
position loses nothing), and rebuild from the stored vectors whenever there is any doubt (no index,
a pruned log, a count that differs from the store, or a backend's own reason such as an HNSW graph
with too many deleted entries).

Backends: retrieve/faiss_index.py (files under KB/index, the default) and retrieve/milvus_index.py
(`ragtune init KB --vector-store milvus [--milvus-uri URI]`). tests/test_vector_index.py is the one
conformance suite every backend passes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..store import feed

logger = logging.getLogger(__name__)
BACKENDS = ("faiss", "milvus")


@runtime_checkable
class VectorIndex(Protocol):
    """Chunk-id keyed vectors searched by inner product (the stored vectors are normalised: cosine)."""

    name: str  # the backend: "faiss" or "milvus"
    kind: str  # how it searches: "flat", "hnsw", ...
    dimension: int | None  # of the vectors, once opened or reset
    position: int  # the change-log sequence number the index holds (durable after save())
    rebuilt: bool  # rebuilt from the store since it was opened

    @property
    def loaded(self) -> bool: ...

    def open(self, store, dimension: int) -> bool:
        """Load the persisted index; False when there is none or it cannot be trusted (rebuild).
        Raises a KnowledgeBaseError when it belongs to another knowledge base or embedder and must not
        be replaced (a shared Milvus collection)."""

    def reset(self, dimension: int, count: int) -> None:
        """Start empty, sized for `count` vectors (a backend may pick its search structure by it)."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace: adding an id that is present leaves one entry."""

    def delete(self, ids: list[int]) -> None: ...

    def present(self, ids: list[int]) -> set[int]: ...

    def count(self) -> int: ...

    def rebuild_reason(self, count: int) -> str | None:
        """A backend's own reason to rebuild with `count` chunks in the store (None: keep it)."""

    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top-k (chunk id, score) best first; with `allowed` (sorted chunk ids) only those, and still
        k of them when k are allowed (a filter never under-retrieves)."""

    def save(self) -> None:
        """Make the vectors and `position` durable (a no-op when nothing changed)."""

    def close(self) -> None: ...


def rebuild(index: VectorIndex, store, dimension: int) -> VectorIndex:
    """Refill the index from every stored vector, at the store's current log position."""
    count = feed.chunk_count(store)
    index.reset(dimension, count)
    for ids, matrix in feed.iter_vectors(store):
        index.add(ids, matrix)
    index.position = feed.log_position(store)
    index.rebuilt = True
    logger.info("built the %s vector index (%s, %d vectors)", index.name, index.kind, count)
    return index


def apply_changes(index: VectorIndex, store, changes: feed.Changes) -> None:
    """Replay the change log onto the index; idempotent (what is present is not added twice)."""
    if changes.added or changes.removed:
        present = index.present(changes.removed + changes.added)
        gone = [i for i in changes.removed if i in present]
        if gone:
            index.delete(gone)
        new = [i for i in changes.added if i not in present]
        for ids, matrix in feed.iter_vectors(store, new):
            index.add(ids, matrix)
        logger.info("%s vector index caught up with the store: %d chunk(s) added, %d removed", index.name,
                    len(new), len(gone))
    index.position = max(index.position, changes.position)


def sync(index: VectorIndex, store, dimension: int) -> VectorIndex:
    """Bring `index` equal to the store: load it if valid, replay newer changes, else rebuild."""
    with feed.snapshot(store):
        if not index.loaded:
            if not index.open(store, dimension):
                return rebuild(index, store, dimension)
            if index.position < feed.log_floor(store):
                logger.info("the %s vector index is older than the change log kept; rebuilding it", index.name)
                return rebuild(index, store, dimension)
        apply_changes(index, store, feed.changes_since(store, index.position))
        count = feed.chunk_count(store)
        held = index.count()
        reason = (f"it holds {held} vectors but the store {count} chunks" if held != count
                  else index.rebuild_reason(count))
        if reason:
            logger.info("%s vector index: %s; rebuilding it", index.name, reason)
            return rebuild(index, store, dimension)
    return index


def open_vector_index(config, directory: Path, *, threads: int | None = None) -> VectorIndex:
    """The KB's vector index backend, as its config names it (`vector_store`)."""
    signature = f"{config.embedder}:{config.precision}"
    if config.vector_store == "milvus":
        from .milvus_index import MilvusIndex

        return MilvusIndex(config.milvus_uri or str(Path(directory) / "milvus.db"), signature=signature,
                           collection=config.milvus_collection, settings=config.index)
    from .faiss_index import FaissIndex

    if threads:
        import faiss

        faiss.omp_set_num_threads(threads)  # like torch's threads: contention on small machines
    return FaissIndex(directory, signature=signature, settings=config.index)
