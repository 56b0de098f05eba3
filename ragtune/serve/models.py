"""The generators a server answers with, each loaded once, and the prompt each is served with.

Every model ragtune accepts can be served: a registered name, a .gguf file, a GGUF LoRA adapter
over a base (`lora`), a model directory (an export), an OpenAI-compatible endpoint (`base_url`),
and a training run directory. A run is served on llama.cpp, the fast local runtime, where it can
be: a LoRA run as a GGUF adapter over its packaged base, a full or layer-frozen run as a full GGUF,
converted once and cached by the run's file fingerprint; elsewhere it falls back to transformers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..answer.prompt import Templates
from ..errors import ConfigError
from .limits import GenerationGate
from .settings import ModelSettings, ServeSettings

log = logging.getLogger(__name__)


@dataclass
class ServedGenerator:
    """One loaded generator, its prompt, and the gate that bounds its concurrent work."""

    label: str
    generator: object
    templates: Templates
    gate: GenerationGate
    settings: ModelSettings
    runtime: str  # llamacpp, transformers or endpoint


def _label(spec: ModelSettings) -> str:
    if spec.id:
        return spec.id
    path = Path(spec.model).expanduser()
    name = path.stem if path.suffix.lower() == ".gguf" else path.name if (path.exists() or "/" in spec.model) else spec.model
    if spec.lora:
        name += "+" + Path(spec.lora).stem
    return name


def _is_run_dir(model: str) -> bool:
    path = Path(model).expanduser()
    return path.is_dir() and (path / "recipe.yaml").is_file()


def run_as_gguf(run_dir: Path, cache_dir: Path | None = None) -> tuple[str, str | None]:
    """(model, lora) that llama.cpp runs for a training run, converting once into the cache."""
    from ..finetune.export import load_run_recipe
    from ..finetune.gguf_export import export_gguf, export_gguf_adapter
    from ..models.cache import default_cache_dir
    from ..store.runs import model_hash

    recipe = load_run_recipe(run_dir)
    fingerprint = (model_hash(str(run_dir / "model")) or "none").split(":")[-1][:16]
    folder = Path(cache_dir or default_cache_dir()) / "serve" / f"{run_dir.name}-{fingerprint}"
    folder.mkdir(parents=True, exist_ok=True)
    if recipe.method in ("lora", "qlora"):
        adapter = folder / "adapter.gguf"
        if not adapter.exists():
            log.info("converting the LoRA run %s to a GGUF adapter over %s (once)", run_dir, recipe.model)
            export_gguf_adapter(run_dir, adapter)
        return recipe.model, str(adapter)
    full = folder / "model.gguf"
    if not full.exists():
        log.info("converting the %s run %s to a GGUF model (once)", recipe.method, run_dir)
        export_gguf(run_dir, full)
    return str(full), None


def load_generator(spec: ModelSettings, settings: ServeSettings, *, cache_dir: Path | None = None) -> ServedGenerator:
    """Build and load one generator; its gate allows `slots` at once where the runtime batches them.
    `cache_dir`: where converted training runs are kept (default: ragtune's cache)."""
    from ..generate import make_generator
    from ..generate.base import choose_backend

    model, lora = spec.model, spec.lora
    if not spec.base_url and _is_run_dir(model) and spec.backend != "transformers":
        from ..generate.llamacpp import unavailable_reason

        if unavailable_reason() is None:
            if lora:
                raise ConfigError(f"--lora cannot be combined with the run directory {model}: the run brings its own weights")
            model, lora = run_as_gguf(Path(model).expanduser(), cache_dir)
        else:
            model = str(Path(model).expanduser() / "model")
            log.warning("llama.cpp is not available here, so the run %s is served on transformers", spec.model)
    elif _is_run_dir(model):
        model = str(Path(model).expanduser() / "model")
    runtime = "endpoint" if spec.base_url else choose_backend(model, spec.backend)
    slots = settings.slots if runtime in ("llamacpp", "endpoint") else 1  # transformers decodes one sequence at a time
    generator = make_generator(model, base_url=spec.base_url, api_key_env=spec.api_key_env, threads=settings.threads,
                               context_window=spec.context_window, backend=spec.backend,
                               weight_format=spec.weight_format, slots=slots, lora=lora)
    if hasattr(generator, "load"):
        generator.load()
    if spec.prompt == "raft":
        from ..raft.prompt import raft_templates

        if spec.system_template or spec.question_template or spec.worked_example:
            raise ConfigError("--prompt raft serves the model with the RAFT prompt it was trained on; drop "
                              "--system-template, --question-template and --worked-example")
        templates = raft_templates()
    else:
        templates = Templates.from_files(system=spec.system_template, question=spec.question_template)
        templates.example = spec.worked_example
    log.info("serving %s on %s with %d slot(s) and a queue of %d", _label(spec), runtime, slots, settings.queue)
    return ServedGenerator(_label(spec), generator, templates, GenerationGate(slots, settings.queue), spec, runtime)


def load_generators(settings: ServeSettings) -> list[ServedGenerator]:
    served = [load_generator(spec, settings) for spec in settings.models]
    labels = [s.label for s in served]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"--model: {', '.join(duplicates)} is given twice; give each model once (or an id in --config)")
    return served
