"""Multi-turn chat over a KB: memory of earlier turns, follow-ups made standalone before retrieval."""

from __future__ import annotations

import re

from .prompt import Templates
from .pipeline import Answer, ask

REWRITE_SYSTEM = ("Rewrite the user's last message as one standalone search query that makes sense without the "
                  "conversation. Reply with the query only.")
FOLLOW_UP = re.compile(r"\b(it|its|they|them|their|this|that|these|those|he|she|his|her|there|also|more|same)\b|^(and|what about|how about|why)\b",
                       re.IGNORECASE)
MAX_TURNS = 6


class ChatSession:
    """Keeps the last turns; each question is retrieved on its own, or on a standalone rewrite."""

    def __init__(self, kb, generator, *, k: int = 5, min_relevance: float = 0.3, max_new_tokens: int = 256,
                 templates: Templates | None = None, rewrite: str = "llm", prompt: str = "auto",
                 strict: bool = False, example: bool | None = None):
        self.kb, self.generator = kb, generator
        self.k, self.min_relevance, self.max_new_tokens = k, min_relevance, max_new_tokens
        self.templates, self.prompt, self.strict, self.example = templates, prompt, strict, example
        self.rewrite = rewrite  # "llm" asks the model, "concat" prepends the previous question
        self.turns: list[tuple[str, str]] = []

    def history(self) -> list[dict]:
        messages = []
        for question, answer in self.turns[-MAX_TURNS:]:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages

    def standalone_query(self, question: str) -> str:
        """The question itself when it stands alone; otherwise a rewrite that carries the context.

        A model rewrite is kept only if it is a plausible query (non-empty, not much longer than the
        question and context); small models often ramble, and then the previous question is prepended.
        """
        if not self.turns or not FOLLOW_UP.search(question):
            return question
        previous = self.turns[-1][0]
        fallback = f"{previous} {question}"
        if self.rewrite != "llm":
            return fallback
        conversation = "\n".join(f"user: {q}\nassistant: {a[:300]}" for q, a in self.turns[-2:])
        messages = [{"role": "system", "content": REWRITE_SYSTEM},
                    {"role": "user", "content": f"{conversation}\nuser: {question}\n\nStandalone query:"}]
        rewritten = self.generator.generate(messages, max_new_tokens=48).text.strip().strip('"').splitlines()
        candidate = rewritten[0].strip() if rewritten else ""
        if not candidate or len(candidate) > 2 * len(fallback) or candidate.lower() == question.lower():
            return fallback
        return candidate

    def ask(self, question: str, on_text=None, on_event=None) -> Answer:
        query = self.standalone_query(question)
        result = ask(self.kb, question, self.generator, k=self.k, min_relevance=self.min_relevance,
                     max_new_tokens=self.max_new_tokens, templates=self.templates, history=self.history(),
                     query=query, on_text=on_text, on_event=on_event, prompt=self.prompt, strict=self.strict, example=self.example)
        self.turns.append((question, result.bare or result.answer))
        return result
