"""`ragtune raft ...`: thin commands over ragtune/raft (heavy imports happen when a command runs)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from ..cli_shared import JSON_OPTION, _emit_json, err, out, stage_printer

raft_app = typer.Typer(no_args_is_help=True, add_completion=False)


@raft_app.callback()
def raft() -> None:
    """RAFT: retrieval-augmented fine-tuning data from a knowledge base (`build`; training is `ragtune train`)."""


@contextmanager
def _progress_bar(enabled: bool):
    """A rich progress bar over items; yields the builder's progress(done, total) callback."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("raft build"), BarColumn(bar_width=None), MofNCompleteColumn(), TextColumn("items"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("items", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@raft_app.command("build")
def build(
    kb: Path = typer.Argument(..., help="Knowledge base directory (`ragtune init` + `ragtune ingest`)."),
    out_dir: Path = typer.Option(..., "--out", help="Output directory; re-running with the same settings resumes it."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="JSONL of questions with gold_doc_ids and/or context (and optionally answers) instead of generating them; an `eval qa` set works."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher that writes questions and answers: a packaged model (SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct), a .gguf file, a model folder, a registered teacher name, or with --teacher-base-url the served model's name."),
    teacher_base_url: Optional[str] = typer.Option(None, "--teacher-base-url", help="OpenAI-compatible endpoint for the teacher, e.g. http://localhost:8000/v1 (key from $OPENAI_API_KEY)."),
    per_chunk: int = typer.Option(3, "--per-chunk", help="Questions the teacher writes per sampled chunk (before filters)."),
    k: int = typer.Option(4, "--k", help="Distractor documents per example (the context holds k + 1 documents)."),
    p: float = typer.Option(0.8, "--p", help="P: the probability that the oracle document is present in an example's context (otherwise k + 1 distractors)."),
    distractors: str = typer.Option("hard", "--distractors", help="hard: the knowledge base's own retriever's hits for the question (default); random: any other chunk."),
    chunk_tokens: int = typer.Option(256, "--chunk-tokens", help="Document window length in tokens of the target model."),
    target_model: str = typer.Option("SmolLM2-135M-Instruct", "--target-model", help="The model you will fine-tune: its tokenizer counts --chunk-tokens and example lengths."),
    template: Optional[Path] = typer.Option(None, "--template", help="Teacher prompt override: a text file (the question prompt, with {chunk} and {n}) or YAML with questions/answer/closed_book."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice (sampling, oracle presence, distractors, order)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many chunks (or questions); raise it later to extend a build."),
    eval_share: float = typer.Option(0.1, "--eval-share", help="Share of chunks (or questions) held out to eval.jsonl instead of training."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the teacher and retrieval."),
    batch: int = typer.Option(8, "--batch", help="Items per step: their teacher calls run together, and progress is saved after each step."),
    as_json: bool = JSON_OPTION,
):
    """Build RAFT training data: question + oracle + distractors -> a chain of thought quoting the oracle.

    Writes chat.jsonl (for `ragtune train`), completion.jsonl, eval.jsonl (held-out questions for
    `ragtune eval qa`), examples.jsonl and manifest.json (counts, settings, what was dropped and why).
    Every quote is verified against the oracle; a build killed at any point resumes where it stopped.
    """
    from .builder import BuildOptions, build_raft

    options = BuildOptions(out=out_dir, questions=questions, teacher=teacher, teacher_base_url=teacher_base_url,
                           per_chunk=per_chunk, k=k, p=p, distractors=distractors, chunk_tokens=chunk_tokens,
                           target_model=target_model, template=template, seed=seed, limit=limit, threads=threads,
                           eval_share=eval_share, batch=batch)
    with _progress_bar(not as_json) as progress:
        manifest = build_raft(kb, options, progress=progress)
    if as_json:
        _emit_json(manifest)
        return
    _print_summary(out_dir, manifest)


def _print_summary(out_dir: Path, manifest: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    counts = manifest["counts"]
    table = Table(title=f"RAFT build: {escape(str(out_dir))}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("windows", "items", "questions_generated", "questions_read", "train_examples", "eval_examples",
                "oracle_present", "oracle_absent", "repaired", "hard_distractors", "random_distractors"):
        if key in counts:
            table.add_row(key.replace("_", " "), str(counts[key]))
    for reason, count in manifest["dropped"].items():
        table.add_row(f"dropped: {reason.replace('_', ' ')}", str(count))
    out.print(table)
    for problem in manifest["problems"][:20]:
        err.print(f"[yellow]{escape(problem['path'])}:{problem['line']}: {problem['field']}: "
                  f"{escape(problem['message'])} ({escape(problem['fix'])})[/]")
    if len(manifest["problems"]) > 20:
        err.print(f"... and {len(manifest['problems']) - 20} more problems in manifest.json")
    if manifest["tokens"]["suggested_max_length"]:
        out.print(f"train with data.max_length >= {manifest['tokens']['suggested_max_length']} "
                  f"(longest example {manifest['tokens']['max_example']} tokens)")


@raft_app.command("reader")
def reader(
    kb: Path = typer.Argument(..., help="Knowledge base the reader is for; it is installed there (KB/readers/MODEL)."),
    model: Optional[str] = typer.Option(None, "--model", help="The packaged chat model to train a reader for (default: the one ask answers with)."),
    mix: Optional[Path] = typer.Option(None, "--mix", help="A public QA set with passages to train on (HotpotQA: IRCoT's JSONL or the original JSON), instead of or beside --synthesize."),
    synthesize: Optional[int] = typer.Option(None, "--synthesize", help="Questions the teacher writes over the knowledge base (default 80; 0 with --mix)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Model that writes the questions (default: --model)."),
    minutes: float = typer.Option(20.0, "--minutes", help="Training time budget; training stops and saves at the first step after it."),
    p: float = typer.Option(1.0, "--p", help="Share of examples that show the answering passage (the rest teach 'not found'; 0.8, RAFT's, made the reader refuse too often)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Adapt only the top N transformer blocks (default: a third of them; faster)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many --mix questions."),
    eval_share: float = typer.Option(0.1, "--eval-share", help="Share of questions held out (written to the work folder's eval.jsonl)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the oracle's presence and the order."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the teacher and training."),
    score: bool = typer.Option(True, "--score/--no-score", help="Compare reader and grounded prompt on the held-out questions; --prompt auto uses the reader only where it scored at least as well."),
    as_json: bool = JSON_OPTION,
):
    """Train a reader adapter: the answering model taught to read sources with distractors (RAFT).

    The held-out questions are then answered with and without it; where the reader scores at least
    as well, `ask`, `chat` and `serve` on this knowledge base load it over the model (llama.cpp) by
    default. `--prompt reader` always uses it, `--prompt grounded` never.
    """
    from rich.markup import escape

    from .reader import ReaderOptions, train_reader

    stage = stage_printer(quiet=as_json)
    options = ReaderOptions(kb=kb, model=model, mix=mix, synthesize=synthesize, teacher=teacher, minutes=minutes, p=p,
                            layers=layers, limit=limit, eval_share=eval_share, seed=seed, threads=threads, score=score)
    meta = train_reader(options, stage=stage)
    if as_json:
        _emit_json(meta)
        return
    from rich.table import Table

    table = Table(title=f"reader for {meta['model']}: {escape(meta['adapter'])}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in meta["counts"].items():
        table.add_row(key.replace("_", " "), str(value))
    for key, value in meta["train"].items():
        table.add_row(key.replace("_", " "), f"{value:.3g}" if isinstance(value, float) else str(value))
    held = meta.get("held_out")
    if held:
        for name in ("grounded", "reader"):
            table.add_row(f"held out ({held['n']}): {name} right / cited / p50 s",
                          f"{held[name]['right']:.2f} / {held[name]['right_and_cited']:.2f} / {held[name]['total_s_p50']:.1f}")
    out.print(table)
    if held and held["reader_better"]:
        out.print(f"ask, chat and serve on {escape(str(kb))} now answer with it (--prompt grounded: without it)")
    else:
        why = "it scored below the grounded prompt on the held-out questions" if held else "it was not measured here"
        out.print(f"installed; --prompt reader uses it ({why}, so --prompt auto keeps the grounded prompt)")
