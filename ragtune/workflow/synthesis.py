"""Questions for `choose --synthesize`: written by a teacher over the knowledge base, checked, split.

The packaged teachers (0.1-0.5B) invent most quotes when asked for a question with a quoted chain of
thought: on lua-manual 36 written, 25 dropped for invented quotes, 6 for no quote, 5 kept, and
`choose` then trained on 5 and died at the comparison with no held-out question. So the teacher
writes only a question and a short answer copied from its chunk (raft/reader_teacher.py, the route the
reader uses); an answer must be in its chunk word for word, and the RAFT builder then takes the quote
deterministically from the oracle chunk. Generation goes on over more chunks until the requested
number survive, the chunks run out or `--synthesis-minutes` is spent, and the counts are checked
at once: too few, and `choose` stops before any training with what survived, why the rest were
dropped and what to do.

Whole chunks are held out for the test: no test question's chunk trains `ft` or `raft`, so a
closed-book model cannot have learnt a test answer from a sibling question on the same chunk.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)
MIN_TRAIN, MIN_TEST = 8, 4  # below these a comparison's intervals say nothing


def synthesized_split(options, out: Path, stage) -> tuple[list, list, dict]:
    """(training examples with their chunk as context, held-out examples, the synthesis report)."""
    rows, report = _synthesized(options, Path(out), stage)
    train_rows, test_rows = split_by_chunk(rows, options.test_share, options.seed)
    report = {**report, "train": len(train_rows), "test": len(test_rows)}
    check_yield(report, options)
    if len(rows) < options.synthesize:
        log.warning("--synthesize %d: %d usable questions (%s)", options.synthesize, len(rows), _why(report))
    return [_example(r, context=True) for r in train_rows], [_example(r) for r in test_rows], report


def check_yield(report: dict, options) -> None:
    """Stop before any training when too few questions survived, saying why and what to do."""
    if report["train"] >= MIN_TRAIN and report["test"] >= MIN_TEST:
        return
    raise ConfigError(
        f"--synthesize {options.synthesize}: the teacher ({report['teacher']}) wrote {report['pairs']} question/answer "
        f"pairs over {report['chunks_asked']} of {report['chunks']} chunks and {report['questions']} are usable "
        f"({report['train']} to train, {report['test']} held out); a comparison needs at least {MIN_TRAIN} and "
        f"{MIN_TEST}. {_why(report)}. Ask for more (--synthesize {max(2 * options.synthesize, 40)}), allow more time "
        "(--synthesis-minutes), use a larger --teacher, or pass --questions FILE")


def split_by_chunk(rows: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test): whole chunks, in a seeded order, go to the test until it holds `share` of the rows."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["chunk_id"], []).append(row)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    wanted = round(len(rows) * share)
    test, train = [], []
    for key in keys:
        (test if len(test) < wanted and len(keys) > 1 and key != keys[-1] else train).extend(groups[key])
    return train, test


def _synthesized(options, out: Path, stage) -> tuple[list[dict], dict]:
    """The teacher's usable questions, kept in OUT/synthesized.json (a rerun of choose reuses them)."""
    from ..raft.reader_teacher import kb_items

    key = {"kb": str(Path(options.kb).expanduser().resolve()), "teacher": options.teacher,
           "teacher_base_url": options.teacher_base_url, "wanted": options.synthesize, "seed": options.seed}
    path = out / "synthesized.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                return saved["rows"], saved["report"]
        except (OSError, ValueError, KeyError):
            pass
    items, report = kb_items(options.kb, options.teacher, options.synthesize, seed=options.seed,
                             threads=options.threads, stage=stage, base_url=options.teacher_base_url,
                             max_minutes=options.synthesis_minutes)
    rows = [{"id": f"synth-{i}", "question": item.question, "answer": item.answer,
             "doc_id": item.oracles[0].doc_id, "chunk_id": str(item.oracles[0].chunk_id), "context": item.oracles[0].text}
            for i, item in enumerate(items)]
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"key": key, "report": report, "rows": rows}, ensure_ascii=False), encoding="utf-8")
    temporary.replace(path)
    return rows, report


def _example(row: dict, context: bool = False):
    from ..evaluate.dataset import EvalExample

    return EvalExample(id=row["id"], question=row["question"], answers=[row["answer"]], gold_doc_ids=[row["doc_id"]],
                       context=row["context"] if context else None)


def _why(report: dict) -> str:
    dropped = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in
                        sorted(report.get("dropped", {}).items(), key=lambda kv: -kv[1]))
    return f"dropped: {dropped or 'none'}; generation stopped: {report.get('stopped', 'unknown')}"
