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


@dataclass
class CitationCheck:
    citations: list[Citation] = field(default_factory=list)  # valid ones, in order of first use
    unknown: list[int] = field(default_factory=list)  # numbers that match no given source
    uncited_sentences: list[str] = field(default_factory=list)  # claims that cite nothing

    @property
    def grounded(self) -> bool:
        """At least one valid citation, none unknown, every claim-like sentence cites something."""
        return bool(self.citations) and not self.unknown and not self.uncited_sentences

    def as_dict(self) -> dict:
        return {"citations": [asdict(c) for c in self.citations], "unknown_citations": self.unknown,
                "uncited_sentences": self.uncited_sentences, "grounded": self.grounded}


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
    return check
