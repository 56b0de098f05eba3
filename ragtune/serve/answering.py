"""One grounded answer for the server, in either prompt style a served model was trained for.

`rag` follows `ragtune.answer.rag.ask` step by step (relevance gate, prompt, [n] citations checked
for support); `raft` follows `ragtune.raft.infer.answer_raft` (documents wrapped exactly as in
training, quotes verified verbatim, the answer after `<ANSWER>:`). Why not call those functions:
they read the KB and then generate for seconds; with the KB's read lock held around all of it, an
upload would wait for every answer in flight, and every search would queue behind that upload.
Here retrieval runs under the lock, generation and the checks (which need only the passages
already read and the embedder) outside it. The thresholds, prompts and parsers are theirs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..answer.chat import ChatSession
from ..answer.citations import check_citations
from ..answer.prompt import Templates, build_prompt
from ..answer.rag import NOT_FOUND_ANSWER, relevance
from ..retrieve.hits import check_query


@dataclass
class RagOptions:
    k: int = 5
    mode: str = "hybrid"
    filters: object = None
    min_relevance: float = 0.3
    max_new_tokens: int = 256
    temperature: float = 0.0


@dataclass
class ServedAnswer:
    """What the endpoints send: the answer text, its references, ragtune's summary, token usage."""

    text: str
    references: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None  # a RAFT model's chain of thought (the text before <ANSWER>:)


def standalone_query(served, question: str, history: list[dict], rewrite: str) -> str:
    """A follow-up made standalone (chat.py's rule): the question itself when it stands alone."""
    pairs, pending = [], None
    for message in history:
        if message["role"] == "user":
            pending = message["content"]
        elif message["role"] == "assistant" and pending is not None:
            pairs.append((pending, message["content"]))
            pending = None
    session = ChatSession(None, served.generator, rewrite=rewrite, templates=served.templates)
    session.turns = pairs
    return session.standalone_query(question)


def with_system(templates: Templates, system: str | None) -> Templates:
    """The served prompt with the client's system message added after ragtune's own instructions."""
    if not system:
        return templates
    return Templates(system=f"{templates.system}\n\n{system}", source=templates.source, question=templates.question,
                     example=templates.example)


def _hit_reference(n: int, hit, **extra) -> dict:
    return {"n": n, "doc_id": hit.doc_id, "source": hit.source, "title": hit.title, "chunk_id": hit.chunk_id,
            "start": hit.start, "end": hit.end, "page": hit.page, "text": hit.text, **extra}


def answer(access, served, question: str, options: RagOptions, *, history: list[dict] | None = None,
           system: str | None = None, rewrite: str = "concat", on_text=None, on_ready=None) -> ServedAnswer:
    """Retrieve (under the read lock), build the prompt, generate (streaming to on_text), check.
    `on_ready()` is called once the prompt is built, just before generation starts;
    `on_text(piece, kind)` gets "content" pieces, and a RAFT model's chain of thought as "reasoning"."""
    question = check_query(question)
    history = list(history or [])
    started = time.perf_counter()
    query = standalone_query(served, question, history, rewrite) if history else question
    if served.settings.prompt == "raft":
        return _answer_raft(access, served, question, query, options, started, on_text, on_ready)
    with access.read():
        hits = access.kb.search(query, options.k, mode=options.mode, filters=options.filters)
        score = relevance(access.kb, query, hits)
    timings = {"retrieve_s": round(time.perf_counter() - started, 3)}
    summary = {"found": False, "grounded": False, "relevance": round(score, 4), "query": query, "unknown_citations": [],
               "unsupported_sentences": [], "cited_unsupported_sentences": [], "timings": timings}
    if score < options.min_relevance:
        if on_ready:
            on_ready()
        if on_text:
            on_text(NOT_FOUND_ANSWER, "content")
        timings["total_s"] = timings["retrieve_s"]
        return ServedAnswer(NOT_FOUND_ANSWER, [], summary)
    prompt = build_prompt(question, hits, served.generator, templates=with_system(served.templates, system),
                          max_new_tokens=options.max_new_tokens, history=history)
    if on_ready:
        on_ready()
    t0 = time.perf_counter()
    result = served.generator.generate(prompt.messages, max_new_tokens=options.max_new_tokens,
                                       temperature=options.temperature,
                                       on_text=(lambda piece: on_text(piece, "content")) if on_text else None)
    text = result.text.strip()
    timings.update(generate_s=round(time.perf_counter() - t0, 3), first_token_s=round(result.first_token_seconds or 0.0, 3),
                   tokens_per_s=round(result.tokens_per_second, 1), sources_given=len(prompt.sources),
                   sources_dropped=prompt.dropped)
    t0 = time.perf_counter()
    check = check_citations(text, prompt.sources, embedder=access.embedder)
    timings.update(check_s=round(time.perf_counter() - t0, 3), total_s=round(time.perf_counter() - started, 3))
    backed = {s.source for s in check.sentences if s.status in ("supported", "inferred") and s.source}
    references = [_hit_reference(c.n, prompt.sources[c.n - 1], inferred=c.inferred, supported=c.n in backed)
                  for c in check.citations]
    summary.update(found=True, grounded=check.grounded, unknown_citations=check.unknown,
                   unsupported_sentences=check.unsupported_sentences,
                   cited_unsupported_sentences=check.cited_unsupported_sentences)
    return ServedAnswer(text, references, summary, result.finish_reason, result.prompt_tokens, result.completion_tokens)


class ReasoningSplitter:
    """Streams a RAFT reply as reasoning up to `<ANSWER>:` and as content after it; a tag split
    across pieces is held back until it is clear whether it is one."""

    def __init__(self, emit, tag: str):
        self.emit, self.tag = emit, tag
        self.buffer, self.answering, self.started = "", False, False

    def feed(self, piece: str) -> None:
        if self.answering:
            return self._content(piece)
        self.buffer += piece
        at = self.buffer.find(self.tag)
        if at >= 0:
            if at:
                self.emit(self.buffer[:at], "reasoning")
            rest, self.buffer, self.answering = self.buffer[at + len(self.tag):], "", True
            return self._content(rest)
        keep = next((n for n in range(min(len(self.tag) - 1, len(self.buffer)), 0, -1)
                     if self.tag.startswith(self.buffer[-n:])), 0)
        ready = self.buffer[: len(self.buffer) - keep]
        if ready:
            self.emit(ready, "reasoning")
            self.buffer = self.buffer[len(ready):]

    def _content(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        if piece:
            self.emit(piece, "content")

    def close(self, fallback: str) -> None:
        """At the end: what is held back is reasoning; without a tag, the whole reply is the content."""
        if self.buffer and not self.answering:
            self.emit(self.buffer, "reasoning")
        if not self.answering and fallback:
            self.emit(fallback, "content")


def _answer_raft(access, served, question: str, query: str, options: RagOptions, started: float, on_text,
                 on_ready) -> ServedAnswer:
    from ..raft.infer import cite
    from ..raft.prompt import ANSWER_TAG

    with access.read():
        hits = access.kb.search(query, options.k, mode=options.mode, filters=options.filters)
    timings = {"retrieve_s": round(time.perf_counter() - started, 3)}
    # single-turn, as trained: a follow-up is asked as its standalone form
    prompt = build_prompt(query, hits, served.generator, templates=served.templates, max_new_tokens=options.max_new_tokens)
    if on_ready:
        on_ready()
    splitter = ReasoningSplitter(on_text, ANSWER_TAG) if on_text else None
    t0 = time.perf_counter()
    result = served.generator.generate(prompt.messages, max_new_tokens=options.max_new_tokens,
                                       temperature=options.temperature, on_text=splitter.feed if splitter else None)
    reply = result.text.strip()
    citations, final = cite(reply, prompt.sources)
    position = reply.rfind(ANSWER_TAG)
    text = reply[position + len(ANSWER_TAG):].strip() if position >= 0 else reply
    if splitter:
        splitter.close(text)
    references = []
    for citation in citations:
        for n in citation["sources"]:
            references.append(_hit_reference(n, prompt.sources[n - 1], quote=citation["quote"], inferred=False,
                                             supported=True))
    timings.update(generate_s=round(time.perf_counter() - t0, 3), total_s=round(time.perf_counter() - started, 3),
                   sources_given=len(prompt.sources), sources_dropped=prompt.dropped)
    invented = [c["quote"] for c in citations if not c["verified"]]
    summary = {"found": True, "grounded": bool(references) and not invented, "query": query, "answer": final,
               "has_answer_tag": position >= 0, "invented_quotes": invented, "timings": timings}
    return ServedAnswer(text, references, summary, result.finish_reason, result.prompt_tokens, result.completion_tokens,
                        reasoning=reply[:position].strip() if position >= 0 else None)
