"""Which packaged chat model should `ragtune demo` use? Measured on the demo's own questions.

For every installed packaged chat model (SmolLM2-135M, Qwen2.5-Coder-0.5B, Gemma-3-270M), on the
runtime ragtune picks for it here (llama.cpp in its measured weight format where installed), the
demo is run end to end and each answer is scored as the demo's test scores it: does it contain the
fact asked for (ragtune/demo.py DEMO_QUESTIONS) and does it cite the document that holds it. The
winner is the model with the most right-and-cited answers, then the fastest. The demo's default
(`DEMO_MODEL` in ragtune/demo.py) is set from this table.

`python bench/demo_models.py [--models ...] [--threads 2] [--json]` prints a table and writes
bench/results/demo_models.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "Gemma-3-270M"])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_models.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from ragtune.demo import run_demo
    from ragtune.generate.base import choose_backend
    from ragtune.models.registry import get_model
    from ragtune.runtime import enforce_offline

    enforce_offline()
    console = Console(stderr=args.json)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ragtune-demo-bench-") as workdir:
        for model in args.models:
            spec = get_model(model)
            if not spec.installed:
                console.print(f"skipping {model}: not installed ({spec.install_command})")
                continue
            try:
                run = run_demo(console, console, workdir=Path(workdir), threads=args.threads, quiet=True,
                               model=model, backend=args.backend)
            except Exception as exc:  # e.g. a pretrained model with no chat template: recorded, not fatal
                console.print(f"{model} cannot run the demo: {exc}")
                results[spec.name] = {"error": str(exc)}
                continue
            answers = [{"question": a["question"], "answer": a["answer"], **a["check"],
                        "seconds": a["timings"].get("total_s")} for a in run["answers"]]
            right = sum(a["fact"] and a["cited"] for a in answers)
            results[spec.name] = {
                "runtime": choose_backend(spec.name, args.backend), "right_and_cited": right,
                "facts": sum(a["fact"] for a in answers), "cited": sum(a["cited"] for a in answers),
                "answer_s": round(sum(a["seconds"] or 0 for a in answers), 2),
                "model_load_s": run["timings"].get("model_load_s"), "answers": answers}
            console.print(model, {k: v for k, v in results[spec.name].items() if k != "answers"})
    failed = {m: r for m, r in results.items() if "error" in r}
    results = {m: r for m, r in results.items() if "error" not in r}
    winner = max(results, key=lambda m: (results[m]["right_and_cited"], -results[m]["answer_s"]), default=None)
    table = Table(title=f"the demo's 3 questions, {args.threads} threads; winner: {winner}")
    for column in ("model", "runtime", "right & cited", "fact", "cited", "answers s", "load s"):
        table.add_column(column, justify="right")
    for model, row in results.items():
        table.add_row(model, row["runtime"], str(row["right_and_cited"]), str(row["facts"]), str(row["cited"]),
                      f"{row['answer_s']:.1f}", f"{row['model_load_s']:.1f}")
    console.print(table)
    for model, row in results.items():
        for answer in row["answers"]:
            mark = "ok" if answer["fact"] and answer["cited"] else "WRONG"
            console.print(f"[{mark}] {model}: {answer['question']}\n    {answer['answer'][:300]!r}", highlight=False)
    for model, row in failed.items():
        console.print(f"{model}: {row['error']}", highlight=False)
    payload = {"winner": winner, "threads": args.threads, "models": results, "failed": failed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    if args.json:
        sys.stdout.write(json.dumps(payload) + "\n")


if __name__ == "__main__":
    main()
