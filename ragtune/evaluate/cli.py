"""`ragtune eval retrieval | import | qa` and `ragtune compare`: thin commands over evaluate/ (torch,
transformers and the models load only when a command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..cli_shared import (PROMPT_OPTION, BACKEND_OPTION, BASE_URL_OPTION, JSON_OPTION, RAY_ADDRESS_OPTION, RAY_OPTION,
                          THREADS_OPTION, WEIGHT_FORMAT_OPTION, WORKERS_OPTION, _emit_json, err, out, ray_settings)

eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval and answer quality; import evaluation sets.")

SCORER_OPTION = typer.Option(None, "--scorer", help="A task scorer by name, e.g. gorilla-ast (repeatable).")
SCORER_OPTION_OPTION = typer.Option(None, "--scorer-option", help="KEY=VALUE passed to the scorers, e.g. api_file=torchhub_api.jsonl (repeatable).")
JUDGE_OPTION = typer.Option(None, "--judge", help="A model that also judges faithfulness (constrained JSON; parse failures counted): any --model ragtune accepts.")
JUDGE_URL_OPTION = typer.Option(None, "--judge-base-url", help="OpenAI-compatible endpoint serving the --judge model.")
QUICK_OPTION = typer.Option(False, "--quick", help="A fixed sample of 40 questions and short answers: a first result in minutes, with wide intervals.")
CONCURRENCY_OPTION = typer.Option(4, "--concurrency", min=1, help="Questions answered at once (llama.cpp decodes them in one batch).")
RUNS_DB_OPTION = typer.Option(None, "--runs-db", help="Runs database (default <kb>/runs.db, else ./ragtune-runs.db).")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command("compare")(compare)


def _check_prompt(prompt: str) -> str:
    from ..answer.protocols import PROTOCOLS

    if prompt not in ("auto", *PROTOCOLS) or prompt == "raft":
        raise typer.BadParameter("must be auto, grounded, reader or rag (RAFT models: --strategies raft+rag)", param_hint="--prompt")
    return prompt


def _note_model(model: Optional[str], base_url: Optional[str]) -> None:
    """The one-line note on which model answers when none was named."""
    if model or base_url:
        return
    from ..cli_shared import err
    from ..models.profiles import answer_model

    err.print(f"[dim]{escape(answer_model(None)[1] or '')}[/]", highlight=False)


def _scorer_options(items: Optional[list[str]]) -> dict:
    from .scorers import parse_scorer_options

    return parse_scorer_options(items or [])


@eval_app.command("retrieval")
def eval_retrieval(
    beir: Path = typer.Option(..., "--beir", help="BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."),
    split: str = typer.Option("test", "--split", help="Which qrels/<split>.tsv to score."),
    kb: Optional[Path] = typer.Option(None, "--kb", help="Ingest into (and reuse) this KB; default: a temporary one."),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid, dense or lexical."),
    precision: str = typer.Option("auto", "--precision", help="Embedding precision for a new KB: auto, fp32 or bf16."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N judged queries."),
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = JSON_OPTION,
):
    """nDCG@10, recall@10/100, MRR@10 and MAP@100 of one search mode on a BEIR data set."""
    from ..config import KBConfig, build
    from .beir import evaluate_retrieval
    from ..retrieve.search import MODES

    if mode not in MODES:
        raise typer.BadParameter(f"must be one of {', '.join(MODES)}", param_hint="--mode")
    config = build(KBConfig, {"precision": precision, "threads": threads}, "ragtune eval retrieval")
    from rich.progress import Progress

    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("queries", total=None)
        result = evaluate_retrieval(beir, split=split, kb_path=kb, mode=mode, threads=threads, config=config,
                                    limit=limit, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        return _emit_json(result["metrics"])
    from rich.table import Table

    table = Table(title=f"{beir.name} ({split}), mode {mode}")
    for name in result["metrics"]:
        table.add_column(name, justify="right")
    table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in result["metrics"].values()))
    out.print(table)
    out.print(f"timings: {result['timings']}")


@eval_app.command("import")
def eval_import(
    kind: str = typer.Argument(..., help="beir, squad, hotpotqa, pubmedqa, gorilla-torchhub or csv."),
    src: Path = typer.Argument(..., help="The data file (or its folder; a BEIR folder for beir)."),
    out_file: Path = typer.Option(..., "--out", help="Evaluation set to write (JSONL; replaced atomically)."),
    split: Optional[str] = typer.Option(None, "--split", help="beir: which qrels/<split>.tsv (default test)."),
    question_col: Optional[str] = typer.Option(None, "--question-col", help="csv: question column (default question)."),
    answer_col: Optional[str] = typer.Option(None, "--answer-col", help="csv: answer column (default answer; several answers split on |)."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="csv: id column (default: row-<line>)."),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="csv: class label column."),
    category_col: Optional[str] = typer.Option(None, "--category-col", help="csv: category column."),
    as_json: bool = JSON_OPTION,
):
    """Convert a benchmark or CSV into ragtune's evaluation-set format (docs/evaluation.md)."""
    from .dataset import summarize, write_eval_set
    from .importers import import_eval_set

    examples = import_eval_set(kind, src, split=split, question_col=question_col, answer_col=answer_col,
                               id_col=id_col, label_col=label_col, category_col=category_col)
    write_eval_set(examples, out_file)
    summary = {"kind": kind, "source": str(src), "out": str(out_file), **summarize(examples)}
    if as_json:
        return _emit_json(summary)
    out.print(f"wrote {summary['examples']} examples to [bold]{escape(str(out_file))}[/] "
              f"({summary['with_answers']} with answers, {summary['with_gold_docs']} with gold documents)")
    for name in ("labels", "categories"):
        if summary[name]:
            out.print(f"{name}: " + ", ".join(f"{escape(str(k))} {v}" for k, v in summary[name].items()))


@eval_app.command("qa")
def eval_qa(
    dataset: Path = typer.Option(..., "--dataset", help="Evaluation set (JSONL, see docs/evaluation.md)."),
    strategy: str = typer.Option(..., "--strategy", help="base (closed-book), rag, ft or ft+rag (ft: a fine-tuned --model, required)."),
    model: Optional[str] = typer.Option(None, "--model", help="The model answering: a packaged name, run or export directory, .gguf file, or with --base-url the served model's name."),
    backend: str = BACKEND_OPTION,
    base_url: Optional[str] = BASE_URL_OPTION,
    kb: Optional[Path] = typer.Option(None, "--kb", help="Knowledge base for rag / ft+rag."),
    k: int = typer.Option(5, "--k", help="Chunks to retrieve (rag)."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Longest answer in tokens."),
    runs_db: Optional[Path] = RUNS_DB_OPTION,
    limit: Optional[int] = typer.Option(None, "--limit", help="Answer only the first N questions."),
    quick: bool = QUICK_OPTION,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Continue this stored run."),
    fresh: bool = typer.Option(False, "--fresh", help="Start a new run even if an unfinished identical one exists."),
    scorer: Optional[list[str]] = SCORER_OPTION,
    scorer_option: Optional[list[str]] = SCORER_OPTION_OPTION,
    judge: Optional[str] = JUDGE_OPTION,
    judge_base_url: Optional[str] = JUDGE_URL_OPTION,
    concurrency: int = CONCURRENCY_OPTION,
    prompt: str = PROMPT_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    ray: bool = RAY_OPTION,
    ray_address: Optional[str] = RAY_ADDRESS_OPTION,
    workers: int = WORKERS_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Answer an evaluation set with one strategy, score and store each prediction; resumes after a kill
    (--ray: answered by --workers model replicas on a Ray cluster, stored here alike)."""
    from ..store.runs import open_runs_db
    from .plan import EvalPlan, run_plan
    from .strategies import STRATEGIES, check_strategy

    check_strategy(strategy, model=model, kb=kb)
    fine_tuned = STRATEGIES[strategy][0]
    plan = EvalPlan(dataset=dataset, strategies=[strategy], model=None if fine_tuned else model,
                    ft_model=model if fine_tuned else None, kb=kb, k=k, max_new_tokens=max_tokens, limit=limit,
                    quick=quick, threads=threads, backend=backend, concurrency=concurrency, base_url=base_url,
                    scorers=list(scorer or []), scorer_options=_scorer_options(scorer_option), fresh=fresh,
                    judge=judge, judge_base_url=judge_base_url, prompt=_check_prompt(prompt),
                    **ray_settings(ray, ray_address, workers))
    _note_model(model if not fine_tuned else "given", base_url)
    with open_runs_db(runs_db, kb) as db:
        summary = run_plan(plan, db, console=None if as_json else err, run_id=run_id)[0]
    if as_json:
        return _emit_json({key: summary[key] for key in ("run_id", "strategy", "metrics", "latency_p50_s",
                                                         "latency_p95_s", "n", "completion_tokens_per_answer",
                                                         "prompt_tokens_per_answer", "counts")})
    from rich.table import Table

    name = plan.model_for(strategy)
    table = Table(title=f"{escape(dataset.name)}, strategy {strategy}, model {escape(name)} (run {summary['run_id']})")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("examples", justify="right")
    for metric, value in summary["metrics"].items():
        table.add_row(metric, f"{value:.4f}", str(summary["counts"][metric]))
    for key in ("latency_p50_s", "latency_p95_s", "completion_tokens_per_answer", "prompt_tokens_per_answer"):
        if summary[key] is not None:
            table.add_row(key, f"{summary[key]:.3f}", str(summary["n"]))
    out.print(table)
    if quick:
        out.print("[yellow]--quick:[/] a sample of the questions with short answers; the numbers are rough.")


def compare(
    runs: Optional[list[str]] = typer.Option(None, "--runs", help="Stored run ids to compare (--runs A B C, or comma-separated)."),
    more_runs: Optional[list[str]] = typer.Argument(None, metavar="[RUN]...", help="More run ids after --runs A."),
    strategies: Optional[str] = typer.Option(None, "--strategies", help="Run these first, e.g. base,rag,ft,ft+rag (needs --dataset; rag needs --kb; ft needs --ft-model)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Evaluation set for --strategies."),
    model: Optional[str] = typer.Option(None, "--model", help="The base model for base and rag (default SmolLM2-135M-Instruct)."),
    ft_model: Optional[str] = typer.Option(None, "--ft-model", help="The fine-tuned model for ft and ft+rag: a run or export directory, a .gguf file or a name."),
    raft_model: Optional[str] = typer.Option(None, "--raft-model", help="The RAFT-trained model for raft and raft+rag (default: --ft-model)."),
    kb: Optional[Path] = typer.Option(None, "--kb", help="Knowledge base: retrieved from by rag strategies; its runs.db holds the runs."),
    k: int = typer.Option(5, "--k", help="Chunks to retrieve (rag strategies)."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Longest answer in tokens."),
    quick: bool = QUICK_OPTION,
    limit: Optional[int] = typer.Option(None, "--limit", help="--strategies: answer only the first N questions."),
    scorer: Optional[list[str]] = SCORER_OPTION,
    scorer_option: Optional[list[str]] = SCORER_OPTION_OPTION,
    judge: Optional[str] = JUDGE_OPTION,
    judge_base_url: Optional[str] = JUDGE_URL_OPTION,
    backend: str = BACKEND_OPTION,
    base_url: Optional[str] = BASE_URL_OPTION,
    concurrency: int = CONCURRENCY_OPTION,
    prompt: str = PROMPT_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    runs_db: Optional[Path] = RUNS_DB_OPTION,
    metric: Optional[str] = typer.Option(None, "--metric", help="Primary metric (default correct when every example has a label, else f1)."),
    knowledge_changes: str = typer.Option("monthly", "--knowledge-changes", help="daily, monthly or never: changing knowledge favours retrieval."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Also compare every strategy with this one (e.g. rag): difference, 95% interval, p (report.json 'versus')."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for report.json, report.md and report.html."),
    ray: bool = RAY_OPTION,
    ray_address: Optional[str] = RAY_ADDRESS_OPTION,
    workers: int = WORKERS_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Compare strategies: every metric, paired 95% intervals and p-values against the best, latency, training cost, a recommendation and reports."""
    from ..errors import ConfigError
    from ..store.runs import default_path, open_runs_db
    from .compare import KNOWLEDGE_CHANGES, compare_runs
    from .plan import QUICK_BOOTSTRAP, EvalPlan, run_plan
    from .report import write_reports

    if knowledge_changes not in KNOWLEDGE_CHANGES:
        raise typer.BadParameter(f"must be one of {', '.join(KNOWLEDGE_CHANGES)}", param_hint="--knowledge-changes")
    ids = [part for item in [*(runs or []), *(more_runs or [])] for part in item.split(",") if part]
    if bool(ids) == bool(strategies):
        raise ConfigError("pass either --runs A B ... (stored runs) or --strategies base,rag,... with --dataset "
                          "(run them now), not " + ("both" if ids else "neither"))
    if strategies:
        if dataset is None:
            raise ConfigError("--strategies needs --dataset: the evaluation set to answer")
        plan = EvalPlan(dataset=dataset, strategies=[s.strip() for s in strategies.split(",") if s.strip()],
                        model=model, ft_model=ft_model, raft_model=raft_model, kb=kb, k=k, max_new_tokens=max_tokens, limit=limit,
                        quick=quick, threads=threads, backend=backend, concurrency=concurrency, base_url=base_url,
                        scorers=list(scorer or []), scorer_options=_scorer_options(scorer_option),
                        judge=judge, judge_base_url=judge_base_url, prompt=_check_prompt(prompt),
                        **ray_settings(ray, ray_address, workers))
        _note_model(model, base_url)
        with open_runs_db(runs_db, kb) as db:
            ids = [summary["run_id"] for summary in run_plan(plan, db, console=None if as_json else err)]
    path = runs_db or default_path(kb)
    if not Path(path).is_file():
        raise ConfigError(f"{'--runs-db' if runs_db else '--kb' if kb else '--runs-db'}: no runs database at {path}; "
                          "run `ragtune eval qa` first or pass --runs-db")
    with open_runs_db(path, None) as db:
        result = compare_runs(db, ids, metric=metric, knowledge_changes=knowledge_changes, baseline=baseline,
                              **({"n_boot": QUICK_BOOTSTRAP} if quick else {}))
    if quick:
        result["recommendation"]["reasons"].append(
            "--quick: a sample of the questions with short answers; the intervals are wide and the recommendation "
            "is a first look, to be confirmed on the whole evaluation set.")
    data = write_reports(result, out_dir)
    if as_json:
        return _emit_json(data)
    print_comparison(result, out_dir)


def print_comparison(result: dict, out_dir: Path) -> None:
    from rich.table import Table

    from .report import table_rows

    header, body = table_rows(result)
    table = Table(title=f"{result['n_examples']} shared examples ({result['dropped_examples']} dropped), "
                        f"primary metric {escape(result['metric'])}")
    for name in header:
        table.add_column(escape(name), justify="left" if name == "strategy" else "right")
    for row in body:
        table.add_row(*[escape(cell) for cell in row])
    out.print(table)
    rec = result["recommendation"]
    out.print(f"[bold]Recommendation:[/] {escape(rec['strategy'] or 'none (the data cannot separate the top strategies)')}")
    for reason in rec["reasons"]:
        out.print(f"  - {escape(reason)}", soft_wrap=True)
    out.print(f"Reports: {escape(str(out_dir / 'report.html'))}, report.md, report.json")
