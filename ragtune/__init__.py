"""ragtune: adapt a language model to your own documents and tasks, locally.

The public API is flat and imports nothing heavy until used.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "KnowledgeBase": ("ragtune.kb", "KnowledgeBase"),
    "KBConfig": ("ragtune.config", "KBConfig"),
    "IngestOptions": ("ragtune.config", "IngestOptions"),
    "RecordFields": ("ragtune.config", "RecordFields"),
    "RagtuneError": ("ragtune.errors", "RagtuneError"),
    "QueryError": ("ragtune.errors", "QueryError"),
    "Hit": ("ragtune.retrieve.hits", "Hit"),
    "SearchOptions": ("ragtune.retrieve.search", "SearchOptions"),
    "evaluate_retrieval": ("ragtune.evaluate.beir", "evaluate_retrieval"),
    "retrieval_metrics": ("ragtune.evaluate.metrics", "evaluate"),
    "Embedder": ("ragtune.models.embedder", "Embedder"),
    "resolve_model_dir": ("ragtune.models.cache", "resolve_model_dir"),
    "registered_models": ("ragtune.models.registry", "registered_models"),
    "check_file": ("ragtune.finetune.check", "check_file"),
    "prepare_data": ("ragtune.finetune.prepare", "prepare"),
    "read_examples": ("ragtune.finetune.formats", "read_examples"),
    "Recipe": ("ragtune.finetune.recipe", "Recipe"),
    "load_recipe": ("ragtune.finetune.recipe", "load_recipe"),
    "train": ("ragtune.finetune.run", "train"),
    "tune": ("ragtune.finetune.hpo", "tune"),
    "export_run": ("ragtune.finetune.export", "export_run"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'ragtune' has no attribute {name!r}")
