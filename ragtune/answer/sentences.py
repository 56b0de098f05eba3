"""Sentences of a retrieved chunk with their offsets, and the ones that matter for a question.

Why at sentence level: time to first token is prefill-bound on a CPU (llama.cpp fills a prompt at
~100-300 tokens/s here), and a small model reads a short, relevant context better than five whole
chunks. Each chunk keeps the sentences that share the most content words with the question (and
the best one by the embedder, when one is given), plus their neighbours; every kept sentence knows
its character span in the chunk, so a quote from it still points at the exact place in the document.

Hand-written because no library splits markdown-ish chunks into sentences *with offsets* the way
citations need (pysbd and nltk's punkt lose or shift offsets on bullets and code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .citations import content_words

# within a paragraph, a sentence ends at . ! ? followed by whitespace and a capital/number/quote/backtick
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(`*\[])")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
# a line starting one of these begins a block of its own (list item, heading, table row, quote, fence)
_BLOCK_START = re.compile(r"^\s*(?:[-*+]\s|\d+[.)]\s|#|\||>|```)")
_SINGLE_LINE = ("#", "|", "```")  # blocks that never continue on the next line
MIN_CHARS = 3


@dataclass(frozen=True)
class Sentence:
    text: str  # whitespace-normalised, bullet marker removed: what the model sees and may quote
    start: int  # span in the chunk's text
    end: int
    kind: str = "text"  # text | item (a list item) | code (a line of a code block) | line (heading, table row)


def blocks(text: str) -> list[tuple[int, int, str]]:
    """Spans of the paragraphs, list items, headings, table rows and code lines of `text`: wrapped
    lines of one paragraph stay together (markdown wraps sentences across lines)."""
    spans: list[list] = []
    open_block, fenced, position = False, False, 0
    for line in text.splitlines(keepends=True):
        start, end = position, position + len(line.rstrip("\r\n"))
        position += len(line)
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            open_block = False
            continue
        if not stripped:
            open_block = False
            continue
        if fenced or not open_block or _BLOCK_START.match(line):
            kind = ("code" if fenced else "item" if _BULLET.match(line)
                    else "line" if stripped.startswith(_SINGLE_LINE) else "text")
            spans.append([start, end, kind])
        else:
            spans[-1][1] = end
        open_block = not fenced and not stripped.startswith(_SINGLE_LINE)
    return [(a, b, kind) for a, b, kind in spans]


def split_with_offsets(text: str) -> list[Sentence]:
    """The sentences (and headings, list items, table rows, code lines) of `text`, with their spans."""
    sentences = []
    for block_start, block_end, kind in blocks(text):
        block = text[block_start:block_end]
        bullet = _BULLET.match(block)
        offset = bullet.end() if bullet else 0
        cuts = [offset, *(m.start() for m in _BOUNDARY.finditer(block, offset)), len(block)]
        ends = [m.end() for m in _BOUNDARY.finditer(block, offset)]
        starts = [offset, *ends]
        for piece_start, piece_end in zip(starts, cuts[1:]):
            piece = block[piece_start:piece_end]
            lead = len(piece) - len(piece.lstrip())
            body = piece.strip()
            normalised = " ".join(body.split())
            if len(normalised) >= MIN_CHARS and any(c.isalnum() for c in normalised):
                begin = block_start + piece_start + lead
                sentences.append(Sentence(normalised, begin, begin + len(body), kind))
    return sentences


@dataclass
class Passage:
    """A hit as the model sees it: some of its sentences, in document order."""

    hit: object
    sentences: list[Sentence]
    gaps: list[bool]  # gaps[i]: sentences were left out before sentences[i]
    trailing_gap: bool = False
    raw: bool = False  # shown as the chunk's own text (RAFT: exactly as in training)

    @property
    def text(self) -> str:
        if self.raw:
            return self.hit.text.strip()
        parts = []
        for sentence, gap in zip(self.sentences, self.gaps):
            parts.append(("… " if gap else "") + sentence.text)
        return "\n".join(parts) + ("\n…" if self.trailing_gap else "")


def whole(hit, *, raw: bool = False) -> Passage:
    sentences = split_with_offsets(hit.text)
    return Passage(hit, sentences, [False] * len(sentences), raw=raw)


def select(hit, question: str, *, keep: int = 3, neighbours: int = 1, vector_scores=None) -> Passage:
    """The `keep` sentences of `hit` that share most content words with the question (ties: the
    earlier), each with `neighbours` sentences either side. `vector_scores` (one per sentence, from
    an embedder) add to the overlap score. A chunk of few sentences is kept whole."""
    sentences = split_with_offsets(hit.text)
    if len(sentences) <= keep + 2 * neighbours:
        return Passage(hit, sentences, [False] * len(sentences))
    wanted = content_words(question)
    scores = []
    for i, sentence in enumerate(sentences):
        words = content_words(sentence.text)
        score = len(words & wanted) / (len(wanted) or 1)
        if vector_scores is not None:
            score += float(vector_scores[i])
        scores.append((score, -i))
    best = sorted(range(len(sentences)), key=lambda i: scores[i], reverse=True)[:keep]
    chosen = sorted({j for i in best for j in range(i - neighbours, i + neighbours + 1) if 0 <= j < len(sentences)})
    gaps = [(i == 0 and chosen[0] > 0) or (i > 0 and chosen[i] != chosen[i - 1] + 1) for i in range(len(chosen))]
    return Passage(hit, [sentences[i] for i in chosen], gaps, trailing_gap=chosen[-1] < len(sentences) - 1)


def introduced(sentences: list[Sentence], i: int) -> list[Sentence]:
    """The list items or code lines that follow sentence i when it introduces them ("...:")."""
    following = []
    for sentence in sentences[i + 1:]:
        if sentence.kind not in ("item", "code"):
            break
        following.append(sentence)
    return following
