"""HotpotQA: closed-book vs RAG answers (EM/F1, SQuAD normalisation) and citation accuracy.

Data: ../shared/datasets/hotpotqa-dev500 (HotpotQA distractor dev, IRCoT release, CC BY-SA 4.0). All
paragraphs of all questions form one knowledge base (doc id = paragraph title); each of the first
--limit questions is answered closed-book (the model alone) and with RAG (hybrid top-k, checked
citations). Citation accuracy = share of RAG answers that cite (or are matched to) a supporting
paragraph. Prints a table, writes bench/results/rag_qa.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "hotpotqa-dev500" / "dev500.jsonl"
SHORT = "Answer with a short phrase only."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct"])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rag_qa.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from ragtune.answer.prompt import Templates
    from ragtune.answer.rag import ask
    from ragtune.config import IngestOptions, RecordFields
    from ragtune.errors import ModelNotInstalledError
    from ragtune.evaluate.qa import exact_match, f1
    from ragtune.generate import make_generator
    from ragtune.kb import KnowledgeBase
    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console()
    questions = [json.loads(line) for line in open(DATA)]
    paragraphs = {}
    for q in questions:
        for c in q["contexts"]:
            paragraphs.setdefault(c["title"], c["paragraph_text"])
    templates = Templates(question="Sources:\n\n{sources}\n\nQuestion: {question}\n" + SHORT + " Then cite the source as [n].")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ragtune-hotpot-") as tmp:
        corpus = Path(tmp) / "paragraphs.jsonl"
        corpus.write_text("".join(json.dumps({"_id": t, "title": t, "text": p}) + "\n" for t, p in paragraphs.items()))
        kb = KnowledgeBase.init(Path(tmp) / "kb")
        kb.threads = args.threads
        kb.ingest([corpus], IngestOptions(fields=RecordFields(text_field="text", id_field="_id", title_field="title")))
        for model in args.models:
            try:
                generator = make_generator(model, threads=args.threads).load()
            except ModelNotInstalledError as exc:
                console.print(f"skipping {model}: {exc}")
                continue
            scores = {"closed_em": [], "closed_f1": [], "rag_em": [], "rag_f1": [], "cites_support": [], "seconds": []}
            for q in questions[: args.limit]:
                golds = q["answers_objects"][0]["spans"]
                supporting = {c["title"] for c in q["contexts"] if c["is_supporting"]}
                closed = generator.generate([{"role": "user", "content": f"{q['question_text']}\n{SHORT}"}], max_new_tokens=24).text
                result = ask(kb, q["question_text"], generator, k=args.k, max_new_tokens=32, templates=templates, min_relevance=0.0)
                scores["closed_em"].append(exact_match(closed, golds))
                scores["closed_f1"].append(f1(closed, golds))
                scores["rag_em"].append(exact_match(result.answer, golds))
                scores["rag_f1"].append(f1(result.answer, golds))
                scores["cites_support"].append(float(any(c.doc_id in supporting for c in result.check.citations)))
                scores["seconds"].append(result.timings.get("total_s", 0.0))
            row = {"model": model, "questions": len(scores["rag_em"]),
                   **{key: round(statistics.fmean(values), 4) for key, values in scores.items()}}
            rows.append(row)
            console.print(row)
        kb.close()
    table = Table(title=f"HotpotQA dev (first {args.limit}), one KB of {len(paragraphs)} paragraphs, top-{args.k} hybrid")
    for column in ("model", "closed-book EM", "closed-book F1", "RAG EM", "RAG F1", "citation accuracy", "s / answer"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["model"], *(f"{r[k]:.3f}" for k in ("closed_em", "closed_f1", "rag_em", "rag_f1", "cites_support", "seconds")))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(DATA), "limit": args.limit, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
