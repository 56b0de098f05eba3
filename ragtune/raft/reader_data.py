"""Training examples for a reader adapter (raft/reader.py): questions with the passages that answer
them and RAFT's distractors, written in exactly the prompt and reply shape the answer pipeline uses.

Two sources of questions:
* a public QA set with its passages (`mix_items`): HotpotQA, as the IRCoT JSONL release
  (question_text, answers_objects, contexts[is_supporting]) or the original JSON (context,
  supporting_facts). Each question comes with its gold paragraphs and retrieval-picked distractors.
* the user's own knowledge base (`kb_items`): the teacher writes question/answer pairs for sampled
  chunks (raft/reader_teacher.py); the distractors are what the knowledge base's own retriever
  returns for the question.

The reply a reader is trained to write is the grounded protocol's (answer/grounded.py):
    Answer: <the short answer>
    Quote: <the sentence of a source that holds it, verbatim>
or, when the passages shown hold no answer (RAFT's 1 - P share: the oracle is left out),
    Answer: not found in the sources
The quote is not the teacher's: ragtune takes the sentence of the shown passage that contains the
answer, so every target is verbatim by construction and the grammar at inference admits it.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..answer import grounded
from ..answer.protocols import ReaderProtocol
from ..errors import ConfigError
from ..qa_metrics import contains_answer
from ..ingest.record_reader import Problem, RecordReader
from ..retrieve.hits import Hit

logger = logging.getLogger(__name__)
MAX_SOURCES = 5  # passages an example shows: the pipeline's default k


@dataclass
class ReaderItem:
    id: str
    question: str
    answer: str
    oracles: list  # Hits holding what answers (HotpotQA: both supporting paragraphs)
    distractors: list  # Hits on the same topic that do not answer
    origin: str = "kb"


@dataclass
class Counts:
    values: dict = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + n


def paragraph_hit(item_id: str, n: int, title: str, text: str) -> Hit:
    return Hit(doc_id=f"{item_id}:{n}", source=title or f"{item_id}:{n}", chunk_id=n, text=text.strip(), score=0.0,
               start=0, end=len(text.strip()), page=None, title=title or None)


def mix_items(path, *, limit: int | None = None) -> tuple[list[ReaderItem], list[Problem]]:
    """Questions of a public QA set with passages, and a Problem for each record that cannot be used."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--mix {path}: no such file; give a HotpotQA file (IRCoT JSONL or the original JSON)")
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"--mix {path}: cannot read it as JSON ({exc}); give HotpotQA's JSON or IRCoT's JSONL") from None
        rows = [(i + 1, r) for i, r in enumerate(records if isinstance(records, list) else [])]
        problems: list[Problem] = []
    else:
        reader = RecordReader(path)
        rows = [(r.line, r.value) for r in reader]
        problems = list(reader.problems)
    items = []
    for line, record in rows:
        item, why = _hotpot_item(record, line)
        if item is None:
            problems.append(Problem(path.name, line, why[0], why[1], why[2]))
            continue
        items.append(item)
        if limit and len(items) >= limit:
            break
    return items, problems


def _hotpot_item(record, line: int):
    """One HotpotQA record (either layout) as a ReaderItem, or (None, (field, message, fix))."""
    if not isinstance(record, dict):
        return None, ("record", "expected a JSON object", "one HotpotQA question per line")
    if "contexts" in record:  # IRCoT's release
        question = record.get("question_text")
        spans = [s for a in record.get("answers_objects") or [] for s in (a.get("spans") or [])]
        paragraphs = [(c.get("title", ""), c.get("paragraph_text", ""), bool(c.get("is_supporting")))
                      for c in record["contexts"] if isinstance(c, dict)]
        item_id = str(record.get("question_id", f"line-{line}"))
    elif "context" in record:  # the original release
        question, spans = record.get("question"), [record.get("answer")]
        gold = {title for title, _ in record.get("supporting_facts") or []}
        paragraphs = [(title, " ".join(sentences), title in gold) for title, sentences in record["context"]]
        item_id = str(record.get("_id", f"line-{line}"))
    else:
        return None, ("contexts", "no passages", "give HotpotQA records (contexts or context with supporting_facts)")
    if not isinstance(question, str) or not question.strip():
        return None, ("question", "missing or empty", "give the question text")
    answer = next((s.strip() for s in spans if isinstance(s, str) and s.strip()), None)
    if not answer:
        return None, ("answers", "no answer span", "give the answer as a span")
    hits = [(paragraph_hit(item_id, n, title, text), gold) for n, (title, text, gold) in enumerate(paragraphs)
            if text and text.strip()]
    oracles = [h for h, gold in hits if gold]
    if not oracles:
        return None, ("contexts", "no supporting paragraph", "mark the gold paragraphs (is_supporting / supporting_facts)")
    return ReaderItem(item_id, question.strip(), answer, oracles, [h for h, gold in hits if not gold], "mix"), None


def answer_sentence(answer: str, passages) -> tuple[int, str] | None:
    """(1-based source number, sentence) of the first quotable sentence shown that holds `answer`."""
    for n, passage in enumerate(passages, start=1):
        for sentence in passage.sentences:
            if len(sentence.text.split()) < 3 or sentence.text.startswith(("#", "|")):
                continue  # the grammar admits no heading or fragment as a quote
            if contains_answer(sentence.text, answer):
                return n, sentence.text
    return None


def reader_example(item: ReaderItem, counter, rng: random.Random, *, p: float, sources: int = MAX_SOURCES,
                   counts: Counts) -> dict | None:
    """A chat example (messages) for `item`, or None (counted) when no faithful target exists.

    With probability `p` the oracles are shown among distractors (target: answer + quote); else only
    distractors are (target: not found), as RAFT trains a reader not to invent when the passage is
    missing. A yes/no answer has no sentence to quote; such items are skipped."""
    protocol = ReaderProtocol()
    present = rng.random() < p
    distractors = list(item.distractors)
    rng.shuffle(distractors)
    if present:
        shown = item.oracles[:sources] + distractors[:max(0, sources - len(item.oracles))]
        rng.shuffle(shown)  # the answer may be in any source: a reader must not learn to trust [1]
    else:
        shown = distractors[:sources]
    if not shown:
        counts.add("no_passages")
        return None
    from ..answer.pipeline import prepare

    prompt, _passages, _budget, _templates = prepare(protocol, item.question, shown, counter)
    found = answer_sentence(item.answer, prompt.passages)
    if present:
        if found is None:
            counts.add("answer_not_in_a_shown_sentence")
            return None
        reply = f"{grounded.ANSWER_PREFIX}{item.answer}\n{grounded.QUOTE_PREFIX}{found[1]}"
        counts.add("oracle_present")
    else:
        if found is not None:
            counts.add("distractor_holds_answer")
            return None
        reply = f"{grounded.ANSWER_PREFIX}{grounded.NOT_FOUND_REPLY}"
        counts.add("oracle_absent")
    return {"id": item.id, "origin": item.origin,
            "messages": [*prompt.messages, {"role": "assistant", "content": reply}]}


class TokenCounter:
    """What `answer.pipeline.prepare` needs of a generator, from the target model's tokenizer, so a
    training example is cut to the context exactly as the model will see it."""

    def __init__(self, model: str, context_window: int = 4096):
        from .windows import load_target_tokenizer

        self.name, self.context_window = model, context_window
        self._tokenizer = load_target_tokenizer(model)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
