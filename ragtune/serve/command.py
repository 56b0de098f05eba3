"""`ragtune serve`: the typer command. Heavy imports (FastAPI, uvicorn, torch) happen inside the
function, so `ragtune --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

def serve(
    kb: list[Path] = typer.Argument(..., help="Knowledge base directories; each is served with every --model."),
    model: Optional[list[str]] = typer.Option(
        None, "--model", help="Model to answer with, repeatable: a registered name, a .gguf file, a model directory, "
        "a training run directory (served on llama.cpp) or, with --base-url, the endpoint's model (default SmolLM2-135M-Instruct)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1; another address needs --api-key or --insecure)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default 8000)."),
    api_key: Optional[list[str]] = typer.Option(None, "--api-key", help="Accept this API key, repeatable; also $RAGTUNE_API_KEYS (comma-separated) and the config's api_keys."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without API keys."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with these settings (and per-model prompts under `models:`); flags win."),
    slots: Optional[int] = typer.Option(None, "--slots", help="Sequences each model decodes at once (default 4)."),
    queue: Optional[int] = typer.Option(None, "--queue", help="Requests that may wait for a slot; beyond it the answer is 429 with Retry-After (default 16)."),
    search_threads: Optional[int] = typer.Option(None, "--search-threads", help="Searches served at once (default 4)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the model and the embedder (default: their own choice)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Default answer length in tokens (default 256)."),
    k: Optional[int] = typer.Option(None, "--k", help="Chunks retrieved per question (default 5)."),
    min_relevance: Optional[float] = typer.Option(None, "--min-relevance", help="Below this cosine, answer 'not found' (default 0.3)."),
    rewrite: Optional[str] = typer.Option(None, "--rewrite", help="Chat follow-ups made standalone by: concat (default, free) or llm (one more generation)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Local runtime: auto, llamacpp or transformers."),
    weight_format: Optional[str] = typer.Option(None, "--weight-format", help="llama.cpp weights: auto, source, Q4_0, Q8_0, F16, BF16 or F32."),
    lora: Optional[str] = typer.Option(None, "--lora", help="A GGUF LoRA adapter applied over --model on llama.cpp."),
    worked_example: Optional[bool] = typer.Option(None, "--worked-example/--no-worked-example", help="Show the model one worked cited answer first."),
    system_template: Optional[str] = typer.Option(None, "--system-template", help="File with the system prompt (e.g. a RAFT model's own)."),
    question_template: Optional[str] = typer.Option(None, "--question-template", help="File with the user prompt ({sources}, {question})."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="auto (default: the model's measured profile; rag for endpoints), grounded (answer, then the quoted sentence that says it), rag (cite sources as [n]) or raft (a RAFT-trained --model: its training prompt, quotes verified, the answer after <ANSWER>:)."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Drop answer sentences that no given source supports."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Answer with an OpenAI-compatible endpoint instead of a local model."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Environment variable with the endpoint's key."),
    runs_db: Optional[str] = typer.Option(None, "--runs-db", help="Runs database for the runs page (default <first KB>/runs.db)."),
    max_request_mb: Optional[float] = typer.Option(None, "--max-request-mb", help="Largest JSON request body (default 1)."),
    max_upload_mb: Optional[float] = typer.Option(None, "--max-upload-mb", help="Largest uploaded document (default 50)."),
    max_connections: int = typer.Option(512, "--max-connections", help="Open connections beyond this get 503 at once."),
    hash_key: Optional[str] = typer.Option(None, "--hash-key", help="Print KEY's sha256 form (for the config's api_keys) and exit."),
):
    """Serve knowledge bases over an OpenAI-compatible API with citations, plus a web UI at /ui/."""
    from rich.console import Console

    err = Console(stderr=True)
    if hash_key is not None:
        from .auth import hash_key as digest

        typer.echo(digest(hash_key))
        return
    from ..config import build
    from ..errors import ConfigError
    from .settings import ModelSettings, load_settings

    per_model = {name: value for name, value in (("backend", backend), ("weight_format", weight_format), ("lora", lora),
                 ("base_url", base_url), ("api_key_env", api_key_env), ("system_template", system_template),
                 ("question_template", question_template), ("worked_example", worked_example), ("prompt", prompt), ("strict", strict))
                if value is not None}
    overrides = dict(host=host, port=port, api_keys=api_key, slots=slots, queue=queue, search_threads=search_threads,
                     threads=threads, max_tokens=max_tokens, k=k, min_relevance=min_relevance, rewrite=rewrite,
                     runs_db=runs_db, max_request_mb=max_request_mb, max_upload_mb=max_upload_mb,
                     insecure=True if insecure else None)
    if model or per_model:
        if lora and model and len(model) > 1:
            raise ConfigError("--lora applies to one model; give one --model with it, or list models in --config")
        specs = [{"model": name, **per_model} for name in model] if model else [per_model]  # no --model: the best
        overrides["models"] = [build(ModelSettings, spec, "--model").model_dump() for spec in specs]
    settings = load_settings(config, overrides)
    settings = _with_readers(settings, kb[0] if kb else None, err)
    if not model:
        from ..models.profiles import answer_model

        default, note = answer_model(None)
        if any(spec.model == default for spec in settings.models):
            err.print(f"[dim]{note}[/]", highlight=False)

    from .app import create_app
    from .server import run
    from .state import ServeState

    err.print(f"loading {len(settings.models)} model(s) and {len(kb)} knowledge base(s)...", highlight=False)
    state = ServeState.open(kb, settings)
    app = create_app(state, close_state=True)
    shown = "localhost" if settings.host in ("127.0.0.1", "::1") else settings.host
    err.print(f"ragtune serving on http://{shown}:{settings.port}  (web UI /ui/, API /v1, docs /docs)", highlight=False)
    for model_id in state.models:
        err.print(f"  model {model_id}", highlight=False)
    err.print(f"  API keys: {len(state.keys)} configured" if state.keys.enabled else
              "  API keys: none (open to anyone who can reach this address)", highlight=False)
    run(app, settings.host, settings.port, max_connections=max_connections)


def _with_readers(settings, kb, err):
    """Each local model served with the first knowledge base's reader adapter where one is trained
    for it and its prompt allows (raft/reader.py), with a note saying so."""
    from ..raft.reader import reader_choice

    models = []
    for spec in settings.models:
        if spec.base_url or spec.backend == "transformers":
            models.append(spec)
            continue
        lora, prompt, note = reader_choice(kb, spec.model, spec.prompt, spec.lora)
        if note:
            err.print(f"[dim]{note}[/]", highlight=False)
        models.append(spec.model_copy(update={"lora": lora, "prompt": prompt}))
    return settings.model_copy(update={"models": models})
