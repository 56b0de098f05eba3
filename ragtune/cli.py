"""The `ragtune` command: a thin table over the library. Each command's docstring is its --help."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .cli_shared import (API_KEY_ENV_OPTION, BACKEND_OPTION, BASE_URL_OPTION, JSON_OPTION, LORA_OPTION, MODEL_OPTION,  # noqa: F401
                         THREADS_OPTION, TIMEOUT_OPTION, WAIT_OPTION, WEIGHT_FORMAT_OPTION, WORKED_EXAMPLE_OPTION, PROMPT_OPTION, STRICT_OPTION,
                         RAY_ADDRESS_OPTION, RAY_OPTION, WORKERS_OPTION, _emit_json, err, out, ray_settings)
from .errors import RagtuneError
from .evaluate.cli import register as register_evaluate_commands
from .finetune.data_cli import data_app
from .finetune.train_cli import register as register_finetune_commands
from .workflow.cli import register as register_workflow_commands
from .raft.cli import raft_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adapt a language model to your documents and tasks, locally.")



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
    vector_store: str = typer.Option("faiss", "--vector-store",
                                     help="Where vectors are searched: faiss (files in the KB) or milvus."),
    milvus_uri: Optional[str] = typer.Option(None, "--milvus-uri", help="Milvus server (http://host:19530) or a "
                                             "milvus-lite .db file; default: index/milvus.db inside the KB."),
    milvus_collection: str = typer.Option("ragtune_chunks", "--milvus-collection",
                                          help="The Milvus collection for this KB's vectors."),
    as_json: bool = JSON_OPTION,
):
    """Create a knowledge base: a config file and an SQLite database (the source of truth for every index)."""
    from .config import KBConfig, build
    from .kb import KnowledgeBase

    config = build(KBConfig, dict(embedder=embedder, precision=precision, chunk_size=chunk_size,
                                  chunk_overlap=chunk_overlap, batch_size=batch_size, threads=threads,
                                  max_file_mb=max_file_mb, vector_store=vector_store, milvus_uri=milvus_uri,
                                  milvus_collection=milvus_collection), "ragtune init")
    with KnowledgeBase.init(kb, config) as base:
        if as_json:
            _emit_json(base.stats())
        else:
            where = "" if vector_store == "faiss" else f", vectors in Milvus {milvus_uri or 'index/milvus.db'}"
            out.print(f"created knowledge base [bold]{kb}[/] (embedder {embedder}, {chunk_size}-token chunks{where})")


def _options(glob, exclude, text_field, id_field, title_field):
    from .config import IngestOptions, build

    return build(IngestOptions, {"include": glob or [], "exclude": exclude or [],
                                 "fields": {"text_field": text_field, "id_field": id_field, "title_field": title_field}},
                 "ingest options")


def _run_ingest(kb: Path, paths: list[Path], options, threads, wait, as_json, sync: bool, prune_missing: bool = False,
                ray: dict | None = None):
    from .ingest.report import print_report, progress_callback
    from .kb import KnowledgeBase

    with KnowledgeBase.open(kb, threads=threads) as base:
        with progress_callback(err, enabled=not as_json) as progress:
            if sync:
                report = base.sync(paths[0], options, progress=progress, wait=wait, prune_missing=prune_missing)
            else:
                report = base.ingest(paths, options, progress=progress, wait=wait, **(ray or {}))
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
    ray: bool = RAY_OPTION,
    ray_address: Optional[str] = RAY_ADDRESS_OPTION,
    workers: int = WORKERS_OPTION,
    as_json: bool = JSON_OPTION,
):
    """Load, clean, chunk, embed and store documents; unchanged files are skipped (--ray: parsed, chunked
    and embedded on a Ray cluster, the KB ending the same as a local ingest)."""
    options = _options(glob, exclude, text_field, id_field, title_field)
    settings = ray_settings(ray, ray_address, workers)
    report = _run_ingest(kb, paths, options, threads, wait, as_json, sync=False, ray=settings if ray else None)
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



def _answer_setup(kb, prompt, model, base_url, api_key_env, timeout, threads, system_template, question_template,
                  backend="auto", weight_format="auto", lora=None):
    """(generator, templates, prompt): the answering model, with the knowledge base's reader adapter
    when one is trained for it (raft/reader.py) and the prompt allows."""
    from .answer.prompt import Templates
    from .generate import make_generator
    from .models.profiles import answer_model

    lora = str(lora) if lora else None
    if not base_url:
        model, note = answer_model(model)
        if note:
            err.print(f"[dim]{escape(note)}[/]")
        if backend != "transformers":
            from .raft.reader import reader_choice

            lora, prompt, note = reader_choice(kb, model, prompt, lora)
            if note:
                err.print(f"[dim]{escape(note)}[/]")
    generator = make_generator(model, base_url=base_url, api_key_env=api_key_env, threads=threads, timeout=timeout,
                               backend=backend, weight_format=weight_format, lora=lora)
    templates = Templates.from_files(system=system_template, question=question_template)
    return generator, templates, prompt


def _check_prompt(prompt: str) -> str:
    from .answer.protocols import PROTOCOLS

    if prompt not in ("auto", *PROTOCOLS):
        raise typer.BadParameter(f"must be auto or one of {', '.join(PROTOCOLS)}", param_hint="--prompt")
    return prompt


def _print_reasoning(piece: str, kind: str) -> None:
    """Streams the quotes dimmed and the answer plain."""
    out.print(escape(piece), end="", highlight=False, style="dim" if kind == "reasoning" else None)


@app.command()
def ask(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    question: str = typer.Argument(..., help="The question."),
    model: Optional[str] = MODEL_OPTION,
    backend: str = BACKEND_OPTION,
    weight_format: str = WEIGHT_FORMAT_OPTION,
    prompt: str = PROMPT_OPTION,
    worked_example: Optional[bool] = WORKED_EXAMPLE_OPTION,
    strict: bool = STRICT_OPTION,
    lora: Optional[Path] = LORA_OPTION,
    base_url: Optional[str] = BASE_URL_OPTION,
    api_key_env: str = API_KEY_ENV_OPTION,
    timeout: float = TIMEOUT_OPTION,
    k: int = typer.Option(5, "--k", help="Chunks to retrieve (as many as fit the context are given to the model)."),
    mode: str = typer.Option("hybrid", "--mode", help="Retrieval mode: hybrid, dense or lexical."),
    filters: Optional[list[str]] = typer.Option(None, "--filter", help="Metadata condition, repeatable (see `search`)."),
    min_relevance: float = typer.Option(0.3, "--min-relevance", help="Below this cosine for the best chunk, say 'not found' instead of guessing."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest reply in tokens (an answer cut by it ends at its last full sentence)."),
    system_template: Optional[Path] = typer.Option(None, "--system-template", help="File with the system prompt (implies --prompt rag)."),
    question_template: Optional[Path] = typer.Option(None, "--question-template", help="File with the user prompt ({sources}, {question}; implies --prompt rag)."),
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = JSON_OPTION,
):
    r"""Answer a question from the knowledge base, citing the sources as \[n]."""
    from .answer.pipeline import ask as run_ask
    from .answer.report import print_answer
    from .kb import KnowledgeBase

    _check_prompt(prompt)
    if prompt == "auto" and (system_template or question_template):
        prompt = "rag"  # the user's own templates are for the plain prompt
    generator, templates, prompt = _answer_setup(kb, prompt, model, base_url, api_key_env, timeout, threads,
                                                 system_template, question_template, backend, weight_format, lora)
    with KnowledgeBase.open(kb, threads=threads) as base:
        result = run_ask(base, question, generator, k=k, mode=mode, filters=filters, min_relevance=min_relevance,
                         max_new_tokens=max_tokens, prompt=prompt, templates=templates, example=worked_example,
                         strict=strict, on_event=None if as_json else _print_reasoning)
    if as_json:
        return _emit_json(result.as_dict())
    out.print()
    print_answer(out, result)


@app.command()
def chat(
    kb: Path = typer.Argument(..., help="Knowledge base directory."),
    model: Optional[str] = MODEL_OPTION,
    backend: str = BACKEND_OPTION,
    weight_format: str = WEIGHT_FORMAT_OPTION,
    prompt: str = PROMPT_OPTION,
    worked_example: Optional[bool] = WORKED_EXAMPLE_OPTION,
    strict: bool = STRICT_OPTION,
    lora: Optional[Path] = LORA_OPTION,
    base_url: Optional[str] = BASE_URL_OPTION,
    api_key_env: str = API_KEY_ENV_OPTION,
    timeout: float = TIMEOUT_OPTION,
    k: int = typer.Option(5, "--k", help="Chunks to retrieve per turn."),
    min_relevance: float = typer.Option(0.3, "--min-relevance", help="Below this cosine, say 'not found' instead of guessing."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest reply in tokens."),
    threads: Optional[int] = THREADS_OPTION,
):
    """Multi-turn questions: follow-ups are made standalone before retrieval; answers stream. Ctrl-D ends."""
    from .answer.chat import ChatSession
    from .answer.report import print_answer
    from .kb import KnowledgeBase

    _check_prompt(prompt)
    generator, templates, prompt = _answer_setup(kb, prompt, model, base_url, api_key_env, timeout, threads, None,
                                                 None, backend, weight_format, lora)
    with KnowledgeBase.open(kb, threads=threads) as base:
        session = ChatSession(base, generator, k=k, min_relevance=min_relevance, max_new_tokens=max_tokens,
                              templates=templates, prompt=prompt, strict=strict, example=worked_example)
        while True:
            try:
                question = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                out.print()
                return
            if not question:
                continue
            out.print("ragtune> ", end="")
            result = session.ask(question, on_event=_print_reasoning)
            out.print()
            if result.query and result.query != question:
                err.print(f"[dim](searched for: {escape(result.query)})[/]")
            print_answer(out, result, compact=True)


app.add_typer(data_app, name="data")
register_finetune_commands(app)
register_evaluate_commands(app)
register_workflow_commands(app)
app.add_typer(raft_app, name="raft")


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


from .serve.command import serve as _serve_command
app.command("serve")(_serve_command)


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
