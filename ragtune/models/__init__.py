"""Packaged models: the registry (data) and resolution to local files."""

from .cache import cache_state, default_cache_dir, resolve_model_dir
from .registry import ModelSpec, find_model, get_model, is_local_model_dir, registered_models

__all__ = [
    "ModelSpec",
    "cache_state",
    "default_cache_dir",
    "find_model",
    "get_model",
    "is_local_model_dir",
    "registered_models",
    "resolve_model_dir",
]
