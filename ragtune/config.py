"""Typed, validated configuration.

A knowledge base keeps its `KBConfig` in `ragtune.yaml`; ingest calls take `IngestOptions`.
Validation messages name the field and the CLI flag that sets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

# Field name -> CLI flag, so errors point at what the user typed.
FLAG_NAMES = {
    "chunk_size": "--chunk-size",
    "chunk_overlap": "--chunk-overlap",
    "batch_size": "--batch-size",
    "threads": "--threads",
    "embedder": "--embedder",
    "precision": "--precision",
    "max_file_mb": "--max-file-mb",
    "text_field": "--text-field",
    "id_field": "--id-field",
    "title_field": "--title-field",
    "include": "--glob",
    "exclude": "--exclude",
    "vector_store": "--vector-store",
    "milvus_uri": "--milvus-uri",
    "milvus_collection": "--milvus-collection",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IndexSettings(_Strict):
    """Dense index shape: exact search below `hnsw_min_chunks`, HNSW graph search from there up."""

    hnsw_min_chunks: int = Field(50_000, ge=1, description="switch from exact to HNSW at this many chunks")
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree")
    hnsw_ef_construction: int = Field(80, ge=8, le=2048, description="HNSW build beam width")
    hnsw_ef_search: int = Field(128, ge=8, le=4096, description="HNSW search beam width")


class KBConfig(_Strict):
    """How a knowledge base chunks and embeds; fixed at `ragtune init`, stored in ragtune.yaml."""

    embedder: str = Field("all-MiniLM-L6-v2", description="registered embedder name or local model dir")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="embedding compute precision; auto = bf16 where the CPU has native bf16, else fp32")
    chunk_size: int = Field(200, ge=16, le=8192, description="chunk length in embedder tokens")
    chunk_overlap: int = Field(32, ge=0, description="tokens shared by consecutive chunks")
    batch_size: int = Field(64, ge=1, le=4096, description="chunks per embedding batch")
    threads: int | None = Field(None, ge=1, le=512, description="torch threads; default: torch's choice")
    max_file_mb: float = Field(512.0, gt=0, description="larger files are skipped with a reason")
    index: IndexSettings = Field(default_factory=IndexSettings)
    vector_store: Literal["faiss", "milvus"] = Field(
        "faiss", description="where the vectors are searched: FAISS files in the KB, or a Milvus collection")
    milvus_uri: str | None = Field(
        None, description="Milvus server (http://host:19530) or milvus-lite file; default: index/milvus.db in the KB")
    milvus_collection: str = Field("ragtune_chunks", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
                                   description="the Milvus collection holding this KB's vectors")

    @model_validator(mode="after")
    def _milvus_uri_shape(self) -> "KBConfig":
        uri = self.milvus_uri
        if uri is not None and not (uri.startswith(("http://", "https://", "tcp://", "unix:")) or uri.endswith(".db")):
            raise ValueError(f"milvus_uri {uri!r} is neither a server (http://host:19530) nor a milvus-lite file "
                             "ending in .db; fix --milvus-uri")
        if uri is not None and self.vector_store != "milvus":
            raise ValueError("milvus_uri is set but vector_store is faiss; add --vector-store milvus")
        return self

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "KBConfig":
        if self.chunk_overlap >= self.chunk_size // 2:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be less than half of chunk_size "
                f"({self.chunk_size}); lower --chunk-overlap or raise --chunk-size"
            )
        return self


class RecordFields(_Strict):
    """Which fields of a JSON/JSONL record hold the text, id, title and metadata."""

    text_field: str = "text"
    id_field: str | None = None
    title_field: str | None = None
    metadata_fields: list[str] | None = None  # None: every other scalar field


class IngestOptions(_Strict):
    """Per-call ingest choices: which files, and how records are read."""

    include: list[str] = Field(default_factory=list, description="gitignore-style globs to include")
    exclude: list[str] = Field(default_factory=list, description="gitignore-style globs to exclude")
    fields: RecordFields = Field(default_factory=RecordFields)


def _describe(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "config"
        flag = FLAG_NAMES.get(str(item["loc"][-1]) if item["loc"] else "", "")
        where = f"{field} ({flag})" if flag else field
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"{where}: {item['msg']}{shown}")
    return f"{source}: " + "; ".join(parts)


def build(model: type[BaseModel], values: dict, source: str = "config"):
    """Validate `values` into `model`, turning pydantic errors into a ConfigError naming flags."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_yaml(model: type[BaseModel], path: Path):
    """Read and validate a YAML config file, naming the file in any error."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return build(model, values, str(path))


def save_yaml(config: BaseModel, path: Path) -> None:
    """Write a config as YAML (atomically, so a crash never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
