"""One grounded answer for the server, through the one answer pipeline (ragtune.answer.pipeline).

What differs from `ragtune ask` is passed as hooks: the KB's read lock around retrieval and the
checks only (an upload waits for no generation in flight), the embedder the server already
loaded, the client's system message, and streaming as reasoning/content events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..answer.chat import ChatSession
from ..answer.pipeline import ask


@dataclass
class RagOptions:
    k: int = 5
    mode: str = "hybrid"
    filters: object = None
    min_relevance: float = 0.3
    max_new_tokens: int = 256
    temperature: float = 0.0
    strict: bool = False  # drop sentences no given source supports


@dataclass
class ServedAnswer:
    """What the endpoints send: the answer text, its references, ragtune's summary, token usage."""

    text: str
    references: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None  # the quotes, or a RAFT model's chain of thought, before the answer


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


def _reference(answer, citation) -> dict:
    hit = answer.prompt.sources[citation.n - 1]
    quote = next((q["text"] for q in answer.quotes if q["n"] == citation.n), None)
    backed = {c.source for c in answer.check.sentences if c.status in ("supported", "inferred") and c.source}
    return {"n": citation.n, "doc_id": hit.doc_id, "source": hit.source, "title": hit.title, "chunk_id": hit.chunk_id,
            "start": citation.start, "end": citation.end, "page": hit.page, "text": hit.text,
            "inferred": citation.inferred, "supported": bool(quote) or citation.n in backed,
            **({"quote": quote} if quote else {})}


def answer(access, served, question: str, options: RagOptions, *, history: list[dict] | None = None,
           system: str | None = None, rewrite: str = "concat", on_text=None, on_ready=None) -> ServedAnswer:
    """Retrieve (under the read lock), generate (streaming `on_text(piece, kind)`: "content", and the
    quotes or a RAFT model's chain of thought as "reasoning"), check. `on_ready()` is called once the
    prompt is built, just before generation starts."""
    history = list(history or [])
    query = standalone_query(served, question, history, rewrite) if history and question.strip() else question
    prompt = served.settings.prompt
    if prompt == "auto" and (served.settings.system_template or served.settings.question_template):
        prompt = "rag"  # the operator's own templates are for the plain prompt
    result = ask(access.kb, question, served.generator, k=options.k, mode=options.mode, filters=options.filters,
                 min_relevance=options.min_relevance, max_new_tokens=options.max_new_tokens,
                 temperature=options.temperature, prompt=prompt, templates=served.templates,
                 example=served.settings.worked_example, history=history, query=query, system=system,
                 strict=options.strict or served.settings.strict, on_event=on_text, on_ready=on_ready, kb_lock=access.read,
                 embedder=access.embedder)
    references = [_reference(result, c) for c in result.check.citations] if result.prompt else []
    summary = {"found": result.found, "grounded": result.check.grounded if result.found else False,
               "relevance": round(result.relevance, 4), "query": query, "protocol": result.protocol,
               "unknown_citations": result.check.unknown, "unsupported": result.unsupported,
               "unsupported_sentences": result.check.unsupported_sentences,
               "cited_unsupported_sentences": result.check.cited_unsupported_sentences,
               "quotes": result.quotes, "invented_quotes": result.invented, "dropped": result.dropped, "rejected": result.rejected,
               "best_passage": result.best_passage, "timings": result.timings}
    return ServedAnswer(result.answer, references, summary, result.finish_reason, result.prompt_tokens,
                        result.completion_tokens, reasoning=result.reasoning)
