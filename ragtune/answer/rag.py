"""`ragtune ask`: retrieve, check relevance, build the prompt, generate, check that citations support."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from ..retrieve.hits import check_query
from .citations import CitationCheck, check_citations
from .prompt import Prompt, Templates, build_prompt

NOT_FOUND_ANSWER = "I could not find this in the knowledge base, so I will not guess."


@dataclass
class Answer:
    question: str
    answer: str
    prompt: Prompt | None
    check: CitationCheck
    found: bool
    relevance: float
    timings: dict = field(default_factory=dict)
    query: str | None = None  # the standalone query retrieval used (differs in chat follow-ups)

    def as_dict(self) -> dict:
        citations = self.check.as_dict()
        return {"answer": self.answer, "citations": citations.pop("citations"), "prompt": self.prompt.text if self.prompt else "",
                "timings": self.timings, "found": self.found, "relevance": round(self.relevance, 4),
                **citations, **({"query": self.query} if self.query and self.query != self.question else {})}


def relevance(kb, question: str, hits) -> float:
    """Highest cosine between the question and the retrieved chunks: BM25 and RRF scores are not
    comparable across queries, cosine is, so the 'nothing relevant' threshold is set on it.
    Dense search already scored most hits; only the others are embedded and compared here."""
    from ..store import feed

    known = [h.ranks["dense"]["score"] for h in hits if "dense" in h.ranks]
    missing = [h.chunk_id for h in hits if "dense" not in h.ranks]
    best = max(known, default=-1.0)
    if missing:
        vector = kb.embedder.encode_query(question)
        for _ids, matrix in feed.iter_vectors(kb.store, missing):
            best = max(best, float(np.max(matrix @ vector)))
    return best if hits else 0.0


def ask(kb, question: str, generator, *, k: int = 5, mode: str = "hybrid", filters=None, min_relevance: float = 0.3,
        max_new_tokens: int = 256, temperature: float = 0.0, templates: Templates | None = None,
        history: list[dict] | None = None, query: str | None = None, on_text=None, kb_lock=None) -> Answer:
    """Answer `question` from the KB. `query` (default: the question) is what retrieval searches for;
    `history` is earlier chat turns; `on_text(piece)` receives the answer as it streams.

    `kb_lock` (a threading.Lock) lets many threads answer at once over one KB: the KB and its
    embedder are used only while holding it, and generation (the slow part, which a batching
    generator runs together) happens outside it."""
    question = check_query(question)
    guard = kb_lock or contextlib.nullcontext()
    started = time.perf_counter()
    with guard:
        hits = kb.search(query or question, k, mode=mode, filters=filters)
        score = relevance(kb, query or question, hits)
    timings = {"retrieve_s": round(time.perf_counter() - started, 3)}
    if score < min_relevance:
        if on_text:
            on_text(NOT_FOUND_ANSWER)
        timings["total_s"] = timings["retrieve_s"]
        return Answer(question, NOT_FOUND_ANSWER, None, CitationCheck(), False, score, timings, query)
    prompt = build_prompt(question, hits, generator, templates=templates, max_new_tokens=max_new_tokens, history=history)
    t0 = time.perf_counter()
    result = generator.generate(prompt.messages, max_new_tokens=max_new_tokens, temperature=temperature, on_text=on_text)
    text = result.text.strip()
    timings.update(generate_s=round(time.perf_counter() - t0, 3), total_s=round(time.perf_counter() - started, 3),
                   first_token_s=round(result.first_token_seconds or 0.0, 3), prompt_tokens=result.prompt_tokens,
                   completion_tokens=result.completion_tokens, tokens_per_s=round(result.tokens_per_second, 1),
                   sources_given=len(prompt.sources), sources_dropped=prompt.dropped)
    t0 = time.perf_counter()
    # the KB's own embedder (already loaded by the search) also scores each sentence against its sources
    with guard:
        check = check_citations(text, prompt.sources, embedder=kb.embedder)
    timings["check_s"] = round(time.perf_counter() - t0, 3)
    return Answer(question, text, prompt, check, True, score, timings, query)
