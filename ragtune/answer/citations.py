"""Check the [n] citations in an answer against the sources the model was actually given.

A citation number that exists is not enough: a small model will happily write "[2]" after a sentence
that source 2 never says. So every claim sentence is scored against the source(s) it cites:

* content-word overlap: the share of the sentence's content words (crudely stemmed) found in the source;
* cosine similarity from the knowledge base's embedder (optional): the sentence against each sentence
  of the source and against the whole source, best one;
* a hard rule: a number or capitalised name in the sentence that the source does not contain
  ("1912" where the source says 1921, "Severn" where it says Otter) makes the sentence unsupported.

Each claim sentence ends up `supported`, `cited_unsupported`, `inferred` (no [n], but a given source
supports it: the citation is added, marked inferred) or `unsupported` (no [n], no source supports it).
The thresholds are calibrated on tests/data/citation_support.jsonl by bench/citation_check.py.
Overlap and cosine cannot tell "X treats colds" from "X does not work against colds": a sentence that
reuses the source's words with the opposite meaning still counts as supported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)

CITATION = re.compile(r"\[(\s*\d+(?:\s*[,;]\s*\d+)*\s*)\]")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# "... in 1921. [1] It is ..." -> "... in 1921 [1]. It is ...": the marker belongs to the sentence before it
TRAILING_MARKERS = re.compile(r"([.!?])((?:\s*\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\])+)")
NOT_FOUND = ("do not know", "don't know", "not contain", "no information", "cannot find", "could not find",
             "not mentioned", "not in the sources")
STATUSES = ("supported", "cited_unsupported", "inferred", "unsupported")

# Calibrated by bench/citation_check.py on tests/data/citation_support.jsonl (183 hand-labelled pairs,
# 75 supported; MiniLM in bf16), grid search maximising F1 (ties: higher precision, then the middle of
# the tied threshold range), numbers/names rule always on:
#   overlap + MiniLM cosine: 0.7 * overlap + 0.3 * cosine >= 0.56 -> precision 0.706, recall 0.960, F1 0.814
#   overlap only:            overlap >= 0.59                      -> precision 0.736, recall 0.893, F1 0.807
#   (cosine alone, best: >= 0.58 -> F1 0.789; the blend without the numbers/names rule: F1 0.679)
# Cosine scales differ between embedders, so the blend is used only with the embedder it was
# calibrated for; any other embedder gets the overlap-only threshold.
CALIBRATED_EMBEDDERS = frozenset({"all-MiniLM-L6-v2"})
OVERLAP_WEIGHT = 0.7
SUPPORT_THRESHOLD = 0.56
OVERLAP_ONLY_THRESHOLD = 0.59


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
class SentenceCheck:
    text: str
    status: str  # one of STATUSES
    cited: list[int]  # the numbers the model wrote in this sentence
    support_score: float  # best score against the cited sources (or, uncited, against any source)
    source: int | None = None  # the source that score refers to
    missing: list[str] = field(default_factory=list)  # numbers/names the sentence has and that source lacks


@dataclass
class CitationCheck:
    citations: list[Citation] = field(default_factory=list)  # valid ones, in order of first use
    unknown: list[int] = field(default_factory=list)  # numbers that match no given source
    sentences: list[SentenceCheck] = field(default_factory=list)  # every claim sentence, checked

    def _texts(self, *statuses: str) -> list[str]:
        return [s.text for s in self.sentences if s.status in statuses]

    @property
    def uncited_sentences(self) -> list[str]:
        """Claims the model cited nothing for (inferred or unsupported)."""
        return self._texts("inferred", "unsupported")

    @property
    def unsupported_sentences(self) -> list[str]:
        """Claims with no [n] that no given source supports."""
        return self._texts("unsupported")

    @property
    def cited_unsupported_sentences(self) -> list[str]:
        """Claims whose [n] points at a source that does not support them."""
        return self._texts("cited_unsupported")

    @property
    def grounded(self) -> bool:
        """Some citation, none unknown, and every claim supported by its citation or by an inferred one."""
        return (bool(self.citations) and not self.unknown
                and all(s.status in ("supported", "inferred") for s in self.sentences))

    def as_dict(self) -> dict:
        return {"citations": [asdict(c) for c in self.citations], "unknown_citations": self.unknown,
                "uncited_sentences": self.uncited_sentences, "unsupported_sentences": self.unsupported_sentences,
                "cited_unsupported_sentences": self.cited_unsupported_sentences,
                "sentences": [asdict(s) for s in self.sentences], "grounded": self.grounded}


def cited_numbers(text: str) -> list[int]:
    numbers = []
    for match in CITATION.finditer(text):
        numbers.extend(int(n) for n in re.findall(r"\d+", match.group(1)))
    return numbers


def split_sentences(answer: str) -> list[str]:
    """Lines, then sentences; a citation written after the full stop stays with its sentence."""
    text = TRAILING_MARKERS.sub(lambda m: m.group(2) + m.group(1), answer.strip())
    return [s.strip() for line in text.splitlines() for s in SENTENCE.split(line.strip()) if s.strip()]


def calibrated_embedder(embedder):
    """`embedder` if the support thresholds were calibrated for it, else None (judge by word overlap)."""
    if embedder is not None and getattr(embedder, "name", None) not in CALIBRATED_EMBEDDERS:
        log.debug("citation thresholds are calibrated for %s, not %s: checking by word overlap only",
                  ", ".join(sorted(CALIBRATED_EMBEDDERS)), getattr(embedder, "name", embedder))
        return None
    return embedder


def claim_sentences(answer: str, *, min_words: int = 4) -> list[tuple[str, str, list[int]]]:
    """(sentence, sentence without its [n] markers, the numbers it cites) for each sentence that
    asserts something: not an "I do not know", and cited or at least `min_words` words long."""
    claims = []
    for sentence in split_sentences(answer):
        plain = CITATION.sub("", sentence).strip()
        cited = list(dict.fromkeys(cited_numbers(sentence)))
        if (TOKEN.search(plain) and not any(p in plain.lower() for p in NOT_FOUND)
                and (cited or len(plain.split()) >= min_words)):
            claims.append((sentence, plain, cited))
    return claims


def check_citations(answer: str, sources, embedder=None) -> CitationCheck:
    """Map each [n] to sources[n-1] and check every claim sentence for support. `sources` need `.text`
    and the location fields of a retrieval hit. Without `embedder` support is judged on word overlap
    alone (OVERLAP_ONLY_THRESHOLD); with it (one of CALIBRATED_EMBEDDERS), on overlap and cosine
    similarity (SUPPORT_THRESHOLD)."""
    check = CitationCheck()
    seen: set[int] = set()
    embedder = calibrated_embedder(embedder)

    def cite(n: int, inferred: bool = False) -> None:
        seen.add(n)
        hit = sources[n - 1]
        check.citations.append(Citation(n, hit.doc_id, hit.source, hit.chunk_id, hit.start, hit.end, hit.page,
                                        hit.title, inferred=inferred))

    for n in cited_numbers(answer):
        if n in seen:
            continue
        if 1 <= n <= len(sources):
            cite(n)
        else:
            seen.add(n)
            check.unknown.append(n)
    claims = claim_sentences(answer)
    scorer = SupportScorer([hit.text for hit in sources], embedder)
    vectors = scorer.embed([plain for _, plain, _ in claims])
    for (sentence, plain, cited), vector in zip(claims, vectors):
        if cited:
            valid = [n for n in cited if 1 <= n <= len(sources)]
            support = scorer.support(plain, [n - 1 for n in valid], vector) if valid else None
            status = "supported" if support and scorer.supports(support) else "cited_unsupported"
            source = valid[0] if len(valid) == 1 else None
        else:
            source, support = scorer.best_source(plain, vector)
            status = "inferred" if support and scorer.supports(support) else "unsupported"
            source = None if source is None else source + 1
            if status == "inferred" and source not in seen:
                cite(source, inferred=True)
        score = round(scorer.score(support), 4) if support else 0.0
        check.sentences.append(SentenceCheck(sentence, status, cited, score, source, support.missing if support else []))
    return check


WORD = re.compile(r"[^\W_]{3,}")
TOKEN = re.compile(r"[^\W_]+")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
CAPITALISED = re.compile(r"(?<![\w'])[A-Z][\w'-]*")
COMMON = frozenset("the and for are was were with that this from have has had not but its their they them which "
                   "what when where who how why into about also than then there these those been being can will "
                   "would should may might must does did you your our his her she him yes however".split())
NOT_NAMES = COMMON | {"it", "in", "on", "at", "an", "if", "so", "as", "by", "to", "of", "or", "no", "we"}
NUMBER_WORDS = {w: str(i) for i, words in enumerate([
    "zero", "", "two", "three third", "four fourth", "five fifth", "six sixth", "seven seventh",
    "eight eighth", "nine ninth", "ten tenth", "eleven eleventh", "twelve twelfth"]) for w in words.split()}
# "one", "first" and "second" are left out: as often a pronoun, an ordering word or a unit as a count


def stem(word: str) -> str:
    """Five-letter prefix: enough to match finish/finished, feed/feeding, hash/hashes without a stemmer."""
    return word[:5]


def content_words(text: str) -> set[str]:
    return {stem(w) for w in WORD.findall(text.lower()) if w not in COMMON}


def numbers(text: str) -> set[str]:
    found = {n.replace(",", "") for n in NUMBER.findall(text)}
    return found | {NUMBER_WORDS[w] for w in TOKEN.findall(text.lower()) if w in NUMBER_WORDS}


def names(sentence: str) -> list[str]:
    """Capitalised words after the first word: the names, places and products a sentence asserts."""
    found = CAPITALISED.findall(sentence)
    first = TOKEN.search(sentence)
    if found and first and sentence.find(found[0]) <= first.start():
        found = found[1:]
    return [w for w in found if w.lower() not in NOT_NAMES and any(c.isalpha() for c in w)]


def acronyms(text: str) -> set[str]:
    """Initials of every run of capitalised words: 'European Central Bank' also answers to 'ECB'."""
    initials, runs = set(), re.findall(r"[A-Z][a-z]+(?:\s+[A-Z][a-z]+)+", text)
    for run in runs:
        letters = "".join(w[0] for w in run.split()).lower()
        initials |= {letters[i:j] for i in range(len(letters)) for j in range(i + 2, len(letters) + 1)}
    return initials


@dataclass
class Support:
    overlap: float  # share of the sentence's content words found in the source(s)
    cosine: float | None  # best cosine to the source(s) or their sentences; None without an embedder
    missing: list[str]  # numbers and names the sentence has and the source(s) lack


class SupportScorer:
    """Scores sentences against a fixed list of source texts; embeds each source at most once."""

    def __init__(self, texts: list[str], embedder=None, *, weight: float = OVERLAP_WEIGHT,
                 threshold: float | None = None):
        self.texts, self.embedder, self.weight = texts, embedder, weight
        self.threshold = threshold if threshold is not None else (
            SUPPORT_THRESHOLD if embedder is not None else OVERLAP_ONLY_THRESHOLD)
        self._words = [content_words(t) for t in texts]
        self._tokens = [{w.lower() for w in TOKEN.findall(t)} | acronyms(t) for t in texts]
        self._numbers = [numbers(t) for t in texts]
        self._vectors: dict[int, np.ndarray] = {}

    def embed(self, sentences: list[str]) -> list:
        """Vectors for `sentences` (None each without an embedder). Every source not embedded yet is
        encoded in the same batch, whole and sentence by sentence: one model call per answer."""
        if self.embedder is None:
            return [None] * len(sentences)
        windows = {i: list(dict.fromkeys([t, *(s for s in split_sentences(t) if len(s.split()) >= 3)]))
                   for i, t in enumerate(self.texts) if i not in self._vectors}
        batch = [*sentences, *(w for parts in windows.values() for w in parts)]
        vectors = self.embedder.encode(batch) if batch else np.zeros((0, 0), dtype=np.float32)
        offset = len(sentences)
        for i, parts in windows.items():
            self._vectors[i] = vectors[offset:offset + len(parts)]
            offset += len(parts)
        return list(vectors[:len(sentences)])

    def support(self, sentence: str, indices: list[int], vector: np.ndarray | None = None) -> Support:
        """Evidence that the sources at `indices` (0-based, taken together) support `sentence`."""
        words = content_words(sentence)
        source_words = set().union(*(self._words[i] for i in indices))
        overlap = len(words & source_words) / len(words) if words else 0.0
        tokens = set().union(*(self._tokens[i] for i in indices))
        source_numbers = set().union(*(self._numbers[i] for i in indices))
        missing = sorted(numbers(sentence) - source_numbers)
        missing += [n for n in names(sentence)
                    if any(p.lower() not in tokens for p in TOKEN.findall(n) if len(p) > 1 and not p.isdigit())]
        cosine = None
        if self.embedder is not None and indices:
            if vector is None:
                [vector] = self.embed([sentence])
            elif any(i not in self._vectors for i in indices):
                self.embed([])
            cosine = max(float(np.max(self._vectors[i] @ vector)) for i in indices)
        return Support(overlap, cosine, missing)

    def score(self, support: Support) -> float:
        if support.cosine is None:
            return support.overlap
        return self.weight * support.overlap + (1 - self.weight) * support.cosine

    def supports(self, support: Support) -> bool:
        return not support.missing and self.score(support) >= self.threshold

    def best_source(self, sentence: str, vector: np.ndarray | None = None) -> tuple[int | None, Support | None]:
        """The source that best supports an uncited sentence: supporting ones first, then by score."""
        if not self.texts:
            return None, None
        if vector is None and self.embedder is not None:
            [vector] = self.embed([sentence])
        scored = [(i, self.support(sentence, [i], vector)) for i in range(len(self.texts))]
        return max(scored, key=lambda item: (self.supports(item[1]), self.score(item[1])))
