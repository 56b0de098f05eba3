"""What `ragtune serve` is configured with: flags, an optional YAML file, and environment keys.

Typed and validated like the rest of ragtune (pydantic, errors name the flag). The YAML file holds
the same fields as the flags (plus per-model prompt settings); flags given on the command line win.
API keys come from three places and are merged: `--api-key` (repeatable), the file's `api_keys`
and `$RAGTUNE_API_KEYS` (comma-separated). They are hashed as soon as they are read (auth.py).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import build
from ..errors import ConfigError

KEYS_VARIABLE = "RAGTUNE_API_KEYS"
FLAGS = {"slots": "--slots", "queue": "--queue", "port": "--port", "host": "--host", "max_tokens": "--max-tokens",
         "max_request_mb": "--max-request-mb", "max_upload_mb": "--max-upload-mb", "k": "--k",
         "search_threads": "--search-threads", "min_relevance": "--min-relevance", "threads": "--threads"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _best_model() -> str:
    from ..models.profiles import best_chat_model

    return best_chat_model()[0]


class ModelSettings(_Strict):
    """One generator to serve: a registered name, a .gguf file, a model directory, a training run
    directory or, with base_url, an OpenAI-compatible endpoint; and the prompt it is served with."""

    model: str = Field(default_factory=lambda: _best_model(), description="--model")
    id: str | None = Field(None, description="name shown in /v1/models (default: derived from model)")
    backend: str = "auto"
    weight_format: str = "auto"
    lora: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    context_window: int | None = Field(None, ge=256)
    system_template: str | None = None  # a file with the system prompt
    question_template: str | None = None  # a file with the user prompt ({sources}, {question})
    worked_example: bool | None = None  # None: the model's measured profile
    # auto: grounded for local models, rag for endpoints; raft: a RAFT-trained model in its training prompt
    # reader: the grounded prompt over the KB's reader adapter (`ragtune raft reader`), used by auto when present
    prompt: Literal["auto", "grounded", "reader", "rag", "raft"] = "auto"
    strict: bool = False  # drop answer sentences no given source supports


class ServeSettings(_Strict):
    """Everything `create_app` needs besides the knowledge bases themselves."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list)  # plain keys or "sha256:<hex>" digests
    insecure: bool = False  # allow a non-loopback address without keys
    models: list[ModelSettings] = Field(default_factory=lambda: [ModelSettings()])
    slots: int = Field(4, ge=1, le=64, description="sequences each model decodes at once")
    queue: int = Field(16, ge=0, le=10_000, description="requests waiting for a slot before 429")
    search_threads: int = Field(4, ge=1, le=64)
    threads: int | None = Field(None, ge=1, le=512)
    max_tokens: int = Field(256, ge=1, le=32_768, description="default answer length")
    max_tokens_limit: int = Field(2048, ge=1, le=131_072, description="largest max_tokens a request may ask")
    k: int = Field(5, ge=1, le=100)
    mode: str = Field("hybrid", pattern="^(hybrid|dense|lexical)$")
    min_relevance: float = Field(0.3, ge=-1.0, le=1.0)
    rewrite: str = Field("concat", pattern="^(concat|llm)$", description="how chat follow-ups become standalone")
    max_request_mb: float = Field(1.0, gt=0, le=1024)
    max_upload_mb: float = Field(50.0, gt=0, le=10_240)
    max_messages: int = Field(64, ge=1, le=10_000)
    max_embedding_inputs: int = Field(256, ge=1, le=100_000)
    uploads_dir: str = Field("uploads", description="folder inside each KB that receives uploaded files")
    runs_db: str | None = None  # default: <first kb>/runs.db
    reports_dir: str | None = None  # where comparison reports are written (default: a temporary folder)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def load_settings(config: Path | None, overrides: dict) -> ServeSettings:
    """Settings from the YAML file (if any) with the command line's explicit values on top."""
    values: dict = {}
    if config is not None:
        import yaml

        try:
            values = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--config {config}: cannot read it: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"--config {config}: expected a mapping of settings, got {type(values).__name__}")
    keys = list(values.get("api_keys") or [])
    values.update({k: v for k, v in overrides.items() if v is not None and k != "api_keys"})
    values["api_keys"] = keys + list(overrides.get("api_keys") or []) + env_keys()
    settings = build(ServeSettings, values, f"--config {config}" if config else "serve options")
    for model in settings.models:
        if model.system_template or model.question_template:
            from ..answer.prompt import Templates

            Templates.from_files(system=model.system_template, question=model.question_template)  # fail now, not per request
    return settings


def env_keys() -> list[str]:
    """Keys from $RAGTUNE_API_KEYS, comma-separated; blanks ignored."""
    return [part.strip() for part in os.environ.get(KEYS_VARIABLE, "").split(",") if part.strip()]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: only this machine can reach a server bound there."""
    if host.strip().lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServeSettings, key_count: int) -> None:
    """Refuse to expose an unauthenticated server beyond this machine unless the user says so."""
    if key_count == 0 and not settings.insecure and not is_loopback(settings.host):
        raise ConfigError(
            f"--host {settings.host} is reachable from other machines and no API key is set; add --api-key KEY "
            f"(or ${KEYS_VARIABLE}), bind --host 127.0.0.1, or pass --insecure to serve without keys")
