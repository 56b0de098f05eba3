"""Teachers: the models that write RAFT's questions and quoted answers, and how to name one.

A teacher is any Generator (generate/base.py: `generate(messages, ...) -> Generation`). `make_teacher`
resolves a spec in this order: a name registered with `register_teacher` (plugins, and the tests'
deterministic fake, go through this same path), then, with `base_url`, any OpenAI-compatible
endpoint, then a packaged model name, a .gguf file or a model directory (via `make_generator`).

`Teacher` holds the three prompts (questions for a chunk, a quoted chain of thought from the oracle
only, a closed-book answer) and runs lists of conversations together where the backend batches
(llama.cpp's `generate_many`), one by one elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .prompt import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE

logger = logging.getLogger(__name__)
_TEACHERS: dict[str, Callable[..., object]] = {}

QUESTIONS_SYSTEM = "You write exam questions about a document, for a reader who has the document at hand."
QUESTIONS = ("Document:\n{chunk}\n\nWrite {n} different questions that can be answered from this document alone, "
             "each in a few words. Name the subject in each question (no 'it' or 'the document'). "
             "Write one question per line and nothing else.")
ANSWER_SYSTEM = "You answer a question from a context and show your reasoning, quoting the context exactly."
ANSWER = ("Context:\n{context}\n\nQuestion: {question}\n\n"
          "Answer step by step. When you use a sentence of the context, copy it exactly between "
          f"{BEGIN_QUOTE} and {END_QUOTE}; text outside those markers is your own words. "
          f"End with the final short answer on its own line as: {ANSWER_TAG} answer")
# One worked example, given as an earlier turn: small teachers copy the shape (a quote, then <ANSWER>:)
# far more reliably than they follow the instruction alone. Measured on a five-document toy KB: without
# it neither packaged model quoted at all; with it Qwen2.5-Coder-0.5B quoted verbatim in 3 of 3 answers.
EXAMPLE_CONTEXT = ("The lighthouse at Cape Wrath was built in 1828 by Robert Stevenson. "
                   "It has run automatically since 1998.")
EXAMPLE_QUESTION = "Who built the lighthouse at Cape Wrath?"
EXAMPLE_ANSWER = (f"The question asks who built the lighthouse. The context says: {BEGIN_QUOTE}The lighthouse at Cape "
                  f"Wrath was built in 1828 by Robert Stevenson.{END_QUOTE} So it was built by Robert Stevenson.\n"
                  f"{ANSWER_TAG} Robert Stevenson")
GOLD_HINT = "\nThe correct final answer is: {gold}. Explain how the context supports it."
REPAIR = ("These quotes are not copied word for word from the context: {problems}. Answer again. Copy whole "
          f"sentences of the context exactly, each one starting with {BEGIN_QUOTE} and ending with {END_QUOTE}, "
          f"and end with {ANSWER_TAG}")
CLOSED_BOOK_SYSTEM = "You answer questions from memory, briefly."
CLOSED_BOOK = "Question: {question}\nAnswer in a few words. If you cannot know the answer, reply: unknown"
_NEEDED = {"questions": ("{chunk}",), "answer": ("{question}", "{context}"), "closed_book": ("{question}",)}
_ENUMERATION = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d+[.):]|q\d*[.):]|question\s*\d*\s*[.):])\s*", re.I)


def register_teacher(name: str, factory: Callable[..., object]) -> None:
    """Make `--teacher NAME` build its generator with `factory(threads=..., base_url=...)`."""
    if not name or not name.strip():
        raise ValueError("a teacher needs a name")
    _TEACHERS[name.strip().lower()] = factory


def registered_teachers() -> list[str]:
    return sorted(_TEACHERS)


def make_teacher(spec: str | None, *, base_url: str | None = None, threads: int | None = None, slots: int = 4,
                 api_key_env: str = "OPENAI_API_KEY", context_window: int = 4096):
    """The teacher's generator for `spec`, or None when neither a spec nor an endpoint is given.

    A local teacher gets `context_window` tokens per sequence (a prompt is one chunk, a worked
    example, a question and an answer, re-asked once) and `slots` sequences decoding together."""
    if not spec and not base_url:
        return None
    factory = _TEACHERS.get((spec or "").strip().lower())
    if factory is not None:
        return factory(threads=threads, base_url=base_url)
    from ..generate.base import make_generator

    if base_url:
        return make_generator(spec, base_url=base_url, api_key_env=api_key_env)
    from ..models.gguf import is_gguf_path
    from ..models.registry import find_model, is_local_model_dir, registered_models

    model = find_model(spec)
    if not (is_gguf_path(spec) or is_local_model_dir(spec) or (model is not None and model.kind == "chat")):
        chat = ", ".join(m.name for m in registered_models() if m.kind == "chat")
        known = ", ".join(registered_teachers()) or "none"
        raise ConfigError(f"--teacher {spec!r} is not a registered teacher ({known}), a packaged chat model ({chat}), "
                          "a .gguf file or a model folder; or pass --teacher-base-url")
    return make_generator(spec, threads=threads, slots=slots, context_window=context_window)


@dataclass
class TeacherTemplates:
    """The teachers' user prompts; `--template FILE` overrides them (text: the questions prompt;
    YAML/JSON: any of questions, answer, closed_book). Literal braces are written {{ }}."""

    questions: str = QUESTIONS
    answer: str = ANSWER
    closed_book: str = CLOSED_BOOK

    @classmethod
    def from_file(cls, path) -> "TeacherTemplates":
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--template {path}: cannot read it ({exc}); pass a UTF-8 text or YAML file") from None
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            import yaml

            try:
                values = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
            except (yaml.YAMLError, ValueError) as exc:
                raise ConfigError(f"--template {path}: not valid {path.suffix[1:].upper()} ({exc})") from None
            unknown = sorted(set(values or {}) - set(_NEEDED)) if isinstance(values, dict) else ["(not a mapping)"]
            if unknown:
                raise ConfigError(f"--template {path}: unknown keys {unknown}; use questions, answer and/or closed_book")
            templates = cls(**{k: str(v) for k, v in values.items()})
        else:
            templates = cls(questions=text)
        templates.check(str(path))
        return templates

    def check(self, where: str = "template") -> None:
        for name, needed in _NEEDED.items():
            template = getattr(self, name)
            missing = [p for p in needed if p not in template]
            if missing:
                raise ConfigError(f"--template {where}: the {name} template lacks {', '.join(missing)}; add it where "
                                  "the text should go")
            try:
                template.format(chunk="", n=1, question="", context="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"--template {where}: the {name} template has an unknown placeholder or a stray "
                                  f"brace ({exc}); the placeholders are {{chunk}} {{n}} {{question}} {{context}}, "
                                  "literal braces are written {{ and }}") from None


def parse_questions(text: str, n: int) -> list[str]:
    """Up to `n` distinct questions from a teacher's reply, one a line, numbering and bullets removed;
    a line without a question mark (an answer, a remark) is not a question."""
    found: list[str] = []
    for line in text.splitlines():
        line = _ENUMERATION.sub("", line).strip().strip('"').strip()
        if "?" not in line:
            continue
        line = line[: line.index("?") + 1]
        if len(line.split()) < 3 or not any(c.isalpha() for c in line):
            continue
        if line.lower() not in (q.lower() for q in found):
            found.append(line)
        if len(found) == n:
            break
    return found


class Teacher:
    """A generator with RAFT's teacher prompts; `name` is recorded in the manifest."""

    def __init__(self, generator, templates: TeacherTemplates | None = None, *, answer_tokens: int = 320):
        # 320 tokens hold a quoted chain of thought; small teachers that ramble are cut there, not at 512
        self.generator = generator
        self.templates = templates or TeacherTemplates()
        self.answer_tokens = answer_tokens
        self.name = getattr(generator, "name", type(generator).__name__)

    def question_messages(self, chunk: str, n: int) -> list[dict]:
        return [{"role": "system", "content": QUESTIONS_SYSTEM},
                {"role": "user", "content": self.templates.questions.format(chunk=chunk, n=n, question="", context="")}]

    def answer_messages(self, question: str, context: str, gold: str | None = None) -> list[dict]:
        """The worked example, then the question on its oracle (the only text the teacher sees)."""
        example = self.templates.answer.format(question=EXAMPLE_QUESTION, context=EXAMPLE_CONTEXT, chunk="", n=1)
        user = self.templates.answer.format(question=question, context=context, chunk=context, n=1)
        return [{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": example},
                {"role": "assistant", "content": EXAMPLE_ANSWER},
                {"role": "user", "content": user + (GOLD_HINT.format(gold=gold) if gold else "")}]

    @staticmethod
    def repair_messages(messages: list[dict], reply: str, invented: list[str]) -> list[dict]:
        problems = "; ".join(f'"{q[:200]}"' for q in invented) or "no quote, or unmatched markers"
        return [*messages, {"role": "assistant", "content": reply},
                {"role": "user", "content": REPAIR.format(problems=problems)}]

    def closed_book_messages(self, question: str) -> list[dict]:
        user = self.templates.closed_book.format(question=question, context="", chunk="", n=1)
        return [{"role": "system", "content": CLOSED_BOOK_SYSTEM}, {"role": "user", "content": user}]

    def run(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Replies to `conversations`, in order, greedy (temperature 0: a resumed build repeats itself)."""
        if not conversations:
            return []
        many = getattr(self.generator, "generate_many", None)
        if many is not None and len(conversations) > 1:
            results = many(conversations, max_new_tokens=max_new_tokens, temperature=0.0)
        else:
            results = [self.generator.generate(c, max_new_tokens=max_new_tokens, temperature=0.0) for c in conversations]
        return [r.text.strip() for r in results]
