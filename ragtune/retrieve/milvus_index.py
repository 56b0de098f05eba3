"""The Milvus vector index: the KB's vectors in a Milvus collection, for collections beyond one machine.

`ragtune init KB --vector-store milvus` keeps them in a milvus-lite file inside the KB (index/milvus.db);
`--milvus-uri http://host:19530` points the same code at a Milvus standalone or cluster. SQLite stays
the source of truth: the collection is rebuilt from it after loss, and vector_index.sync keeps both in
step (the change-log position the collection holds is a collection property, written after the vectors:
a kill between the two replays the changes, which is idempotent because ids are upserted).

A collection is this KB's only when its `ragtune.signature` property (embedder:precision) and vector
dimension match: another one is refused, never dropped, since on a shared server it may be someone
else's data (the fix: another --milvus-collection, or drop it yourself).

Search is by inner product over normalised vectors (cosine); FLAT (exact) below `hnsw_min_chunks`,
HNSW above, as the FAISS backend. A filter is pushed down as `id in [...]` when it allows at most
PUSHDOWN_MAX chunks; a larger one over-fetches, and when that still yields fewer than k allowed hits,
the allowed vectors are scored exactly, so a filter never under-retrieves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError, KnowledgeBaseError

logger = logging.getLogger(__name__)
PUSHDOWN_MAX = 10_000  # ids in one `id in [...]` filter expression
MAX_LIMIT = 16_384  # Milvus's largest top-k
BATCH = 5_000  # rows per upsert / ids per get
CONNECT_TIMEOUT_S = 10.0
SIGNATURE = "ragtune.signature"
POSITION = "ragtune.position"
KIND = "ragtune.kind"


class MilvusIndex:
    """A VectorIndex (retrieve/vector_index.py) in one Milvus collection."""

    name = "milvus"

    def __init__(self, uri: str, *, signature: str, collection: str = "ragtune_chunks", settings=None):
        self.uri, self.signature, self.collection, self.settings = uri, signature, collection, settings
        self.client = None
        self.dimension: int | None = None
        self.kind = "flat"
        self.position = 0
        self.rebuilt = False
        self._saved_position: int | None = None
        self._opened = False

    def _connect(self):
        if self.client is None:
            try:
                from pymilvus import MilvusClient
            except ImportError:
                raise ConfigError("--vector-store milvus needs pymilvus and milvus-lite: "
                                  "pip install 'ragtune[milvus]'") from None
            if self.uri.endswith(".db"):  # milvus-lite's in-process server logs, as an error, every call
                logging.getLogger("grpc._server").setLevel(logging.CRITICAL)  # it does not implement
                Path(self.uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client = MilvusClient(uri=self.uri, timeout=CONNECT_TIMEOUT_S)
            except Exception as exc:  # pymilvus raises MilvusException, grpc errors or OSError by transport
                raise KnowledgeBaseError(f"cannot reach Milvus at {self.uri} ({_reason(exc)}); start the server, or "
                                         "fix the KB's milvus_uri (ragtune init --milvus-uri)") from None
        return self.client

    def check(self) -> None:
        """Reach the server and refuse a collection of that name that is not this KB's kind."""
        client = self._connect()
        if client.has_collection(self.collection):
            self._check_owned(client.describe_collection(self.collection))

    @property
    def loaded(self) -> bool:
        return self._opened

    # -- the protocol's primitives ----------------------------------------------------------
    def open(self, store, dimension: int) -> bool:
        client = self._connect()
        self.dimension = dimension
        if not client.has_collection(self.collection):
            logger.info("Milvus %s: no collection %s; building it from the stored vectors", self.uri, self.collection)
            return False
        description = client.describe_collection(self.collection)
        self._check_owned(description, dimension)
        properties = dict(description.get("properties") or {})
        if POSITION not in properties:
            return False  # created, never completed: rebuild
        client.load_collection(self.collection)
        self.position = int(properties[POSITION])
        self._saved_position = self.position
        self.kind = properties.get(KIND, "flat")
        self._opened = True
        return True

    def _kind_for(self, count: int) -> str:
        threshold = getattr(self.settings, "hnsw_min_chunks", 50_000)
        if self.kind == "hnsw" and count >= threshold // 2:
            return "hnsw"  # hysteresis, as the FAISS backend: no flapping around the threshold
        return "hnsw" if count >= threshold else "flat"

    def reset(self, dimension: int, count: int) -> None:
        from pymilvus import DataType

        client = self._connect()
        if client.has_collection(self.collection):
            self._check_owned(client.describe_collection(self.collection))  # never drop another's collection
            client.drop_collection(self.collection)
        self.dimension, self.kind = dimension, self._kind_for(count)
        schema = client.create_schema(auto_id=False, description="ragtune chunk vectors (rebuilt from SQLite)")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        index = client.prepare_index_params()
        if self.kind == "flat":
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        else:
            index.add_index("vector", index_type="HNSW", metric_type="IP",
                            params={"M": self.settings.hnsw_m, "efConstruction": self.settings.hnsw_ef_construction})
        client.create_collection(self.collection, schema=schema, index_params=index, consistency_level="Strong",
                                 properties={SIGNATURE: self.signature, KIND: self.kind})
        self._saved_position = None
        self._opened = True

    def _check_owned(self, description: dict, dimension: int | None = None) -> None:
        """Refuse a collection made for another embedder or dimension (or by another program)."""
        properties = dict(description.get("properties") or {})
        dims = [f.get("params", {}).get("dim") for f in description["fields"] if f["name"] == "vector"]
        theirs = (properties.get(SIGNATURE), int(dims[0]) if dims and dims[0] else None)
        if theirs[0] != self.signature or (dimension is not None and theirs[1] != dimension):
            raise KnowledgeBaseError(
                f"Milvus collection {self.collection!r} at {self.uri} holds {theirs[1]}-dimension vectors of "
                f"{theirs[0] or 'another program'}, but this knowledge base has {dimension or self.dimension}-dimension "
                f"vectors of {self.signature}; use another collection (milvus_collection in ragtune.yaml, or "
                "ragtune init --milvus-collection), or drop that collection if it is yours")

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        client = self._connect()
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), BATCH):
            rows = [{"id": int(i), "vector": v} for i, v in zip(ids[start:start + BATCH], vectors[start:start + BATCH])]
            client.upsert(self.collection, rows)

    def delete(self, ids: list[int]) -> None:
        client = self._connect()
        for start in range(0, len(ids), BATCH):
            client.delete(self.collection, ids=[int(i) for i in ids[start:start + BATCH]])

    def present(self, ids: list[int]) -> set[int]:
        client, found = self._connect(), set()
        for start in range(0, len(ids), BATCH):
            rows = client.get(self.collection, ids=[int(i) for i in ids[start:start + BATCH]], output_fields=["id"])
            found.update(int(r["id"]) for r in rows)
        return found

    def count(self) -> int:
        rows = self._connect().query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def rebuild_reason(self, count: int) -> str | None:
        wanted = self._kind_for(count)
        return f"{count} chunks: switching from {self.kind} to {wanted}" if wanted != self.kind else None

    def save(self) -> None:
        """The vectors are durable once written; record the position they reach (after them)."""
        if not self._opened or self._saved_position == self.position:
            return
        client = self._connect()
        client.flush(self.collection)
        client.alter_collection_properties(self.collection, properties={POSITION: str(self.position)})
        self._saved_position = self.position

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self._opened = False

    # -- searching --------------------------------------------------------------------------
    def _search(self, query: np.ndarray, limit: int, expression: str = "") -> list[tuple[int, float]]:
        params = {"metric_type": "IP", "params": {"ef": max(limit, getattr(self.settings, "hnsw_ef_search", 64))}
                  if self.kind == "hnsw" else {}}
        result = self._connect().search(self.collection, data=[query], limit=limit, filter=expression,
                                        search_params=params, output_fields=[], consistency_level="Strong")
        return [(int(h["id"]), float(h["distance"])) for h in result[0]]

    def search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        if k <= 0:
            return []
        query = np.ascontiguousarray(vector.reshape(-1), dtype=np.float32)
        if allowed is None:
            return self._search(query, min(k, MAX_LIMIT))
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) == 0:
            return []
        want = min(k, len(allowed))
        if len(allowed) <= PUSHDOWN_MAX:
            hits = self._search(query, min(want, MAX_LIMIT), f"id in {allowed.tolist()}")
        else:  # over-fetch, keep the allowed ones
            ok = set(allowed.tolist())
            hits = [h for h in self._search(query, min(MAX_LIMIT, max(8 * want, 1000))) if h[0] in ok][:want]
        return hits if len(hits) >= want else self._exact_subset(query, want, allowed)

    def _exact_subset(self, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        client, ids, scores = self._connect(), [], []
        for start in range(0, len(allowed), BATCH):
            rows = client.get(self.collection, ids=allowed[start:start + BATCH].tolist(), output_fields=["vector"])
            ids += [int(r["id"]) for r in rows]
            scores.append(np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), -1) @ query)
        scores = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(ids[i], float(scores[i])) for i in top]


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
