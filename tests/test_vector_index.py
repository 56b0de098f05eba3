"""The one conformance suite every vector index backend passes (retrieve/vector_index.py): FAISS files
and a Milvus collection (milvus-lite, in-process). Add, replace, delete, search equal to brute force,
filtered search that still returns k (pushed down, over-fetched, and the exact fallback), and the shared
sync against a real SQLite store: catch up, rebuild after loss, recover from a kill between the vector
writes and the recorded position."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ragtune.config import IndexSettings, KBConfig
from ragtune.errors import KnowledgeBaseError
from ragtune.retrieve import faiss_index, milvus_index, vector_index

BACKENDS = ["faiss", "milvus"]
DIM = 16


def make_index(backend: str, where, *, signature: str = "toy:fp32", settings=None, collection="ragtune_chunks"):
    settings = settings or IndexSettings()
    if backend == "faiss":
        return faiss_index.FaissIndex(where, signature=signature, settings=settings)
    return milvus_index.MilvusIndex(str(where / "milvus.db"), signature=signature, settings=settings,
                                    collection=collection)


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(vectors: dict[int, np.ndarray], query: np.ndarray, k: int, allowed=None) -> list[int]:
    ids = sorted(vectors if allowed is None else set(allowed) & set(vectors))
    scores = np.asarray([vectors[i] @ query for i in ids])
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_add_replace_delete_and_search_equal_brute_force(backend, tmp_path):
    index = make_index(backend, tmp_path)
    vectors = unit_vectors(300)
    index.reset(DIM, 300)
    index.add(np.arange(300, dtype=np.int64), vectors)
    assert isinstance(index, vector_index.VectorIndex)
    assert index.count() == 300
    index.add(np.arange(10, dtype=np.int64), vectors[10:20])  # replaced, not duplicated
    assert index.count() == 300
    stored = {i: (vectors[10 + i] if i < 10 else vectors[i]) for i in range(300)}
    index.delete(list(range(100, 150)))
    for gone in range(100, 150):
        stored.pop(gone)
    assert index.count() == 250 and index.present([5, 120, 299]) == {5, 299}
    for q in unit_vectors(5, seed=1):
        hits = index.search(q, 10)
        assert [i for i, _ in hits] == brute_force(stored, q, 10)
        assert all(abs(score - float(stored[i] @ q)) < 1e-4 for i, score in hits)
    index.close()


@pytest.mark.parametrize("path", ["pushdown", "overfetch"])
def test_a_filter_still_returns_k_even_far_from_the_query(backend, path, tmp_path, monkeypatch):
    if path == "overfetch":  # filters too large to push down / search exactly go through the index
        monkeypatch.setattr(milvus_index, "PUSHDOWN_MAX", 5)
        monkeypatch.setattr(faiss_index, "EXACT_FILTER_MAX", 5)
    settings = IndexSettings(hnsw_min_chunks=100)  # HNSW: the graph path with a selector
    index = make_index(backend, tmp_path, settings=settings)
    vectors = unit_vectors(400)
    index.reset(DIM, 400)
    index.add(np.arange(400, dtype=np.int64), vectors)
    assert index.kind == "hnsw"
    query = vectors[0]
    stored = dict(enumerate(vectors))
    far = brute_force({i: -v for i, v in stored.items()}, query, 12)  # the 12 least similar chunks
    hits = index.search(query, 10, np.asarray(sorted(far), dtype=np.int64))
    assert [i for i, _ in hits] == brute_force(stored, query, 10, far)
    assert len(index.search(query, 50, np.asarray(sorted(far), dtype=np.int64))) == 12  # all there are
    assert index.search(query, 10, np.asarray([], dtype=np.int64)) == []
    index.close()


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """A real knowledge base (SQLite store, fast embedder) whose stored vectors the indexes follow."""
    from ragtune.kb import KnowledgeBase

    root = tmp_path_factory.mktemp("vector-kb")
    (root / "docs").mkdir()
    topics = ["harbour boats", "mill rye bread", "forest deer oak", "station trains coast", "market cheese goats",
              "library maps reading", "school pupils song", "bridge river green", "orchard quince winter",
              "festival plums March"]
    for n, topic in enumerate(topics):
        (root / "docs" / f"d{n}.txt").write_text(f"Document {n} is about {topic}. " * 3)
    with KnowledgeBase.init(root / "kb", KBConfig(embedder="WordLlama", threads=1)) as knowledge:
        knowledge.ingest([root / "docs"])
    return root


def _stored(store) -> dict[int, np.ndarray]:
    from ragtune.store import feed

    return {int(i): v for ids, matrix in feed.iter_vectors(store) for i, v in zip(ids, matrix)}


def test_sync_catches_up_rebuilds_after_loss_and_recovers_from_a_kill(backend, kb, tmp_path, monkeypatch):
    import shutil

    from ragtune.kb import KnowledgeBase
    from ragtune.store import feed

    # the KB's writer prunes the change log once its own indexes hold it; this index, kept aside,
    # follows the same log, so the log is kept for it here
    monkeypatch.setattr(feed, "prune_log", lambda store, upto: None)

    work = tmp_path / "kb"
    shutil.copytree(kb / "kb", work)
    where = tmp_path / "index"
    where.mkdir()
    with KnowledgeBase.open(work, threads=1) as knowledge:
        store = knowledge.store
        dimension = store.vector_dimension()
        index = vector_index.sync(make_index(backend, where), store, dimension)
        assert index.rebuilt and index.count() == feed.chunk_count(store) == len(_stored(store))
        index.save()
        index.close()
        query = knowledge.embedder.encode_query("boats in the harbour")
        expected = brute_force(_stored(store), query, 5)

        reopened = vector_index.sync(make_index(backend, where), store, dimension)
        assert not reopened.rebuilt and [i for i, _ in reopened.search(query, 5)] == expected
        reopened.close()

        # a writer changes the store; the index catches up from the change log, without a rebuild
        knowledge.delete(str(kb / "docs" / "d0.txt"))  # in the copy (the KB's own FAISS index follows too)
        (tmp_path / "extra.txt").write_text("A new document about harbour boats and lighthouses.")
        knowledge.ingest([tmp_path / "extra.txt"])
        caught = vector_index.sync(make_index(backend, where), store, dimension)
        assert not caught.rebuilt and set(_stored(store)) == caught.present(list(_stored(store)))
        assert caught.count() == feed.chunk_count(store)
        assert [i for i, _ in caught.search(query, 5)] == brute_force(_stored(store), query, 5)

        # killed after the vectors were written but before the position was recorded: replayed, idempotent
        position = caught.position
        caught.save()
        (tmp_path / "more.txt").write_text("Yet another text, on quince orchards in winter.")
        knowledge.ingest([tmp_path / "more.txt"])
        vector_index.apply_changes(caught, store, feed.changes_since(store, position))
        if backend == "faiss":
            caught.save()  # FAISS writes vectors and position together: a kill leaves the old pair
        caught.close()  # (Milvus: vectors written, position not)
        recovered = vector_index.sync(make_index(backend, where), store, dimension)
        assert not recovered.rebuilt and recovered.count() == feed.chunk_count(store)
        recovered.save()

        # the index lost entirely (its files deleted, the collection dropped): rebuilt from SQLite, same results
        if backend == "milvus":
            recovered._connect().drop_collection(recovered.collection)
            recovered.close()
        (where / "dense.json").unlink(missing_ok=True)
        rebuilt = vector_index.sync(make_index(backend, where), store, dimension)
        assert rebuilt.rebuilt and [i for i, _ in rebuilt.search(query, 5)] == brute_force(_stored(store), query, 5)
        rebuilt.close()


def test_a_milvus_collection_of_another_embedder_is_refused_and_kept(kb, tmp_path):
    from ragtune.kb import KnowledgeBase

    with KnowledgeBase.open(kb / "kb", readonly=True, threads=1) as knowledge:
        store, dimension = knowledge.store, knowledge.store.vector_dimension()
        theirs = vector_index.sync(make_index("milvus", tmp_path, signature="other-model:fp32"), store, dimension)
        theirs.save()
        held = theirs.count()
        theirs.close()
        ours = make_index("milvus", tmp_path)
        with pytest.raises(KnowledgeBaseError, match="other-model:fp32.*another collection"):
            vector_index.sync(ours, store, dimension)
        with pytest.raises(KnowledgeBaseError, match="another collection"):
            ours.reset(dimension, 10)  # never dropped
        ours.close()
        again = make_index("milvus", tmp_path, signature="other-model:fp32")
        assert again.open(store, dimension) and again.count() == held
        again.close()


def test_an_unreachable_milvus_is_a_clear_error_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(milvus_index, "CONNECT_TIMEOUT_S", 2.0)
    index = milvus_index.MilvusIndex("http://127.0.0.1:9", signature="toy:fp32", settings=IndexSettings())
    started = time.perf_counter()
    with pytest.raises(KnowledgeBaseError, match="cannot reach Milvus at http://127.0.0.1:9.*milvus_uri"):
        index.open(None, DIM)
    assert time.perf_counter() - started < 15


def test_a_milvus_knowledge_base_answers_like_a_faiss_one_through_the_cli(kb, tmp_path):
    """`ragtune init --vector-store milvus`: the config keeps it, ingest fills the collection, search
    returns what the FAISS KB returns, delete follows, and a bad URI is refused before anything is made."""
    import json

    from conftest import run_cli

    from ragtune.kb import KnowledgeBase

    docs = kb / "docs"
    results = {}
    for backend in BACKENDS:
        path = tmp_path / backend
        run_cli("init", path, "--embedder", "WordLlama", "--vector-store", backend)
        run_cli("ingest", path, docs, "--json")
        hits = json.loads(run_cli("search", path, "boats in the harbour", "--k", "4", "--mode", "dense",
                                  "--json").stdout)
        results[backend] = [(h["doc_id"], round(h["score"], 4)) for h in hits]
    assert results["milvus"] == results["faiss"] and len(results["faiss"]) == 4
    assert "vector_store: milvus" in (tmp_path / "milvus" / "ragtune.yaml").read_text()
    assert (tmp_path / "milvus" / "index" / "milvus.db").exists()
    run_cli("delete", tmp_path / "milvus", docs / "d0.txt")
    with KnowledgeBase.open(tmp_path / "milvus", threads=1) as knowledge:
        sizes = knowledge.refresh_indexes()
        assert sizes["dense"]["backend"] == "milvus" and sizes["dense"]["size"] == knowledge.stats()["chunks"]
        assert not knowledge.retriever.dense().rebuilt  # caught up, not rebuilt
    bad = run_cli("init", tmp_path / "nowhere", "--vector-store", "milvus", "--milvus-uri", "http://127.0.0.1:9",
                  check=False)
    assert bad.returncode != 0 and "cannot reach Milvus at http://127.0.0.1:9" in bad.stderr
    assert not (tmp_path / "nowhere").exists()
    wrong = run_cli("init", tmp_path / "x", "--milvus-uri", "milvus.sqlite", check=False)
    assert wrong.returncode != 0 and "--milvus-uri" in wrong.stderr
    # the server behind an existing KB goes away: a write fails before SQLite changes
    config = tmp_path / "milvus" / "ragtune.yaml"
    config.write_text(config.read_text().replace("milvus_uri: null", "milvus_uri: http://127.0.0.1:9"))
    def stored():  # read through SQLite (the main file's bytes would miss writes still in the WAL)
        with KnowledgeBase.open(tmp_path / "milvus", readonly=True) as knowledge:
            return knowledge.store.documents(limit=1000)

    before = stored()
    gone = run_cli("ingest", tmp_path / "milvus", docs / "d0.txt", check=False)  # d0 was deleted above: new
    assert gone.returncode != 0 and "cannot reach Milvus at http://127.0.0.1:9" in gone.stderr
    assert stored() == before
