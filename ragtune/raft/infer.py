"""Answering with a RAFT-trained model: retrieve k documents, wrap them exactly as in training, generate,
take the text after `<ANSWER>:` as the answer and the quotes as citations.

Citations are the chain of thought's quotes, each verified verbatim (whitespace aside) against the
documents the model was given and mapped to their numbers; a quote found in none is reported as
invented rather than shown as a source. `ragtune ask --prompt raft` and the eval strategies
`raft`/`raft+rag` call `answer_raft`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from ..retrieve.hits import check_query
from .prompt import ANSWER_TAG, check_quotes, final_answer, raft_templates

DEFAULT_DOCUMENTS = 5  # the builder's default: the oracle plus k=4 distractors


@dataclass
class RaftAnswer:
    question: str
    answer: str  # the text after <ANSWER>: (the whole reply when the model wrote no tag)
    reasoning: str  # the whole reply, chain of thought included
    citations: list[dict] = field(default_factory=list)  # {"quote", "sources": [n], "doc_ids", "verified"}
    sources: list = field(default_factory=list)  # the hits given to the model, numbered from 1
    prompt: object = None
    has_answer_tag: bool = True
    timings: dict = field(default_factory=dict)

    @property
    def invented(self) -> list[str]:
        return [c["quote"] for c in self.citations if not c["verified"]]

    def as_dict(self) -> dict:
        return {"answer": self.answer, "reasoning": self.reasoning, "citations": self.citations,
                "has_answer_tag": self.has_answer_tag, "invented_quotes": self.invented,
                "sources": [{"n": n, "doc_id": h.doc_id, "source": h.source, "chunk_id": h.chunk_id}
                            for n, h in enumerate(self.sources, start=1)],
                "prompt": self.prompt.text if self.prompt is not None else "", "timings": self.timings}


def cite(text: str, sources) -> tuple[list[dict], str | None]:
    """(citations, answer) of a RAFT reply against the `sources` (hits) it was given."""
    check = check_quotes(text, [h.text.strip() for h in sources])
    citations = [{"quote": quote, "sources": numbers, "doc_ids": [sources[n - 1].doc_id for n in numbers],
                  "verified": True} for quote, numbers in check.verified]
    citations += [{"quote": quote, "sources": [], "doc_ids": [], "verified": False} for quote in check.invented]
    citations += [{"quote": quote, "sources": [], "doc_ids": [], "verified": False, "too_short": True}
                  for quote in check.trivial]
    return citations, final_answer(text)


def answer_raft(kb, question: str, generator, *, k: int = DEFAULT_DOCUMENTS, mode: str = "hybrid", filters=None,
                max_new_tokens: int = 512, temperature: float = 0.0, on_text=None, kb_lock=None) -> RaftAnswer:
    """Answer `question` from `k` retrieved documents in the RAFT prompt (use the build's k + 1).

    `kb_lock` (a threading.Lock) is held around retrieval only, so several threads can share one
    knowledge base while their generations run together.
    """
    from ..answer.prompt import build_prompt

    question = check_query(question)
    started = time.perf_counter()
    with kb_lock or nullcontext():
        hits = kb.search(question, k, mode=mode, filters=filters)
    timings = {"retrieve_s": round(time.perf_counter() - started, 3)}
    prompt = build_prompt(question, hits, generator, templates=raft_templates(), max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    result = generator.generate(prompt.messages, max_new_tokens=max_new_tokens, temperature=temperature,
                                on_text=on_text)
    text = result.text.strip()
    citations, answer = cite(text, prompt.sources)
    timings.update(generate_s=round(time.perf_counter() - t0, 3), total_s=round(time.perf_counter() - started, 3),
                   prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                   sources_given=len(prompt.sources), sources_dropped=prompt.dropped)
    return RaftAnswer(question, answer if answer is not None else text.replace(ANSWER_TAG, "").strip(), text,
                      citations, prompt.sources, prompt, answer is not None, timings)
