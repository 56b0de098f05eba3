"""Judging a teacher's work: quotes against the oracle, answers against the chunk and against memory,
and the deterministic chain of thought used when there is no teacher.

The filters are deliberately simple and explainable, since the manifest counts what each one drops:
- a chain of thought is kept only when every quote occurs verbatim (whitespace aside) in the oracle,
  it quotes at least once and it ends with `<ANSWER>:`; a reply that invents a quote is re-asked once,
  then dropped; a reply that quotes nothing but gives a short supported answer (what small teachers
  do) keeps that answer inside the template chain of thought below, counted as `templated`; a reply
  that repeats the worked example's facts is dropped (`copied_example`);
- an answer is *supported* when it occurs in the chunk, or most of its content words do (yes/no
  answers count as supported by a verified quote, since "yes" never occurs in the text);
- a question *depends* on its chunk unless the teacher, asked closed-book, gives the same answer
  (exact match or token F1 >= 0.8 after SQuAD normalisation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..qa_metrics import exact_match, f1, normalize_answer
from .prompt import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, check_quotes, final_answer

SUPPORT_RECALL = 0.75  # share of an answer's content words that must occur in the chunk
CLOSED_BOOK_F1 = 0.8
_REFUSALS = ("unknown", "i dont know", "i do not know", "not mentioned", "not stated", "cannot be determined",
             "cannot determine", "no answer", "not specified", "context does not", "document does not",
             "there is no information", "not provided")
_STOP = frozenset("of in on at to for and or by with from is are was were be as it its this that which who what "
                  "when where how why do does did".split())
_EXAMPLE_FACTS = ("robert stevenson", "cape wrath")  # from teacher.EXAMPLE_ANSWER / EXAMPLE_CONTEXT
_SENTENCES = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")


@dataclass
class Review:
    """What a teacher's chain of thought is worth: status ok, invented_quote, no_quote or no_answer."""

    status: str
    answer: str | None = None
    quotes: int = 0
    invented: list[str] = field(default_factory=list)


def review(reply: str, oracle: str) -> Review:
    """Check a chain of thought against its oracle (the only text the teacher was shown)."""
    answer = final_answer(reply)
    check = check_quotes(reply, [oracle])
    if check.invented or check.trivial or check.malformed:
        return Review("invented_quote", answer, len(check.verified), check.invented + check.trivial)
    if not check.verified:
        return Review("no_quote", answer)
    if answer is None:
        return Review("no_answer")
    return Review("ok", answer, len(check.verified))


def copies_example(reply: str, oracle: str) -> bool:
    """True when a reply repeats the worked example's facts (small teachers do: "...so it was built by
    Robert Stevenson") that its own oracle does not contain: its reasoning is not about the oracle."""
    text = normalize_answer(oracle)
    return any(f" {fact} " in f" {normalize_answer(reply)} " and f" {fact} " not in f" {text} "
               for fact in _EXAMPLE_FACTS)


def plain_answer(reply: str, max_words: int = 30) -> str | None:
    """A reply without `<ANSWER>:` taken as the answer itself when it is short (its first line)."""
    line = next((l.strip() for l in reply.splitlines() if l.strip()), "")
    return line if line and len(line.split()) <= max_words else None


def is_refusal(answer: str | None) -> bool:
    text = normalize_answer(answer or "")
    return not text or any(text == r or text.startswith(r) for r in _REFUSALS) or "does not mention" in text


def supported(answer: str, oracle: str) -> bool:
    """The answer occurs in the chunk, or SUPPORT_RECALL of its content words do (see module doc)."""
    wanted, text = normalize_answer(answer), normalize_answer(oracle)
    if not wanted or is_refusal(answer):
        return False
    if wanted in ("yes", "no") or f" {wanted} " in f" {text} ":
        return True
    words = [w for w in wanted.split() if w not in _STOP] or wanted.split()
    present = set(text.split())
    return sum(w in present for w in words) / len(words) >= SUPPORT_RECALL


def closed_book_agrees(closed: str, answer: str) -> bool:
    """True when the closed-book reply already gives `answer`: the question does not need its chunk."""
    text = closed.strip()
    closed = (final_answer(text) or text.splitlines()[0]) if text else ""
    if is_refusal(closed):
        return False
    return bool(exact_match(closed, [answer]) or f1(closed, [answer]) >= CLOSED_BOOK_F1)


def best_span(oracle: str, answer: str, question: str) -> str:
    """The oracle sentence that best supports `answer`: one containing it, else the most overlapping
    with answer and question words; ties go to the earlier, shorter sentence. Returned verbatim."""
    wanted = normalize_answer(answer)
    answer_words = set(wanted.split()) - _STOP
    question_words = set(normalize_answer(question).split()) - _STOP
    best, best_key = oracle.strip(), None
    for match in _SENTENCES.finditer(oracle):
        sentence = match.group(0).strip()
        if not any(c.isalnum() for c in sentence):
            continue
        words = set(normalize_answer(sentence).split())
        key = (bool(wanted) and f" {wanted} " in f" {normalize_answer(sentence)} ",
               len(answer_words & words), len(question_words & words), -len(sentence))
        if best_key is None or key > best_key:
            best, best_key = sentence, key
    return best


def template_cot(question: str, oracle: str | list[str], answer: str) -> str:
    """A deterministic chain of thought quoting the oracle span that best supports the gold answer; with
    several oracles (a multi-hop question), first the span of each other oracle that best matches the
    question (the bridge), then the one that holds the answer."""
    texts = [oracle] if isinstance(oracle, str) else list(oracle)
    spans = [best_span(text, answer, question) for text in (*texts[1:], texts[0])]
    answer = answer.strip()
    # a long answer (code, a paragraph) is not restated before the tag: it would double the tokens
    # the model trains on and must generate, for no reasoning gained
    restated = (f"This states the answer directly, so the answer is {answer.rstrip('.')}." if len(answer.split()) <= 12
                else "This is what the answer below rests on.")
    said = "".join(f"The relevant document says: {BEGIN_QUOTE}{span}{END_QUOTE}\n" for span in spans)
    if len(spans) > 1:
        restated = restated.replace("This states", "Together these state").replace("This is", "These are")
    return f"The question asks: {question.strip()}\n{said}{restated}\n{ANSWER_TAG} {answer}"
