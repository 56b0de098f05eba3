from __future__ import annotations

import random

import pytest

from ragtune.ingest import chunking
from ragtune.ingest.chunking import chunk_segments, chunk_text

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain protein".split()


def make_text(seed: int, paragraphs: int = 40) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 25))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("size,overlap", [(64, 0), (64, 16), (200, 32), (30, 10)])
def test_chunks_are_token_exact_with_exact_offsets(tokenizer, size, overlap):
    text = make_text(size + overlap)
    chunks = chunk_text(text, tokenizer, size, overlap)
    assert len(chunks) > 3
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.token_count <= size
        assert n_tokens(tokenizer, chunk.text) == chunk.token_count
    # the whole text is covered, in order
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())
    for before, after in zip(chunks, chunks[1:]):
        assert after.start > before.start
        if overlap:
            assert after.start < before.end
        else:  # nothing but whitespace is left out between chunks
            assert text[before.end : after.start].strip() == ""


@pytest.mark.parametrize("overlap", [8, 24])
def test_overlap_is_always_honoured(tokenizer, overlap):
    text = make_text(7)
    chunks = chunk_text(text, tokenizer, 80, overlap)
    for before, after in zip(chunks, chunks[1:]):
        shared = text[after.start : before.end]
        assert n_tokens(tokenizer, shared) >= overlap, (before.text[-80:], after.text[:80])


def test_boundaries_prefer_sentences_and_paragraphs(tokenizer):
    text = make_text(3)
    chunks = chunk_text(text, tokenizer, 100, 0)
    ends = [c.text[-1] for c in chunks[:-1]]
    assert sum(e in ".!?" for e in ends) / len(ends) > 0.9


def test_long_word_is_cut_when_no_boundary_exists(tokenizer):
    text = "-".join(["abc"] * 2000)  # no whitespace anywhere
    chunks = chunk_text(text, tokenizer, 50, 5)
    assert len(chunks) > 1
    assert all(c.token_count <= 50 for c in chunks)
    assert chunks[-1].end == len(text)


def test_streaming_windows_match_one_pass(tokenizer, monkeypatch):
    text = make_text(11, paragraphs=120)
    whole = chunk_text(text, tokenizer, 60, 12)
    monkeypatch.setattr(chunking, "WINDOW_CHARS", 1500)
    pieces = [text[i : i + 700] for i in range(0, len(text), 700)]
    streamed = list(chunk_segments(pieces, tokenizer, 60, 12))
    assert [(c.start, c.end) for c in streamed] == [(c.start, c.end) for c in whole]


def test_empty_and_whitespace_text_give_no_chunks(tokenizer):
    assert chunk_text("", tokenizer, 50, 5) == []
    assert chunk_text("   \n\n  ", tokenizer, 50, 5) == []
