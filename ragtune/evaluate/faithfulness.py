"""Faithfulness: the share of an answer's sentences that the retrieved text supports.

Deterministic, with no model call: the answer is split into sentences and each is scored against the
sources by the same evidence the citation check uses (ragtune/answer/citations.py: content-word
overlap, the numbers and names rule, embedding similarity with a calibrated embedder). Unlike the
citation check it ignores what the model cited: a sentence counts as supported when one source
supports it, or when the sources it cites do taken together (a sentence may join two of them).

Which sentences count: every sentence that asserts something checkable (a content word or a number),
[n] markers removed, so a short-phrase answer ("Paris [1]") is one sentence; "I do not know" and bare
"Yes." assert nothing the sources could contradict and are left out. An answer with no such sentence
has no faithfulness (None), not a perfect one: abstaining is not being faithful.

The optional model judge (same sentences, verdicts from an LLM) is in judge.py.
"""

from __future__ import annotations

import re

from ..answer.citations import SupportScorer, calibrated_embedder, claim_sentences, content_words, numbers

SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?])")  # "in Paris [1]." -> "in Paris ." -> "in Paris."


def answer_sentences(answer: str | None) -> list[tuple[str, list[int]]]:
    """(sentence without [n] markers, the source numbers it cites) for each checkable sentence."""
    return [(SPACE_BEFORE_PUNCTUATION.sub(r"\1", plain), cited)
            for _, plain, cited in claim_sentences(answer or "", min_words=1)
            if content_words(plain) or numbers(plain)]


def source_texts(sources) -> list[str]:
    """Texts from plain strings or from retrieval hits (anything with `.text`)."""
    return [s if isinstance(s, str) else str(getattr(s, "text", s)) for s in sources or []]


def faithfulness(answer: str | None, sources: list, embedder=None) -> dict:
    """{"faithfulness": share supported (None without checkable sentences), "sentences": n,
    "supported": m, "unsupported_sentences": [...]}. `sources` are the texts (or hits) the model was
    given, in the order it numbered them; `embedder` adds cosine similarity when it is the calibrated one."""
    sentences = answer_sentences(answer)
    if not sentences:
        return {"faithfulness": None, "sentences": 0, "supported": 0, "unsupported_sentences": []}
    sources = source_texts(sources)
    scorer = SupportScorer(sources, calibrated_embedder(embedder))
    vectors = scorer.embed([plain for plain, _ in sentences])
    unsupported = []
    for (plain, cited), vector in zip(sentences, vectors):
        _, best = scorer.best_source(plain, vector)
        supported = best is not None and scorer.supports(best)
        valid = [n - 1 for n in cited if 1 <= n <= len(sources)]
        if not supported and len(valid) > 1:
            supported = scorer.supports(scorer.support(plain, valid, vector))
        if not supported:
            unsupported.append(plain)
    n = len(sentences)
    return {"faithfulness": round((n - len(unsupported)) / n, 4), "sentences": n,
            "supported": n - len(unsupported), "unsupported_sentences": unsupported}


def summarize_faithfulness(results: list[dict]) -> dict:
    """Mean faithfulness over the answers that have one, and how many had none (not counted as 1.0)."""
    scored = [r["faithfulness"] for r in results if r.get("faithfulness") is not None]
    return {"faithfulness": round(sum(scored) / len(scored), 4) if scored else None,
            "faithfulness_scored": len(scored), "faithfulness_absent": len(results) - len(scored)}
