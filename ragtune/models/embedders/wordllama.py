"""WordLlama: static token embeddings (256-d, Llama-2 vocabulary) averaged over a text.

No neural network, no attention: a text's vector is the mean of its tokens' rows in a 32k x 256 table,
so it embeds about 40 times faster than MiniLM in bf16 (1160 vs 29 passages/s on 2 cores) and is
far weaker at meaning (word order is ignored).
Good for unit tests, huge corpora and a first pass. The weights and tokenizer ship inside the
`wordllama` package; it is loaded with downloads disabled.

Tokens: WordLlama's own Llama-2 tokenizer, special tokens off, exactly as its `embed` tokenizes.
Static embeddings have no position limit, so `max_tokens` is the largest chunk size ragtune
accepts; the chunk size only sets how much text one vector stands for. `precision` and `threads`
have no effect (one float32 gather and mean per text; the tokenizer runs single-threaded).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..registry import get_model
from .base import Embedder, normalise_rows
from .tokenization import SpanTokenizer

log = logging.getLogger(__name__)

CONFIG = "l2_supercat"  # the configuration whose weights the package ships
DIMENSION = 256
NO_POSITION_LIMIT = 8192  # KBConfig.chunk_size's upper bound


@contextmanager
def _keep_root_logging():
    """wordllama calls logging.basicConfig(level=INFO) at import, which would turn on INFO output
    for every library in the process; undo that."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


@lru_cache(maxsize=2)
def _tokenizer(path: str) -> SpanTokenizer:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(path)
    backend.no_padding()
    backend.no_truncation()
    return SpanTokenizer(backend)


class WordLlamaEmbedder(Embedder):
    """Mean of static token embeddings; vectors L2-normalised like every other backend's."""

    format = "wordllama"

    def __init__(self, name: str, *, precision: str = "fp32", threads: int | None = None, cache_dir=None):
        super().__init__(name, precision=precision, threads=threads, cache_dir=cache_dir)
        self.spec = get_model(name)
        self._files: list[Path] | None = None
        self._model = None

    @property
    def files(self) -> list[Path]:
        """[weights.safetensors, tokenizer.json] inside the installed package."""
        if self._files is None:
            self._files = self._spec_files(self.spec)
        return self._files

    @property
    def max_tokens(self) -> int:
        self.files  # a missing package fails here, when the knowledge base first needs the embedder
        return NO_POSITION_LIMIT

    @property
    def tokenizer(self) -> SpanTokenizer:
        return _tokenizer(str(self.files[1]))

    @property
    def dimension(self) -> int:
        return int(self.load()._model.embedding.shape[1])

    def load(self) -> "WordLlamaEmbedder":
        if self._model is None:
            self._ignore_precision()
            weights = self.files[0]
            with _keep_root_logging():
                from wordllama import WordLlama

                # The package directory holds weights/ and tokenizers/ as WordLlama expects of a
                # cache dir; with downloads disabled a missing file is an error, never a fetch.
                self._model = WordLlama.load(CONFIG, cache_dir=weights.parent.parent, dim=DIMENSION,
                                             disable_download=True)
            log.debug("loaded %s from %s", self.name, weights)
        return self

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.load()
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # norm=False: wordllama divides by zero (NaN) for a text with no tokens; we normalise safely.
        return normalise_rows(self._model.embed(texts, norm=False, batch_size=max(1, batch_size)))

    def encode_query(self, text: str) -> np.ndarray:
        """Tokenize, gather, mean: skips `embed`'s batch padding and masks."""
        self.load()
        table = self._model.embedding
        ids = np.clip(np.asarray(self.tokenizer.backend.encode(text, add_special_tokens=False).ids, dtype=np.int64),
                      0, table.shape[0] - 1)
        if ids.size == 0:
            return np.zeros(table.shape[1], dtype=np.float32)
        return normalise_rows(table[ids].sum(axis=0, dtype=np.float32) / np.float32(ids.size))
