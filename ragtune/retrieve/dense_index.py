"""The persisted FAISS index: exact for small collections, HNSW past a configurable size.

Files: `index/dense.faiss` and `index/dense.json` (format, kind, dimension, embedder, the change-log
position applied, sha256 of the .faiss file, HNSW tombstones). SQLite stays the source of truth:
a missing, corrupt, foreign or stale file is rebuilt from the stored vectors, and a current one
catches up by replaying the chunk log, so a crash between a commit and an index save loses nothing.

HNSW cannot delete in place, so removed ids become tombstones excluded at search time through a
FAISS IDSelector; past 10% tombstones the graph is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..models.cache import hash_files
from ..store import feed

logger = logging.getLogger(__name__)

FORMAT = 1
TOMBSTONE_REBUILD = 0.10
EXACT_FILTER_MAX = 50_000  # filters allowing fewer chunks are searched exactly over just those


class DenseIndex:
    """Chunk-id keyed vectors; `sync(store)` brings it up to date, `save()` persists it."""

    def __init__(self, directory: Path, *, dimension: int, signature: str, settings):
        self.directory = Path(directory)
        self.dimension = dimension
        self.signature = signature  # embedder + precision: vectors from another model are foreign
        self.settings = settings
        self.index = None
        self.kind = "flat"
        self.position = 0
        self.tombstones: set[int] = set()
        self.dirty = False
        self.rebuilt = False

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.directory / "dense.faiss", self.directory / "dense.json"

    @property
    def size(self) -> int:
        return 0 if self.index is None else self.index.ntotal - len(self.tombstones)

    # -- loading and catching up ------------------------------------------------------------
    def sync(self, store) -> "DenseIndex":
        """Load from disk if valid, replay newer changes, else rebuild; ends equal to the store."""
        with feed.snapshot(store):
            if self.index is None and not self._load(store):
                return self._rebuild(store)
            changes = feed.changes_since(store, self.position)
            self._apply(store, changes)
            expected, count = self.kind_for(self.size), feed.chunk_count(store)
            if self.size != count:
                logger.info("%s: dense index holds %d vectors but the store %d chunks; rebuilding it",
                            self.directory, self.size, count)
                return self._rebuild(store)
            if expected != self.kind:
                logger.info("%s: %d chunks; switching the dense index from %s to %s", self.directory, count,
                            self.kind, expected)
                return self._rebuild(store)
            if self._too_many_tombstones():
                logger.info("%s: %d of %d HNSW entries are deleted; rebuilding the graph", self.directory,
                            len(self.tombstones), self.index.ntotal)
                return self._rebuild(store)
        return self

    def _load(self, store) -> bool:
        import faiss

        data_path, meta_path = self.paths
        if not meta_path.exists():
            logger.info("%s: no dense index on disk; building it from the stored vectors", self.directory)
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if (meta.get("format"), meta.get("dimension"), meta.get("signature")) != (FORMAT, self.dimension, self.signature):
                logger.info("%s: the dense index was built for %s (%s dimensions, format %s), the store holds %s "
                            "vectors; rebuilding it", self.directory, meta.get("signature"), meta.get("dimension"),
                            meta.get("format"), self.signature)
                return False
            if meta["position"] < feed.log_floor(store):
                logger.info("%s: the dense index is older than the change log kept; rebuilding it", self.directory)
                return False
            if hash_files([data_path]) != meta["sha256"]:
                logger.warning("%s does not match its checksum (a save cut short?); rebuilding it from the stored "
                               "vectors", data_path)
                return False
            self.index = faiss.read_index(str(data_path))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            logger.warning("%s: dense index unreadable (%s); rebuilding it from the stored vectors", self.directory, exc)
            return False
        self.kind, self.position = meta["kind"], meta["position"]
        self.tombstones = set(meta.get("tombstones", []))
        return True

    def kind_for(self, count: int) -> str:
        if self.kind == "hnsw" and count >= self.settings.hnsw_min_chunks // 2:
            return "hnsw"  # hysteresis: no flapping around the threshold
        return "hnsw" if count >= self.settings.hnsw_min_chunks else "flat"

    def _empty(self, kind: str):
        import faiss

        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))
        graph = faiss.IndexHNSWFlat(self.dimension, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.settings.hnsw_ef_construction
        graph.hnsw.efSearch = self.settings.hnsw_ef_search
        return faiss.IndexIDMap2(graph)

    def _rebuild(self, store) -> "DenseIndex":
        started = time.perf_counter()
        count = feed.chunk_count(store)
        self.kind = self.kind_for(count)
        self.index = self._empty(self.kind)
        self.tombstones = set()
        self.position = feed.log_position(store)
        for ids, matrix in feed.iter_vectors(store):
            self.index.add_with_ids(matrix, ids)
        self.dirty = self.rebuilt = True
        logger.info("%s: built the dense index (%s, %d vectors) in %.2f s", self.directory, self.kind, self.size,
                    time.perf_counter() - started)
        return self

    def _apply(self, store, changes: feed.Changes) -> None:
        if not changes.added and not changes.removed:
            self.position = max(self.position, changes.position)
            return
        present = self._present(changes.removed + changes.added)
        gone = [i for i in changes.removed if i in present]
        if gone and self.kind == "flat":
            import faiss

            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(gone, dtype=np.int64)))
        else:
            self.tombstones.update(gone)
        new = [i for i in changes.added if i not in present]  # replaying is idempotent
        for ids, matrix in feed.iter_vectors(store, new):
            self.index.add_with_ids(matrix, ids)
        logger.info("%s: dense index caught up with the store: %d chunk(s) added, %d removed", self.directory,
                    len(new), len(gone))
        self.position = changes.position
        self.dirty = True

    def _present(self, ids: list[int]) -> set[int]:
        import faiss

        known = set(faiss.vector_to_array(self.index.id_map).tolist()) - self.tombstones
        return {i for i in ids if i in known}

    def _too_many_tombstones(self) -> bool:
        return self.index is not None and len(self.tombstones) > TOMBSTONE_REBUILD * max(self.index.ntotal, 1)

    # -- saving -----------------------------------------------------------------------------
    def save(self) -> None:
        """Write the index and its metadata atomically (a torn pair fails the checksum: rebuild)."""
        import faiss

        if self.index is None or not self.dirty:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        data_path, meta_path = self.paths
        tmp_data, tmp_meta = data_path.with_suffix(".faiss.tmp"), meta_path.with_suffix(".json.tmp")
        faiss.write_index(self.index, str(tmp_data))
        meta = {"format": FORMAT, "kind": self.kind, "dimension": self.dimension, "signature": self.signature,
                "position": self.position, "size": self.size, "sha256": hash_files([tmp_data]),
                "tombstones": sorted(self.tombstones)}
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_data, data_path)
        os.replace(tmp_meta, meta_path)
        self.dirty = False

    # -- searching --------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top-k (chunk id, cosine) for one query; `allowed` restricts to those chunk ids.

        A filter never under-retrieves: small allowed sets are searched exactly; large ones go
        through the graph with the filter applied during traversal, and if that still returns
        fewer than k while more match, the search falls back to exact over the allowed ids.
        """
        import faiss

        if self.index is None or self.size == 0 or k <= 0:
            return []
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            if self.tombstones:
                allowed = allowed[~np.isin(allowed, np.fromiter(self.tombstones, dtype=np.int64))]
            if len(allowed) == 0:
                return []
            if self.kind == "flat" or len(allowed) <= EXACT_FILTER_MAX:
                return self._exact_subset(query, k, allowed)
            selector = faiss.IDSelectorBatch(allowed)
        elif self.tombstones:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64)))
        else:
            selector = None
        want = min(k, self.size if allowed is None else len(allowed))
        params = None
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.settings.hnsw_ef_search, want))
            if selector is not None:
                params.sel = selector
        elif selector is not None:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(query, want, params=params)
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        if allowed is not None and len(hits) < want:
            return self._exact_subset(query, k, allowed)
        return hits

    def _exact_subset(self, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        vectors = self.index.reconstruct_batch(allowed)
        scores = vectors @ query[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(allowed[i]), float(scores[i])) for i in top]

