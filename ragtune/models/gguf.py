"""The GGUF file of a packaged chat model, as llama.cpp loads it: in place, or parts joined once.

llama.cpp runs GGUF files as they are (quantised), so nothing is converted. A model split across
several packages (Qwen2.5-Coder-0.5B) is joined once into the cache (models/cache.py `joined_gguf`),
the same file the transformers conversion reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from .cache import default_cache_dir, joined_gguf
from .registry import get_model

logger = logging.getLogger(__name__)


def is_gguf_path(name: str | Path) -> bool:
    path = Path(name).expanduser()
    return path.suffix.lower() == ".gguf" and path.is_file()


def gguf_file(name: str | Path, cache_dir: Path | None = None) -> Path:
    """The GGUF file for a registered chat model or a path to a .gguf file; nothing is downloaded."""
    if is_gguf_path(name):
        return Path(name).expanduser().resolve()
    spec = get_model(str(name))
    if spec.format not in ("gguf", "gguf-parts"):
        raise ConfigError(f"model {spec.name!r} ({spec.format}) is not a GGUF model; use --backend transformers")
    return joined_gguf(spec, Path(cache_dir or default_cache_dir()))
