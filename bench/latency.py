"""Search latency on synthetic collections of 100k and 1M chunks, and LangChain's EnsembleRetriever.

The collection is synthetic so it can be large: chunk texts are 60 words drawn from SciFact's word
frequencies (../shared/datasets/scifact/corpus.jsonl), vectors are 384-d points around 2,000 random
centres (MiniLM's dimension; real clusters make HNSW's job realistic). Rows are bulk-inserted into a
real ragtune SQLite store (bench only: ingest would spend hours embedding), then ragtune builds its
FAISS and tantivy indexes from the store exactly as it does for user data.

Measured per query, p50/p95 over --queries queries:
  * index time: lexical (tantivy BM25), dense (FAISS exact or HNSW), hybrid (both + RRF + reading hits
    back from SQLite), with the query vector given;
  * end to end: the same through KnowledgeBase.search, including MiniLM embedding the query;
  * HNSW recall@10 against exact search on the same vectors.
LangChain's EnsembleRetriever (BM25Retriever + FAISS vector store, equal weights) runs on the 100k
collection with the same MiniLM query embedding. Prints a table; writes bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
DIM = 384


def vocabulary(corpus: Path, size: int = 30_000):
    counts = Counter(w for line in open(corpus) for w in re.findall(r"[a-z]{3,}", json.loads(line)["text"].lower()))
    words, freqs = zip(*counts.most_common(size))
    probs = np.asarray(freqs, dtype=np.float64)
    return np.asarray(words), probs / probs.sum()


def synthetic_rows(n: int, words, probs, rng):
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        picks = rng.choice(len(words), size=(m, 60), p=probs)
        vectors = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield start, [" ".join(words[row]) for row in picks], vectors, centres


def build_store(kb_path: Path, n: int, words, probs, seed: int):
    """A ragtune KB with n synthetic chunks (one per document), inserted in bulk."""
    from ragtune.config import IndexSettings, KBConfig
    from ragtune.kb import KnowledgeBase

    rng = np.random.default_rng(seed)
    kb = KnowledgeBase.init(kb_path, KBConfig(index=IndexSettings(hnsw_min_chunks=50_000)))  # precision auto
    centres = None
    with kb.store.transaction() as conn:
        for start, texts, vectors, centres in synthetic_rows(n, words, probs, rng):
            conn.executemany(
                "INSERT INTO documents(id, doc_id, source, file_path, content_hash, title, metadata, chunk_count, ingested_at)"
                " VALUES (?, ?, ?, 'synthetic', ?, NULL, '{}', 1, '')",
                [(start + i + 1, f"d{start + i}", f"synthetic/{start + i}", f"h{start + i}") for i in range(len(texts))])
            conn.executemany("INSERT INTO contents(hash, text, token_count, vector) VALUES (?, ?, 60, ?)",
                             [(f"h{start + i}", t, v.tobytes()) for i, (t, v) in enumerate(zip(texts, vectors))])
            conn.executemany(
                "INSERT INTO chunks(document_id, ordinal, content_hash, start_char, end_char, metadata) VALUES (?, 0, ?, 0, ?, '{}')",
                [(start + i + 1, f"h{start + i}", len(t)) for i, t in enumerate(texts)])
    return kb, centres


def percentiles(samples_ms):
    ordered = sorted(samples_ms)
    return round(statistics.median(ordered), 2), round(ordered[int(0.95 * (len(ordered) - 1))], 2)


def timed(fn, items):
    samples = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        samples.append((time.perf_counter() - t0) * 1000)
    return percentiles(samples)


def measure(n: int, args, words, probs, queries_text, console):
    import tempfile

    from ragtune.retrieve.hits import hydrate
    from ragtune.retrieve.search import reciprocal_rank_fusion

    tmp = tempfile.TemporaryDirectory(prefix=f"ragtune-latency-{n}-")
    t0 = time.perf_counter()
    kb, centres = build_store(Path(tmp.name) / "kb", n, words, probs, args.seed)
    kb.threads = args.threads
    store_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    kb.refresh_indexes()
    index_s = time.perf_counter() - t0
    dense, lexical = kb.retriever.dense(), kb.retriever.lexical()
    rng = np.random.default_rng(args.seed + 1)
    qvecs = centres[rng.integers(0, len(centres), args.queries)] + 0.6 * rng.standard_normal((args.queries, DIM)).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    pairs = list(zip(queries_text, qvecs))

    def hybrid(pair):
        text, vector = pair
        fused = reciprocal_rank_fusion({"dense": dense.search(vector, 100), "lexical": lexical.search(text, 100)},
                                       {"dense": 1.0, "lexical": 1.0}, 60)[:10]
        hydrate(kb.store, [(c, s) for c, s, _ in fused], {})

    row = {"chunks": n, "dense_kind": dense.kind, "store_build_s": round(store_s, 1), "index_build_s": round(index_s, 1)}
    row["lexical_ms"] = timed(lambda p: lexical.search(p[0], 10), pairs)
    row["dense_ms"] = timed(lambda p: dense.search(p[1], 10), pairs)
    row["hybrid_ms"] = timed(hybrid, pairs)
    kb.embedder.load()
    for mode in ("lexical", "dense", "hybrid"):
        row[f"e2e_{mode}_ms"] = timed(lambda q: kb.search(q, 10, mode=mode), queries_text)
    if dense.kind == "hnsw":
        import faiss

        exact = faiss.IndexFlatIP(DIM)
        for ids, matrix in __import__("ragtune.store.feed", fromlist=["iter_vectors"]).iter_vectors(kb.store):
            exact.add(matrix)  # chunk ids are 1..n in insertion order
        _, truth = exact.search(qvecs, 10)
        found = [len({c for c, _ in dense.search(v, 10)} & set((truth[i] + 1).tolist())) / 10 for i, v in enumerate(qvecs)]
        row["hnsw_recall@10"] = round(float(np.mean(found)), 4)
    if n == args.langchain_at:
        row["langchain_ensemble_ms"] = langchain_ensemble(kb, queries_text, console)
    console.print(row)
    kb.close()
    tmp.cleanup()
    return row


def langchain_ensemble(kb, queries_text, console):
    """LangChain's EnsembleRetriever (BM25Retriever + FAISS store) on the same chunks and query model."""
    try:
        from langchain_classic.retrievers import EnsembleRetriever
        from langchain_community.retrievers import BM25Retriever
        from langchain_community.vectorstores import FAISS
        from langchain_core.embeddings import Embeddings
    except ImportError:
        console.print("LangChain not installed: pip install -e '.[bench]'")
        return None

    class MiniLM(Embeddings):
        def embed_documents(self, texts):
            return kb.embedder.encode(texts).tolist()

        def embed_query(self, text):
            return kb.embedder.encode([text])[0].tolist()

    rows = kb.store.conn.execute(
        "SELECT t.text, t.vector FROM chunks c JOIN contents t ON t.hash = c.content_hash ORDER BY c.id").fetchall()
    texts = [r[0] for r in rows]
    t0 = time.perf_counter()
    bm25 = BM25Retriever.from_texts(texts, k=10)
    store = FAISS.from_embeddings([(t, np.frombuffer(r[1], dtype=np.float32).tolist()) for t, r in zip(texts, rows)],
                                  MiniLM(), normalize_L2=False)
    ensemble = EnsembleRetriever(retrievers=[bm25, store.as_retriever(search_kwargs={"k": 10})], weights=[0.5, 0.5])
    console.print(f"LangChain ensemble built in {time.perf_counter() - t0:.0f} s")
    return timed(lambda q: ensemble.invoke(q), queries_text[:50])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--langchain-at", type=int, default=100_000, help="collection size for the LangChain run (0: skip)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    if not CORPUS.exists():
        raise SystemExit(f"corpus not found: {CORPUS} (word frequencies come from it)")

    from rich.console import Console
    from rich.table import Table

    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    console = Console()
    words, probs = vocabulary(CORPUS)
    rng = np.random.default_rng(args.seed + 2)
    real_queries = [json.loads(line)["text"] for line in open(CORPUS.parent / "queries.jsonl")]
    queries_text = [real_queries[i] for i in rng.permutation(len(real_queries))[: args.queries]]
    rows = [measure(n, args, words, probs, queries_text, console) for n in args.sizes]

    table = Table(title="search latency, ms p50 / p95 (top 10)")
    for column in ("chunks", "dense index", "lexical", "dense", "hybrid", "e2e lexical", "e2e dense", "e2e hybrid", "HNSW recall@10", "LangChain ensemble"):
        table.add_column(column, justify="right")
    fmt = lambda pair: "-" if not pair else f"{pair[0]} / {pair[1]}"  # noqa: E731
    for row in rows:
        table.add_row(f"{row['chunks']:,}", row["dense_kind"], fmt(row["lexical_ms"]), fmt(row["dense_ms"]),
                      fmt(row["hybrid_ms"]), fmt(row["e2e_lexical_ms"]), fmt(row["e2e_dense_ms"]),
                      fmt(row["e2e_hybrid_ms"]), str(row.get("hnsw_recall@10", "exact")), fmt(row.get("langchain_ensemble_ms")))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                                    "queries": args.queries, "rows": rows}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
