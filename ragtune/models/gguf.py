"""The GGUF file of a packaged chat model, as llama.cpp loads it: in place, or parts joined once.

llama.cpp runs GGUF files as they are (quantised), so nothing is converted. A model split across
several packages (Qwen2.5-Coder-0.5B) is joined once into the cache, under a name keyed by the
parts' content hash, and written atomically (a killed join never leaves a truncated model behind).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .cache import default_cache_dir, hash_files
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
    paths = spec.local_files()
    if spec.format == "gguf":
        return paths[0]
    cache_dir = Path(cache_dir or default_cache_dir()) / "gguf"
    cache_dir.mkdir(parents=True, exist_ok=True)
    stamp = cache_dir / "parts-index.txt"
    key = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    known = dict(line.split("\t", 1)[::-1] for line in stamp.read_text().splitlines() if "\t" in line) \
        if stamp.exists() else {}
    digest = known.get(key)
    if digest is not None and (cache_dir / f"{spec.name}-{digest[:16]}.gguf").is_file():
        return cache_dir / f"{spec.name}-{digest[:16]}.gguf"
    digest = hash_files(paths)
    target = cache_dir / f"{spec.name}-{digest[:16]}.gguf"
    if not target.is_file():
        logger.info("joining %d parts of %s into %s", len(paths), spec.name, target)
        handle, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                for part in paths:
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, out, 1 << 22)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    with open(stamp, "a") as index:
        index.write(f"{digest}\t{key}\n")
    return target
