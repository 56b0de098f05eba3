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


def known_digest(paths: list[Path], cache_dir: Path) -> str | None:
    """The content hash of `paths` remembered for their current (path, size, mtime), if any."""
    return _read_index(cache_dir).get(_source_key(paths))


def source_digest(paths: list[Path], cache_dir: Path) -> str:
    """sha256 of the files' contents, hashed once per (path, size, mtime) and remembered."""
    digest = known_digest(paths, cache_dir)
    if digest is None:
        digest = hash_files(paths)
        _remember_hash(cache_dir, paths, digest)
    return digest


def _read_index(cache_dir: Path) -> dict:
    index = cache_dir / "hash-index.json"
    try:
        return json.loads(index.read_text()) if index.exists() else {}
    except (OSError, ValueError):
        return {}  # a damaged index only costs a re-hash


def _remember_hash(cache_dir: Path, paths: list[Path], digest: str) -> None:
    known = _read_index(cache_dir)
    known[_source_key(paths)] = digest
    cache_dir.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".json.tmp")  # unique: concurrent writers never collide
    with os.fdopen(handle, "w") as out:
        json.dump(known, out, indent=1)
    os.replace(tmp, cache_dir / "hash-index.json")


def conversion_dir(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """Where the converted checkpoint of `spec` lives, if it is complete; None otherwise."""
    digest = known_digest(spec.local_files(), cache_dir)
    if digest is None:
        return None
    target = cache_dir / "converted" / f"{spec.name}-{digest[:16]}"
    return target if (target / COMPLETE_MARKER).exists() else None


def joined_gguf(spec: ModelSpec, cache_dir: Path, progress=lambda _m: None) -> Path:
    """One GGUF file for a model whose packages ship it in parts, joined once into the cache under
    its content hash and written atomically (a killed join never leaves a truncated model behind)."""
    paths = spec.local_files()
    if spec.format == "gguf":
        return paths[0]
    target = cache_dir / "gguf" / f"{spec.name}-{source_digest(paths, cache_dir)[:16]}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    progress(f"joining {len(paths)} parts of {spec.name}")
    logger.info("joining %d parts of %s into %s", len(paths), spec.name, target)
    handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            for part in paths:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 22)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


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
    digest = source_digest(paths, cache_dir)
    target = cache_dir / "converted" / f"{spec.name}-{digest[:16]}"
    if not (target / COMPLETE_MARKER).exists():
        _convert_gguf(spec, joined_gguf(spec, cache_dir, progress), target, progress)
    return target
