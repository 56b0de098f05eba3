"""Scale-out costs on this machine: ingest local vs Ray, and vector search FAISS vs Milvus-lite.

Data: BEIR SciFact abstracts (../shared/datasets/scifact/corpus.jsonl, CC BY-SA 4.0; the first
--docs of them, written one file per 100 abstracts), ingested with the default embedder
(all-MiniLM-L6-v2): locally, then with `--ray` on a local Ray of 2 CPUs with 1 and with 2 embedding
actors. Each run goes into a fresh knowledge base; the three must store the same chunks.

Vector search: --vectors random unit vectors of 384 dimensions (MiniLM's) in each backend through the
VectorIndex protocol (retrieve/vector_index.py), HNSW above 50,000 as the KB default; --queries
queries, top 10, one at a time: p50 / p95 latency, plus the build time. Synthetic vectors because
embedding 100k real chunks takes about an hour here, and the index, not the embedder, is measured.

Not measured: LoRA steps/s and evaluation questions/min under Ray (`train --ray`, `eval --ray` are not
built yet).

  python bench/scale.py [--docs 600] [--vectors 100000] [--queries 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
RESULTS = ROOT / "bench" / "results"


def write_docs(folder: Path, count: int) -> int:
    folder.mkdir(parents=True)
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[:count]
    for start in range(0, len(lines), 100):
        (folder / f"part{start // 100:03d}.jsonl").write_text("\n".join(lines[start:start + 100]) + "\n")
    return len(lines)


def ingest(work: Path, docs: Path, name: str, **ray) -> dict:
    from ragtune.config import IngestOptions, RecordFields
    from ragtune.kb import KnowledgeBase

    kb = KnowledgeBase.init(work / name)
    options = IngestOptions(fields=RecordFields(text_field="text", id_field="_id", title_field="title"))
    started = time.perf_counter()
    try:
        report = kb.ingest([docs], options, **ray)
        seconds = time.perf_counter() - started
        chunks = sorted(tuple(r) for r in kb.store.chunk_rows())
    finally:
        kb.close()
    return {"seconds": round(seconds, 1), "chunks": report.chunks_added,
            "chunks_per_s": round(report.chunks_added / seconds, 1), "_content": chunks}


def search_latency(backend: str, work: Path, vectors: np.ndarray, queries: np.ndarray) -> dict:
    from ragtune.config import IndexSettings
    from ragtune.retrieve.faiss_index import FaissIndex
    from ragtune.retrieve.milvus_index import MilvusIndex

    settings = IndexSettings()
    index = (FaissIndex(work / "faiss", signature="bench:fp32", settings=settings) if backend == "faiss" else
             MilvusIndex(str(work / "milvus" / "milvus.db"), signature="bench:fp32", settings=settings))
    started = time.perf_counter()
    index.reset(vectors.shape[1], len(vectors))
    for at in range(0, len(vectors), 20_000):
        index.add(np.arange(at, min(at + 20_000, len(vectors)), dtype=np.int64), vectors[at:at + 20_000])
    index.position = 1
    index.save()
    build = time.perf_counter() - started
    index.search(queries[0], 10)  # warm
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query, 10)
        times.append(time.perf_counter() - started)
    allowed = np.arange(0, len(vectors), 50, dtype=np.int64)  # a filter allowing 2% of the chunks
    filtered = []
    for query in queries[:50]:
        started = time.perf_counter()
        index.search(query, 10, allowed)
        filtered.append(time.perf_counter() - started)
    index.close()
    ms = lambda values, q: round(float(np.percentile(values, q)) * 1000, 2)  # noqa: E731
    return {"kind": index.kind, "build_s": round(build, 1), "p50_ms": ms(times, 50), "p95_ms": ms(times, 95),
            "filtered_p50_ms": ms(filtered, 50), "filtered_p95_ms": ms(filtered, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not CORPUS.is_file():
        sys.exit(f"{CORPUS} is missing: this bench needs ../shared/datasets/scifact")
    from ragtune import distributed
    from ragtune.runtime import enforce_offline

    enforce_offline()
    work = Path(tempfile.mkdtemp(prefix="ragtune-scale-"))
    try:
        count = write_docs(work / "docs", args.docs)
        runs = {"local": ingest(work, work / "docs", "local")}
        distributed.connect(None, 2)  # one local Ray of 2 CPUs for both actor counts
        for workers in (1, 2):
            runs[f"ray_{workers}"] = ingest(work, work / "docs", f"ray{workers}", ray=True, workers=workers)
        same = all(r["_content"] == runs["local"]["_content"] for r in runs.values())
        ingest_rows = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in runs.items()}
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.vectors, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        queries = vectors[rng.integers(0, args.vectors, args.queries)] + 0.05 * rng.standard_normal(
            (args.queries, 384)).astype(np.float32)
        search = {backend: search_latency(backend, work, vectors, queries) for backend in ("faiss", "milvus")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload = {"data": f"BEIR SciFact, first {count} abstracts (CC BY-SA 4.0); {args.vectors} synthetic vectors",
               "machine": "2 cores (local Ray of 2 CPUs)", "ingest": ingest_rows, "same_chunks": same,
               "search": search, "not_measured": ["ray train steps/s", "ray evaluation questions/min"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.json:
        print(json.dumps(payload))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ingest of {count} SciFact abstracts (same chunks in all: {same})")
    for column in ("run", "seconds", "chunks", "chunks/s"):
        table.add_column(column)
    for name, row in ingest_rows.items():
        table.add_row(name, str(row["seconds"]), str(row["chunks"]), str(row["chunks_per_s"]))
    Console().print(table)
    table = Table(title=f"vector search, {args.vectors} vectors, top 10")
    for column in ("backend", "kind", "build s", "p50 ms", "p95 ms", "filtered p50 ms", "filtered p95 ms"):
        table.add_column(column)
    for name, row in search.items():
        table.add_row(name, row["kind"], str(row["build_s"]), str(row["p50_ms"]), str(row["p95_ms"]),
                      str(row["filtered_p50_ms"]), str(row["filtered_p95_ms"]))
    Console().print(table)


if __name__ == "__main__":
    main()
