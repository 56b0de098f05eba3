"""RAFT where the paper found its largest effect: HotpotQA with distractor paragraphs, against rag and ft+rag.

Data: ../shared/datasets/hotpotqa-dev500/dev500.jsonl (HotpotQA distractor dev, 500 questions, IRCoT
release; licence CC BY-SA 4.0), read in place. A fixed seeded split: 400 questions to train on, 100
held out. The knowledge base holds every paragraph of every question (as bench/compare_hotpotqa.py
builds it: one document per paragraph, doc id = title), so retrieval meets the dataset's own look-alike
distractors.

Strategies, each with the same base model, all shown the top --k retrieved paragraphs at test time:
rag (the base model, the grounded answer protocol), ft+rag (LoRA on question -> answer, closed-book:
the paper's "DSF + RAG"), raft+rag (a RAFT fine-tune built by `ragtune.raft` from the 400 questions:
*both* supporting paragraphs as oracles with probability P, hard-negative distractors from the knowledge
base, a chain of thought quoting the bridge paragraph and then the answer's, then `<ANSWER>:`).
Metric: answer F1 (SQuAD normalisation), also EM; runs stored and compared through `ragtune compare`'s
machinery, every strategy against rag (`vs_rag`: difference, paired 95% interval, p). Training runs
within wall-clock budgets (`--ft-minutes`, `--raft-minutes`); the JSON says how many examples each
model saw, so one run is one point of the F1-per-minute curve.

  python bench/raft_hotpotqa.py [--model M] [--train-limit N] [--eval-limit N] [--k K]
                                [--ft-minutes M] [--raft-minutes M] [--layers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import Stages, build_kb, closed_book_chats, seeded_split  # noqa: E402
from compare_hotpotqa import DATA, LICENCE, paragraphs  # noqa: E402
from raft_torchhub import recipe_for, train_and_export  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STRATEGIES = ("rag", "ft+rag", "raft+rag")


def write_jsonl(rows, path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def raft_data(train, kb: Path, work: Path, args, stages: Stages) -> dict:
    """RAFT examples from the training questions: both supporting paragraphs are the oracles."""
    from ragtune.raft.builder import BuildOptions, build_raft

    questions = write_jsonl(({"id": e.id, "question": e.question, "answers": e.answers,
                              "gold_doc_ids": e.gold_doc_ids} for e in train), work / "raft-questions.jsonl")
    with stages("raft_build"):
        return build_raft(kb, BuildOptions(out=work / "raft-data", questions=questions, k=args.k_train, p=args.p,
                                           distractors="hard", chunk_tokens=256, target_model=args.model,
                                           seed=args.seed, eval_share=0.0, threads=args.threads))


def evaluate(held, kb: Path, models: dict, args, work: Path, stages: Stages) -> dict:
    from ragtune.evaluate.compare import compare_runs
    from ragtune.evaluate.dataset import write_eval_set
    from ragtune.evaluate.plan import EvalPlan, run_plan
    from ragtune.generate import make_generator
    from ragtune.store.runs import RunsDB

    dataset = work / "eval.jsonl"
    write_eval_set(held, dataset)
    for name, model in (("load_base_model", args.model), ("load_ft_model", models["ft"]),
                        ("load_raft_model", models["raft"])):
        with stages(name):  # llama.cpp engines are cached per file: run_plan finds them loaded
            make_generator(model, threads=args.threads, slots=args.concurrency).load()
    from ragtune.store.runs import file_sha256, model_hash

    run_ids = []
    with RunsDB(work / "runs.db") as db:
        for name in STRATEGIES:
            model = models["raft"] if name == "raft+rag" else models["ft"] if name == "ft+rag" else args.model
            # a finished run of the same questions and the same model file (by content) is reused: a
            # longer RAFT budget re-scores only raft+rag
            same = [r["id"] for r in db.runs() if r["strategy"] == name and r["status"] == "finished"
                    and r["dataset_sha256"] == file_sha256(dataset) and r["model_hash"] == model_hash(model)
                    and r["config"].get("max_new_tokens") == (args.max_tokens if name != "raft+rag"
                                                               else max(args.max_tokens, 256))]
            if same:
                stages.reused(f"eval_{name}", {"path": f"run {same[-1]}"})
                run_ids.append(same[-1])
                continue
            plan = EvalPlan(dataset=dataset, strategies=[name], model=args.model, ft_model=models["ft"],
                            raft_model=models["raft"], kb=kb, k=args.k, max_new_tokens=args.max_tokens,
                            threads=args.threads, concurrency=args.concurrency)
            with stages(f"eval_{name}"):
                run_ids += [s["run_id"] for s in run_plan(plan, db, console=stages.console)]
        with stages("compare"):
            return compare_runs(db, run_ids, metric="f1", knowledge_changes="monthly", baseline="rag")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--train-limit", type=int, help="train on the first N of the 400 training questions")
    parser.add_argument("--eval-limit", type=int, help="score the first N of the 100 held-out questions")
    parser.add_argument("--k", type=int, default=5, help="paragraphs retrieved at test time")
    parser.add_argument("--k-train", type=int, default=3, help="distractors per RAFT example: with the 2 oracles, the 5 documents retrieval shows")
    parser.add_argument("--p", type=float, default=0.8, help="probability that the oracles are in a RAFT example")
    parser.add_argument("--epochs", type=float, default=3, help="the plan; the minute budgets may end it sooner")
    parser.add_argument("--ft-minutes", type=float, default=4, help="wall-clock training budget of the ft model")
    parser.add_argument("--raft-minutes", type=float, default=15, help="wall-clock training budget of the RAFT model")
    parser.add_argument("--layers", type=int, default=8, help="LoRA in the top N blocks only (0: all blocks)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--max-tokens", type=int, default=32, help="answer budget of rag and ft+rag")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ragtune-bench-raft-hotpotqa"))
    parser.add_argument("--json", action="store_true", help="print only the result line on stdout")
    args = parser.parse_args()
    args.layers = args.layers or None
    if not DATA.is_file():
        sys.exit(f"{DATA} is missing: this bench needs ../shared/datasets/hotpotqa-dev500")
    from rich.console import Console

    from ragtune.evaluate.importers import import_eval_set
    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console(stderr=True)
    stages = Stages(console)
    started = time.perf_counter()
    train, held = seeded_split(import_eval_set("hotpotqa", DATA), 0.8, args.seed)
    train, held = train[:args.train_limit], held[:args.eval_limit]
    console.print(f"split: {len(train)} training / {len(held)} held out (seed {args.seed})", highlight=False)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    kb, kb_counts = build_kb(paragraphs(DATA), work, args.threads, stages)
    manifest = raft_data(train, kb, work, args, stages)
    raft_max = int(manifest["tokens"]["suggested_max_length"])
    training = {}
    ft_data = write_jsonl(closed_book_chats(train, None), work / "ft.jsonl")
    with stages("train_ft"):
        ft_gguf, training["ft"] = train_and_export(
            recipe_for("hotpotqa-ft", args.model, ft_data, work / f"ft-run-{args.ft_minutes:g}min", max_length=512, epochs=args.epochs,
                       threads=args.threads, learning_rate=args.learning_rate, minutes=args.ft_minutes,
                       layers=args.layers), work / f"ft-run-{args.ft_minutes:g}min" / "model.gguf")
    with stages("train_raft"):
        raft_gguf, training["raft"] = train_and_export(
            recipe_for("hotpotqa-raft", args.model, work / "raft-data" / "chat.jsonl", work / f"raft-run-{args.raft_minutes:g}min",
                       max_length=raft_max, epochs=args.epochs, threads=args.threads,
                       learning_rate=args.learning_rate, minutes=args.raft_minutes, layers=args.layers, batch_size=4),
            work / f"raft-run-{args.raft_minutes:g}min" / "model.gguf")
    result = evaluate(held, kb, {"ft": str(ft_gguf), "raft": str(raft_gguf)}, args, work, stages)
    versus = result["versus"]["rows"]
    output = {name: {**{m: round(result["strategies"][name].get(m, 0.0), 4) for m in ("f1", "em", "recall_at_k")},
                     **({"vs_rag": {"diff": round(versus[name]["difference"], 4),
                                    "ci": [round(versus[name]["low"], 4), round(versus[name]["high"], 4)],
                                    "p": round(versus[name]["p_value"], 4)}} if name in versus else {})}
              for name in STRATEGIES}
    from ragtune.evaluate.report import write_reports

    write_reports(result, RESULTS / "raft_hotpotqa")
    payload = {"data": f"HotpotQA dev500 ({LICENCE})", "model": args.model, "results": output,
               "split": {"train": len(train), "held_out": len(held), "seed": args.seed}, "kb": kb_counts,
               "raft_manifest": {k: manifest[k] for k in ("counts", "dropped", "tokens") if k in manifest},
               "training": training, "stages_s": stages.seconds, "recommendation": result["recommendation"],
               "wall_s": round(time.perf_counter() - started, 1),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "raft_hotpotqa.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(output))
        return
    from rich.table import Table

    table = Table(title=f"HotpotQA dev500, {args.model}, {result['n_examples']} held-out questions")
    for column in ("strategy", "F1", "EM", "recall@k", "vs rag [95% CI], p"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, metrics in output.items():
        vs = metrics.get("vs_rag")
        table.add_row(name, f"{metrics['f1']:.3f}", f"{metrics['em']:.3f}", f"{metrics['recall_at_k']:.3f}",
                      f"{vs['diff']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}], {vs['p']:.3g}" if vs else "-")
    Console().print(table)
    Console().print(f"examples seen: ft {training['ft'].get('examples_seen')}, raft {training['raft'].get('examples_seen')}"
                    f"; wall {payload['wall_s']} s; stages in {RESULTS / 'raft_hotpotqa.json'}", highlight=False)


if __name__ == "__main__":
    main()
