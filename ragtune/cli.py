"""The `ragtune` command: a thin table over the library. Each command's docstring is its --help."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import RagtuneError
from .finetune.data_cli import data_app
from .finetune.train_cli import register as register_finetune_commands

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adapt a language model to your documents and tasks, locally.")
out = Console()
err = Console(stderr=True)

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
THREADS_OPTION = typer.Option(None, "--threads", help="Torch threads (default: the KB's setting, else torch's).")
WAIT_OPTION = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish.")


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def init(
    kb: Path = typer.Argument(..., help="Directory to create."),
    embedder: str = typer.Option("all-MiniLM-L6-v2", "--embedder", help="Registered embedder or local model dir."),
    precision: str = typer.Option("auto", "--precision", help="Embedding precision: auto (bf16 where the CPU has it), fp32 or bf16."),
    chunk_size: int = typer.Option(200, "--chunk-size", help="Chunk length in embedder tokens."),
    chunk_overlap: int = typer.Option(32, "--chunk-overlap", help="Tokens shared by consecutive chunks."),
    batch_size: int = typer.Option(64, "--batch-size", help="Chunks per embedding batch."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads to store as the KB default."),
    max_file_mb: float = typer.Option(512.0, "--max-file-mb", help="Skip larger files (with a reason)."),
    as_json: bool = JSON_OPTION,
):
    """Create a knowledge base: a config file and an SQLite database."""
    from .config import KBConfig, build
    from .kb import KnowledgeBase

    config = build(KBConfig, dict(embedder=embedder, precision=precision, chunk_size=chunk_size,
                                  chunk_overlap=chunk_overlap, batch_size=batch_size, threads=threads,
                                  max_file_mb=max_file_mb), "ragtune init")
    with KnowledgeBase.init(kb, config) as base:
        if as_json:
            _emit_json(base.stats())
        else:
            out.print(f"created knowledge base [bold]{kb}[/] (embedder {embedder}, {chunk_size}-token chunks)")


def _options(glob, exclude, text_field, id_field, title_field):
    from .config import IngestOptions, build

    return build(IngestOptions, {"include": glob or [], "exclude": exclude or [],
                                 "fields": {"text_field": text_field, "id_field": id_field, "title_field": title_field}},
                 "ingest options")


def _run_ingest(kb: Path, paths: list[Path], options, threads, wait, as_json, sync: bool, prune_missing: bool = False):
    from .ingest.report import print_report, progress_callback
    from .kb import KnowledgeBase

    with KnowledgeBase.open(kb, threads=threads) as base:
        with progress_callback(err, enabled=not as_json) as progress:
            if sync:
                report = base.sync(paths[0], options, progress=progress, wait=wait, prune_missing=prune_missing)
            else:
                report = base.ingest(paths, options, progress=progress, wait=wait)
        if as_json:
            _emit_json(report.as_dict())
        else:
            print_report(out, report)
    return report


GLOB = typer.Option(None, "--glob", help="Include only files matching (gitignore syntax; repeatable).")
EXCLUDE = typer.Option(None, "--exclude", help="Exclude files matching (gitignore syntax; repeatable).")
TEXT_FIELD = typer.Option("text", "--text-field", help="JSON/JSONL field holding the text.")
ID_FIELD = typer.Option(None, "--id-field", help="JSON/JSONL/CSV field holding the document id.")
TITLE_FIELD = typer.Option(None, "--title-field", help="JSON/JSONL/CSV field holding the title.")


@app.command()
def ingest(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    paths: list[Path] = typer.Argument(..., help="Files or directories to ingest."),
    glob: Optional[list[str]] = GLOB,
    exclude: Optional[list[str]] = EXCLUDE,
    text_field: str = TEXT_FIELD,
    id_field: Optional[str] = ID_FIELD,
    title_field: Optional[str] = TITLE_FIELD,
    threads: Optional[int] = THREADS_OPTION,
    wait: float = WAIT_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Load, clean, chunk, embed and store documents; unchanged files are skipped."""
    options = _options(glob, exclude, text_field, id_field, title_field)
    report = _run_ingest(kb, paths, options, threads, wait, as_json, sync=False)
    if report.failed and not report.ingested and not report.unchanged:
        raise typer.Exit(1)


@app.command()
def sync(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    path: Path = typer.Argument(..., help="Directory (or file) the KB should mirror."),
    glob: Optional[list[str]] = GLOB,
    exclude: Optional[list[str]] = EXCLUDE,
    text_field: str = TEXT_FIELD,
    id_field: Optional[str] = ID_FIELD,
    title_field: Optional[str] = TITLE_FIELD,
    threads: Optional[int] = THREADS_OPTION,
    wait: float = WAIT_OPTION,
    prune_missing: bool = typer.Option(
        False, "--prune-missing",
        help="Also remove what was stored from PATH or a folder in it that cannot be read (missing, "
             "unmounted, no permission). Without it such documents are kept and sync exits 1."),
    as_json: bool = JSON_OPTION,
):
    """Re-ingest only files whose content changed; remove documents of files seen to be gone.

    A file is removed only when its folder was read and the file is not there. A missing PATH or an
    unreadable folder removes nothing, is reported by name, and makes the exit code 1.
    """
    options = _options(glob, exclude, text_field, id_field, title_field)
    report = _run_ingest(kb, [path], options, threads, wait, as_json, sync=True, prune_missing=prune_missing)
    if report.unverified and not prune_missing:
        for item in report.unverified:
            err.print(f"[red]error:[/] cannot read {escape(item['path'])} ({item['reason']}); kept its "
                      f"{item['documents']} stored documents. Fix the path, or pass --prune-missing to remove them",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if report.failed and not report.ingested and not report.unchanged:
        raise typer.Exit(1)


@app.command()
def delete(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    source: str = typer.Argument(..., help="A file path (all its documents) or one document's source."),
    wait: float = WAIT_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Remove a file's documents, or a single document, with their chunks and vectors."""
    from .kb import KnowledgeBase

    with KnowledgeBase.open(kb) as base:
        removed = base.delete(source, wait=wait)
    if as_json:
        _emit_json({"removed": removed})
    else:
        out.print(f"removed {removed} document(s)")
    if not removed:
        raise typer.Exit(1)


@app.command()
def stats(kb: Path = typer.Argument(..., help="Knowledge base directory."), as_json: bool = JSON_OPTION):
    """Counts of files, documents, chunks (each unique chunk has one vector) and tokens in a knowledge base."""
    from rich.table import Table

    from .kb import KnowledgeBase

    with KnowledgeBase.open(kb, readonly=True) as base:
        data = base.stats()
    if as_json:
        return _emit_json(data)
    table = Table(title=f"knowledge base {kb}", show_header=False)
    for key, value in data.items():
        table.add_row(key, str(value))
    out.print(table)


@app.command()
def search(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "--k", help="Number of hits (1-1000)."),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid (RRF of dense + BM25), dense or lexical."),
    filters: Optional[list[str]] = typer.Option(
        None, "--filter", help="Metadata condition, repeatable, all must hold: lang=en, lang!=fr, "
        "lang in en,de, year>=2020, source^=docs/."),
    explain: bool = typer.Option(False, "--explain", help="Show each retriever's rank and score, and the fused score."),
    dense_weight: float = typer.Option(1.0, "--dense-weight", help="Weight of the dense ranking in the fusion."),
    lexical_weight: float = typer.Option(1.0, "--lexical-weight", help="Weight of the BM25 ranking in the fusion."),
    rrf_k: int = typer.Option(60, "--rrf-k", help="Reciprocal rank fusion constant (higher flattens ranks)."),
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Search a knowledge base: hybrid, dense or lexical, with metadata filters."""
    import os

    from .kb import KnowledgeBase

    readonly = (kb / "ragtune.db").exists() and not os.access(kb, os.W_OK)
    with KnowledgeBase.open(kb, readonly=readonly, threads=threads) as base:
        hits = base.search(query, k, mode=mode, filters=filters, dense_weight=dense_weight,
                           lexical_weight=lexical_weight, rrf_k=rrf_k)
    if as_json:
        return _emit_json([h.as_dict(explain=explain) for h in hits])
    from .ingest.report import print_hits

    print_hits(out, query, hits, explain=explain)


MODEL_OPTION = typer.Option(None, "--model", help="Registered model name or local model directory (default SmolLM2-135M-Instruct); with --base-url, the served model's name.")
API_KEY_ENV_OPTION = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the endpoint's key.")
TIMEOUT_OPTION = typer.Option(120.0, "--timeout", help="Seconds to wait for an endpoint.")
BACKEND_OPTION = typer.Option("auto", "--backend", help="Local runtime: auto (llama.cpp for GGUF models where it is installed, else transformers), llamacpp or transformers.")
LORA_OPTION = typer.Option(None, "--lora", help="A GGUF LoRA adapter (`ragtune export RUN --gguf-adapter`) applied over --model on llama.cpp.")
WORKED_EXAMPLE_OPTION = typer.Option(False, "--worked-example", help="Show the model one worked question and cited answer first: helps Qwen2.5-Coder-0.5B (the demo uses it), hurts SmolLM2-135M.")
WEIGHT_FORMAT_OPTION = typer.Option("auto", "--weight-format", help="llama.cpp weights: auto (the type measured fastest on this CPU, once), source (as shipped), Q4_0, Q8_0, F16, BF16 or F32.")
BASE_URL_OPTION = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (key from $OPENAI_API_KEY or --api-key-env).")


def _answer_setup(model, base_url, api_key_env, timeout, threads, system_template, question_template, backend="auto",
                  weight_format="auto", worked_example=False, lora=None):
    from .answer.prompt import Templates
    from .generate import make_generator

    generator = make_generator(model, base_url=base_url, api_key_env=api_key_env, threads=threads, timeout=timeout,
                               backend=backend, weight_format=weight_format,
                               lora=str(lora) if lora else None)
    templates = Templates.from_files(system=system_template, question=question_template)
    templates.example = worked_example
    return generator, templates


@app.command()
def ask(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    question: str = typer.Argument(..., help="The question."),
    model: Optional[str] = MODEL_OPTION,
    backend: str = BACKEND_OPTION,
    weight_format: str = WEIGHT_FORMAT_OPTION,
    worked_example: bool = WORKED_EXAMPLE_OPTION,
    lora: Optional[Path] = LORA_OPTION,
    base_url: Optional[str] = BASE_URL_OPTION,
    api_key_env: str = API_KEY_ENV_OPTION,
    timeout: float = TIMEOUT_OPTION,
    k: int = typer.Option(5, "--k", help="Chunks to retrieve (as many as fit the context are given to the model)."),
    mode: str = typer.Option("hybrid", "--mode", help="Retrieval mode: hybrid, dense or lexical."),
    filters: Optional[list[str]] = typer.Option(None, "--filter", help="Metadata condition, repeatable (see `search`)."),
    min_relevance: float = typer.Option(0.3, "--min-relevance", help="Below this cosine for the best chunk, say 'not found' instead of guessing."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest answer in tokens."),
    system_template: Optional[Path] = typer.Option(None, "--system-template", help="File with the system prompt."),
    question_template: Optional[Path] = typer.Option(None, "--question-template", help="File with the user prompt ({sources}, {question})."),
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = JSON_OPTION,
):
    r"""Answer a question from the knowledge base, citing the sources as \[n]."""
    from .answer.rag import ask as run_ask
    from .kb import KnowledgeBase

    generator, templates = _answer_setup(model, base_url, api_key_env, timeout, threads, system_template, question_template, backend,
                                         weight_format, worked_example, lora)
    with KnowledgeBase.open(kb, threads=threads) as base:
        stream = None if as_json else (lambda piece: out.print(piece, end="", highlight=False, markup=False))
        result = run_ask(base, question, generator, k=k, mode=mode, filters=filters, min_relevance=min_relevance,
                         max_new_tokens=max_tokens, templates=templates, on_text=stream)
    if as_json:
        return _emit_json(result.as_dict())
    from .answer.report import print_answer_sources

    out.print()
    print_answer_sources(out, result)


@app.command()
def chat(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    model: Optional[str] = MODEL_OPTION,
    backend: str = BACKEND_OPTION,
    weight_format: str = WEIGHT_FORMAT_OPTION,
    worked_example: bool = WORKED_EXAMPLE_OPTION,
    lora: Optional[Path] = LORA_OPTION,
    base_url: Optional[str] = BASE_URL_OPTION,
    api_key_env: str = API_KEY_ENV_OPTION,
    timeout: float = TIMEOUT_OPTION,
    k: int = typer.Option(5, "--k", help="Chunks to retrieve per turn."),
    min_relevance: float = typer.Option(0.3, "--min-relevance", help="Below this cosine, say 'not found' instead of guessing."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest answer in tokens."),
    threads: Optional[int] = THREADS_OPTION,
):
    """Multi-turn questions: follow-ups are made standalone before retrieval; answers stream. Ctrl-D ends."""
    from .answer.chat import ChatSession
    from .kb import KnowledgeBase

    generator, templates = _answer_setup(model, base_url, api_key_env, timeout, threads, None, None, backend, weight_format,
                                         worked_example, lora)
    with KnowledgeBase.open(kb, threads=threads) as base:
        session = ChatSession(base, generator, k=k, min_relevance=min_relevance, max_new_tokens=max_tokens, templates=templates)
        while True:
            try:
                question = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                out.print()
                return
            if not question:
                continue
            out.print("ragtune> ", end="")
            result = session.ask(question, on_text=lambda piece: out.print(piece, end="", highlight=False, markup=False))
            out.print()
            if result.query and result.query != question:
                err.print(f"[dim](searched for: {result.query})[/]")
            from .answer.report import print_answer_sources

            print_answer_sources(out, result, compact=True)


eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval (and later generation) quality; import evaluation sets.")
app.add_typer(eval_app, name="eval")
app.add_typer(data_app, name="data")
register_finetune_commands(app)


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
    from .config import KBConfig, build
    from .evaluate.beir import evaluate_retrieval
    from .retrieve.search import MODES

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
    from .evaluate.dataset import summarize, write_eval_set
    from .evaluate.importers import import_eval_set

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


EVAL_STRATEGIES = ("base", "rag", "ft", "ft+rag")


@eval_app.command("qa")
def eval_qa(
    dataset: Path = typer.Option(..., "--dataset", help="Evaluation set (JSONL, see docs/evaluation.md)."),
    strategy: str = typer.Option(..., "--strategy", help="base (closed-book), rag, ft or ft+rag (ft: a fine-tuned --model, required)."),
    model: Optional[str] = MODEL_OPTION,
    backend: str = BACKEND_OPTION,
    kb: Optional[Path] = typer.Option(None, "--kb", help="Knowledge base for rag / ft+rag."),
    k: int = typer.Option(5, "--k", help="Chunks to retrieve (rag)."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Longest answer in tokens."),
    runs_db: Optional[Path] = typer.Option(None, "--runs-db", help="Runs database (default <kb>/runs.db, else ./ragtune-runs.db)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Answer only the first N questions."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Continue this stored run."),
    fresh: bool = typer.Option(False, "--fresh", help="Start a new run even if an unfinished identical one exists."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Questions answered at once (llama.cpp decodes them in one batch; closed-book strategies)."),
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Answer an evaluation set with one strategy, score and store each prediction; resumes after a kill."""
    from .errors import ConfigError
    from .evaluate.runner import BaseStrategy, RagStrategy, run_eval
    from .generate import make_generator
    from .generate.base import DEFAULT_MODEL
    from .store.runs import open_runs_db

    if strategy not in EVAL_STRATEGIES:
        raise typer.BadParameter(f"must be one of {', '.join(EVAL_STRATEGIES)}", param_hint="--strategy")
    if strategy.startswith("ft") and not model:
        raise ConfigError(f"--strategy {strategy} needs --model: the fine-tuned model (a run or export directory, "
                          "a packaged name or a .gguf file)")
    retrieval = strategy in ("rag", "ft+rag")
    if retrieval and kb is None:
        raise ConfigError(f"--strategy {strategy} needs --kb: the knowledge base to retrieve from")
    model_name = model or DEFAULT_MODEL
    generator = make_generator(model_name, threads=threads, backend=backend, slots=concurrency)
    if hasattr(generator, "load"):
        generator.load()  # loaded before timing starts, so the first answer's latency is not the model load
    config = {"strategy": strategy, "model": model_name, "backend": backend, "kb": str(kb) if kb else None,
              "k": k if retrieval else None, "max_new_tokens": max_tokens, "threads": threads,
              "mode": "hybrid" if retrieval else None, "min_relevance": 0.0 if retrieval else None,
              "concurrency": concurrency}
    base = None
    try:
        if retrieval:
            from .kb import KnowledgeBase

            base = KnowledgeBase.open(kb, threads=threads)
            base.embedder.encode_query("warm up")  # likewise: load the embedder before the first timed answer
            runner = RagStrategy(base, generator, k=k, name=strategy, max_new_tokens=max_tokens)
        else:
            runner = BaseStrategy(generator, name=strategy, max_new_tokens=max_tokens)
        with open_runs_db(runs_db, kb) as db:
            summary = run_eval(dataset, runner, db, model=model_name, kb_path=str(kb) if retrieval else None,
                               k=k if retrieval else None, config=config, limit=limit, run_id=run_id,
                               resume=not fresh, console=None if as_json else err, concurrency=concurrency)
    finally:
        if base is not None:
            base.close()
    if as_json:
        return _emit_json({key: summary[key] for key in ("run_id", "strategy", "metrics", "latency_p50_s",
                                                         "latency_p95_s", "n", "completion_tokens_per_answer",
                                                         "prompt_tokens_per_answer", "counts")})
    from rich.table import Table

    table = Table(title=f"{escape(dataset.name)}, strategy {strategy}, model {escape(model_name)} (run {summary['run_id']})")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("examples", justify="right")
    for name, value in summary["metrics"].items():
        table.add_row(name, f"{value:.4f}", str(summary["counts"][name]))
    for name in ("latency_p50_s", "latency_p95_s", "completion_tokens_per_answer", "prompt_tokens_per_answer"):
        if summary[name] is not None:
            table.add_row(name, f"{summary[name]:.3f}", str(summary["n"]))
    out.print(table)


@app.command()
def compare(
    runs: list[str] = typer.Option(..., "--runs", help="Run ids to compare (--runs A B C, or comma-separated)."),
    more_runs: Optional[list[str]] = typer.Argument(None, metavar="[RUN]...", help="More run ids after --runs A."),
    runs_db: Optional[Path] = typer.Option(None, "--runs-db", help="Runs database (default <kb>/runs.db, else ./ragtune-runs.db)."),
    kb: Optional[Path] = typer.Option(None, "--kb", help="Knowledge base whose runs.db holds the runs."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Primary metric (default correct when every example has a label, else f1)."),
    knowledge_changes: str = typer.Option("monthly", "--knowledge-changes", help="daily, monthly or never: changing knowledge favours retrieval."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for report.json, report.md and report.html."),
    as_json: bool = JSON_OPTION,
):
    """Compare stored runs: every metric, paired 95% intervals and p-values against the best, latency, a recommendation and reports."""
    from .errors import ConfigError
    from .evaluate.compare import KNOWLEDGE_CHANGES, compare_runs
    from .evaluate.report import write_reports
    from .store.runs import default_path, open_runs_db

    if knowledge_changes not in KNOWLEDGE_CHANGES:
        raise typer.BadParameter(f"must be one of {', '.join(KNOWLEDGE_CHANGES)}", param_hint="--knowledge-changes")
    ids = [part for item in [*runs, *(more_runs or [])] for part in item.split(",") if part]
    path = runs_db or default_path(kb)
    if not Path(path).is_file():
        raise ConfigError(f"{'--runs-db' if runs_db else '--kb' if kb else '--runs-db'}: no runs database at {path}; "
                          "run `ragtune eval qa` first or pass --runs-db")
    with open_runs_db(path, None) as db:
        result = compare_runs(db, ids, metric=metric, knowledge_changes=knowledge_changes)
    data = write_reports(result, out_dir)
    if as_json:
        return _emit_json(data)
    from rich.table import Table

    from .evaluate.report import table_rows

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


@app.command()
def models(as_json: bool = JSON_OPTION):
    """The packaged models: runtime, weight format, installed or not, size, licence, cache state."""
    from .models.listing import model_rows, print_models

    rows = model_rows()
    if as_json:
        return _emit_json(rows)
    print_models(out, rows)


@app.command()
def demo(
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where to build the demo KB (default: a temp dir)."),
    threads: Optional[int] = THREADS_OPTION,
    model: Optional[str] = typer.Option(None, "--model", help="Generator (default Qwen2.5-Coder-0.5B-Instruct, chosen by measurement; SmolLM2-135M-Instruct if Qwen is not installed)."),
    backend: str = BACKEND_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Build a knowledge base from ragtune's own docs/ and answer three questions with citations."""
    from .demo import run_demo

    result = run_demo(out, err, workdir=workdir, threads=threads, quiet=as_json, model=model, backend=backend)
    if as_json:
        _emit_json(result)


@app.callback()
def _global_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what ragtune does (INFO); "
                                          "RAGTUNE_LOG_LEVEL=DEBUG|INFO|WARNING|ERROR overrides.")):
    if verbose:
        from .runtime import configure_logging

        configure_logging(verbose=True, console=err)


def _is_usage_error(exc: Exception) -> bool:
    """A bad command, option or value: typer 0.29 raises its bundled click's exceptions, not click's."""
    import click

    classes = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as BundledClickException

        classes.append(BundledClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(classes))


def main() -> None:
    from .runtime import configure_logging, enforce_offline

    # The process-wide settings live here, at the entry point, never in library code.
    enforce_offline()
    configure_logging(console=err)
    try:
        code = app(standalone_mode=False)  # non-standalone click returns typer.Exit's code instead of exiting
        if code:
            raise SystemExit(code)
    except RagtuneError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        if _is_usage_error(exc):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if os.environ.get("RAGTUNE_DEBUG"):
            raise
        # a bug, not a user error: one line, no stack trace; nothing stored is lost (writes are transactional)
        err.print(f"[red]internal error:[/] {escape(type(exc).__name__)}: {escape(str(exc)[:500])}. "
                  "This is a bug in ragtune; rerun with RAGTUNE_DEBUG=1 to see the traceback and report it.",
                  highlight=False, soft_wrap=True)
        raise SystemExit(70) from None


if __name__ == "__main__":
    main()
