"""Resolve a model name to a local Hugging Face directory, converting GGUF files once.

transformers dequantises GGUF to full precision on every load (30-70 s); we do that once and keep
the result as safetensors in a cache directory keyed by the source file's content hash, so a
second load takes seconds and a changed package never serves a stale conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .registry import ModelSpec, get_model, is_local_model_dir

logger = logging.getLogger(__name__)
COMPLETE_MARKER = ".ragtune-complete"


def default_cache_dir() -> Path:
    """`$RAGTUNE_CACHE_DIR`, else the platform's user cache dir (e.g. ~/.cache/ragtune)."""
    override = os.environ.get("RAGTUNE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ragtune"))


def hash_files(paths: list[Path], chunk_bytes: int = 1 << 22) -> str:
    """sha256 over the concatenated contents of `paths`, streamed."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
    return digest.hexdigest()


def _source_key(paths: list[Path]) -> str:
    # Hashing 500 MB takes about a second; remember it per (path, size, mtime) to skip even that.
    stamp = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    return hashlib.sha256(stamp.encode()).hexdigest()[:24]


def conversion_dir(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """Where the converted checkpoint of `spec` lives, if it is complete; None otherwise."""
    paths = spec.local_files()
    index = cache_dir / "hash-index.json"
    known = json.loads(index.read_text()) if index.exists() else {}
    digest = known.get(_source_key(paths))
    if digest is None:
        return None
    target = cache_dir / "converted" / f"{spec.name}-{digest[:16]}"
    return target if (target / COMPLETE_MARKER).exists() else None


def _remember_hash(cache_dir: Path, paths: list[Path], digest: str) -> None:
    index = cache_dir / "hash-index.json"
    known = json.loads(index.read_text()) if index.exists() else {}
    known[_source_key(paths)] = digest
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(index)


def cache_state(spec: ModelSpec, cache_dir: Path | None = None) -> str:
    """'n/a' (used in place), 'cached', 'not converted', or 'not installed'."""
    if spec.format not in ("gguf", "gguf-parts"):
        return "n/a"
    if not spec.installed:
        return "not installed"
    return "cached" if conversion_dir(spec, cache_dir or default_cache_dir()) else "not converted"


def _convert_gguf(spec: ModelSpec, gguf_file: Path, target: Path, progress) -> None:
    """Dequantise a GGUF checkpoint into a safetensors directory (atomic: tmp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"converting {spec.name} from GGUF once (30-70 s); later loads use the cache")
    logger.info("converting %s from %s to safetensors in %s", spec.name, gguf_file, target)
    started = time.perf_counter()
    # local_files_only: a local GGUF file, never a download (offline without relying on HF_HUB_OFFLINE)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, local_files_only=True)
    # The weights are now plain tensors; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "ragtune-source.json").write_text(
            json.dumps({"model": spec.name, "packages": list(spec.packages), "format": spec.format})
        )
        (staging / COMPLETE_MARKER).touch()
        if target.exists():
            logger.info("replacing %s (left by an interrupted or concurrent conversion)", target)
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("converted %s in %.0f s; cached in %s", spec.name, time.perf_counter() - started, target)


def resolve_model_dir(name: str | Path, cache_dir: Path | None = None, progress=lambda _m: None) -> Path:
    """A local directory loadable by transformers / sentence-transformers for `name`.

    `name` is a registered model (or alias) or a local Hugging Face model directory. Nothing is
    downloaded: loaders given the result pass `local_files_only=True`.
    """
    if is_local_model_dir(name):
        return Path(name).expanduser().resolve()
    spec = get_model(str(name))
    paths = spec.local_files()
    if spec.format == "sentence-transformers":
        logger.debug("model %s: %s", spec.name, paths[0])
        return paths[0]
    if spec.format not in ("gguf", "gguf-parts"):
        from ..errors import ConfigError

        raise ConfigError(f"model {spec.name!r} ({spec.format}) has no Hugging Face directory form")
    cache_dir = Path(cache_dir or default_cache_dir())
    found = conversion_dir(spec, cache_dir)
    if found:
        logger.debug("model %s: cached conversion %s", spec.name, found)
        return found
    digest = hash_files(paths)
    target = cache_dir / "converted" / f"{spec.name}-{digest[:16]}"
    if (target / COMPLETE_MARKER).exists():
        logger.info("model %s: source files hashed again, unchanged; reusing the conversion in %s", spec.name, target)
    else:
        if spec.format == "gguf":
            _convert_gguf(spec, paths[0], target, progress)
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)  # the parts are joined inside it
            with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
                joined = Path(tmp) / f"{spec.name}.gguf"
                progress(f"joining {len(paths)} parts of {spec.name}")
                logger.info("joining %d parts of %s into %s", len(paths), spec.name, joined)
                with open(joined, "wb") as out:
                    for part in paths:
                        with open(part, "rb") as handle:
                            shutil.copyfileobj(handle, out, 1 << 22)
                _convert_gguf(spec, joined, target, progress)
    _remember_hash(cache_dir, paths, digest)
    return target
