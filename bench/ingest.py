"""Time a SciFact corpus ingest (parse / chunk / embed / store) beside plain sentence-transformers.

Data: ../shared/datasets/scifact/corpus.jsonl (BEIR SciFact; abstracts ODC-By 1.0, claims CC BY 4.0).
Usage: python bench/ingest.py [--limit N] [--precision fp32|bf16] [--threads N] [--skip-baseline]
Prints a table and writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N records")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-baseline", action="store_true", help="skip plain sentence-transformers encoding")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()
    if not args.corpus.exists():
        raise SystemExit(f"corpus not found: {args.corpus} (expected ../shared/datasets/scifact beside the repo)")

    from rich.console import Console
    from rich.table import Table

    from ragtune.config import IngestOptions, KBConfig, RecordFields
    from ragtune.kb import KnowledgeBase
    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console()
    records = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
    if args.limit:
        records = records[: args.limit]
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        kb = KnowledgeBase.init(Path(tmp) / "kb", KBConfig(precision=args.precision, threads=args.threads))
        options = IngestOptions(fields=RecordFields(text_field="text", id_field="_id", title_field="title"))
        kb.embedder.load()  # model load is reported separately from the ingest itself
        started = time.perf_counter()
        report = kb.ingest([corpus], options)
        ours_s = time.perf_counter() - started
        stats = kb.stats()
        kb.close()

    result = {
        "corpus": str(args.corpus), "documents": len(records), "precision": args.precision,
        "threads": args.threads, "machine": platform.processor() or platform.machine(),
        "ragtune": {"total_s": round(ours_s, 2), **{f"{k}_s": round(v, 2) for k, v in report.timings.items()},
                    "chunks": stats["chunks"], "unique_chunks": stats["unique_chunks"],
                    "documents": stats["documents"], "failed": report.failed},
    }
    if not args.skip_baseline:
        import torch
        from sentence_transformers import SentenceTransformer

        from ragtune.models import resolve_model_dir

        model = SentenceTransformer(str(resolve_model_dir("all-MiniLM-L6-v2")), device="cpu")
        if args.precision == "bf16":
            model = model.to(torch.bfloat16)
        texts = [f"{r.get('title', '')}\n\n{r['text']}" for r in records]
        started = time.perf_counter()
        model.encode(texts, batch_size=64, normalize_embeddings=True)
        result["sentence_transformers"] = {"encode_s": round(time.perf_counter() - started, 2), "texts": len(texts)}

    table = Table(title=f"SciFact ingest, {len(records)} documents, {args.precision}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for key in ("parse_s", "chunk_s", "embed_s", "store_s", "total_s"):
        table.add_row(f"ragtune {key[:-2]}", f"{result['ragtune'][key]:.1f}")
    if "sentence_transformers" in result:
        table.add_row("plain sentence-transformers encode", f"{result['sentence_transformers']['encode_s']:.1f}")
    table.caption = f"{stats['chunks']} chunks ({stats['unique_chunks']} unique); goal for the whole corpus: ≤ 90 s"
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
