"""RAFT on the paper's own domain: Gorilla APIBench Torch Hub, five strategies with the same model.

Data: ../shared/datasets/gorilla-torchhub (Gorilla APIBench, ShishirPatil/gorilla data/, Apache-2.0):
torchhub_api.jsonl (94 API docs) is the knowledge base; torchhub_train.jsonl (837 questions, `api_data`
the oracle) gives the questions. Without --eval, a fixed domain-stratified 20% is held out for the
check and the rest is the training pool, in a domain-stratified order so `--train-limit N` takes a
balanced first N. With --eval FILE, every strategy trains on all of torchhub_train.jsonl and FILE is
scored (its `code` in either of APIBench's forms).

Strategies (each with the same base model): base (no docs), rag (top-k docs), ft (LoRA fine-tune
on question -> answer, no docs), ft+rag (that model with the docs), raft (a RAFT fine-tune built by
`ragtune.raft` from the same questions: oracle + hard-negative distractors, P = 0.8, a quoting chain
of thought, then the answer; evaluated with the retrieved docs). Answers are Gorilla's format on one
line, `<<<domain>>>: ... <<<api_call>>>: ... <<<api_provider>>>: ... <<<explanation>>>: ... <<<code>>>: ...`,
scored by the `gorilla-ast` scorer (gorilla's ast_eval_th.py): accuracy, hallucination, exact_api.
Runs are stored and compared through `ragtune compare`'s machinery (intervals, recommendation, report),
and every strategy against rag (`vs_rag`: difference, paired 95% interval, McNemar p).

Training runs on the CPU-speed settings (packing, LoRA in the top `--layers` blocks) within a wall-clock
budget per model (`--ft-minutes`, `--raft-minutes`): the schedule is fitted to the budget, and the JSON
says how many examples each model saw, so a run is one point of the accuracy-per-minute curve.

  python bench/raft_torchhub.py [--eval FILE] [--models smollm2,qwen] [--train-limit N]
                                [--ft-minutes M] [--raft-minutes M] [--layers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raft_torchhub_data import (DATA, gorilla_style, held_out_split, load_records, write_eval_set,  # noqa: E402
                                write_ft_data, write_kb_docs, write_questions)

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"smollm2": "SmolLM2-135M-Instruct", "qwen": "Qwen2.5-Coder-0.5B-Instruct"}
STRATEGIES = ("base", "rag", "ft", "ft+rag", "raft")
RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_kb(work: Path, threads: int) -> Path:
    from ragtune.config import IngestOptions, KBConfig
    from ragtune.kb import KnowledgeBase

    kb_path = work / "kb"
    docs = write_kb_docs(work / "docs.jsonl")  # an unchanged file is skipped by ingest on a rerun
    # chunks large enough that one compact API doc is one chunk, as one RAFT window is one doc
    with KnowledgeBase.init(kb_path, KBConfig(chunk_size=250, chunk_overlap=0, threads=threads), exist_ok=True) as kb:
        kb.ingest([docs], IngestOptions(fields={"text_field": "text", "id_field": "id", "title_field": "title"}))
    return kb_path


def recipe_for(name: str, model: str, train: Path, out: Path, *, max_length: int, epochs: float, threads: int,
               learning_rate: float, minutes: float | None, layers: int | None, batch_size: int = 8):
    from ragtune.finetune.recipe import validate_recipe

    return validate_recipe({
        "name": name, "method": "lora", "model": model, "output_dir": str(out),
        "data": {"train": str(train), "max_length": max_length, "validation_share": 0.0},
        "training": {"learning_rate": learning_rate, "scheduler": "cosine", "warmup": 0.05, "epochs": epochs,
                     # padding-free rows, logits only where the loss is; the effective batch is 8 either way
                     "batch_size": batch_size, "gradient_accumulation": 8 // batch_size, "threads": threads,
                     "packing": True, "logging_steps": 10, "max_minutes": minutes,
                     "checkpoint_every": "epoch", "keep_checkpoints": 1},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "layers": layers,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]},
    }, source=name)


def train_and_export(recipe, gguf: Path) -> tuple[Path, dict]:
    """Train (or reuse a finished run) and write the merged model as GGUF for llama.cpp."""
    from ragtune.finetune.gguf_export import export_gguf
    from ragtune.finetune.run import train

    run_dir = Path(recipe.output_dir)
    metrics = run_dir / "metrics.json"
    started = time.perf_counter()
    if not metrics.is_file():
        train(recipe, progress=False)
    trained = time.perf_counter() - started
    if not gguf.is_file():
        export_gguf(run_dir, gguf)
    saved = json.loads(metrics.read_text())
    steps = max((h.get("step", 0) for h in saved.get("history", [])), default=0)
    return gguf, {"train_s": round(trained, 1), "export_s": round(time.perf_counter() - started - trained, 1),
                  "optimizer_steps": steps, "examples_seen": steps * recipe.training.batch_size
                  * recipe.training.gradient_accumulation, **saved["data"]}


def evaluate(model_key: str, model: str, args, work: Path, kb_path: Path, pool: list, held: list, stages: dict) -> dict:
    from ragtune.evaluate.compare import compare_runs
    from ragtune.evaluate.report import write_reports
    from ragtune.evaluate.runner import run_eval
    from ragtune.evaluate.scorers import get_scorer
    from ragtune.evaluate.strategies import BaseStrategy, RaftStrategy, RagStrategy
    from ragtune.generate import make_generator
    from ragtune.kb import KnowledgeBase
    from ragtune.raft.builder import BuildOptions, build_raft
    from ragtune.store.runs import RunsDB

    mwork = work / model_key
    mwork.mkdir(parents=True, exist_ok=True)
    style = gorilla_style(pool[0])
    train_records = pool if args.train_limit is None else pool[: args.train_limit]
    eval_file = write_eval_set(held, mwork / "eval.jsonl")
    ft_data = write_ft_data(train_records, style, mwork / "ft.jsonl")

    t0 = time.perf_counter()
    questions = write_questions(train_records, mwork / "raft-questions.jsonl")
    manifest = build_raft(kb_path, BuildOptions(out=mwork / "raft-data", questions=questions, k=args.k, p=args.p,
                                                distractors="hard", chunk_tokens=256, target_model=model, seed=0,
                                                eval_share=0.0, threads=args.threads))
    stages["raft_build_s"] = round(time.perf_counter() - t0, 1)
    stages["raft_manifest"] = {k: manifest[k] for k in ("counts", "dropped", "tokens") if k in manifest}
    raft_max = int(manifest["tokens"]["suggested_max_length"])

    ft_gguf, stages["ft"] = train_and_export(
        recipe_for(f"torchhub-ft-{model_key}", model, ft_data, mwork / "ft-run", max_length=768, epochs=args.epochs,
                   threads=args.threads, learning_rate=args.learning_rate, minutes=args.ft_minutes, layers=args.layers),
        mwork / "ft.gguf")
    raft_gguf, stages["raft"] = train_and_export(
        recipe_for(f"torchhub-raft-{model_key}", model, mwork / "raft-data" / "chat.jsonl", mwork / "raft-run",
                   max_length=raft_max, epochs=args.epochs, threads=args.threads, learning_rate=args.learning_rate,
                   minutes=args.raft_minutes, layers=args.layers, batch_size=4),
        mwork / "raft.gguf")

    scorer = get_scorer("gorilla-ast", api_file=str(DATA / "torchhub_api.jsonl"))
    generators = {"base": make_generator(model, threads=args.threads, slots=args.concurrency),
                  "ft": make_generator(str(ft_gguf), threads=args.threads, slots=args.concurrency),
                  "raft": make_generator(str(raft_gguf), threads=args.threads, slots=args.concurrency)}
    t0 = time.perf_counter()
    for generator in generators.values():  # loaded (and their weight format chosen) before any timing
        if hasattr(generator, "load"):
            generator.load()
    stages["load_models_s"] = round(time.perf_counter() - t0, 1)
    run_ids = []
    with KnowledgeBase.open(kb_path, threads=args.threads) as kb, RunsDB(mwork / "runs.db") as db:
        kb.embedder.encode_query("warm up")
        for name in STRATEGIES:
            generator = generators["raft" if name == "raft" else "ft" if name.startswith("ft") else "base"]
            if name == "raft":
                strategy = RaftStrategy(kb, generator, k=args.k + 1, name="raft", max_new_tokens=args.raft_tokens,
                                        style=style)
            elif name.endswith("rag"):
                strategy = RagStrategy(kb, generator, k=args.k + 1, name=name, max_new_tokens=args.max_tokens, style=style)
            else:
                strategy = BaseStrategy(generator, name=name, max_new_tokens=args.max_tokens, style=style)
            training = stages.get("raft" if name == "raft" else "ft") if name.startswith(("ft", "raft")) else None
            t0 = time.perf_counter()
            summary = run_eval(eval_file, strategy, db, model=str(generator.name), k=args.k + 1 if "rag" in name or name == "raft" else None,
                               kb_path=str(kb_path) if strategy.uses_retrieval else None, limit=args.eval_limit,
                               config={"max_new_tokens": strategy.max_new_tokens, "scorers": ["gorilla-ast"],
                                       "training": {"train_seconds": training["train_s"]} if training else None},
                               concurrency=args.concurrency, scorers=[scorer])
            stages[f"eval_{name}_s"] = round(time.perf_counter() - t0, 1)
            log(f"{model_key} {name}: accuracy {summary['metrics'].get('accuracy', 0):.3f} "
                f"({stages[f'eval_{name}_s']} s)")
            run_ids.append(summary["run_id"])
        result = compare_runs(db, run_ids, metric="accuracy", knowledge_changes="monthly", baseline="rag")
    write_reports(result, RESULTS / f"raft_torchhub_{model_key}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, help="score this file (torchhub_train.jsonl's fields) after training on all")
    parser.add_argument("--models", default="smollm2", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--train-limit", type=int, help="train every strategy on the first N training questions")
    parser.add_argument("--eval-limit", type=int, help="score only the first N held-out questions")
    parser.add_argument("--k", type=int, default=2, help="distractors per RAFT example; retrieval shows k + 1 docs")
    parser.add_argument("--p", type=float, default=0.8, help="probability that the oracle is in a RAFT example")
    parser.add_argument("--epochs", type=float, default=3, help="the plan; --ft-minutes/--raft-minutes may end it sooner")
    parser.add_argument("--ft-minutes", type=float, default=6, help="wall-clock training budget of the ft model")
    parser.add_argument("--raft-minutes", type=float, default=18, help="wall-clock training budget of the RAFT model")
    parser.add_argument("--layers", type=int, default=8, help="LoRA in the top N blocks only (0: all blocks)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--max-tokens", type=int, default=64, help="answer budget (the api_call comes second)")
    parser.add_argument("--raft-tokens", type=int, default=192, help="RAFT budget: the quoting reasoning, then the answer")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ragtune-bench-raft-torchhub"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.layers = args.layers or None
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: this bench needs ../shared/datasets/gorilla-torchhub")
    from ragtune.runtime import enforce_offline

    enforce_offline()
    started = time.perf_counter()
    records = load_records(DATA / "torchhub_train.jsonl")
    if args.eval:
        pool, held = held_out_split(records, share=0.0)[0], load_records(args.eval)
    else:
        pool, held = held_out_split(records, share=0.2)
    log(f"training pool {len(pool)} (using {args.train_limit or len(pool)}), scored {len(held)}")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    kb_path = build_kb(args.work, args.threads)
    output, details = {}, {"kb_s": round(time.perf_counter() - t0, 1)}
    for key in args.models.split(","):
        if key not in MODELS:
            sys.exit(f"--models: unknown {key!r}; choose from {', '.join(MODELS)}")
        stages: dict = {}
        result = evaluate(key, MODELS[key], args, args.work, kb_path, pool, held, stages)
        versus = result["versus"]["rows"]
        output[key] = {name: {**{m: round(result["strategies"][name].get(m, 0.0), 4)
                                 for m in ("accuracy", "hallucination", "exact_api")},
                              **({"vs_rag": {"diff": round(versus[name]["difference"], 4),
                                             "ci": [round(versus[name]["low"], 4), round(versus[name]["high"], 4)],
                                             "p": round(versus[name]["p_value"], 4)}} if name in versus else {})}
                       for name in STRATEGIES}
        details[key] = {"stages": stages, "recommendation": result["recommendation"], "n": result["n_examples"],
                        "differences": result["differences"]["accuracy"], "intervals": result["intervals"]}
    details["wall_s"] = round(time.perf_counter() - started, 1)
    payload = {"data": "Gorilla APIBench Torch Hub (ShishirPatil/gorilla, Apache-2.0)", "results": output,
               "train_limit": args.train_limit, "eval_file": str(args.eval) if args.eval else None, **details}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "raft_torchhub.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(output))
        return
    from rich.console import Console
    from rich.table import Table

    for key, rows in output.items():
        table = Table(title=f"Torch Hub, {MODELS[key]}, {details[key]['n']} questions (gorilla-ast)")
        for column in ("strategy", "accuracy", "hallucination", "exact_api", "vs rag [95% CI], p"):
            table.add_column(column, justify="left" if column == "strategy" else "right")
        for name, metrics in rows.items():
            vs = metrics.get("vs_rag")
            versus_text = f"{vs['diff']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}], {vs['p']:.3g}" if vs else "-"
            table.add_row(name, *(f"{metrics[m]:.3f}" for m in ("accuracy", "hallucination", "exact_api")), versus_text)
        Console().print(table)
        Console().print(f"recommendation: {details[key]['recommendation']['strategy']}")
    Console().print(f"wall time {details['wall_s']} s; stages in {RESULTS / 'raft_torchhub.json'}")


if __name__ == "__main__":
    main()
