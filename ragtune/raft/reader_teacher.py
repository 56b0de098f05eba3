"""Questions for a reader, written by a teacher over the user's own knowledge base.

The packaged teachers are 0.1-0.5B models. Asked for a question and a quoted chain of thought, most
of their quotes are invented (on lua-manual 25 of 36 dropped, 6 more without a quote, 5 kept). Asked
only for a question and a short answer copied from the chunk, they do far better, and the rest is
done deterministically: an answer must occur in its chunk word for word (after SQuAD normalisation),
the quote is the chunk's sentence that holds it (raft/reader_data.py), and the distractors are what
the knowledge base's own retriever returns for the question. Generation goes on over further chunks
until the requested number of questions survive or the chunks run out.
"""

from __future__ import annotations

import logging
import random
import re

from ..qa_metrics import contains_answer, normalize_answer
from ..retrieve.hits import Hit
from .reader_data import MAX_SOURCES, ReaderItem

logger = logging.getLogger(__name__)
PER_CHUNK = 3
MIN_CHUNK_WORDS = 25
MAX_ANSWER_WORDS = 12
SYSTEM = ("You write quiz questions about a document. Each question has a short answer copied word for word "
          "from the document.")
USER = ("Document:\n{chunk}\n\nWrite {n} different questions that this document answers. After each question write "
        "its answer: a few words copied exactly from the document. Name the subject in each question (no 'it', "
        "no 'the document').\nFormat:\nQ: <question>\nA: <answer>")
EXAMPLE_CHUNK = ("The lighthouse at Cape Wrath was built in 1828 by Robert Stevenson. It has run automatically "
                 "since 1998. Ferries to the cape leave twice a day from Keoldale.")
EXAMPLE_REPLY = ("Q: Who built the lighthouse at Cape Wrath?\nA: Robert Stevenson\n"
                 "Q: Since when has the Cape Wrath lighthouse run automatically?\nA: since 1998\n"
                 "Q: From where do ferries to Cape Wrath leave?\nA: Keoldale")
_PAIR = re.compile(r"^\s*(?:\d+[.)]\s*)?(Q|A|Question|Answer)\s*[:.)]\s*(.+?)\s*$", re.I)


def messages(chunk: str, n: int = PER_CHUNK) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.format(chunk=EXAMPLE_CHUNK, n=3)},
            {"role": "assistant", "content": EXAMPLE_REPLY},
            {"role": "user", "content": USER.format(chunk=chunk, n=n)}]


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from "Q: ... / A: ..." lines; a question without an answer is dropped."""
    pairs, question = [], None
    for line in text.splitlines():
        match = _PAIR.match(line)
        if not match:
            continue
        kind, value = match.group(1)[0].upper(), match.group(2).strip().strip('"')
        if kind == "Q":
            question = value
        elif question:
            pairs.append((question, value.rstrip(".")))
            question = None
    return pairs


def check_pair(question: str, answer: str, chunk: str) -> str | None:
    """Why a pair cannot train a reader (None when it can)."""
    if "?" not in question or len(question.split()) < 4:
        return "not_a_question"
    if not normalize_answer(answer) or len(answer.split()) > MAX_ANSWER_WORDS:
        return "answer_empty_or_long"
    if not contains_answer(chunk, answer):
        return "answer_not_in_chunk"
    if contains_answer(question, answer):
        return "answer_in_question"
    return None


def chunk_hit(row) -> Hit:
    return Hit(doc_id=row["doc_id"], source=row["source"], chunk_id=row["chunk_id"], text=row["text"], score=0.0,
               start=row["start_char"], end=row["end_char"], page=None, title=row["title"])


def kb_items(kb_path, teacher_spec: str | None, wanted: int, *, seed: int = 0, threads: int | None = None, stage,
             slots: int = 4, base_url: str | None = None, max_minutes: float | None = None
             ) -> tuple[list[ReaderItem], dict]:
    """Up to `wanted` questions with their oracle chunk and the retriever's distractors, and a report
    (chunks asked, pairs written, why the others were dropped, whether time or chunks ran out).
    Generation stops at `wanted` questions, when every chunk was asked, or after `max_minutes`."""
    import time

    from ..kb import KnowledgeBase
    from .questions import QuestionDeduper
    from .teacher import Teacher, make_teacher

    started = time.monotonic()
    report = {"teacher": teacher_spec or base_url, "chunks_asked": 0, "chunks": 0, "pairs": 0, "questions": 0,
              "dropped": {}, "stopped": "chunks ran out"}
    with KnowledgeBase.open(kb_path, readonly=True, threads=threads) as kb:
        rows = [dict(r) for r in kb.store.chunk_rows() if len(r["text"].split()) >= MIN_CHUNK_WORDS]
        if not rows:
            return [], report
        random.Random(seed).shuffle(rows)
        report["chunks"] = len(rows)
        teacher = Teacher(make_teacher(teacher_spec, base_url=base_url, threads=threads, slots=slots))
        deduper, items = QuestionDeduper(), []
        with stage(f"the teacher ({teacher.name}) writing {wanted} questions over {kb_path}") as update:
            for start in range(0, len(rows), slots):
                batch = rows[start:start + slots]
                replies = teacher.run([messages(r["text"]) for r in batch], max_new_tokens=160)
                report["chunks_asked"] += len(batch)
                for row, reply in zip(batch, replies):
                    for question, answer in parse_pairs(reply):
                        report["pairs"] += 1
                        why = check_pair(question, answer, row["text"]) or deduper.check(question)
                        if why:
                            report["dropped"][why] = report["dropped"].get(why, 0) + 1
                            continue
                        items.append(_item(kb, row, question, answer, len(items)))
                if update is not None:
                    update(f"{min(len(items), wanted)}/{wanted} kept from {report['chunks_asked']} chunks")
                if len(items) >= wanted:
                    report["stopped"] = "enough questions"
                    break
                if max_minutes is not None and time.monotonic() - started > max_minutes * 60:
                    report["stopped"] = f"time budget ({max_minutes:g} min) spent"
                    break
    items = items[:wanted]
    report["questions"] = len(items)
    logger.info("reader questions: %s", report)
    return items, report


def _item(kb, row, question: str, answer: str, n: int) -> ReaderItem:
    hits = kb.search(question, MAX_SOURCES + 1, mode="hybrid")
    distractors = [h for h in hits if h.chunk_id != row["chunk_id"]][:MAX_SOURCES]
    return ReaderItem(f"kb-{n}", question, _as_in_chunk(answer, row["text"]), [chunk_hit(row)], distractors, "kb")


def _as_in_chunk(answer: str, chunk: str) -> str:
    """The answer spelled as the chunk spells it (case, punctuation), when it is found there as is."""
    match = re.search(re.escape(answer), chunk, re.I)
    return match.group(0) if match else answer
