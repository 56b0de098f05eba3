"""Time a full SciFact ingest per embedding precision, and check bf16 costs no retrieval quality.

Data: ../shared/datasets/scifact (BEIR SciFact; abstracts ODC-By 1.0, claims CC BY 4.0): the whole
corpus.jsonl is ingested end to end (parse, chunk, embed, store, FAISS + BM25 index build), then the
dense nDCG@10 over all train queries (qrels/train.tsv) is computed for each precision.
The KBs are kept under bench/.cache/ for bench/retrieval_quality.py.

Usage: python bench/ingest.py [--precisions bf16 fp32] [--threads N] [--limit N]
Prints a table and writes bench/results/ingest.json. One run; the goal is ≤ 90 s for the corpus.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "scifact"
CACHE = ROOT / "bench" / ".cache"


def kb_dir(precision: str, chunk_size: int) -> Path:
    return CACHE / f"scifact-{precision}-{chunk_size}"


def dense_ndcg(kb, data: Path, split: str = "train") -> float:
    from ragtune.evaluate.beir import document_run, load_beir
    from ragtune.evaluate.metrics import evaluate

    _, queries, qrels = load_beir(data, split)
    run = {q: document_run(kb.search(text, 200, mode="dense")) for q, text in queries.items()}
    return evaluate(qrels, run)["ndcg@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["bf16", "fp32"])
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="ingest only the first N records (no nDCG)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()
    corpus = args.data / "corpus.jsonl"
    if not corpus.exists():
        raise SystemExit(f"corpus not found: {corpus} (expected ../shared/datasets/scifact beside the repo)")

    from rich.console import Console
    from rich.table import Table

    from ragtune.config import IngestOptions, KBConfig, RecordFields
    from ragtune.evaluate.beir import RECORD_FIELDS
    from ragtune.kb import KnowledgeBase
    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console()
    source = corpus
    if args.limit:
        source = CACHE / f"corpus-first-{args.limit}.jsonl"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("".join(corpus.open().readlines()[: args.limit]))
    rows = []
    for precision in args.precisions:
        path = kb_dir(precision, args.chunk_size) if not args.limit else CACHE / f"limit-{precision}"
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        kb = KnowledgeBase.init(path, KBConfig(precision=precision, threads=args.threads, chunk_size=args.chunk_size))
        kb.embedder.load()  # model load (about a second) is not part of the ingest
        started = time.perf_counter()
        report = kb.ingest([source], IngestOptions(fields=RecordFields(**RECORD_FIELDS)))
        total = time.perf_counter() - started
        stats = kb.stats()
        row = {"precision": precision, "total_s": round(total, 1),
               **{f"{k}_s": round(v, 1) for k, v in report.timings.items()},
               "index_s": round(total - sum(report.timings.values()), 1),
               "documents": stats["documents"], "chunks": stats["chunks"], "failed": report.failed}
        if not args.limit:
            row["dense_ndcg@10"] = dense_ndcg(kb, args.data)
        kb.close()
        rows.append(row)
        console.print(row)

    table = Table(title=f"SciFact ingest end to end, {args.threads} threads, {args.chunk_size}-token chunks")
    for column in ("precision", "parse", "chunk", "embed", "store", "index", "total s", "dense nDCG@10"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["precision"], *(f"{row[k]:.1f}" for k in ("parse_s", "chunk_s", "embed_s", "store_s", "index_s", "total_s")),
                      f"{row.get('dense_ndcg@10', float('nan')):.4f}")
    table.caption = f"{rows[0]['documents']} documents -> {rows[0]['chunks']} chunks; goal: ≤ 90 s, nDCG within 0.005 of fp32"
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "machine": platform.processor() or platform.machine(),
                                    "threads": args.threads, "rows": rows}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
