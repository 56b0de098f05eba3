"""Question sets and knowledge bases for bench/grounded_qa.py: one `Question` shape for three
sources of gold answers (SQuAD-style answer strings, or a regex for the Lua manual), each with a
knowledge base built once under a cache folder and reused (re-synced when its files changed)."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
DOCS_QA = ROOT / "bench" / "data" / "docs_qa.jsonl"
LUA = DATASETS / "lua-manual"
HOTPOT = DATASETS / "hotpotqa-dev500" / "dev500.jsonl"
CACHE = ROOT / "bench" / "results" / "cache"
HOTPOT_KB = ROOT / "bench" / ".cache" / "hotpotqa-dev500"  # the same KB bench/rag_qa.py builds and reuses
log = logging.getLogger(__name__)


@dataclass
class Question:
    id: str
    question: str
    golds: list[str]  # answer strings (SQuAD-normalised containment), or one regex when `regex`
    kind: str = ""  # docs: factual/list/unanswerable; hotpotqa: bridge/comparison (inferred)
    regex: bool = False
    gold_docs: set[str] = field(default_factory=set)  # file names / titles that state the answer
    list_items: list[str] = field(default_factory=list)

    @property
    def answerable(self) -> bool:
        return bool(self.golds)

    def matches(self, text: str) -> bool:
        """Whether `text` holds a gold answer: the regex (case-insensitive, whitespace collapsed), or
        a normalised gold as whole words of the normalised text (so "8" is not found in "128")."""
        if not text or not self.golds:
            return False
        if self.regex:
            return re.search(self.golds[0], " ".join(text.split()), re.IGNORECASE) is not None
        return any(contains(text, gold) for gold in self.golds)


def contains(text: str, gold: str) -> bool:
    from ragtune.qa_metrics import contains_answer

    return contains_answer(text, gold)


def docs_questions() -> list[Question]:
    from ragtune.evaluate.dataset import read_eval_set

    examples, problems = read_eval_set(DOCS_QA)
    if problems:
        raise SystemExit(f"{DOCS_QA}: {problems[0]}")
    return [Question(e.id, e.question, list(e.answers), e.category or "", gold_docs=set(e.gold_doc_ids),
                     list_items=list(e.metadata.get("list_items") or [])) for e in examples]


def lua_questions() -> list[Question]:
    rows = (LUA / "questions.tsv").read_text(encoding="utf-8").splitlines()
    header = rows[0].split("\t")
    records = [dict(zip(header, row.split("\t"))) for row in rows[1:] if row.strip()]
    return [Question(f"lua-{i:03d}", r["question"], [r["answer_regex"]], regex=True, gold_docs={r["page"]})
            for i, r in enumerate(records, start=1)]


def hotpot_type(question: str, golds: list[str]) -> str:
    """The IRCoT release drops HotpotQA's `type`; a comparison question is answered yes/no or by one of
    the two entities it names ("... X or Y?"), every other one is a bridge question."""
    from ragtune.qa_metrics import normalize_answer

    answers = {normalize_answer(g) for g in golds}
    if answers & {"yes", "no"} or (" or " in question and any(contains(question, g) for g in golds)):
        return "comparison"
    return "bridge"


def hotpot_questions() -> list[Question]:
    out = []
    for line in HOTPOT.read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        golds = q["answers_objects"][0]["spans"]
        out.append(Question(q["question_id"], q["question_text"], golds, hotpot_type(q["question_text"], golds),
                            gold_docs={c["title"] for c in q["contexts"] if c["is_supporting"]}))
    return out


def folder_kb(path: Path, folder: Path, threads: int):
    """A KB of `folder`'s files at `path`, created once; later runs re-ingest only changed files."""
    from ragtune.kb import KnowledgeBase

    kb = KnowledgeBase.open(path, threads=threads) if (path / "ragtune.yaml").exists() else KnowledgeBase.init(path)
    kb.threads = threads
    kb.sync(folder)
    return kb


def hotpot_kb(threads: int):
    """All paragraphs of all 500 questions, one document per title (as bench/rag_qa.py builds it)."""
    from ragtune.config import IngestOptions, RecordFields
    from ragtune.kb import KnowledgeBase

    if (HOTPOT_KB / "ragtune.yaml").exists():
        return KnowledgeBase.open(HOTPOT_KB, threads=threads)
    paragraphs = {}
    for line in HOTPOT.read_text(encoding="utf-8").splitlines():
        for c in json.loads(line)["contexts"]:
            paragraphs.setdefault(c["title"], c["paragraph_text"])
    log.info("building the HotpotQA KB (%d paragraphs) at %s, once", len(paragraphs), HOTPOT_KB)
    with tempfile.TemporaryDirectory(prefix="ragtune-hotpot-") as tmp:
        corpus = Path(tmp) / "paragraphs.jsonl"
        corpus.write_text("".join(json.dumps({"_id": t, "title": t, "text": p}) + "\n" for t, p in paragraphs.items()))
        kb = KnowledgeBase.init(HOTPOT_KB)
        kb.threads = threads
        kb.ingest([corpus], IngestOptions(fields=RecordFields(text_field="text", id_field="_id", title_field="title")))
    return kb


def load_set(name: str, threads: int):
    """(questions, kb) for a set, or None when its data is absent."""
    if name == "docs":
        return docs_questions(), folder_kb(CACHE / "grounded-docs-kb", ROOT / "docs", threads)
    if name == "lua":
        if not (LUA / "questions.tsv").exists():
            return None
        return lua_questions(), folder_kb(CACHE / "grounded-lua-kb", LUA / "docs", threads)
    if name == "hotpotqa":
        return (hotpot_questions(), hotpot_kb(threads)) if HOTPOT.exists() else None
    raise SystemExit(f"unknown set {name!r}: pick from docs, lua, hotpotqa")
