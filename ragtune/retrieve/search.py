"""Dense, lexical and hybrid search over a knowledge base's persisted indexes.

Hybrid is reciprocal rank fusion (Cormack et al., 2009): fused(d) = sum over retrievers of
weight / (rrf_k + rank). RRF needs no score calibration between cosine and BM25, which is why it is
the default; weights tilt it toward one retriever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import QueryError
from ..store import feed
from . import filters as filter_module
from .hits import Hit, check_query, hydrate

logger = logging.getLogger(__name__)
MODES = ("hybrid", "dense", "lexical")
INDEX_DIR = "index"
MAX_K = 1000


@dataclass(frozen=True)
class SearchOptions:
    """How to search; every field maps to a CLI flag of `ragtune search`."""

    k: int = 5
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    filters: object = None  # see retrieve/filters.py for the syntax
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    rrf_k: int = 60
    depth: int = 100  # candidates each retriever contributes to the fusion

    def check(self) -> "SearchOptions":
        if self.mode not in MODES:
            raise QueryError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 1 <= self.k <= MAX_K:
            raise QueryError(f"--k must be between 1 and {MAX_K}, got {self.k}")
        if self.dense_weight < 0 or self.lexical_weight < 0 or self.dense_weight + self.lexical_weight == 0:
            raise QueryError("--dense-weight and --lexical-weight must be >= 0 and not both 0")
        if self.rrf_k < 1:
            raise QueryError(f"--rrf-k must be at least 1, got {self.rrf_k}")
        return self


def reciprocal_rank_fusion(rankings: dict[str, list[tuple[int, float]]], weights: dict[str, float],
                           rrf_k: int) -> list[tuple[int, float, dict]]:
    """Fuse ranked lists; returns (chunk id, fused score, per-retriever rank/score) best first."""
    fused: dict[int, float] = {}
    explain: dict[int, dict] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 1.0)
        for rank, (chunk_id, score) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (rrf_k + rank)
            explain.setdefault(chunk_id, {})[name] = {"rank": rank, "score": score}
    order = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
    return [(chunk_id, score, explain[chunk_id]) for chunk_id, score in order]


class Retriever:
    """Owns the KB's dense and lexical indexes and keeps them equal to the store."""

    def __init__(self, kb):
        self.kb = kb
        self.store = kb.store
        self.directory = Path(kb.path) / INDEX_DIR
        self._dense = None
        self._lexical = None

    # -- index upkeep -----------------------------------------------------------------------
    def _dimension(self) -> int | None:
        row = self.store.conn.execute("SELECT length(vector) / 4 FROM contents LIMIT 1").fetchone()
        return int(row[0]) if row else None

    def dense(self):
        from .dense_index import DenseIndex

        if self._dense is None:
            if self.kb.threads:
                import faiss

                faiss.omp_set_num_threads(self.kb.threads)  # like torch's threads: contention on small machines
            dimension = self._dimension()
            if dimension is None:
                return None
            signature = f"{self.kb.config.embedder}:{self.kb.config.precision}"
            self._dense = DenseIndex(self.directory, dimension=dimension, signature=signature,
                                     settings=self.kb.config.index)
        return self._dense

    def lexical(self):
        from .lexical import LexicalIndex

        if self._lexical is None:
            self._lexical = LexicalIndex(self.directory)
        return self._lexical

    def refresh(self, *, writable: bool) -> None:
        """Bring both indexes up to the store. Writers persist them and prune the change log;
        readers catch up in memory (persisting too when no writer holds the KB)."""
        if not writable and self._current():
            return
        lock = None
        if not writable and not self.store.readonly:
            lock = self.kb.try_writer()
            writable = lock is not None
        logger.debug("%s: bringing the indexes up to the store (%s)", self.directory,
                     "persisting them" if writable else "in memory only, without write access")
        try:
            with feed.snapshot(self.store):
                dense = self.dense()
                if dense is not None:
                    dense.sync(self.store)
                self.lexical().sync(self.store, writable=writable)
            if writable:
                if dense is not None:
                    dense.save()
                positions = [self.lexical().position] + ([dense.position] if dense is not None else [])
                feed.prune_log(self.store, min(positions))
                logger.debug("%s: indexes saved at change-log position %d", self.directory, min(positions))
        finally:
            if lock is not None:
                lock.release()

    def _current(self) -> bool:
        if self._lexical is None:
            return False
        position = feed.log_position(self.store)
        dense_ok = self._dense is None and self._dimension() is None or (
            self._dense is not None and self._dense.position == position)
        return dense_ok and self._lexical.position == position

    # -- searching --------------------------------------------------------------------------
    def search(self, query, options: SearchOptions) -> list[Hit]:
        query = check_query(query)
        options.check()
        conditions = filter_module.normalize(options.filters)
        self.refresh(writable=False)
        allowed = filter_module.allowed_chunk_ids(self.store, conditions) if conditions else None
        if allowed is not None and len(allowed) == 0:
            return []
        depth = max(options.k, options.depth) if options.mode == "hybrid" else options.k
        rankings: dict[str, list[tuple[int, float]]] = {}
        if options.mode in ("hybrid", "dense") and self._dense is not None:
            vector = self.kb.embedder.encode_query(query)
            rankings["dense"] = self._dense.search(vector, depth, allowed)
        if options.mode in ("hybrid", "lexical"):
            rankings["lexical"] = self.lexical().search(query, depth, allowed)
        if options.mode != "hybrid":
            ranking = rankings.get(options.mode, [])
            explain = {cid: {options.mode: {"rank": r, "score": s}} for r, (cid, s) in enumerate(ranking, 1)}
            return hydrate(self.store, ranking[: options.k], explain)
        fused = reciprocal_rank_fusion(
            rankings, {"dense": options.dense_weight, "lexical": options.lexical_weight}, options.rrf_k)
        top = fused[: options.k]
        explain = {cid: {**parts, "fused": {"score": score}} for cid, score, parts in top}
        return hydrate(self.store, [(cid, score) for cid, score, _ in top], explain)
