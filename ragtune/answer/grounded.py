"""The grounded reading protocol: answer, then copy the sentence that says it.

Why: a 0.1-0.5B model asked to "answer and cite [n]" loses answers retrieval found (a bare "[1]",
the question repeated, a citation one source off). Here the model answers and then quotes the
sentence it answered from; on llama.cpp the grammar built here admits as a quote only a sentence of
the sources given (so a quote is verbatim by construction and its source is known) and keeps
citation markers out of the answer. Backends without grammars (transformers, endpoints) get the
same prompt; their quotes are verified after the fact. ragtune then cites the sentence that holds
the answer (protocols.py).

The reply shape (mode "answer-first", measured best; "quote-first" and "locate", a bare answer whose
support ragtune finds, are the measured alternative and the retry):
    Answer: <the answer>
    Quote: <a sentence of one source, verbatim>   (up to MAX_QUOTES lines)
or, when no source answers:
    Answer: not found in the sources
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .citations import CAPITALISED, NOT_NAMES, NUMBER_WORDS, TOKEN, content_words, numbers  # noqa: F401 (content_words re-exported)

# capitalised only because they open a sentence: not names an answer asserts
OPENERS = frozenset("a an the it its this that these those there they he she we you i yes no in on at by for from "
                    "to of with when where what which who how why if as so and but or not all each every some "
                    "any both one".split())

QUOTE_PREFIX = "Quote: "
ANSWER_PREFIX = "Answer: "
NO_QUOTE = "none"
NOT_FOUND_REPLY = "not found in the sources"
MAX_QUOTES = 3
MAX_ANSWER_CHARS = 400

SYSTEMS = {
    "quote-first": (
        "You answer questions using only the numbered sources. First copy, word for word, the sentence of a "
        f"source that answers the question, on a line starting with '{QUOTE_PREFIX.strip()}'. Then give the answer "
        f"on a line starting with '{ANSWER_PREFIX.strip()}', using the words of that sentence. If no source "
        f"answers, write '{QUOTE_PREFIX}{NO_QUOTE}' and '{ANSWER_PREFIX}{NOT_FOUND_REPLY}'."),
    "answer-first": (
        "You answer questions using only the numbered sources. Give the answer on a line starting with "
        f"'{ANSWER_PREFIX.strip()}'. Then copy, word for word, the sentence of a source that says it, on a line "
        f"starting with '{QUOTE_PREFIX.strip()}'. If no source answers, write '{ANSWER_PREFIX}{NOT_FOUND_REPLY}'."),
    "locate": (
        "You answer questions using only the numbered sources, in their words. Answer briefly. If no source "
        f"answers, reply '{NOT_FOUND_REPLY}'."),
}
QUESTION = "Sources:\n\n{sources}\n\nQuestion: {question}"
EXAMPLE_SOURCES = (
    ("Lighthouses", "The lighthouse at Cape Wrath was built in 1828 by Robert Stevenson.\n"
                    "It has run automatically since 1998."),
    ("Ferries", "Ferries to the island leave twice a day from the north pier.\nTickets are sold on board."),
)
EXAMPLE_QUESTION = "Who built the lighthouse at Cape Wrath, and when?"
EXAMPLE_QUOTE = "The lighthouse at Cape Wrath was built in 1828 by Robert Stevenson."
EXAMPLE_ANSWER = "Robert Stevenson built it in 1828."
EXAMPLE_REPLIES = {"quote-first": f"{QUOTE_PREFIX}{EXAMPLE_QUOTE}\n{ANSWER_PREFIX}{EXAMPLE_ANSWER}",
                   "answer-first": f"{ANSWER_PREFIX}{EXAMPLE_ANSWER}\n{QUOTE_PREFIX}{EXAMPLE_QUOTE}",
                   "locate": EXAMPLE_ANSWER}


def labelled(text: str) -> bool:
    """Whether a reply opens with the protocol's "Answer:" label."""
    return text.lstrip().lower().startswith(ANSWER_PREFIX.strip().lower())


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def quote_grammar(sentences: list[str], *, allow_not_found: bool = True, max_quotes: int = MAX_QUOTES,
                  answer_chars: int = MAX_ANSWER_CHARS, mode: str = "answer-first") -> str:
    """GBNF for the reply: 1..max_quotes quotes, each one of `sentences` exactly, then the answer.

    The answer may not contain '[' or ']' (no citation markers: ragtune adds the citation), must
    start with a letter or digit, and is one line of at most `answer_chars` characters (a small model
    caught in a loop would otherwise repeat a list to the token limit).
    """
    alternatives = " | ".join(gbnf_literal(s) for s in dict.fromkeys(sentences)) or '"-"'
    repeat = ""
    for _ in range(max_quotes - 1):
        repeat = f'( "\\n" quote {repeat})?'
    if mode == "answer-first":
        top = f'root ::= "{ANSWER_PREFIX}" answer "\\n" quote {repeat}' + (
            f' | "{ANSWER_PREFIX}{NOT_FOUND_REPLY}" "\\n"?' if allow_not_found else "")
    elif mode == "locate":
        top = "root ::= answer" + (f' | "{NOT_FOUND_REPLY}"' if allow_not_found else "")
    else:
        top = f'root ::= quote {repeat} "\\n{ANSWER_PREFIX}" answer "\\n"?' + (
            f' | "{QUOTE_PREFIX}{NO_QUOTE}\\n{ANSWER_PREFIX}{NOT_FOUND_REPLY}" "\\n"?' if allow_not_found else "")
    lines = [top,
        f'quote ::= "{QUOTE_PREFIX}" sentence',
        f"sentence ::= {alternatives}"]
    lines += ['answer ::= [a-zA-Z0-9\\u00C0-\\uFFFF`"\'(*] [^\\n\\[\\]]{0,%d}' % max(answer_chars - 1, 1)]
    return "\n".join(lines) + "\n"


@dataclass
class Reply:
    quotes: list[str] = field(default_factory=list)
    answer: str = ""
    not_found: bool = False
    well_formed: bool = True  # False: no Answer: line (a backend without the grammar ignored the shape)


_QUOTE_LINE = re.compile(r"^\s*(?:\d+\.\s*)?quote\s*(?:\[\d+\])?\s*:\s*(.*)$", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^\s*answer\s*:\s*(.*)$", re.IGNORECASE)


def parse(text: str) -> Reply:
    """The quotes and the answer of a reply (lenient about case and stray quote marks, for the
    backends that follow the shape without a grammar)."""
    reply, answer_lines, answering = Reply(), [], False
    for line in text.strip().splitlines():
        quote, answer = _QUOTE_LINE.match(line), _ANSWER_LINE.match(line)
        if quote:
            answering = False
            body = quote.group(1).strip().strip('"“”')
            if body and body.lower() != NO_QUOTE and body not in reply.quotes:
                reply.quotes.append(body)
        elif answer and not answer_lines:
            answering = True
            answer_lines.append(answer.group(1).strip())
        elif answering and line.strip():
            answer_lines.append(line.strip())
    if not answer_lines:
        reply.well_formed = False
        return reply
    reply.answer = tidy(" ".join(line for line in answer_lines if line))
    reply.not_found = reply.answer.lower().rstrip(".").strip() == NOT_FOUND_REPLY or (
        not reply.quotes and "not found" in reply.answer.lower())
    return reply


# what a small model appends on the answer's line: the next field, or a not-found after an answer
_TRAILER = re.compile(r"\s*(?:\bQuote:|\(?\bnot found in the sources\b|\bThe source that says\b).*$", re.I | re.S)


def tidy(answer: str) -> str:
    """The answer without what follows it on its line (an inline "Quote:", a not-found after it)."""
    answer = answer.strip()
    cut = _TRAILER.sub("", answer).strip()
    return cut if cut and any(c.isalnum() for c in cut) else answer


_LOOP = re.compile(r"((?:\S+[\s,;]+){2,8}?)\1+|(\S+[\s,;]+)\2{2,}")


def collapse_loops(text: str) -> str:
    """A phrase repeated three or more times in a row kept once: the greedy loop a small model falls
    into ("JSON, JSONL, JSON, JSONL, ...") is never what the source says."""
    collapsed = _LOOP.sub(lambda m: m.group(1) or m.group(2), text)
    return collapsed if collapsed == text else collapsed.rstrip(" ,;")


def normalise(text: str) -> str:
    return " ".join(text.split())


_CODE = re.compile(r"`([^`]+)`")
_IDENT = re.compile(r"[\w.-]*[./_=-][\w./=-]+")  # train.jsonl, --glob, ~/.cache/x, kind=value


def entities(text: str) -> list[str]:
    """What an answer asserts that a source must contain: numbers, capitalised names, code spans and
    identifiers (file names, flags, paths)."""
    found = sorted(numbers(text)) + [w for w in CAPITALISED.findall(text)
                                     if w.lower() not in NOT_NAMES and w.lower() not in OPENERS and any(c.isalpha() for c in w)]
    found += [c.strip() for c in _CODE.findall(text)]
    found += [i for i in _IDENT.findall(_CODE.sub(" ", text)) if any(ch.isalpha() for ch in i) and not i.endswith(".")]
    return list(dict.fromkeys(e for e in found if e))


def _words(text: str) -> set[str]:
    """Whitespace-separated words, lowered, without surrounding punctuation: an identifier such as
    LUA_PATH_5_2 stays one word (the question's "Lua 5.2 ... path" does not already say it)."""
    return {w.strip(".,;:!?\"'()`*").lower() for w in text.split()} - {""}


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in TOKEN.findall(text)}


def missing_entities(answer: str, evidence: str) -> list[str]:
    """The entities of `answer` that `evidence` (quotes and cited sources) does not contain."""
    lowered, tokens = normalise(evidence).lower(), _tokens(evidence)
    evidence_numbers = numbers(evidence)
    missing = []
    for entity in entities(answer):
        if entity.replace(",", "").isdigit() or entity in NUMBER_WORDS.values():
            if entity not in evidence_numbers:
                missing.append(entity)
        elif normalise(entity).lower() in lowered:
            continue
        elif not all(part.lower() in tokens for part in TOKEN.findall(entity)):
            missing.append(entity)
    return missing


MIN_WORD_SUPPORT = 0.6  # share of an answer's content words that the quoted sentence and its neighbours must hold


def word_support(answer: str, evidence: str) -> float:
    """The share of the answer's content words found in `evidence` (1.0 for an answer of none: "Yes")."""
    words = content_words(answer)
    return len(words & content_words(evidence)) / len(words) if words else 1.0


def window(sentences: list[str], i: int) -> str:
    """Sentence i with its neighbours: an answer often joins a subject named in one sentence to the
    fact stated in the next ("The Halvard bridge ... It is painted green")."""
    return " ".join(sentences[max(i - 1, 0):i + 2])


def holds(answer: str, sentences: list[str], i: int, text: str) -> float | None:
    """How well sentence i of a source (`text`) holds `answer`: None when the source lacks one of
    its entities or its neighbourhood too few of its words, else the share of words."""
    if missing_entities(answer, text):
        return None
    score = word_support(answer, window(sentences, i))
    return score if score >= MIN_WORD_SUPPORT else None


def best_sentence(answer: str, sentences: list[list[str]], texts: list[str], question: str = "",
                  prefer: set[tuple[int, str]] = frozenset()) -> tuple[str, int] | None:
    """(sentence, source number) of the sentence that says what the answer adds to the question
    (its words beyond the question's, in that sentence itself), among those that hold the answer
    (`holds`); a sentence the model quoted (`prefer`, as (n, sentence)) wins when it says as much;
    then the earlier source. None when no sentence holds the answer."""
    new_words = " ".join(sorted(content_words(answer) - content_words(question)))
    best, best_key = None, None
    for n, (source_sentences, text) in enumerate(zip(sentences, texts), start=1):
        for i, sentence in enumerate(source_sentences):
            score = holds(answer, source_sentences, i, text) if len(sentence.split()) >= 3 else None
            if score is None:
                continue
            says = word_support(new_words, sentence) if new_words else word_support(answer, sentence)
            key = (says, (n, sentence) in prefer, score)
            if best_key is None or key > best_key:
                best, best_key = (sentence, n), key
    return best


YES_NO = re.compile(r"^(yes|no)\b", re.IGNORECASE)


def empty_reason(answer: str, question: str) -> str | None:
    """Why an answer says nothing (None when it says something): blank, only the question again,
    or no word beyond the question's."""
    plain = re.sub(r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]", "", answer).strip(" .;:,")
    if not plain or not any(c.isalnum() for c in plain):
        return "the answer is empty or only a citation marker"
    if answer.rstrip().endswith(":"):
        return "the answer stops before it says anything"
    if normalise(plain).lower().rstrip("?") == normalise(question).lower().rstrip("?"):
        return "the answer repeats the question"
    if YES_NO.match(plain):
        return None
    if not (content_words(plain) - content_words(question)) and not (_words(plain) - _words(question)):
        return "the answer adds no word to the question"
    return None
