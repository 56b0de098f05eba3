"""The one RAFT prompt, used by the dataset builder and by inference, plus the quote and answer parsers.

Why one place: a RAFT model learns the exact wrapping of its documents during training; if inference
wrapped them differently (another header, another separator) the fine-tune would be fighting a
distribution shift. Both sides render through `answer.prompt.render_source` with these templates, and
`raft_messages` is the same layout `answer.prompt.build_prompt` produces (a test checks they agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..answer.prompt import Templates, render_source

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
ANSWER_TAG = "<ANSWER>:"

SYSTEM = (
    "You answer questions from the documents given. Some documents are irrelevant. Reason step by step; "
    f"when you rely on a document, copy the sentence exactly between {BEGIN_QUOTE} and {END_QUOTE}. "
    f"End with the final answer on its own line as {ANSWER_TAG} followed by a short answer."
)
SOURCE = "<DOCUMENT {n}: {title}>\n{text}\n</DOCUMENT>"
QUESTION = (
    "{sources}\n\nQuestion: {question}\n"
    f"Reason step by step, quoting the documents between {BEGIN_QUOTE} and {END_QUOTE}, "
    f"then end with {ANSWER_TAG} and the short answer."
)

MIN_QUOTE_WORDS = 3  # shorter "quotes" (" and ", a date) are no evidence: a model parroting the instruction
# "between ##begin_quote## and ##end_quote##" would otherwise "quote" the word "and" from any document
_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.S)


def raft_templates() -> Templates:
    """The RAFT templates as `answer.prompt.Templates` (no worked example: the fine-tune is the example)."""
    return Templates(system=SYSTEM, source=SOURCE, question=QUESTION, example=False)


def raft_messages(question: str, documents, templates: Templates | None = None) -> list[dict]:
    """System + user messages for `documents` (objects with title, source, text), numbered from 1.

    The same rendering `build_prompt` does when every document fits the budget.
    """
    templates = templates or raft_templates()
    sources = "\n\n".join(render_source(templates, n, doc) for n, doc in enumerate(documents, start=1))
    return [{"role": "system", "content": templates.system},
            {"role": "user", "content": templates.question.format(sources=sources, question=question)}]


def normalize_ws(text: str) -> str:
    """Whitespace runs collapsed to one space: the only liberty a quote may take with its document."""
    return " ".join(text.split())


def quotes(text: str) -> list[str]:
    """The quoted spans of a chain of thought, in order (empty quotes left out)."""
    return [q for q in _QUOTE.findall(text) if q.strip()]


def malformed_quotes(text: str) -> bool:
    """True when begin/end markers do not pair up (an unclosed or stray marker)."""
    rest = _QUOTE.sub("", text)
    return BEGIN_QUOTE in rest or END_QUOTE in rest


def final_answer(text: str) -> str | None:
    """The text after the last `<ANSWER>:` (its first non-empty line), or None when there is none."""
    position = text.rfind(ANSWER_TAG)
    if position < 0:
        return None
    tail = text[position + len(ANSWER_TAG):].strip()
    line = tail.splitlines()[0].strip() if tail else ""
    return line or None


def with_final_answer(text: str, answer: str) -> str:
    """The chain of thought ending in `<ANSWER>: answer` (whatever followed the tag is replaced)."""
    position = text.rfind(ANSWER_TAG)
    body = (text[:position] if position >= 0 else text).rstrip()
    return f"{body}\n{ANSWER_TAG} {answer.strip()}" if body else f"{ANSWER_TAG} {answer.strip()}"


@dataclass
class QuoteCheck:
    """Quotes found in a text: those found verbatim (after whitespace normalisation) in the documents,
    each with the 1-based numbers of the documents holding it, those found nowhere, and those too
    short to count."""

    verified: list[tuple[str, list[int]]] = field(default_factory=list)
    invented: list[str] = field(default_factory=list)
    trivial: list[str] = field(default_factory=list)  # fewer than MIN_QUOTE_WORDS words: not evidence
    malformed: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.verified) and not self.invented and not self.trivial and not self.malformed


def check_quotes(text: str, documents: list[str]) -> QuoteCheck:
    """Verify every quote of `text` against `documents` (texts); numbers refer to their order."""
    normalized = [normalize_ws(d) for d in documents]
    check = QuoteCheck(malformed=malformed_quotes(text))
    for quote in quotes(text):
        wanted = normalize_ws(quote)
        if len(wanted.split()) < MIN_QUOTE_WORDS:
            check.trivial.append(quote.strip())
            continue
        where = [n for n, doc in enumerate(normalized, start=1) if wanted in doc]
        if where:
            check.verified.append((quote.strip(), where))
        else:
            check.invented.append(quote.strip())
    return check
