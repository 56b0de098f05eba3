"""BM25 vs dense vs hybrid on SciFact, with the fusion weight chosen on one half of the queries.

Data: ../shared/datasets/scifact (BEIR SciFact; abstracts ODC-By 1.0, claims CC BY 4.0). Only the
train qrels ship here, so the 809 judged train queries are split by id parity: even ids tune the
dense weight of the RRF fusion, odd ids are held out and reported. Published test-split nDCG@10
for orientation: BM25 0.665-0.679, all-MiniLM-L6-v2 0.645, bge-small 0.713, bge-base 0.741.

Reuses the KB bench/ingest.py left in bench/.cache (else ingests the corpus first).
Prints a table and writes bench/results/retrieval_quality.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "scifact"
WEIGHTS = [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval_quality.json")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").exists():
        raise SystemExit(f"SciFact not found at {args.data}")

    from rich.console import Console
    from rich.table import Table

    from ragtune.config import IngestOptions, KBConfig, RecordFields
    from ragtune.evaluate.beir import RECORD_FIELDS, load_beir
    from ragtune.evaluate.metrics import evaluate
    from ragtune.kb import KnowledgeBase
    from ragtune.retrieve.search import reciprocal_rank_fusion
    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console()
    path = ROOT / "bench" / ".cache" / f"scifact-{args.precision}-{args.chunk_size}"
    kb = KnowledgeBase.init(path, KBConfig(precision=args.precision, chunk_size=args.chunk_size), exist_ok=True)
    kb.threads = args.threads
    kb.ingest([args.data / "corpus.jsonl"], IngestOptions(fields=RecordFields(**RECORD_FIELDS)))
    _, queries, qrels = load_beir(args.data, "train")
    doc_of = dict(kb.store.conn.execute("SELECT c.id, d.doc_id FROM chunks c JOIN documents d ON d.id = c.document_id"))
    retriever = kb.retriever
    retriever.refresh(writable=False)
    dense, lexical = retriever.dense(), retriever.lexical()
    vectors = kb.embedder.encode(list(queries.values()))
    rankings = {q: {"dense": dense.search(v, 200), "lexical": lexical.search(text, 200)}
                for (q, text), v in zip(queries.items(), vectors)}

    def doc_run(chunk_ranking):
        run: dict[str, float] = {}
        for chunk_id, _score in chunk_ranking:
            run.setdefault(doc_of[chunk_id], 1000.0 - len(run))
        return dict(list(run.items())[:100])

    def score(query_ids, make_ranking):
        run = {q: doc_run(make_ranking(q)) for q in query_ids}
        return evaluate({q: qrels[q] for q in query_ids}, run)

    def fused(weight):
        return lambda q: [(c, s) for c, s, _ in reciprocal_rank_fusion(rankings[q], {"dense": weight, "lexical": 1.0}, 60)]

    tune = [q for q in queries if int(q) % 2 == 0]
    held_out = [q for q in queries if int(q) % 2 == 1]
    tuning = {w: score(tune, fused(w))["ndcg@10"] for w in WEIGHTS}
    best = max(tuning, key=tuning.get)
    systems = {
        "BM25 (tantivy)": lambda q: rankings[q]["lexical"],
        f"dense (MiniLM {args.precision})": lambda q: rankings[q]["dense"],
        "hybrid RRF 1:1 (default)": fused(1.0),
        f"hybrid RRF dense weight {best} (tuned)": fused(best),
    }
    rows = []
    for name, make in systems.items():
        rows.append({"system": name, "held_out": score(held_out, make), "all_train": score(list(queries), make)})
    table = Table(title=f"SciFact, held-out odd train queries (n={len(held_out)}); tuned on even (n={len(tune)})")
    for column in ("system", "nDCG@10", "recall@10", "recall@100", "MRR@10", "MAP@100", "nDCG@10 all train"):
        table.add_column(column, justify="right" if column != "system" else "left")
    for row in rows:
        m = row["held_out"]
        table.add_row(row["system"], *(f"{m[k]:.4f}" for k in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")),
                      f"{row['all_train']['ndcg@10']:.4f}")
    console.print(table)
    console.print(f"tuning nDCG@10 by dense weight: {tuning}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "precision": args.precision, "tuning": tuning,
                                    "best_dense_weight": best, "rows": rows}, indent=2))
    console.print(f"wrote {args.out}")
    kb.close()


if __name__ == "__main__":
    main()
