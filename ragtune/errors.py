"""Typed errors whose text says what is wrong, the value, and the fix.

The CLI prints `str(error)` as one line and exits with `error.exit_code`; library users catch the
class they care about.
"""

from __future__ import annotations


class RagtuneError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = 1


class ConfigError(RagtuneError):
    """A configuration value or flag is invalid."""

    exit_code = 2


class ModelNotInstalledError(RagtuneError):
    """A registered model's package is missing; the message carries the pip command."""

    exit_code = 3


class ModelNotFoundError(RagtuneError):
    """A model name is neither registered nor a local model directory."""

    exit_code = 3


class KnowledgeBaseError(RagtuneError):
    """The knowledge base directory is missing, invalid, or from a newer ragtune."""

    exit_code = 4


class WriterBusyError(KnowledgeBaseError):
    """Another process holds the knowledge base's writer lock."""

    exit_code = 5


class LoaderError(RagtuneError):
    """One input file cannot be read; the batch goes on without it."""

    def __init__(self, path: str, reason: str, *, skipped: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        # skipped=True means "nothing to ingest here" (empty, unsupported) rather than a failure.
        self.skipped = skipped


class QueryError(RagtuneError):
    """A search query is empty, too long, or not text."""

    exit_code = 2
