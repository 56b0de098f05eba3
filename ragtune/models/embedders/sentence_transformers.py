"""sentence-transformers models (the packaged MiniLM, or any local model directory) on torch.

`precision` is recorded in the knowledge base so queries are embedded the way documents were.

A model saved as Transformer -> mean Pooling (-> Normalize), the layout of the packaged MiniLM and of
most sentence-transformers checkpoints, runs on transformers directly: importing sentence-transformers
pulls in scikit-learn, scipy, pandas and its trainer, about 3 s of every CLI command that embeds on 2
cores (a search took 12 s, of which 9 s were imports). Same tokenizer call, same pooling, same
vectors (tests/test_embedders.py compares them with sentence-transformers'). Any other layout
(CLS pooling, Dense layers, prompts) is run by sentence-transformers itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...runtime import quiet_transformers, set_torch_threads
from ..cache import resolve_model_dir
from .base import Embedder, normalise_rows


def mean_pooling_layout(model_dir: Path) -> int | None:
    """The longest input (tokens) when `model_dir` is Transformer -> mean Pooling (-> Normalize) with
    no prompts or lower-casing, else None (sentence-transformers then runs it)."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or modules[0]["path"]:
            return None
        pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
        settings = _json_or_empty(model_dir / "sentence_bert_config.json")
        extras = _json_or_empty(model_dir / "config_sentence_transformers.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    modes = {key for key, value in pooling.items() if key.startswith("pooling_mode") and value}
    if modes != {"pooling_mode_mean_tokens"} or set(settings) - {"max_seq_length", "do_lower_case"}:
        return None
    if settings.get("do_lower_case") or extras.get("prompts") or extras.get("default_prompt_name"):
        return None
    return int(settings.get("max_seq_length") or 512)


def _json_or_empty(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


class _MeanPooled:
    """Transformer -> masked mean -> L2 norm, the three modules sentence-transformers would run."""

    def __init__(self, model_dir: Path, max_length: int, dtype):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype).eval()
        self.max_length = max_length
        self.tokenizer.model_max_length = 10**9  # the chunker tokenizes whole texts; calls pass max_length

    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def __call__(self, texts: list[str]):
        import torch

        features = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_length,
                                  return_tensors="pt")
        hidden = self.model(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


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

            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            max_length = mean_pooling_layout(self.model_dir)
            if max_length is not None:
                self._model = _MeanPooled(self.model_dir, max_length, dtype)
                return self
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
            self._model = model.to(dtype).eval()
        return self

    @property
    def dimension(self) -> int:
        self.load()
        if isinstance(self._model, _MeanPooled):
            return self._model.dimension()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode_query(self, text: str) -> np.ndarray:
        """One text, one vector, without encode()'s batching machinery: about 2 ms less per search
        on 2 cores (8.0 vs 10.3 ms for MiniLM bf16). Same model, same pooling, same normalisation."""
        self.load()
        import torch

        model = self._model
        if isinstance(model, _MeanPooled):
            with torch.inference_mode():
                return normalise_rows(model([text]).float().cpu().numpy()[0])
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

        if isinstance(self._model, _MeanPooled):
            return normalise_rows(self._encode_sorted(texts, batch_size))
        with torch.inference_mode():
            vectors = self._model.encode(
                list(texts), batch_size=batch_size, convert_to_numpy=False, convert_to_tensor=True,
                normalize_embeddings=False, show_progress_bar=False,
            )
        # Normalised after the cast: normalising in bf16 leaves norms up to 0.4% off 1, which
        # skews inner-product ranking between documents.
        return normalise_rows(vectors.float().cpu().numpy())

    def _encode_sorted(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Batches of similar length (longest first, as sentence-transformers orders them: less padding)."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self._model.dimension()), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = self._model([texts[i] for i in rows]).float().cpu().numpy()
        return out
