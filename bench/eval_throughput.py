"""Evaluation throughput: `ragtune eval qa` answering several questions at once vs one at a time.

Same model (SmolLM2-135M-Instruct on llama.cpp unless --model), same greedy answers, closed-book
strategy over the first --limit HotpotQA dev questions (../shared/datasets/hotpotqa-dev500, CC BY-SA
4.0). Concurrency 1 is the sequential loop; higher values run that many questions through the engine
together (continuous batching over one loaded model). Prints questions/minute per setting, checks
that every setting gave the same predictions, and writes bench/results/eval_throughput.json.

`python bench/eval_throughput.py [--limit 48] [--concurrency 1 4 8] [--json]`
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "hotpotqa-dev500"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_throughput.json")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: this bench reads the shared HotpotQA dev set")

    from rich.console import Console
    from rich.table import Table

    from ragtune.evaluate.dataset import write_eval_set
    from ragtune.evaluate.importers import import_eval_set
    from ragtune.evaluate.runner import BaseStrategy, run_eval
    from ragtune.generate import make_generator
    from ragtune.runtime import enforce_offline
    from ragtune.store.runs import RunsDB

    enforce_offline()
    console = Console(stderr=args.json)
    rows, predictions = {}, {}
    with tempfile.TemporaryDirectory(prefix="ragtune-eval-bench-") as tmp:
        dataset = Path(tmp) / "hotpot.jsonl"
        write_eval_set(import_eval_set("hotpotqa", DATA)[: args.limit], dataset)
        generator = make_generator(args.model, threads=args.threads, slots=max(args.concurrency)).load()
        BaseStrategy(generator, max_new_tokens=4).answer(  # warm-up outside the clock
            import_eval_set("hotpotqa", DATA)[0])
        for concurrency in args.concurrency:
            db = RunsDB(Path(tmp) / f"runs-{concurrency}.db")
            started = time.perf_counter()
            summary = run_eval(dataset, BaseStrategy(generator, max_new_tokens=args.max_tokens), db,
                               model=args.model, config={"concurrency": concurrency}, concurrency=concurrency)
            elapsed = time.perf_counter() - started
            predictions[concurrency] = {r["example_id"]: r["prediction"] for r in db.predictions(summary["run_id"])}
            rows[concurrency] = {"questions_per_min": round(60 * summary["n"] / elapsed, 1), "seconds": round(elapsed, 1),
                                 "f1": round(summary["metrics"].get("f1", 0.0), 4), "n": summary["n"],
                                 "latency_p50_s": summary["latency_p50_s"]}
            db.close()
            console.print(f"concurrency {concurrency}: {rows[concurrency]}")
    first = predictions[args.concurrency[0]]
    for concurrency, preds in predictions.items():
        same = sum(preds[i] == first[i] for i in first)
        rows[concurrency]["same_predictions_as_first"] = f"{same}/{len(first)}"
        rows[concurrency]["speedup"] = round(rows[concurrency]["questions_per_min"]
                                             / rows[args.concurrency[0]]["questions_per_min"], 2)
    table = Table(title=f"eval qa, closed-book, {args.model}, {args.limit} HotpotQA questions, {args.threads} threads")
    for column in ("concurrency", "questions/min", "speedup", "same answers", "F1", "latency p50 s"):
        table.add_column(column, justify="right")
    for concurrency, row in rows.items():
        table.add_row(str(concurrency), f"{row['questions_per_min']:.1f}", f"{row['speedup']:.2f}",
                      row["same_predictions_as_first"], f"{row['f1']:.3f}", f"{row['latency_p50_s']:.2f}")
    console.print(table)
    payload = {"model": args.model, "limit": args.limit, "threads": args.threads, "settings": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    if args.json:
        sys.stdout.write(json.dumps(payload) + "\n")


if __name__ == "__main__":
    main()
