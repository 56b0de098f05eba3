"""Questions for RAFT: read from a file (with gold documents by id or by text), or deduplicated as the
teacher generates them.

A questions file is JSONL/JSON/CSV read by the shared record reader, so a bad line is a Problem naming
file, line, field and fix and the rest goes on. Accepted keys (an `eval qa` set works as it is):
`question` (required), `id`, `answers` (list) or `answer`, and the gold document as `gold_doc_ids`
(list) / `gold_doc_id` (matched against doc id, source path, file name, file stem or title) and/or
`context` / `gold_text` (a passage). Each gold document gives one oracle: its window that best supports
the answer (or the question, without one); a multi-hop question (HotpotQA's two supporting paragraphs)
has several, the one that best supports the answer first. A passage found in no window becomes its own
document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..qa_metrics import normalize_answer
from ..ingest.record_reader import Problem, RecordReader
from .windows import Window, WindowTable, _normal

NEAR_DUPLICATE = 0.8  # character-shingle Jaccard between questions; 0.8 catches rewordings of a few words
_NUM_PERM = 128
_SHINGLE = 5
_NON_WORD = re.compile(r"[\W_]+")
_SHAPE = '{"question": "...", "gold_doc_ids": ["doc id"], "answers": ["..."]} or {"question": "...", "context": "..."}'


@dataclass
class QuestionRecord:
    id: str
    question: str
    answers: list[str]
    oracles: list[Window]  # the one that best supports the answer first
    gold_doc_ids: list[str] = field(default_factory=list)
    line: int = 0

    @property
    def oracle(self) -> Window:
        return self.oracles[0]


def _strings(record: dict, many: str, one: str) -> list[str] | None:
    """A list of non-empty strings from `many` (list) or `one` (string); None when malformed."""
    value = record.get(many, record.get(one))
    if value is None:
        return []
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return None
    return [str(v).strip() for v in value if str(v).strip()]


def _score(table: WindowTable, window: Window, question: str, answers: list[str]) -> tuple:
    text = table.normal(window)
    contains = any(a and f" {a} " in f" {text} " for a in (normalize_answer(x) for x in answers))
    words = set(text.split())
    wanted = set(normalize_answer(" ".join([question, *answers])).split())
    return (contains, len(wanted & words), -window.index)


def _aliases(windows: list[Window]) -> dict[str, list[Window]]:
    aliases: dict[str, list[Window]] = {}
    for window in windows:
        path = Path(window.source)
        for alias in {window.doc_id, window.source, path.name, path.stem, window.title}:
            if alias:
                aliases.setdefault(alias, []).append(window)
    return aliases


def read_questions(path, table: WindowTable) -> tuple[list[QuestionRecord], list[Problem]]:
    """The good records of a questions file with their oracle windows, and a Problem for each bad one."""
    reader = RecordReader(Path(path).expanduser())
    aliases = _aliases(table.windows)
    records: list[QuestionRecord] = []
    seen: dict[str, int] = {}
    problems: list[Problem] = []

    def bad(line, field_, message, fix):
        problems.append(Problem(reader.name, line, field_, message, fix))

    for record in reader:
        line, value = record.line, record.value
        if not isinstance(value, dict):
            bad(line, "record", f"expected a JSON object, got {type(value).__name__}", f"write one object a line: {_SHAPE}")
            continue
        question = value.get("question")
        if not isinstance(question, str) or not question.strip():
            bad(line, "question", "missing or empty", 'give the question as a non-empty string, e.g. "question": "Who ...?"')
            continue
        answers, gold_ids = _strings(value, "answers", "answer"), _strings(value, "gold_doc_ids", "gold_doc_id")
        if answers is None:
            bad(line, "answers", "expected a string or a list of strings", 'e.g. "answers": ["Paris"]')
            continue
        if gold_ids is None:
            bad(line, "gold_doc_ids", "expected a string or a list of strings", 'e.g. "gold_doc_ids": ["handbook.md"]')
            continue
        gold_text = value.get("context", value.get("gold_text"))
        if gold_text is not None and (not isinstance(gold_text, str) or not gold_text.strip()):
            bad(line, "context", "expected a non-empty string", "give the passage that answers the question, or drop it")
            continue
        if not gold_ids and gold_text is None:
            bad(line, "gold_doc_ids", "no gold document", 'name the document that answers it ("gold_doc_ids": '
                '["doc id or file name"]) or give the passage ("context": "...")')
            continue
        record_id = str(value.get("id", f"line-{line}"))
        if record_id in seen:
            bad(line, "id", f"duplicate id {record_id!r} (first on line {seen[record_id]}); the first is kept",
                "give each question its own id")
            continue
        oracles = _oracles(table, aliases, question, answers, gold_ids, gold_text, record_id)
        if not oracles:
            bad(line, "gold_doc_ids", f"no document {', '.join(map(repr, gold_ids))} in the knowledge base",
                "use a doc id, source path, file name or title the KB has (`ragtune search` shows them), or give "
                '"context": the passage')
            continue
        seen[record_id] = line
        records.append(QuestionRecord(record_id, question.strip(), answers, oracles, gold_ids, line))
    problems.extend(reader.problems)
    problems.sort(key=lambda p: p.line)
    return records, problems


def _oracles(table, aliases, question, answers, gold_ids, gold_text, record_id) -> list[Window]:
    """One window per gold document (the best by `_score`), best first; one for a passage."""
    best = lambda windows: max(windows, key=lambda w: _score(table, w, question, answers))  # noqa: E731
    candidates = [w for gold in gold_ids for w in aliases.get(gold, ())]
    if gold_text is not None:
        wanted = _normal(gold_text)
        pool = candidates or table.windows
        inside = [w for w in pool if wanted and (wanted in table.normal(w) or table.normal(w) in wanted)]
        if inside:
            return [best(inside)]
        # a passage the KB does not hold (e.g. a benchmark's context): it is its own document
        return [Window(-1, f"question:{record_id}", gold_ids[0] if gold_ids else f"question:{record_id}",
                       f"question:{record_id}", None, 0, len(gold_text), gold_text.strip(), 0)]
    oracles: list[Window] = []
    for gold in gold_ids:  # aliases of one document (its id and its file name) give one oracle
        window = best(aliases[gold]) if gold in aliases else None
        if window is not None and not any(table.same_text(window, o) for o in oracles):
            oracles.append(window)
    return sorted(oracles, key=lambda w: _score(table, w, question, answers), reverse=True)


class QuestionDeduper:
    """Exact (normalised) and near duplicates (MinHash LSH proposes, exact shingle Jaccard decides),
    checked against every question accepted before, in order; the same idea as `data check`."""

    def __init__(self, threshold: float = NEAR_DUPLICATE):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.exact: set[str] = set()
        self.shingles: dict[str, set[bytes]] = {}
        # banding at the threshold itself misses many pairs; query lower, decide exactly (see finetune/check.py)
        self.lsh = MinHashLSH(threshold=max(0.1, threshold - 0.2), num_perm=_NUM_PERM)

    @staticmethod
    def _key(question: str) -> str:
        return " ".join(_NON_WORD.sub(" ", question.lower()).split())

    def check(self, question: str) -> str | None:
        """None (and remember it) for a new question, else "duplicate" or "near_duplicate"."""
        from datasketch import MinHash

        key = self._key(question)
        if key in self.exact:
            return "duplicate"
        data = key.encode("utf-8")
        shingles = {data[i:i + _SHINGLE] for i in range(max(1, len(data) - _SHINGLE + 1))}
        minhash = MinHash(num_perm=_NUM_PERM)
        minhash.update_batch(list(shingles))
        for other in self.lsh.query(minhash):
            theirs = self.shingles[other]
            if len(shingles & theirs) / len(shingles | theirs) >= self.threshold:
                return "near_duplicate"
        self.exact.add(key)
        name = str(len(self.shingles))
        self.shingles[name] = shingles
        self.lsh.insert(name, minhash)
        return None
