"""Check the [n] citations in an answer against the sources the model was actually given."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

CITATION = re.compile(r"\[(\s*\d+(?:\s*[,;]\s*\d+)*\s*)\]")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
NOT_FOUND = ("do not know", "don't know", "not contain", "no information", "cannot find", "could not find",
             "not mentioned", "not in the sources")


@dataclass
class Citation:
    n: int
    doc_id: str
    source: str
    chunk_id: int
    start: int
    end: int
    page: int | None
    title: str | None = None
    inferred: bool = False  # True: the model cited nothing here; ragtune matched the sentence to this source


@dataclass
class CitationCheck:
    citations: list[Citation] = field(default_factory=list)  # valid ones, in order of first use
    unknown: list[int] = field(default_factory=list)  # numbers that match no given source
    uncited_sentences: list[str] = field(default_factory=list)  # claims the model cited nothing for
    unsupported_sentences: list[str] = field(default_factory=list)  # ... and no given source supports

    @property
    def grounded(self) -> bool:
        """Some citation, none unknown, and every claim either cited or supported by a given source."""
        return bool(self.citations) and not self.unknown and not self.unsupported_sentences

    def as_dict(self) -> dict:
        return {"citations": [asdict(c) for c in self.citations], "unknown_citations": self.unknown,
                "uncited_sentences": self.uncited_sentences, "unsupported_sentences": self.unsupported_sentences,
        "grounded": self.grounded}


def cited_numbers(text: str) -> list[int]:
    numbers = []
    for match in CITATION.finditer(text):
        numbers.extend(int(n) for n in re.findall(r"\d+", match.group(1)))
    return numbers


def check_citations(answer: str, sources) -> CitationCheck:
    check = CitationCheck()
    seen: set[int] = set()
    for n in cited_numbers(answer):
        if n in seen:
            continue
        seen.add(n)
        if 1 <= n <= len(sources):
            hit = sources[n - 1]
            check.citations.append(Citation(n, hit.doc_id, hit.source, hit.chunk_id, hit.start, hit.end, hit.page, hit.title))
        else:
            check.unknown.append(n)
    for sentence in SENTENCE.split(answer.strip()):
        sentence = sentence.strip()
        is_claim = len(sentence.split()) >= 4 and not any(p in sentence.lower() for p in NOT_FOUND)
        if is_claim and not CITATION.search(sentence):
            check.uncited_sentences.append(sentence)
            n = supporting_source(sentence, sources)
            if n is None:
                check.unsupported_sentences.append(sentence)
            elif n not in seen:
                seen.add(n)
                hit = sources[n - 1]
                check.citations.append(Citation(n, hit.doc_id, hit.source, hit.chunk_id, hit.start, hit.end, hit.page,
                                                hit.title, inferred=True))
    return check


WORD = re.compile(r"[^\W_]{3,}")
COMMON = frozenset("the and for are was were with that this from have has had not but its their they them which "
                   "what when where who how why into about also than then there these those been being".split())


def content_words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in COMMON}


def supporting_source(sentence: str, sources, min_share: float = 0.5) -> int | None:
    """The source sharing the most content words with an uncited sentence, if it covers at least
    `min_share` of them. Small models often answer correctly without writing [n]; this keeps such
    answers checkable, and the citation is marked `inferred` so nobody mistakes it for the model's."""
    words = content_words(sentence)
    if not words:
        return None
    best, best_share = None, 0.0
    for n, hit in enumerate(sources, start=1):
        share = len(words & content_words(hit.text)) / len(words)
        if share > best_share:
            best, best_share = n, share
    return best if best_share >= min_share else None
