"""Prompt templates and the token budget that decides which retrieved chunks the model sees.

Templates are plain text with {placeholders} so users can override them from files:
system ({}), sources entry ({n}, {title}, {source}, {text}) and question ({sources}, {question}).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

SYSTEM = (
    "You answer questions using only the numbered sources below. After each sentence, cite the "
    "sources it comes from as [1], [2]. If the sources do not contain the answer, say that you do not know."
)
SOURCE = "[{n}] {title}\n{text}"
QUESTION = "Sources:\n\n{sources}\n\nQuestion: {question}\nAnswer briefly, citing sources as [n]."
# One worked example, given as an earlier chat turn in the user's own templates (`--worked-example`): it
# shows a small model the expected shape (an answer in a sentence, then [n]) better than instructions
# alone. Measured: Qwen2.5-Coder-0.5B's HotpotQA RAG F1 0.34 -> 0.47 (bench/rag_qa.py, first 25
# questions) and 1 -> 3 of the demo's 3 questions right and cited (bench/demo_models.py). It is off by
# default because it hurts SmolLM2-135M, which then copies the wrong source (tests/test_answer.py).
EXAMPLE_SOURCES = (
    ("Lighthouses", "The lighthouse at Cape Wrath was built in 1828 by Robert Stevenson. It has run automatically since 1998."),
    ("Ferries", "Ferries to the island leave twice a day from the north pier; tickets are sold on board."),
)
EXAMPLE_QUESTION = "Who built the lighthouse at Cape Wrath, and when?"
EXAMPLE_ANSWER = "Robert Stevenson built it in 1828 [1]."


@dataclass
class Templates:
    system: str = SYSTEM
    source: str = SOURCE
    question: str = QUESTION
    example: bool = False  # prepend the worked example turn before the real question

    def example_turns(self) -> list[dict]:
        if not self.example:
            return []
        sources = "\n\n".join(self.source.format(n=n, title=title, source=title, text=text)
                               for n, (title, text) in enumerate(EXAMPLE_SOURCES, start=1))
        return [{"role": "user", "content": self.question.format(sources=sources, question=EXAMPLE_QUESTION)},
                {"role": "assistant", "content": EXAMPLE_ANSWER}]

    @classmethod
    def from_files(cls, system: Path | None = None, source: Path | None = None, question: Path | None = None) -> "Templates":
        templates = cls()
        for name, path in (("system", system), ("source", source), ("question", question)):
            if path is not None:
                try:
                    setattr(templates, name, Path(path).read_text(encoding="utf-8"))
                except OSError as exc:
                    raise ConfigError(f"--{name}-template {path}: {exc.strerror}") from None
        templates.check()
        return templates

    def check(self) -> None:
        for name, template, needed in (("question", self.question, ("{sources}", "{question}")),
                                       ("source", self.source, ("{n}", "{text}"))):
            missing = [p for p in needed if p not in template]
            if missing:
                raise ConfigError(f"the {name} template lacks {', '.join(missing)}; add it where it should go")


@dataclass
class Prompt:
    messages: list[dict]
    sources: list = field(default_factory=list)  # the hits given to the model, numbered from 1
    dropped: int = 0  # hits that did not fit the budget
    tokens: int = 0
    passages: list = field(default_factory=list)  # what was shown of each source (answer/sentences.Passage)

    @property
    def text(self) -> str:
        return "\n\n".join(f"<{m['role']}>\n{m['content']}" for m in self.messages)


def render_source(templates: Templates, n: int, hit, text: str | None = None) -> str:
    """Source `n` as the model sees it: `text` (a selection of the hit's sentences) or the whole hit."""
    title = hit.title or Path(hit.source).name
    return templates.source.format(n=n, title=title, source=hit.source, text=(hit.text if text is None else text).strip())


def build_prompt(question: str, hits, generator, *, templates: Templates | None = None, max_new_tokens: int = 256,
                 history: list[dict] | None = None, passages=None) -> Prompt:
    """Fill the context with whole chunks in rank order, leaving room for the answer.

    A chunk that does not fit is skipped (a later, shorter one may still fit): a chunk cut in half
    can lose the sentence that answers, and a citation must point at text the model really saw.
    `passages` (one per hit) give what is shown of each hit instead of its whole text.
    """
    templates = templates or Templates()
    history = templates.example_turns() + list(history or [])
    overhead = generator.count_tokens(templates.system + templates.question.format(sources="", question=question))
    overhead += sum(generator.count_tokens(m["content"]) + 8 for m in history) + 16  # role markers
    budget = generator.context_window - max_new_tokens - overhead
    if budget <= 0:
        raise ConfigError(
            f"the question and chat history need {overhead} tokens and the answer {max_new_tokens}, more than "
            f"{generator.name}'s {generator.context_window}-token context; shorten the question or lower --max-tokens")
    chosen, shown, rendered, used, dropped = [], [], [], 0, 0
    for i, hit in enumerate(hits):
        passage = passages[i] if passages is not None else None
        text = render_source(templates, len(chosen) + 1, hit, passage.text if passage is not None else None)
        cost = generator.count_tokens(text) + 2
        if used + cost > budget:
            dropped += 1
            continue
        chosen.append(hit)
        shown.append(passage)
        rendered.append(text)
        used += cost
    user = templates.question.format(sources="\n\n".join(rendered), question=question)
    messages = [{"role": "system", "content": templates.system}, *history, {"role": "user", "content": user}]
    return Prompt(messages, chosen, dropped, overhead + used, shown if passages is not None else [])
