"""sentence-transformers models (the packaged MiniLM, or any local model directory) on torch.

`precision` is recorded in the knowledge base so queries are embedded the way documents were.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...runtime import quiet_transformers, set_torch_threads
from ..cache import resolve_model_dir
from .base import Embedder, normalise_rows


class SentenceTransformerEmbedder(Embedder):
    """Wraps sentence-transformers; fp32, or bf16 where the CPU computes it natively."""

    format = "sentence-transformers"

    def __init__(self, name: str, *, precision: str = "fp32", threads: int | None = None, cache_dir=None):
        super().__init__(name, precision=precision, threads=threads, cache_dir=cache_dir)
        self._dir: Path | None = None
        self._model = None
        self._tokenizer = None

    @property
    def model_dir(self) -> Path:
        if self._dir is None:
            self._dir = resolve_model_dir(self.name, self.cache_dir)
        return self._dir

    @property
    def max_tokens(self) -> int:
        """Longest input in tokens, excluding the [CLS]/[SEP] the model adds."""
        config = self.model_dir / "sentence_bert_config.json"
        if config.exists():
            return int(json.loads(config.read_text()).get("max_seq_length", 512)) - 2
        return 510

    @property
    def tokenizer(self):
        """The embedder's own tokenizer (loaded without the weights), used for exact chunk sizes."""
        if self._model is not None:
            return self._model.tokenizer
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self._tokenizer.model_max_length = 10**9  # we chunk long texts ourselves
        return self._tokenizer

    def load(self) -> "SentenceTransformerEmbedder":
        if self._model is None:
            set_torch_threads(self.threads)
            quiet_transformers()
            import torch
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
            if self.precision == "bf16":
                model = model.to(torch.bfloat16)
            model.eval()
            self._model = model
        return self

    @property
    def dimension(self) -> int:
        self.load()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode_query(self, text: str) -> np.ndarray:
        """One text, one vector, without encode()'s batching machinery: about 2 ms less per search
        on 2 cores (8.0 vs 10.3 ms for MiniLM bf16). Same model, same pooling, same normalisation."""
        self.load()
        import torch

        model = self._model
        prepare = getattr(model, "preprocess", None) or model.tokenize
        with torch.inference_mode():
            features = prepare([text])
            vector = model(features)["sentence_embedding"]
        return normalise_rows(vector.float().cpu().numpy()[0])

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text (sorted by length inside ST)."""
        self.load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        import torch

        with torch.inference_mode():
            vectors = self._model.encode(
                list(texts), batch_size=batch_size, convert_to_numpy=False, convert_to_tensor=True,
                normalize_embeddings=False, show_progress_bar=False,
            )
        # Normalised after the cast: normalising in bf16 leaves norms up to 0.4% off 1, which
        # skews inner-product ranking between documents.
        return normalise_rows(vectors.float().cpu().numpy())
