"""Answer metrics with SQuAD's normalisation (lowercase, no punctuation, no articles, single spaces).

Below evaluate/ and raft/, which both score answers (raft/ checks a teacher's answer and a reader's targets).

Why our own code instead of importing the official scripts: they are command-line programs that read
whole prediction files, not importable functions. The definitions here follow them exactly:

- SQuAD v1.1 ``evaluate-v1.1.py``: normalise (lowercase -> strip punctuation -> drop a/an/the ->
  collapse whitespace), EM is string equality after normalising, token F1 uses the multiset overlap,
  and with several gold answers the best score over the golds counts.
- HotpotQA ``hotpot_evaluate_v1.py`` adds one rule to F1: when the normalised prediction or the
  normalised gold is "yes", "no" or "noanswer" and the two differ, F1 is 0. Without it, "no" against
  a gold "no idea" would earn partial credit for a wrong yes/no answer. Pass ``yes_no_rule=True``.

One extension of ours: citation markers such as "[2]" or "[1, 3]" that ragtune's RAG prompts ask for
are removed before normalising, so a cited answer is not penalised for citing.
tests/test_eval_metrics.py checks these against values worked out by hand from the official definitions.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter

logger = logging.getLogger(__name__)

ARTICLES = re.compile(r"\b(a|an|the)\b")
CITATIONS = re.compile(r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]")
PUNCTUATION = frozenset(string.punctuation)
YES_NO = frozenset({"yes", "no", "noanswer"})


def normalize_answer(text: str) -> str:
    """SQuAD normalisation, after removing citation markers like "[2]"."""
    text = CITATIONS.sub(" ", text.lower())
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def contains_answer(text: str, answer: str) -> bool:
    """Whether `answer` occurs in `text` as whole words, both SQuAD-normalised (an empty answer never does)."""
    wanted = normalize_answer(answer)
    return bool(wanted) and f" {wanted} " in f" {normalize_answer(text)} "


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold, else 0.0."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, gold: str, *, yes_no_rule: bool = False) -> tuple[float, float, float]:
    """(F1, precision, recall) of one prediction against one gold, as the official scripts define them.

    No overlap (including an empty prediction or gold) gives (0, 0, 0), as in SQuAD v1.1.
    """
    pred_norm, gold_norm = normalize_answer(prediction), normalize_answer(gold)
    if yes_no_rule and pred_norm != gold_norm and (pred_norm in YES_NO or gold_norm in YES_NO):
        return 0.0, 0.0, 0.0
    predicted, expected = pred_norm.split(), gold_norm.split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall), precision, recall


def f1(prediction: str, golds: list[str], *, yes_no_rule: bool = False) -> float:
    """Best token F1 over the golds; ``yes_no_rule`` applies HotpotQA's yes/no/noanswer rule."""
    return max((token_f1(prediction, gold, yes_no_rule=yes_no_rule)[0] for gold in golds), default=0.0)


def hotpot_f1(prediction: str, golds: list[str]) -> float:
    """Token F1 with HotpotQA's rule: a differing yes/no/noanswer scores 0."""
    return f1(prediction, golds, yes_no_rule=True)
