"""The FAISS vector index (the default backend): exact for small collections, HNSW past a configurable size.

Files: `index/dense.faiss` and `index/dense.json` (format, kind, dimension, embedder, the change-log
position applied, sha256 of the .faiss file, HNSW tombstones). A missing, corrupt, foreign or stale
file is rebuilt from the stored vectors (vector_index.sync): the files are derived data of this KB.

HNSW cannot delete in place, so removed ids become tombstones excluded at search time through a
FAISS IDSelector; past 10% tombstones the graph is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..models.cache import hash_files

logger = logging.getLogger(__name__)

FORMAT = 1
TOMBSTONE_REBUILD = 0.10
EXACT_FILTER_MAX = 50_000  # filters allowing fewer chunks are searched exactly over just those


class FaissIndex:
    """A VectorIndex (retrieve/vector_index.py) in two files under the KB's index folder."""

    name = "faiss"

    def __init__(self, directory: Path, *, signature: str, settings):
        self.directory = Path(directory)
        self.signature = signature  # embedder + precision: vectors from another model are foreign
        self.settings = settings
        self.dimension: int | None = None
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
    def loaded(self) -> bool:
        return self.index is not None

    @property
    def size(self) -> int:
        return self.count()

    def count(self) -> int:
        return 0 if self.index is None else self.index.ntotal - len(self.tombstones)

    # -- the protocol's primitives ----------------------------------------------------------
    def open(self, store, dimension: int) -> bool:
        import faiss

        self.dimension = dimension
        data_path, meta_path = self.paths
        if not meta_path.exists():
            logger.info("%s: no dense index on disk; building it from the stored vectors", self.directory)
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if (meta.get("format"), meta.get("dimension"), meta.get("signature")) != (FORMAT, dimension, self.signature):
                logger.info("%s: the dense index was built for %s (%s dimensions, format %s), the store holds %s "
                            "vectors; rebuilding it", self.directory, meta.get("signature"), meta.get("dimension"),
                            meta.get("format"), self.signature)
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

    def reset(self, dimension: int, count: int) -> None:
        import faiss

        self.dimension, self.kind = dimension, self.kind_for(count)
        if self.kind == "flat":
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        else:
            graph = faiss.IndexHNSWFlat(dimension, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.settings.hnsw_ef_construction
            graph.hnsw.efSearch = self.settings.hnsw_ef_search
            self.index = faiss.IndexIDMap2(graph)
        self.tombstones = set()
        self.dirty = True

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        again = self.present(ids.tolist()) if self.index.ntotal else set()
        if again:  # insert-or-replace, as the protocol says
            self.delete(sorted(again))
        self.tombstones.difference_update(ids.tolist())
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self.dirty = True

    def delete(self, ids: list[int]) -> None:
        import faiss

        if self.kind == "flat":
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        else:
            self.tombstones.update(ids)
        self.dirty = True

    def present(self, ids: list[int]) -> set[int]:
        import faiss

        if not ids or self.index is None:
            return set()
        known = set(faiss.vector_to_array(self.index.id_map).tolist()) - self.tombstones
        return {i for i in ids if i in known}

    def rebuild_reason(self, count: int) -> str | None:
        if self.kind_for(count) != self.kind:
            return f"{count} chunks: switching from {self.kind} to {self.kind_for(count)}"
        if len(self.tombstones) > TOMBSTONE_REBUILD * max(self.index.ntotal, 1):
            return f"{len(self.tombstones)} of {self.index.ntotal} HNSW entries are deleted"
        return None

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
                "position": self.position, "size": self.count(), "sha256": hash_files([tmp_data]),
                "tombstones": sorted(self.tombstones)}
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_data, data_path)
        os.replace(tmp_meta, meta_path)
        self.dirty = False

    def close(self) -> None:
        self.index = None

    # -- searching --------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Small allowed sets are searched exactly; large ones go through the graph with the filter
        applied during traversal, and if that still returns fewer than k while more match, exactly."""
        import faiss

        if self.index is None or self.count() == 0 or k <= 0:
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
        want = min(k, self.count() if allowed is None else len(allowed))
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
        vectors = self.index.reconstruct_batch(allowed)  # allowed ids come from the store the index equals
        scores = vectors @ query[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(allowed[i]), float(scores[i])) for i in top]
