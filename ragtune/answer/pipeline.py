"""The one answer pipeline: retrieve -> relevance gate -> select context -> prompt -> generate ->
read -> check -> (retry once) -> the answer with its citations.

`ragtune ask`, `chat`, `serve`, the `eval qa`/`compare` strategies and RAFT inference all call
`ask`; what really differs between them is a hook: the lock around the knowledge base (`kb_lock`),
streaming (`on_event(piece, kind)`, kind "reasoning" or "content"), and the prompt style (a
protocol from protocols.py). An improvement made here holds everywhere at once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..retrieve.hits import check_query
from . import sentences as sentence_selection
from .grounded import collapse_loops
from .citations import Citation, CitationCheck, SentenceCheck, check_citations, split_sentences
from .prompt import Prompt, build_prompt
from .protocols import Reading, make_protocol
from .streaming import AnswerStream

log = logging.getLogger(__name__)

NOT_FOUND_ANSWER = "Not found in the sources."
STATUS_REASONS = {"cited_unsupported": "the source it cites does not say this",
                  "unsupported": "no given source says this"}


@dataclass
class Answer:
    question: str
    answer: str  # what the user sees: the answer with its [n] citations
    prompt: Prompt | None
    check: CitationCheck
    found: bool  # False: nothing relevant was retrieved, or no source answers
    relevance: float
    timings: dict = field(default_factory=dict)
    query: str | None = None  # the standalone query retrieval used (differs in chat follow-ups)
    protocol: str = "rag"
    quotes: list[dict] = field(default_factory=list)  # verified quotes with their source and span
    unsupported: list[dict] = field(default_factory=list)  # {"text", "reason"}: what no given source supports
    dropped: list[str] = field(default_factory=list)  # sentences removed by strict mode
    reasoning: str | None = None  # the quotes or chain of thought before the answer
    rejected: list[dict] = field(default_factory=list)  # earlier replies and why they could not stand
    invented: list[str] = field(default_factory=list)  # quotes found in no source given
    best_passage: dict | None = None  # when not found: the closest passage retrieved
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    bare: str = ""  # the answer without citation markers (what evaluation scores)

    def as_dict(self) -> dict:
        citations = self.check.as_dict()
        return {"answer": self.answer, "citations": citations.pop("citations"),
                "prompt": self.prompt.text if self.prompt else "", "timings": self.timings, "found": self.found,
                "relevance": round(self.relevance, 4), "protocol": self.protocol, "quotes": self.quotes,
                "unsupported": self.unsupported, "dropped": self.dropped, "reasoning": self.reasoning,
                "rejected": self.rejected, "invented_quotes": self.invented, "best_passage": self.best_passage,
                "sources": [{"n": n, "doc_id": h.doc_id, "source": h.source, "chunk_id": h.chunk_id, "title": h.title}
                            for n, h in enumerate(self.prompt.sources if self.prompt else [], start=1)], **citations,
                **({"query": self.query} if self.query and self.query != self.question else {})}


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


def _guard(kb_lock):
    """A lock object, a factory of context managers (the server's read lock), or nothing."""
    if kb_lock is None:
        return contextlib.nullcontext()
    return kb_lock if hasattr(kb_lock, "__enter__") else kb_lock()


def accepts(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def default_protocol(generator) -> str:
    """The plain prompt for endpoints, whose (usually large) models cite well on their own and take
    no grammar; for local models the one measured best for that model (models/profiles.py), else
    `grounded`."""
    if type(generator).__name__ == "OpenAICompatibleGenerator":
        return "rag"
    from ..models.profiles import answer_prompt

    return answer_prompt(getattr(generator, "name", "")) or "grounded"


def locate(quote: str, text: str) -> tuple[int, int] | None:
    """The span of `quote` in `text`, whitespace runs matching any whitespace."""
    words = quote.split()
    if not words:
        return None
    match = re.search(r"\s+".join(re.escape(w) for w in words), text)
    return (match.start(), match.end()) if match else None


def cut_at_sentence(text: str) -> str:
    """An answer cut by the token budget, ending at its last complete sentence; one with no complete
    sentence is kept and marked as cut ("…")."""
    ends = [m.end() for m in re.finditer(r"[.!?](?:\s*\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\])*(?=\s|$)|\n", text.rstrip())]
    return text[:ends[-1]].rstrip() if ends else text.rstrip() + " …"


def with_citations(answer: str, numbers: list[int]) -> str:
    """`Robert Stevenson built it in 1828 [1].`: the markers before the final full stop."""
    if not numbers:
        return answer
    marks = "".join(f"[{n}]" for n in numbers)
    body = answer.rstrip()
    if body.endswith((".", "!", "?")):
        return f"{body[:-1]} {marks}{body[-1]}"
    return f"{body} {marks}"


def ask(kb, question: str, generator, *, k: int = 5, mode: str = "hybrid", filters=None, min_relevance: float = 0.3,
        max_new_tokens: int = 256, temperature: float = 0.0, prompt: str = "auto", templates=None,
        example: bool | None = None, instruction: str | None = None, history_examples: list[dict] | None = None,
        history: list[dict] | None = None, query: str | None = None, select: bool | None = None,
        strict: bool = False, system: str | None = None, on_text=None, on_event=None, on_ready=None, kb_lock=None,
        embedder=None) -> Answer:
    """Answer `question` from the knowledge base `kb`.

    `prompt`: grounded | rag | raft | auto (the model's measured profile for local models, rag for
    endpoints). `templates` shape the rag prompt. `query` (default: the question) is what retrieval searches for; `history`
    is earlier chat turns; `on_text(piece)` gets the answer as it streams, `on_event(piece, kind)`
    the reasoning too; `on_ready()` runs once the prompt is built. `kb_lock` (a lock, or a factory
    of context managers) guards the KB: retrieval and checks run under it, generation outside, so
    many threads can answer at once. `strict` drops sentences no given source supports; `system`
    (a client's system message) is added after ragtune's own instructions.
    """
    question = check_query(question)
    protocol = resolve_protocol(prompt, generator, templates=templates, example=example, instruction=instruction,
                                history_examples=history_examples)
    embedder = embedder if embedder is not None else getattr(kb, "embedder", None)
    started = time.perf_counter()
    with _guard(kb_lock):
        hits = kb.search(query or question, k, mode=mode, filters=filters)
        score = relevance(kb, query or question, hits) if protocol.name != "raft" else 1.0
    timings = {"retrieve_s": round(time.perf_counter() - started, 3)}
    stream = AnswerStream(on_text=on_text, on_event=on_event, tag=protocol.answer_tag,
                          hold_content=protocol.grounded)
    if score < min_relevance:
        if on_ready:
            on_ready()
        stream.final(NOT_FOUND_ANSWER)
        timings["total_s"] = timings["retrieve_s"]
        return Answer(question, NOT_FOUND_ANSWER, None, CitationCheck(), False, score, timings, query,
                      protocol=protocol.name, bare=NOT_FOUND_ANSWER)
    history = [] if protocol.name == "raft" else list(history or [])  # RAFT: single turn, as trained
    prompt_, passages, budget, templates_ = prepare(protocol, question, hits, generator, select=select,
                                                    max_new_tokens=max_new_tokens, history=history, system=system,
                                                    query=query)
    if on_ready:
        on_ready()
    t0 = time.perf_counter()
    grammar = protocol.grammar(prompt_.passages) if accepts(generator.generate, "grammar") else None
    result = _generate(generator, prompt_.messages, budget, temperature, grammar, stream.feed)
    reading = protocol.read(result.text, prompt_.passages, question, truncated=result.finish_reason == "length")
    rejected, attempts = [], 1
    if reading.problem and protocol.name != "raft" and not (protocol.name == "rag" and stream.streamed_content):
        rejected.append({"reply": result.text.strip(), "reason": reading.problem})
        retry, reading = _retry(protocol, reading, question, hits, generator, prompt_, passages, history,
                                templates_.system if system else None, budget, temperature, grammar)
        attempts = 2
        result.completion_tokens += retry.completion_tokens
        result.text, result.finish_reason = retry.text, retry.finish_reason
        if reading.problem:
            rejected.append({"reply": retry.text.strip(), "reason": reading.problem})
    timings.update(generate_s=round(time.perf_counter() - t0, 3), total_s=None,
                   first_token_s=round(result.first_token_seconds or 0.0, 3), prompt_tokens=result.prompt_tokens,
                   completion_tokens=result.completion_tokens, tokens_per_s=round(result.tokens_per_second, 1),
                   sources_given=len(prompt_.sources), sources_dropped=prompt_.dropped, attempts=attempts)
    t0 = time.perf_counter()
    with _guard(kb_lock):
        answer = finish(question, query, protocol.name, prompt_, reading, result, score, timings, rejected,
                        strict=strict, embedder=embedder)
    timings.update(check_s=round(time.perf_counter() - t0, 3), total_s=round(time.perf_counter() - started, 3))
    stream.final(answer.answer)  # grounded: the checked answer; others: only when nothing streamed as content
    return answer


def prepare(protocol, question: str, hits, generator, *, select: bool | None = None, max_new_tokens: int = 256,
            history: list[dict] | None = None, system: str | None = None, query: str | None = None):
    """The prompt a protocol shows for `question` over `hits`: (prompt, passages, token budget,
    templates). A reader adapter's training examples are built here too (raft/reader.py), so the
    reader is trained on exactly the prompt it will be asked in. `generator` needs only
    `count_tokens`, `context_window` and `name`."""
    passages = choose_passages(protocol, question, hits, select)
    budget = max_new_tokens + quote_budget(protocol, passages)
    templates = protocol.templates()
    if system:
        templates = replace(templates, system=f"{templates.system}\n\n{system}")
    prompt = build_prompt(query if protocol.name == "raft" and query else question, hits, generator,
                          templates=templates, max_new_tokens=budget,
                          history=protocol.example_turns() + list(history or []), passages=passages)
    return prompt, passages, budget, templates


def _retry(protocol, reading: Reading, question: str, hits, generator, prompt: Prompt, passages, history,
           system: str | None, budget: int, temperature: float, grammar):
    """Ask once more: a grounded reply as a direct answer whose support ragtune locates (a small
    model told "that cannot stand" in a new turn tends to copy the telling into its answer); a plain
    one told what was wrong. Returns the generation and its reading."""
    log.debug("retrying: %s", reading.problem)
    again = protocol.retry()
    if again is not None:
        templates = again.templates()
        retry_prompt = build_prompt(question, hits, generator, templates=replace(templates, system=system) if system
                                    else templates, max_new_tokens=budget, history=again.example_turns() + history,
                                    passages=passages)
        messages, shown = retry_prompt.messages, retry_prompt.passages
        retry_grammar = again.grammar(shown) if grammar else None
    else:
        again, shown, retry_grammar = protocol, prompt.passages, grammar
        messages = prompt.messages + [
            {"role": "assistant", "content": reading.answer},
            {"role": "user", "content": f"That reply cannot stand: {reading.problem}. Answer again from the "
             f"sources, in their words, or say that they do not answer it."}]
    retry = _generate(generator, messages, budget, temperature, retry_grammar, None)
    return retry, again.read(retry.text, shown, question, truncated=retry.finish_reason == "length")


def resolve_protocol(prompt: str, generator, *, templates=None, example=None, instruction=None, history_examples=None):
    from ..models.profiles import grounded_example

    name = prompt if prompt != "auto" else default_protocol(generator)
    if example is None:
        example = grounded_example(getattr(generator, "name", "")) if name == "grounded" else bool(
            templates is not None and templates.example)
    return make_protocol(name, templates=templates, example=example, instruction=instruction,
                         history_examples=history_examples)


def choose_passages(protocol, question: str, hits, select: bool | None):
    """What the model sees of each hit: the question's sentences and their neighbours (grounded),
    or the whole chunk (rag; raft exactly as trained)."""
    if not (protocol.selects_sentences if select is None else select) or protocol.name == "raft":
        return [sentence_selection.whole(hit, raw=not protocol.grounded) for hit in hits]
    return [sentence_selection.select(hit, question) for hit in hits]


def quote_budget(protocol, passages) -> int:
    """Tokens the quotes may take before the answer (grounded: its longest sentences, as many as
    a reply may quote), so that `max_new_tokens` stays the answer's own budget."""
    if not protocol.grounded:
        return 0
    from .grounded import MAX_QUOTES

    lengths = sorted((len(s.text) for p in passages for s in p.sentences), reverse=True)[:MAX_QUOTES]
    # a token is 3-4 characters of English text; counting exactly would tokenise every sentence
    return 8 + sum(n // 3 + 6 for n in lengths)


def _generate(generator, messages, max_new_tokens, temperature, grammar, on_text):
    options = {"grammar": grammar} if grammar else {}
    return generator.generate(messages, max_new_tokens=max_new_tokens, temperature=temperature, on_text=on_text,
                              **options)


def finish(question, query, protocol: str, prompt: Prompt, reading: Reading, result, score, timings, rejected, *,
           strict: bool, embedder) -> Answer:
    """The user's answer from a reading: citations, quotes with spans, unsupported sentences, strict."""
    sources = prompt.sources
    common = dict(query=query, protocol=protocol, reasoning=reading.reasoning, rejected=rejected, invented=reading.invented,
                  finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
                  completion_tokens=result.completion_tokens)
    if reading.not_found or (reading.problem and protocol in ("grounded", "reader")):
        return Answer(question, NOT_FOUND_ANSWER, prompt, CitationCheck(), False, score, timings,
                      best_passage=best_passage(prompt, question), bare=NOT_FOUND_ANSWER, **common)
    text = collapse_loops(reading.answer)
    if result.finish_reason == "length":
        text = cut_at_sentence(text)
    quotes = quote_records(reading, sources)
    if protocol == "rag" or not reading.quotes:
        check = check_citations(text, sources, embedder=embedder)
        if protocol == "raft":  # a RAFT model cites by quoting: no quote verified, no citation
            check.citations = [c for c in check.citations if not c.inferred]
        kept, dropped = text, []
        unsupported = unsupported_items(check)
        if strict and unsupported:
            dropped = [u["text"] for u in unsupported]
            kept = " ".join(s for s in split_sentences(text) if s not in dropped).strip() or NOT_FOUND_ANSWER
            check = check_citations(kept, sources, embedder=embedder)
        bare = re.sub(r"\s*\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]", "", kept).strip()
        return Answer(question, kept, prompt, check, True, score, timings, quotes=quotes, unsupported=unsupported,
                      dropped=dropped, bare=bare, **common)
    numbers = list(dict.fromkeys(n for _, where in reading.quotes for n in where[:1]))
    check = CitationCheck(citations=[_citation(n, sources[n - 1], next(q for q in quotes if q["n"] == n))
                                     for n in numbers])
    shown = with_citations(text, numbers)
    check.sentences = [SentenceCheck(shown, "supported", numbers, 1.0, numbers[0] if len(numbers) == 1 else None)]
    return Answer(question, shown, prompt, check, True, score, timings, quotes=quotes, bare=text, **common)


def unsupported_items(check: CitationCheck) -> list[dict]:
    """{"text", "reason"} for each answer sentence that no given source (or not its cited one) supports."""
    return [{"text": s.text, "reason": reason(s)} for s in check.sentences if s.status in STATUS_REASONS]


def reason(sentence: SentenceCheck) -> str:
    why = STATUS_REASONS[sentence.status]
    return f"{why}: no given source contains {', '.join(sentence.missing)}" if sentence.missing else why


def quote_records(reading: Reading, sources) -> list[dict]:
    records = []
    for quote, where in reading.quotes:
        hit = sources[where[0] - 1]
        span = locate(quote, hit.text)
        start, end = (hit.start + span[0], hit.start + span[1]) if span else (hit.start, hit.end)
        records.append({"text": quote, "n": where[0], "also_in": where[1:], "doc_id": hit.doc_id,
                        "source": hit.source, "chunk_id": hit.chunk_id, "start": start, "end": end})
    return records


def _citation(n: int, hit, quote: dict) -> Citation:
    return Citation(n, hit.doc_id, hit.source, hit.chunk_id, quote["start"], quote["end"], hit.page, hit.title)


def best_passage(prompt: Prompt, question: str) -> dict | None:
    """The retrieved passage closest to the question: the top source's best sentences."""
    if not prompt.sources:
        return None
    hit = prompt.sources[0]
    passage = sentence_selection.select(hit, question, keep=1, neighbours=1)
    if not passage.sentences:
        return None
    first, last = passage.sentences[0], passage.sentences[-1]
    return {"n": 1, "doc_id": hit.doc_id, "source": hit.source, "title": hit.title, "chunk_id": hit.chunk_id,
            "start": hit.start + first.start, "end": hit.start + last.end,
            "text": " ".join(s.text for s in passage.sentences)}
