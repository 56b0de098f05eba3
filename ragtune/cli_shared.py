"""What every `ragtune` sub-command shares: the consoles, the JSON printer and the common options.

Why a module of its own: the command modules (cli.py, evaluate/cli.py, finetune/*_cli.py, raft/cli.py,
serve/command.py) each need these, and importing them from cli.py would be circular.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
THREADS_OPTION = typer.Option(None, "--threads", help="Torch threads (default: the KB's setting, else torch's).")
WAIT_OPTION = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish.")
RAY_OPTION = typer.Option(False, "--ray", help="Run on a Ray cluster (a local Ray when none is named); see docs/scale.md.")
RAY_ADDRESS_OPTION = typer.Option(None, "--ray-address", help="With --ray: the cluster's head (host:port); "
                                  "default: RAY_ADDRESS, else a local Ray.")
WORKERS_OPTION = typer.Option(2, "--workers", help="With --ray: workers (embedding actors, training processes, model "
                              "replicas) and the "
                              "CPUs of a local Ray.")


def ray_settings(ray: bool, ray_address, workers: int) -> dict:
    """The --ray flags as keyword arguments; --ray-address or --workers without --ray is an error.
    With --ray, what Ray's background threads print goes to stderr (see `MainThreadStdout`)."""
    from .errors import ConfigError

    if not ray and (ray_address or workers != 2):
        raise ConfigError("--ray-address and --workers apply to --ray; add --ray")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: use at least 1")
    if ray and not isinstance(sys.stdout, MainThreadStdout):
        sys.stdout = MainThreadStdout(sys.stdout, sys.stderr)
    return {"ray": ray, "ray_address": ray_address, "workers": workers}


class MainThreadStdout:
    """stdout for what the command itself prints (its tables, its --json result); text written from other
    threads goes to stderr. Ray's driver prints a worker's death and the workers' output from background
    threads, and to stdout (ray/_private/worker.py, `listen_error_messages`), which broke `--json`
    output the moment a worker died; Ray has no setting for where those lines go."""

    def __init__(self, main, other):
        self._main, self._other = main, other

    def write(self, text: str) -> int:
        import threading

        target = self._main if threading.current_thread() is threading.main_thread() else self._other
        return target.write(text)

    def flush(self) -> None:
        self._main.flush()
        self._other.flush()

    def __getattr__(self, name):
        return getattr(self._main, name)


def stage_printer(quiet: bool):
    """`stage(text)` for long multi-stage commands: a spinner with `text` that yields `update(more)`
    (progress shown beside it; None when quiet), then a "done ... (N s)" line on stderr."""
    import contextlib
    import time

    from rich.markup import escape

    @contextlib.contextmanager
    def stage(text: str):
        started = time.perf_counter()
        with err.status(escape(text) + " ...", spinner="dots") if not quiet else contextlib.nullcontext() as status:
            yield (lambda more: status.update(f"{escape(text)} ... {escape(more)}")) if status is not None else None
        if not quiet:
            err.print(f"[green]done[/] {escape(text)} ({time.perf_counter() - started:.0f} s)")

    return stage


def _emit_json(data) -> None:
    """Every command's --json output (non-ASCII text kept readable)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


MODEL_OPTION = typer.Option(None, "--model", help="Registered model name, .gguf file or local model directory (default: the best installed chat model by measured answers); with --base-url, the served model's name.")
API_KEY_ENV_OPTION = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the endpoint's key.")
TIMEOUT_OPTION = typer.Option(120.0, "--timeout", help="Seconds to wait for an endpoint.")
BACKEND_OPTION = typer.Option("auto", "--backend", help="Local runtime: auto (llama.cpp for GGUF models where it is installed, else transformers), llamacpp or transformers.")
LORA_OPTION = typer.Option(None, "--lora", help="A GGUF LoRA adapter (`ragtune export RUN --gguf-adapter`) applied over --model on llama.cpp.")
WORKED_EXAMPLE_OPTION = typer.Option(None, "--worked-example/--no-worked-example", help="Show the model one worked question and answer first (default: the model's measured profile).")
PROMPT_OPTION = typer.Option("auto", "--prompt", help="auto (the knowledge base's reader adapter when `ragtune raft reader` trained one, else the model's measured profile: grounded for Qwen, rag for SmolLM2 and endpoints), reader (the grounded prompt over that adapter), grounded (answer, then the quoted sentence that says it; quotes verified, the citation is the sentence holding the answer), rag (answer citing sources as \\[n]) or raft (a RAFT-trained --model in its training prompt).")
STRICT_OPTION = typer.Option(False, "--strict", help="Drop answer sentences that no given source supports.")
WEIGHT_FORMAT_OPTION = typer.Option("auto", "--weight-format", help="llama.cpp weights: auto (the type measured fastest on this CPU, once), source (as shipped), Q4_0, Q8_0, F16, BF16 or F32.")
BASE_URL_OPTION = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (key from $OPENAI_API_KEY or --api-key-env).")
