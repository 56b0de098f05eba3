"""How an answer is produced: the strategies that `ragtune eval qa` and `ragtune compare` set side by side.

Why a tiny `Strategy` protocol: base (closed-book), RAG, fine-tuned and fine-tuned + RAG differ only
in how an answer is produced; scoring, storage, resuming and the summary are the same for all and
live in runner.py. A fine-tuned model is simply a generator made from another `--model`, so `ft` is
`base` and `ft+rag` is `rag` over the fine-tuned generator.

Prompting follows bench/rag_qa.py, which measured it: one worked example given as an earlier chat
turn (a short phrase, then [n] under RAG), and the answer scored on its first non-empty line (small
models repeat themselves after the phrase; a stop-at-newline rule as in common QA harnesses).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError

SHORT = "Answer with a short phrase only."
_EXAMPLE_SOURCES = ("[1] Eiffel Tower\nThe Eiffel Tower is a wrought-iron lattice tower in Paris, France, designed by the "
                    "company of Gustave Eiffel.\n\n[2] Big Ben\nBig Ben is the nickname for the Great Bell of the clock "
                    "at the Palace of Westminster in London.")
RAG_EXAMPLE = [{"role": "user", "content": f"Sources:\n\n{_EXAMPLE_SOURCES}\n\nQuestion: In which city is the tower "
                f"designed by Gustave Eiffel's company?\n{SHORT} Then cite the source as [n]."},
               {"role": "assistant", "content": "Paris [1]"}]
CLOSED_EXAMPLE = [{"role": "user", "content": f"In which country is the Eiffel Tower?\n{SHORT}"},
                  {"role": "assistant", "content": "France"}]
RAG_QUESTION = "Sources:\n\n{sources}\n\nQuestion: {question}\n" + SHORT + " Then cite the source as [n]."


@dataclass(frozen=True)
class PromptStyle:
    """How a strategy asks: the instruction after the question, the worked example given as an
    earlier turn (closed-book and with sources), and whether the whole answer is scored (task
    formats such as Gorilla's API calls) or its first line (short QA answers)."""

    instruction: str = SHORT
    closed_example: tuple = tuple(CLOSED_EXAMPLE)
    rag_example: tuple = tuple(RAG_EXAMPLE)
    whole_answer: bool = False

    @property
    def rag_question(self) -> str:
        return "Sources:\n\n{sources}\n\nQuestion: {question}\n" + self.instruction + " Then cite the source as [n]."

    def prediction(self, text: str) -> str:
        return text.strip() if self.whole_answer else first_line(text)

    def training_example(self, question: str, answer: str) -> dict:
        """A chat fine-tuning record in the closed-book prompt `ft` is evaluated with; the worked
        examples' replies carry weight 0, so the loss falls on this question's answer only."""
        shown = [{**turn, "weight": 0} if turn["role"] == "assistant" else dict(turn) for turn in self.closed_example]
        return {"messages": [*shown, {"role": "user", "content": f"{question}\n{self.instruction}"},
                             {"role": "assistant", "content": answer}]}


QA_STYLE = PromptStyle()


def label_style(labels: list[str]) -> PromptStyle:
    """For a labelled set (yes/no/maybe, classes): the instruction naming the labels. The worked
    examples must answer truthfully, and the frequent label must not be primed: with a "yes" label
    the example is one true "yes" and one true "no" question (when "no" is a label too); for other
    label sets there is no worked example, only the instruction."""
    instruction = f"Answer with one word: {', '.join(labels)}."
    lowered = {label.lower(): label for label in labels}
    if "yes" not in lowered:
        return PromptStyle(instruction=instruction, closed_example=(), rag_example=())
    pairs = [("Is the Eiffel Tower in France?", "Is the tower designed by Gustave Eiffel's company in Paris?", "yes")]
    if "no" in lowered:
        pairs.append(("Is Big Ben in Paris?", "Is Big Ben in Paris?", "no"))
    closed, rag = [], []
    for closed_q, rag_q, answer in pairs:
        closed += [{"role": "user", "content": f"{closed_q}\n{instruction}"},
                   {"role": "assistant", "content": lowered[answer]}]
        rag += [{"role": "user", "content": f"Sources:\n\n{_EXAMPLE_SOURCES}\n\nQuestion: {rag_q}\n{instruction} "
                 "Then cite the source as [n]."},
                {"role": "assistant", "content": f"{lowered[answer]} [{1 if answer == 'yes' else 2}]"}]
    return PromptStyle(instruction=instruction, closed_example=tuple(closed), rag_example=tuple(rag))


# strategy name -> (uses the fine-tuned model, retrieves); raft: a RAFT-trained model in the RAFT
# prompt (quotes, then <ANSWER>:), without documents (raft) or with the retrieved ones (raft+rag)
STRATEGIES = {"base": (False, False), "rag": (False, True), "ft": (True, False), "ft+rag": (True, True),
              "raft": (True, False), "raft+rag": (True, True)}
RAFT_STRATEGIES = ("raft", "raft+rag")


def first_line(text: str) -> str:
    """The first non-empty line of an answer: what is scored."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


class Strategy(Protocol):
    """How one answer is produced. `answer` returns a dict with prediction, retrieved_ids (document
    ids the model was shown, in rank order; [] closed-book), cited_ids, prompt_tokens,
    completion_tokens and latency_s; retrieval strategies add answer_text and source_texts (for
    faithfulness). `concurrent_safe` says whether `answer` may run on several threads at once."""

    name: str
    uses_retrieval: bool
    concurrent_safe: bool

    def answer(self, example) -> dict: ...


class BaseStrategy:
    """Closed-book: the model alone answers the question (with one worked example)."""

    uses_retrieval = False
    concurrent_safe = True  # only the generator is shared, and llama.cpp batches concurrent calls

    def __init__(self, generator, *, name: str = "base", max_new_tokens: int = 32, style: PromptStyle = QA_STYLE):
        self.generator, self.name, self.max_new_tokens, self.style = generator, name, max_new_tokens, style

    def answer(self, example) -> dict:
        started = time.perf_counter()
        messages = [*self.style.closed_example, {"role": "user", "content": f"{example.question}\n{self.style.instruction}"}]
        result = self.generator.generate(messages, max_new_tokens=self.max_new_tokens, temperature=0.0)
        return {"prediction": self.style.prediction(result.text), "retrieved_ids": [], "cited_ids": [],
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "latency_s": round(time.perf_counter() - started, 4)}


def _source_id(hit, golds: list[str]) -> str:
    """A shown source's id for scoring: the gold id it matches (by doc id, source path, file name,
    file stem or title, since eval sets name documents in any of these ways), else its doc id."""
    aliases = {hit.doc_id, hit.source, Path(hit.source).name, Path(hit.source).stem, getattr(hit, "title", None)}
    return next((gold for gold in golds if gold in aliases), hit.doc_id)


class RagStrategy:
    """Retrieve top-k from the knowledge base and answer from the sources, through the one answer
    pipeline (ragtune/answer/pipeline.py) in the prompt a user gets (`prompt`: auto, grounded, rag).

    Safe to run on several threads: the knowledge base is used under one lock (retrieval and the
    citation check take milliseconds), while the generations, which take seconds, overlap and a
    llama.cpp generator with slots decodes them in one batch."""

    uses_retrieval = True
    concurrent_safe = True

    def __init__(self, kb, generator, *, k: int = 5, name: str = "rag", max_new_tokens: int = 32,
                 min_relevance: float = 0.0, mode: str = "hybrid", style: PromptStyle = QA_STYLE,
                 prompt: str = "auto"):
        from ..answer.prompt import Templates

        self.kb, self.generator, self.k, self.name = kb, generator, k, name
        self.max_new_tokens, self.min_relevance, self.mode, self.style = max_new_tokens, min_relevance, mode, style
        self.prompt = prompt
        # the plain prompt's worked example is given as history, so the template's own is off
        self.templates = Templates(question=style.rag_question, example=False)
        self._kb_lock = threading.Lock()

    def answer(self, example) -> dict:
        from ..answer.pipeline import ask

        started = time.perf_counter()
        result = ask(self.kb, example.question, self.generator, k=self.k, mode=self.mode,
                     max_new_tokens=self.max_new_tokens, prompt=self.prompt, templates=self.templates,
                     instruction=self.style.instruction, history_examples=list(self.style.rag_example),
                     min_relevance=self.min_relevance, kb_lock=self._kb_lock)
        return pipeline_record(result, example, self.style, started)


def pipeline_record(result, example, style: PromptStyle, started: float) -> dict:
    """The stored record of one pipeline answer: prediction, ids shown and cited, tokens, latency."""
    sources = result.prompt.sources if result.prompt else []
    ids = [_source_id(hit, example.gold_doc_ids) for hit in sources]
    cited = list(dict.fromkeys(ids[c.n - 1] for c in result.check.citations if 1 <= c.n <= len(ids)))
    return {"prediction": style.prediction(result.bare or result.answer), "retrieved_ids": ids, "cited_ids": cited,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "latency_s": round(time.perf_counter() - started, 4),
            **({"answer_text": result.answer, "source_texts": [hit.text for hit in sources]} if sources else {})}


class RaftStrategy:
    """A RAFT-trained model answering in its training prompt: the documents (retrieved, or none)
    wrapped as in training; the answer is the text after `<ANSWER>:`, the citations the quotes
    verified against the documents given (the answer pipeline's raft protocol)."""

    concurrent_safe = True

    def __init__(self, kb, generator, *, k: int = 5, name: str = "raft+rag", max_new_tokens: int = 256,
                 style: PromptStyle = QA_STYLE):
        self.kb, self.generator, self.k, self.name = kb, generator, k, name
        self.max_new_tokens, self.style = max_new_tokens, style
        self.uses_retrieval = kb is not None
        self._kb_lock = threading.Lock()

    def answer(self, example) -> dict:
        from ..raft.prompt import ANSWER_TAG, final_answer, raft_messages

        started = time.perf_counter()
        if self.kb is not None:
            from ..answer.pipeline import ask

            result = ask(self.kb, example.question, self.generator, k=self.k, prompt="raft",
                         max_new_tokens=self.max_new_tokens, kb_lock=self._kb_lock)
            return pipeline_record(result, example, self.style, started)
        generation = self.generator.generate(raft_messages(example.question, []), max_new_tokens=self.max_new_tokens,
                                             temperature=0.0)
        reply = generation.text.strip()
        answer = final_answer(reply) or reply.replace(ANSWER_TAG, "").strip()
        return {"prediction": self.style.prediction(answer), "retrieved_ids": [], "cited_ids": [],
                "prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
                "latency_s": round(time.perf_counter() - started, 4)}


def check_strategy(name: str, *, model: str | None, kb, flag: str = "--strategy",
                   model_flag: str = "--model") -> tuple[bool, bool]:
    """(fine-tuned, retrieves) for a strategy name; a clear error for an unknown name or a missing
    --model / --kb that the strategy needs."""
    if name not in STRATEGIES:
        raise ConfigError(f"{flag}: unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    fine_tuned, retrieves = STRATEGIES[name]
    if retrieves and kb is None:
        raise ConfigError(f"{flag} {name} needs --kb: the knowledge base to retrieve from")
    if fine_tuned and not model:
        raise ConfigError(f"{flag} {name} needs {model_flag}: the fine-tuned model (a run or export directory, a "
                          "packaged name, a .gguf file or an endpoint's model name)")
    return fine_tuned, retrieves


def make_strategy(name: str, generator, *, kb=None, k: int = 5, max_new_tokens: int = 32,
                  style: PromptStyle = QA_STYLE, prompt: str = "auto") -> Strategy:
    """The strategy object for `name` over an already loaded generator (and opened KB)."""
    _fine_tuned, retrieves = STRATEGIES[name]
    if name in RAFT_STRATEGIES:
        return RaftStrategy(kb if retrieves else None, generator, k=k, name=name,
                            max_new_tokens=max(max_new_tokens, 256), style=style)
    if retrieves:
        return RagStrategy(kb, generator, k=k, name=name, max_new_tokens=max_new_tokens, style=style, prompt=prompt)
    return BaseStrategy(generator, name=name, max_new_tokens=max_new_tokens, style=style)


MAX_LABELS = 10


def dataset_labels(examples: list) -> list[str] | None:
    """The label set of a labelled evaluation set (every example labelled, at most MAX_LABELS
    classes), most frequent first; None for open questions."""
    if not examples or any(example.label is None for example in examples):
        return None
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.label] = counts.get(example.label, 0) + 1
    if len(counts) > MAX_LABELS:
        return None
    return sorted(counts, key=lambda label: (-counts[label], label))
