"""Dense, lexical and hybrid search over a knowledge base's persisted indexes.

Hybrid is reciprocal rank fusion (Cormack et al., 2009): fused(d) = sum over retrievers of
weight / (rrf_k + rank). RRF needs no score calibration between cosine and BM25, which is why it is
the default; weights tilt it toward one retriever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from ..errors import QueryError
from ..store import feed
from . import filters as filter_module
from . import vector_index
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
    """Searches a store's dense and lexical indexes and keeps them equal to the store.

    Narrow by design: a store (the source of truth), a vector index (retrieve/vector_index.py: FAISS
    or Milvus), a BM25 index, a query encoder and a way to take the writer lock, not the knowledge
    base, so the same retriever serves a CLI call, the server (serve/kbaccess.py) and tests.
    """

    def __init__(self, store, *, vectors, lexical, embed_query: Callable[[str], np.ndarray],
                 try_writer: Callable[[], object | None] = lambda: None):
        self.store = store
        self.vectors = vectors
        self._lexical = lexical
        self.embed_query = embed_query
        self.try_writer = try_writer  # the writer lock if free, else None (readers persist repairs with it)
        self._synced = False

    # -- index upkeep -----------------------------------------------------------------------
    def dense(self):
        """The vector index once it has been brought up to the store, None while no vector is stored."""
        return self.vectors if self._synced else None

    def lexical(self):
        return self._lexical

    def refresh(self, *, writable: bool) -> None:
        """Bring both indexes up to the store. Writers persist them and prune the change log;
        readers catch up in memory (persisting too when no writer holds the KB)."""
        if not writable and self._current():
            return
        lock = None
        if not writable and not self.store.readonly:
            lock = self.try_writer()
            writable = lock is not None
        logger.debug("bringing the indexes up to the store (%s)",
                     "persisting them" if writable else "in memory only, without write access")
        try:
            with feed.snapshot(self.store):
                # an emptied store has no vector to measure: the index keeps its dimension and empties too
                dimension = self.store.vector_dimension() or (self.vectors.dimension if self._synced else None)
                if dimension is not None:
                    vector_index.sync(self.vectors, self.store, dimension)
                    self._synced = True
                self._lexical.sync(self.store, writable=writable)
            if writable:
                positions = [self._lexical.position]
                if self._synced:
                    self.vectors.save()
                    positions.append(self.vectors.position)
                feed.prune_log(self.store, min(positions))
                logger.debug("indexes saved at change-log position %d", min(positions))
        finally:
            if lock is not None:
                lock.release()

    def _current(self) -> bool:
        if self._lexical.index is None:
            return False
        position = feed.log_position(self.store)
        dense_ok = (self.vectors.position == position if self._synced
                    else self.store.vector_dimension() is None)
        return dense_ok and self._lexical.position == position

    def close(self) -> None:
        self.vectors.close()

    # -- searching --------------------------------------------------------------------------
    def search(self, query, options: SearchOptions) -> list[Hit]:
        query = check_query(query)
        options.check()
        conditions = filter_module.normalize(options.filters)
        self.refresh(writable=False)
        allowed = self.store.matching_chunk_ids(conditions) if conditions else None
        if allowed is not None and len(allowed) == 0:
            return []
        depth = max(options.k, options.depth) if options.mode == "hybrid" else options.k
        rankings: dict[str, list[tuple[int, float]]] = {}
        if options.mode in ("hybrid", "dense") and self._synced:
            rankings["dense"] = self.vectors.search(self.embed_query(query), depth, allowed)
        if options.mode in ("hybrid", "lexical"):
            rankings["lexical"] = self._lexical.search(query, depth, allowed)
        if options.mode != "hybrid":
            ranking = rankings.get(options.mode, [])
            explain = {cid: {options.mode: {"rank": r, "score": s}} for r, (cid, s) in enumerate(ranking, 1)}
            return hydrate(self.store, ranking[: options.k], explain)
        fused = reciprocal_rank_fusion(
            rankings, {"dense": options.dense_weight, "lexical": options.lexical_weight}, options.rrf_k)
        top = fused[: options.k]
        explain = {cid: {**parts, "fused": {"score": score}} for cid, score, parts in top}
        return hydrate(self.store, [(cid, score) for cid, score, _ in top], explain)
