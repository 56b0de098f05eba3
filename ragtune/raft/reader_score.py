"""Is the reader better than the prompt on this knowledge base? Measured, not assumed.

After training, `ragtune raft reader` asks the held-out questions (the teacher's, never trained on)
through the one answer pipeline twice: the model with the grounded prompt, and the model with the
reader adapter and its prompt. An answer is right when the gold answer is in it (SQuAD-normalised)
and cited right when a source it cites holds the gold answer. `--prompt auto` then uses the reader
only where it scored at least as well as the prompt (it is also faster: no worked example), so a
reader that learned to read worse never becomes the default silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..qa_metrics import contains_answer

logger = logging.getLogger(__name__)


def held_out_questions(path: Path) -> list[dict]:
    """The held-out questions that came from the knowledge base (a public set's have no passages in it)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("origin") == "kb" and r.get("answers")]


def score_reader(kb_path: Path, model: str, adapter: str, questions: list[dict], *, threads: int | None = None,
                 k: int = 5) -> dict | None:
    """{"n", "grounded": {...}, "reader": {...}, "reader_better": bool} over `questions`, or None without any."""
    if not questions:
        return None
    from ..answer.pipeline import ask
    from ..generate import make_generator
    from ..kb import KnowledgeBase

    scores = {}
    with KnowledgeBase.open(kb_path, readonly=True, threads=threads) as kb:
        for name, lora in (("grounded", None), ("reader", adapter)):
            generator = make_generator(model, threads=threads, lora=lora)
            if hasattr(generator, "load"):
                generator.load()
            right = cited = 0
            seconds = []
            try:
                for q in questions:
                    result = ask(kb, q["question"], generator, k=k, prompt=name, max_new_tokens=128)
                    gold = q["answers"][0]
                    ok = contains_answer(result.bare, gold)
                    right += ok
                    cited += ok and any(contains_answer(result.prompt.sources[c.n - 1].text, gold)
                                        for c in result.check.citations if 0 < c.n <= len(result.prompt.sources))
                    seconds.append(result.timings.get("total_s") or 0.0)
            finally:
                if hasattr(generator, "close"):
                    generator.close()
            seconds.sort()
            scores[name] = {"right": round(right / len(questions), 3), "right_and_cited": round(cited / len(questions), 3),
                            "total_s_p50": round(seconds[len(seconds) // 2], 2)}
    better = scores["reader"]["right_and_cited"] >= scores["grounded"]["right_and_cited"]
    logger.info("held-out questions: grounded %s, reader %s", scores["grounded"], scores["reader"])
    return {"n": len(questions), **scores, "reader_better": better}
