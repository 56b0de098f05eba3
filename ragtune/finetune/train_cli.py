"""`ragtune train`, `ragtune tune` and `ragtune export`: thin commands over finetune/ (imports stay
light here; torch and transformers load only when a command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..cli_shared import RAY_ADDRESS_OPTION, RAY_OPTION, WORKERS_OPTION, _emit_json, err, ray_settings

def _recipe(path: Path, threads: Optional[int], output_dir: Optional[Path]):
    from .recipe import load_recipe

    recipe = load_recipe(path)
    updates = {}
    if threads:
        updates["training"] = recipe.training.model_copy(update={"threads": threads})
    if output_dir:
        updates["output_dir"] = output_dir.expanduser().resolve()
    return recipe.model_copy(update=updates) if updates else recipe


def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint (after a crash or kill)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Run directory (default: the recipe's output_dir, else runs/NAME)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: the recipe's training.threads, else torch's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's result as JSON on stdout."),
    ray: bool = RAY_OPTION,
    ray_address: Optional[str] = RAY_ADDRESS_OPTION,
    workers: int = WORKERS_OPTION,
):
    """Fine-tune a model: lora | qlora | full | freeze | classify, as the recipe says."""
    settings = ray_settings(ray, ray_address, workers)
    if ray:
        from .ray_train import train_on_ray

        result = train_on_ray(_recipe(recipe, threads, output_dir), workers=workers, address=settings["ray_address"],
                              resume=resume, progress=not as_json, console=err)
    else:
        from .run import train as run_training

        result = run_training(_recipe(recipe, threads, output_dir), resume=resume, progress=not as_json)
    if as_json:
        _emit_json(result.as_dict())


def tune(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a `search:` section."),
    search: str = typer.Option("bayes", "--search", help="grid | random | bayes (Optuna TPE)."),
    trials: int = typer.Option(10, "--trials", help="Number of trainings to run."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Study directory (default: the recipe's run directory)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per trial."),
    as_json: bool = typer.Option(False, "--json", help="Print the trials as JSON on stdout."),
):
    """Search hyperparameters over the recipe's declared ranges; writes the best recipe."""
    from .hpo import print_trials, tune as run_tune

    result = run_tune(_recipe(recipe, threads, output_dir), search=search, trials=trials, console=err)
    if as_json:
        _emit_json(result.as_dict())
    else:
        print_trials(Console(), result)


def export(
    run: Path = typer.Argument(..., help="Run directory written by `ragtune train`."),
    merge: Optional[Path] = typer.Option(None, "--merge", help="Write the model with LoRA merged into the base here."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="Write only the LoRA adapter here (no merge)."),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="Write the full model (LoRA merged) as one F32 GGUF file for llama.cpp."),
    gguf_adapter: Optional[Path] = typer.Option(None, "--gguf-adapter",
                                                help="Write the LoRA adapter as a GGUF adapter for llama.cpp over the packaged base GGUF."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
):
    """Export a run as a standalone model folder (safetensors, tokenizer, chat template, model card) or as GGUF."""
    from ..errors import ConfigError

    chosen = [value for value in (merge, adapter, gguf, gguf_adapter) if value is not None]
    if len(chosen) != 1:
        raise ConfigError("pass exactly one of --merge OUT (a full model), --adapter OUT (the LoRA adapter alone), "
                          "--gguf OUT.gguf (a full model for llama.cpp) or --gguf-adapter OUT.gguf (a LoRA adapter for llama.cpp)")
    if gguf is not None or gguf_adapter is not None:
        from .gguf_export import export_gguf, export_gguf_adapter

        if gguf is not None:
            out = export_gguf(run, gguf, overwrite=overwrite)
            Console().print(f"exported to {out}; use it with --backend llamacpp --model {out}", highlight=False)
        else:
            out = export_gguf_adapter(run, gguf_adapter, overwrite=overwrite)
            Console().print(f"exported the LoRA adapter to {out}; llama.cpp applies it over the base model's GGUF", highlight=False)
        return
    from .export import export_run

    out = export_run(run, merge or adapter, merge=merge is not None, overwrite=overwrite)
    Console().print(f"exported to {out}; use it with --model {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(tune)
    app.command()(export)
