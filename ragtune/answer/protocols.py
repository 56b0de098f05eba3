"""How a model is asked to answer from sources, and how its reply is read: the pipeline's one hook
for what really differs between prompt styles.

* `grounded` (the default for local models measured to gain from it): answer, then quote the sentence
  that says it; a grammar on llama.cpp makes the quote verbatim; the citation is the source of the
  sentence that holds the answer. answer/grounded.py.
* `rag`: the plain prompt, "answer and cite [n]"; the citations are checked for support afterwards.
* `reader`: the grounded protocol without its worked example, for a model carrying a reader adapter
  trained on exactly this prompt and reply shape (`ragtune raft reader`, raft/reader.py).
* `raft`: a RAFT-trained model's own prompt (documents wrapped as in training, quotes between
  ##begin_quote## and ##end_quote##, the answer after <ANSWER>:); raft/prompt.py.

A protocol builds the messages, optionally a grammar, and reads a reply into a `Reading`: the
answer text, the verified quotes (with the 1-based numbers of the sources holding them) and the
quotes that are in no source. The pipeline does everything else the same way for all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import grounded
from .prompt import Templates
from .sentences import introduced, split_with_offsets

PROTOCOLS = ("grounded", "reader", "rag", "raft")


@dataclass
class Reading:
    answer: str
    quotes: list[tuple[str, list[int]]] = field(default_factory=list)  # (quote, source numbers holding it)
    invented: list[str] = field(default_factory=list)  # quotes found in no source given
    not_found: bool = False  # the model said no source answers
    reasoning: str | None = None  # what came before the answer (quotes, a chain of thought)
    problem: str | None = None  # why this reply cannot stand (the pipeline retries once, then says not found)
    matched: list = field(default_factory=list)  # the model's own quotes, when another sentence holds the answer


def quote_sources(quote: str, texts: list[str]) -> list[int]:
    """The 1-based numbers of the texts holding `quote` verbatim (whitespace normalised)."""
    wanted = grounded.normalise(quote)
    return [n for n, text in enumerate(texts, start=1) if wanted and wanted in grounded.normalise(text)]


class GroundedProtocol:
    name = "grounded"
    grounded = True  # answer + verbatim quote: the grammar, the checks and "not found" on a reply that cannot stand
    selects_sentences = True  # the passages shown are the question's sentences and their neighbours

    def __init__(self, *, example: bool = True, instruction: str | None = None, allow_not_found: bool = True,
                 mode: str = "answer-first"):
        self.example, self.instruction = example, instruction
        self.allow_not_found, self.mode = allow_not_found, mode
        # streaming: the quotes before the answer are reasoning; a `locate` reply is all answer
        self.answer_tag = None if mode == "locate" else grounded.ANSWER_PREFIX.strip()

    def templates(self) -> Templates:
        question = grounded.QUESTION + (f"\n{self.instruction}" if self.instruction else "")
        return Templates(system=grounded.SYSTEMS[self.mode], question=question, example=False)

    def example_turns(self) -> list[dict]:
        if not self.example:
            return []
        sources = "\n\n".join(f"[{n}] {title}\n{text}" for n, (title, text) in enumerate(grounded.EXAMPLE_SOURCES, 1))
        return [{"role": "user", "content": grounded.QUESTION.format(sources=sources, question=grounded.EXAMPLE_QUESTION)},
                {"role": "assistant", "content": grounded.EXAMPLE_REPLIES[self.mode]}]

    def retry(self):
        """The protocol a rejected reply is asked again in: a direct answer, located by ragtune."""
        if self.mode == "locate":
            return None
        return GroundedProtocol(example=self.example, instruction=self.instruction,
                                allow_not_found=self.allow_not_found, mode="locate")

    def grammar(self, passages) -> str:
        # a heading or a two-word fragment is no evidence: only sentences of 3+ words may be quoted
        sentences = [s.text for p in passages for s in p.sentences if len(s.text.split()) >= 3
                     and not s.text.startswith(("#", "|"))] or [s.text for p in passages for s in p.sentences]
        return grounded.quote_grammar(sentences, allow_not_found=self.allow_not_found, mode=self.mode)

    def read(self, text: str, passages, question: str, *, truncated: bool = False) -> Reading:
        if self.mode == "locate" and not grounded.labelled(text):
            # the reply is the answer; ragtune finds the sentence that holds it (a reader adapter keeps
            # its trained "Answer: ... / Quote: ..." shape even here: then it is read as that)
            text = f"{grounded.ANSWER_PREFIX}{text.strip()}"
        reply = grounded.parse(text)
        texts = [p.text for p in passages]
        reading = Reading(reply.answer, reasoning="\n".join(grounded.QUOTE_PREFIX + q for q in reply.quotes) or None)
        if not reply.well_formed:
            reading.answer = text.strip()
            reading.problem = "the reply has no 'Answer:' line"
            return reading
        if reply.not_found:
            reading.not_found = True
            return reading
        if truncated and reply.quotes and not quote_sources(reply.quotes[-1], texts):
            reply.quotes.pop()  # cut by the token budget mid-quote: not an invented one
        for quote in reply.quotes:
            where = quote_sources(quote, texts)
            if where:
                reading.quotes.append((quote, where))
            else:
                reading.invented.append(quote)
        if reading.invented:
            reading.problem = f"a quote is in no source: {reading.invented[0][:80]!r}"
        elif not reading.quotes and self.mode != "locate":
            reading.problem = "the reply quotes no source"
        else:
            extension = self._introduced(reading.answer, passages)
            if extension:  # ragtune's own copy from the source: checked as the sentence that introduces it
                reading.answer = reading.answer.rstrip(": ")
            reading.problem = grounded.empty_reason(reading.answer, question) or self._support(reading, passages, question)
            if extension and not reading.problem:
                reading.answer = f"{reading.answer}: {extension}"
        return reading

    @staticmethod
    def _introduced(answer: str, passages) -> str | None:
        """For an answer that copies a sentence introducing a list or code block ("run two commands
        from a fresh clone:"): what that sentence introduces in the source (the whole list, not its
        first line), joined by "; "; else None."""
        if not answer.rstrip().endswith(":"):
            return None
        wanted = grounded.normalise(answer.rstrip(": ")).lower()
        for passage in passages:
            whole = split_with_offsets(passage.hit.text)
            for i, sentence in enumerate(whole):
                if sentence.text.endswith(":") and wanted and wanted in sentence.text.lower():
                    following = introduced(whole, i)
                    if following:
                        return "; ".join(s.text for s in following)
        return None

    @staticmethod
    def _support(reading: Reading, passages, question: str) -> str | None:
        """The answer must say what its quotes say: every number and name of it in a quote or in a
        quoted source, and most of its own words (those not in the question) in the quotes. When the
        quotes do not hold the answer but one sentence of a source given does, that sentence becomes
        the quote and its source the citation (a small model often quotes one sentence and answers
        from another); otherwise the answer cannot stand."""
        texts = [p.text for p in passages]
        sentences = [[s.text for s in p.sentences] for p in passages]
        # the model's quotes, as the passage sentences holding them (a quote may be part of one)
        own = {(n, sentence) for quote, where in reading.quotes for n in where for sentence in sentences[n - 1]
               if grounded.normalise(quote) in sentence}
        best = grounded.best_sentence(reading.answer, sentences, texts, question, prefer=own)
        if best is not None:
            sentence, n = best
            if (n, sentence) not in own:
                reading.matched = [(q, where) for q, where in reading.quotes]
                reading.quotes = [(sentence, [n])]
            else:  # keep the model's quotes that say part of the answer (its exact words), the best first
                new = grounded.content_words(reading.answer) - grounded.content_words(question)
                reading.quotes = sorted([q for q in reading.quotes if n in q[1] and grounded.normalise(q[0]) in sentence
                                         or new & grounded.content_words(q[0])], key=lambda q: n not in q[1])
            return None
        cited = sorted({n for _, where in reading.quotes for n in where})
        missing = grounded.missing_entities(reading.answer, "\n".join([*(q for q, _ in reading.quotes),
                                                                         *(texts[n - 1] for n in cited)]))
        if missing:
            return f"the quoted sources do not contain {', '.join(missing)}"
        return "the quotes do not say what the answer says"


class PlainProtocol:
    """"Answer and cite [n]": the citations are the model's, checked for support by the pipeline."""

    name = "rag"
    grounded = False
    selects_sentences = False
    answer_tag = None

    def __init__(self, templates: Templates | None = None, *, history_examples: list[dict] | None = None):
        self._templates = templates or Templates()
        self.history_examples = list(history_examples or [])

    def templates(self) -> Templates:
        return self._templates

    def example_turns(self) -> list[dict]:
        return self._templates.example_turns() + self.history_examples

    def grammar(self, passages) -> None:
        return None

    def retry(self) -> None:
        return None

    def read(self, text: str, passages, question: str, *, truncated: bool = False) -> Reading:
        reading = Reading(text.strip())
        reason = grounded.empty_reason(reading.answer, question)
        # a bare "[1]" or the question repeated is no answer; anything else is checked sentence by sentence
        reading.problem = reason if reason and "adds no word" not in reason else None
        return reading


class RaftProtocol:
    """A RAFT-trained model in its training prompt: whole documents, no worked example, single turn."""

    name = "raft"
    grounded = False
    selects_sentences = False
    answer_tag = None  # set in __init__ (the raft module is imported lazily)

    def __init__(self):
        from ..raft.prompt import ANSWER_TAG

        self.answer_tag = ANSWER_TAG

    def templates(self) -> Templates:
        from ..raft.prompt import raft_templates

        return raft_templates()

    def example_turns(self) -> list[dict]:
        return []

    def grammar(self, passages) -> None:
        return None

    def retry(self) -> None:
        return None

    def read(self, text: str, passages, question: str, *, truncated: bool = False) -> Reading:
        from ..raft.prompt import ANSWER_TAG, check_quotes, final_answer

        check = check_quotes(text, [p.text for p in passages])
        answer = final_answer(text)
        position = text.rfind(ANSWER_TAG)
        reading = Reading(answer if answer is not None else text.replace(ANSWER_TAG, "").strip(),
                          quotes=list(check.verified), invented=[*check.invented, *check.trivial],
                          reasoning=text[:position].strip() if position >= 0 else text.strip())
        if answer is None:
            reading.problem = f"the reply has no {ANSWER_TAG}"
        return reading


class ReaderProtocol(GroundedProtocol):
    """The grounded protocol as a reader adapter was trained on it: no worked example (the adapter
    learned the reply shape, and the example's ~150 prompt tokens are saved on every question)."""

    name = "reader"

    def __init__(self, *, instruction: str | None = None, mode: str = "answer-first"):
        super().__init__(example=False, instruction=instruction, mode=mode)


def make_protocol(name: str, *, templates: Templates | None = None, example: bool = True,
                  instruction: str | None = None, history_examples: list[dict] | None = None):
    from ..errors import ConfigError

    if name == "grounded":
        return GroundedProtocol(example=example, instruction=instruction)
    if name == "reader":
        return ReaderProtocol(instruction=instruction)
    if name == "rag":
        from dataclasses import replace

        return PlainProtocol(replace(templates or Templates(), example=example), history_examples=history_examples)
    if name == "raft":
        return RaftProtocol()
    raise ConfigError(f"--prompt must be one of {', '.join(PROTOCOLS)} (or auto), got {name!r}")
