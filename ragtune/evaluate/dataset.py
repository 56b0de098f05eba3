"""The one evaluation-set format every `ragtune eval` command reads: JSONL, one question a line.

Fields: `id` (unique), `question`, `answers` (list of acceptable answers), and optionally
`gold_doc_ids` (documents that hold the answer, for retrieval and citation metrics), `label`
(classification sets such as PubMedQA's yes/no/maybe), `category` (per-category breakdowns),
`split`, `context` (a small gold passage) and `metadata` (anything else, kept but never scored).

Why one format: importers (see importers.py) turn each public benchmark into it once, so the
strategies, metrics and comparison code never learn a data set's quirks. Reading goes through the
project's hardened RecordReader, so a bad line is reported with file, line, field and fix while
the good ones are kept: a 5,000-question set with one typo is still usable, and the user sees
exactly where the typo is.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..ingest.record_reader import Problem, RecordReader

log = logging.getLogger(__name__)

FIELDS = ("id", "question", "answers", "gold_doc_ids", "label", "category", "split", "context", "metadata")
_FIXES = {
    "id": 'give every record a unique, non-empty string id, e.g. "id": "q1"',
    "question": 'give the question as a non-empty string, e.g. "question": "Who wrote Hamlet?"',
    "answers": 'give a list of strings, e.g. "answers": ["Paris"] (empty only with gold_doc_ids, a label '
               'or metadata.is_impossible)',
    "gold_doc_ids": 'give a list of document id strings, e.g. "gold_doc_ids": ["doc-3"]',
    "label": 'give the class as a string, e.g. "label": "yes"',
    "category": 'give the category as a string, e.g. "category": "bridge"',
    "split": 'give the split as a string, e.g. "split": "test"',
    "context": "give the context as one string",
    "metadata": 'give metadata as a JSON object, e.g. "metadata": {"source": "wiki"}',
}
_EXTRA_FIX = f"the known fields are {', '.join(FIELDS)}; put anything else under metadata"


class EvalExample(BaseModel):
    """One evaluation question. Strict: numbers are not silently turned into strings, and unknown
    fields are rejected (a misspelt `answer` would otherwise read as a question with no answers)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)

    id: str
    question: str
    answers: list[str]
    gold_doc_ids: list[str] = []
    label: str | None = None
    category: str | None = None
    split: str | None = None
    context: str | None = None
    metadata: dict = {}

    @field_validator("id", "question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _answerable(self) -> "EvalExample":
        # Empty answers are meaningful only where something else is scored: retrieval-only sets
        # (gold documents), classification sets (a label) or SQuAD v2's unanswerable questions.
        if not self.answers and not (self.gold_doc_ids or self.label is not None or self.metadata.get("is_impossible")):
            raise ValueError("answers is empty and there is no gold_doc_ids, label or metadata.is_impossible")
        return self


def _problems(path: str, line: int, exc: ValidationError) -> list[Problem]:
    """One Problem per pydantic error, naming the field and how to fix it."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        field = ".".join(loc) or "answers"
        top = loc[0] if loc else "answers"
        if error["type"] == "extra_forbidden":
            problems.append(Problem(path, line, field, "unknown field", _EXTRA_FIX))
            continue
        message = error["msg"].removeprefix("Value error, ")
        problems.append(Problem(path, line, field, message, _FIXES.get(top, _FIXES["answers"])))
    return problems


def read_eval_set(path) -> tuple[list[EvalExample], list[Problem]]:
    """Read an evaluation set; returns (good examples, problems), problems in file order.

    A record with a problem is left out and the rest is kept; a duplicated id keeps the first and
    reports the second with both line numbers. A missing file raises LoaderError (from the reader).
    Problems with severity "warning" (such as a guessed encoding) do not drop records.
    """
    path = Path(path)
    reader = RecordReader(path, kind="jsonl" if path.suffix.lower() not in (".json",) else None)
    examples: list[EvalExample] = []
    first_line: dict[str, int] = {}
    problems: list[Problem] = []
    for record in reader:
        problems.extend(reader.problems)
        reader.problems.clear()
        if not isinstance(record.value, dict):
            problems.append(Problem(reader.name, record.line, "record", f"expected a JSON object, got "
                                    f"{type(record.value).__name__}", 'write one object a line: {"id": ..., '
                                    '"question": ..., "answers": [...]}'))
            continue
        try:
            example = EvalExample.model_validate(record.value)
        except ValidationError as exc:
            problems.extend(_problems(reader.name, record.line, exc))
            continue
        if example.id in first_line:
            problems.append(Problem(reader.name, record.line, "id", f"duplicate id {example.id!r} (first on line "
                                    f"{first_line[example.id]}, again on line {record.line}); the first is kept",
                                    "give each record its own id"))
            continue
        first_line[example.id] = record.line
        examples.append(example)
    problems.extend(reader.problems)
    problems.sort(key=lambda p: p.line)
    if problems:
        log.info("%s: %d examples read, %d problems", path, len(examples), len(problems))
    return examples, problems


def write_eval_set(examples: Iterable[EvalExample], path) -> int:
    """Write examples as JSONL atomically (a temporary file renamed over `path`), so a reader never
    sees half a file and an interrupted import leaves the old file intact. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    count = 0
    try:
        with handle:
            for example in examples:
                # Defaults (empty lists, None) are left out: shorter lines, and the same on reading.
                handle.write(json.dumps(example.model_dump(exclude_defaults=True), ensure_ascii=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    log.info("wrote %d examples to %s", count, path)
    return count


def summarize(examples: list[EvalExample]) -> dict:
    """Counts a user checks after an import: how many questions, how many can be scored how."""
    return {
        "examples": len(examples),
        "with_answers": sum(1 for e in examples if e.answers),
        "with_gold_docs": sum(1 for e in examples if e.gold_doc_ids),
        "labels": dict(Counter(e.label for e in examples if e.label is not None).most_common()),
        "categories": dict(Counter(e.category for e in examples if e.category is not None).most_common()),
    }
