"""The pipeline behind bench/compare_hotpotqa.py and bench/compare_pubmedqa.py: build the knowledge
base, fine-tune on the training split, export the fine-tune to GGUF, then run base / rag / ft / ft+rag
through `ragtune compare`'s own machinery (evaluate/plan.py run_plan, compare.py compare_runs,
report.py write_reports) and report.

Why the fine-tune learns the closed-book prompt: `ft` is judged on exactly the shape it was trained
on (the worked-example turn, the question, the instruction -> the gold answer; the worked example's
answer is weighted 0 so only the real answer is learned), and `ft+rag` is the same model shown
retrieved sources (the RAFT paper's "DSF + RAG"). Evaluation runs on llama.cpp: the fine-tune is
exported as a full GGUF inside its run directory, so plan.training_cost finds metrics.json beside it.

Each stage is timed on the wall clock; models are loaded (and their fastest weight format measured)
before the timed evaluations. With --work DIR the knowledge base, the fine-tune and its export are
kept there and reused when their inputs are unchanged (the timing then says "reused").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
RECIPE = ROOT / "recipes" / "smollm2-lora.yaml"
STRATEGIES = ["base", "rag", "ft", "ft+rag"]


def add_arguments(parser, *, max_tokens: int) -> None:
    parser.add_argument("--eval", type=Path, help="score this file (same format as the shared file) after training "
                        "on all of the shared file; default: a seeded 60/40 split of the shared file")
    parser.add_argument("--json", action="store_true", help='print {"<strategy>": {metric: x}, "recommendation": ...}')
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="packaged generator (base and fine-tune)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="questions answered at once (llama.cpp slots)")
    parser.add_argument("--train-limit", type=int, help="train on the first N training questions only")
    parser.add_argument("--eval-limit", type=int, help="score the first N evaluation questions only")
    parser.add_argument("--k", type=int, default=5, help="chunks retrieved by rag and ft+rag")
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help="longest answer in tokens")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                        help="training precision; fp32 by default: on the 2-core bench machine bf16 autocast "
                        "(what auto picks where the CPU reports bf16) trained LoRA 1.8x slower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knowledge-changes", default="monthly", choices=["daily", "monthly", "never"])
    parser.add_argument("--results", type=Path, default=RESULTS, help="where <bench>.json and <bench>/ go")
    parser.add_argument("--work", type=Path, help="keep the KB, fine-tune and runs here (reused when unchanged); "
                        "default: a temporary folder, removed afterwards")


class Stages:
    """Wall-clock seconds per stage, logged to stderr as they finish."""

    def __init__(self, console):
        self.console, self.seconds = console, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.console.print(f"[bold]{name}[/] ...", highlight=False)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.console.print(f"[bold]{name}[/] done in {self.seconds[name]:.1f} s", highlight=False)

    def reused(self, name: str, marker: dict) -> None:
        self.seconds[name] = {"reused": True, "seconds_when_made": marker.get("seconds")}
        self.console.print(f"[bold]{name}[/]: reused from {marker.get('path')}", highlight=False)


@contextlib.contextmanager
def stdout_to_stderr():
    """Everything written to stdout (Python or C, e.g. llama.cpp or transformers) goes to stderr, so
    --json leaves stdout to the one result line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def work_dir(path: Path | None):
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-compare-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def seeded_split(items: list, train_share: float, seed: int, key=None) -> tuple[list, list]:
    """A fixed, seeded, disjoint split (stratified by key(item) when given); each part shuffled, so
    a prefix (--train-limit) is a random sample, and a prefix of the scored part (--eval-limit) a
    stratified one."""
    import random

    rng = random.Random(seed)
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item) if key else None, []).append(item)
    train, held = [], []
    for name in sorted(groups, key=str):
        members = groups[name][:]
        rng.shuffle(members)
        cut = round(len(members) * train_share)
        train += members[:cut]
        held += members[cut:]
    rng.shuffle(train)
    rng.shuffle(held)
    if key:  # the classes interleaved by rank, so any prefix of the scored part keeps the split's mix
        size, seen, rank = Counter(key(x) for x in held), Counter(), []
        for item in held:
            rank.append((seen[key(item)] + 0.5) / size[key(item)])
            seen[key(item)] += 1
        held = [item for _, item in sorted(zip(rank, held), key=lambda pair: pair[0])]
    return train, held


def closed_book_chats(examples, labels: list[str] | None) -> list[dict]:
    """Chat records in the ft strategy's closed-book prompt (strategies.BaseStrategy) -> the gold answer."""
    from ragtune.evaluate.strategies import QA_STYLE, label_style

    style = label_style(labels) if labels else QA_STYLE  # as run_plan picks it
    return [style.training_example(e.question, e.label if labels else e.answers[0]) for e in examples]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _marker(path: Path, digest: str) -> dict | None:
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if marker.get("digest") == digest else None


def build_kb(records: list[dict], work: Path, threads: int, stages: Stages) -> tuple[Path, dict]:
    """A KB with one document per record {"id", "title"?, "text"}: doc id = id, title = title.
    Returns its path and {"documents", "chunks"}."""
    from ragtune.config import IngestOptions, KBConfig, RecordFields
    from ragtune.kb import KnowledgeBase

    kb_path, marker_path = work / "kb", work / "kb.done.json"
    digest = _digest(records)
    marker = _marker(marker_path, digest)
    if marker and (kb_path / "ragtune.yaml").exists():
        stages.reused("kb_build", marker)
        return kb_path, {k: marker.get(k) for k in ("documents", "chunks")}
    shutil.rmtree(kb_path, ignore_errors=True)
    with stages("kb_build"):
        corpus = work / "kb_input.jsonl"
        corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        kb = KnowledgeBase.init(kb_path, KBConfig(threads=threads))
        try:
            kb.ingest([corpus], IngestOptions(fields=RecordFields(text_field="text", id_field="id",
                                                                           title_field="title")))
            stats = kb.stats()
        finally:
            kb.close()
    counts = {k: stats.get(k) for k in ("documents", "chunks")}
    stages.console.print(f"knowledge base: {counts['documents']} documents, {counts['chunks']} chunks", highlight=False)
    marker_path.write_text(json.dumps({"digest": digest, "seconds": stages.seconds["kb_build"], "path": str(kb_path),
                                       **counts}))
    return kb_path, counts


def fine_tune(chats: list[dict], work: Path, args, stages: Stages) -> tuple[Path, dict]:
    """LoRA per recipes/smollm2-lora.yaml (model, epochs, learning rate and threads from args); the
    run directory, with model.gguf (full model, F32) exported into it."""
    import yaml

    from ragtune.finetune.gguf_export import export_gguf
    from ragtune.finetune.recipe import validate_recipe
    from ragtune.finetune.run import train

    run_dir, train_file = work / "ft-run", work / "ft_train.jsonl"
    settings = yaml.safe_load(RECIPE.read_text())
    settings.update(name="compare-ft", model=args.model, seed=args.seed, output_dir=str(run_dir))
    settings["data"]["train"] = str(train_file)
    settings["training"].update(epochs=args.epochs, learning_rate=args.learning_rate, threads=args.threads,
                                precision=args.precision)
    digest = _digest(chats, settings)
    marker = _marker(work / "ft.done.json", digest)
    gguf = run_dir / "model.gguf"
    if marker and gguf.is_file():
        stages.reused("training", marker)
        stages.reused("export_gguf", {"path": str(gguf), "seconds": marker.get("export_seconds")})
        return gguf, marker["training"]
    shutil.rmtree(run_dir, ignore_errors=True)
    train_file.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    recipe = validate_recipe(settings, source="compare bench recipe")
    with stages("training"):
        result = train(recipe, progress=True, console=stages.console)
    saved = json.loads((run_dir / "metrics.json").read_text())
    training = {"seconds": round(result.seconds, 1), "train_tokens": saved.get("train_tokens"), **result.data,
                **{k: result.metrics.get(k) for k in ("train_loss", "eval_loss", "epoch", "train_runtime")},
                "recipe": {"base": str(RECIPE.relative_to(ROOT)), "epochs": args.epochs, "precision": args.precision,
                           "learning_rate": args.learning_rate, "method": recipe.method, "lora_r": recipe.lora.r}}
    with stages("export_gguf"):
        export_gguf(run_dir, gguf, overwrite=True)
    (work / "ft.done.json").write_text(json.dumps({"digest": digest, "seconds": stages.seconds["training"],
                                                   "export_seconds": stages.seconds["export_gguf"],
                                                   "path": str(run_dir), "training": training}, default=str))
    return gguf, training


def evaluate(eval_examples, kb: Path, ft_model: Path, args, work: Path, stages: Stages, metric: str):
    """Every strategy through run_plan (one call each, so each is timed alone; models are loaded
    first and llama.cpp keeps them), then compare_runs. Returns (result, {strategy: {id: prediction}})."""
    from ragtune.evaluate.compare import compare_runs
    from ragtune.evaluate.dataset import write_eval_set
    from ragtune.evaluate.plan import EvalPlan, run_plan
    from ragtune.generate import make_generator
    from ragtune.store.runs import RunsDB

    dataset = work / "eval.jsonl"
    write_eval_set(eval_examples, dataset)
    for name, model in (("load_base_model", args.model), ("load_ft_model", str(ft_model))):
        with stages(name):  # llama.cpp engines are cached per file, so run_plan finds them loaded
            make_generator(model, threads=args.threads, slots=args.concurrency).load()
    run_ids = []
    with RunsDB(work / "runs.db") as db:
        for name in STRATEGIES:
            plan = EvalPlan(dataset=dataset, strategies=[name], model=args.model, ft_model=str(ft_model), kb=kb,
                            k=args.k, max_new_tokens=args.max_tokens, threads=args.threads,
                            concurrency=args.concurrency)
            with stages(f"eval_{name}"):
                run_ids += [s["run_id"] for s in run_plan(plan, db, console=stages.console)]
        with stages("compare"):
            result = compare_runs(db, run_ids, metric=metric, knowledge_changes=args.knowledge_changes)
        predictions = {name: {row["example_id"]: row["prediction"] for row in db.predictions(run_id)}
                       for name, run_id in zip(STRATEGIES, run_ids)}
    return result, predictions


def leakage(train_ids, eval_ids, console) -> int:
    if shared := len(set(train_ids) & set(eval_ids)):
        console.print(f"[yellow]warning:[/] {shared} evaluation questions are also training questions", highlight=False)
    return shared


def finish(name: str, args, result: dict, *, metrics: dict, extra: dict, stages: Stages, training: dict,
           columns: list[str], notes: list[str]) -> None:
    """Write bench/results/<name>.json and the HTML report; print the table (stderr with --json) and,
    with --json, the result line on stdout."""
    from rich.console import Console
    from rich.table import Table

    from ragtune.evaluate.report import write_reports

    out_dir = args.results / name
    write_reports(result, out_dir)
    recommendation = result["recommendation"]
    line = {**metrics, "recommendation": recommendation["strategy"]}
    full = {**extra, "metrics": line, "recommendation": recommendation, "n_examples": result["n_examples"],
            "primary_metric": result["metric"], "timings_s": stages.seconds, "training": training,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "report": str(out_dir / "report.html"), "compare": result}
    (args.results / f"{name}.json").write_text(json.dumps(full, indent=2, default=str) + "\n", encoding="utf-8")

    console = Console(stderr=args.json)
    primary = result["metric"]
    diffs = result["differences"][primary]
    table = Table(title=f"{name}: {args.model}, {result['n_examples']} evaluation questions ({extra['licence']})")
    for column in ["strategy", *columns, f"{primary} vs best [95% CI]", "p", "latency p50 s", "eval s"]:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for strategy in STRATEGIES:
        row = diffs["rows"].get(strategy)
        table.add_row(strategy, *(f"{metrics[strategy][c]:.3f}" for c in columns),
                      "best" if row is None else f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]",
                      "" if row is None else f"{row['p_value']:.3g}",
                      f"{result['strategies'][strategy]['latency_p50_s']:.2f}",
                      str(stages.seconds.get(f"eval_{strategy}", "")))
    console.print(table)
    console.print(f"[bold]Recommendation:[/] {recommendation['strategy'] or 'none'}", highlight=False)
    for reason in recommendation["reasons"]:
        console.print(f"  - {reason}", highlight=False, soft_wrap=True)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in stages.seconds.items()), highlight=False,
                  soft_wrap=True)
    console.print(f"results: {args.results / f'{name}.json'}; report: {out_dir / 'report.html'}", highlight=False)
    if args.json:
        print(json.dumps(line))


def setup(args):
    """Offline, the thread count, a stderr console and its stage clock; exits when the model is absent."""
    from rich.console import Console

    from ragtune.models.registry import find_model
    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console(stderr=True)
    if (spec := find_model(args.model)) is not None and not spec.installed:
        sys.exit(f"{args.model} is not installed: {spec.install_command}")
    return console, Stages(console)
