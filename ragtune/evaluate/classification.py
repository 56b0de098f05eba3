"""Accuracy and precision / recall / F1 per class, macro, micro and weighted, from label lists.

Why by hand rather than scikit-learn: these are a few counts, scikit-learn is a heavy optional
dependency, and tests/test_eval_metrics.py checks every number against scikit-learn's
``precision_recall_fscore_support`` and ``accuracy_score`` (with ``zero_division=0``) so they cannot drift.

Used for label-style evaluation sets (PubMedQA yes/no/maybe, any ``label`` column), where EM over a
free-text answer is the wrong question and a per-class view shows e.g. a model that never says "maybe".

Conventions (the same as scikit-learn's with ``zero_division=0``):
- The label set is ``labels`` when given, else the sorted union of gold and predicted labels, so a
  label that only the model produces still counts (its recall is 0/0 -> 0.0, its precision 0).
- Any 0/0 (a class never predicted, or never in the gold) gives 0.0 and is logged at debug level.
  A label passed in ``labels`` but seen nowhere gets 0.0 everywhere and still pulls macro down.
- Macro averages per-class scores with equal weight (macro F1 is the mean of per-class F1, not the
  F1 of macro P and R); weighted uses gold support; micro pools the counts of the listed labels.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall, F1 and gold support of one class (or one average)."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    accuracy: float
    per_class: dict[Hashable, ClassScores] = field(default_factory=dict)
    macro: ClassScores | None = None
    micro: ClassScores | None = None
    weighted: ClassScores | None = None

    def as_dict(self) -> dict:
        """Flat JSON-friendly view: accuracy, macro_f1, micro_f1, ..., per_class {label: {...}}."""
        out: dict = {"accuracy": self.accuracy}
        for name in ("macro", "micro", "weighted"):
            scores = getattr(self, name)
            out.update({f"{name}_precision": scores.precision, f"{name}_recall": scores.recall,
                        f"{name}_f1": scores.f1})
        out["per_class"] = {str(label): vars(s) for label, s in self.per_class.items()}
        return out


def _divide(numerator: float, denominator: float, what: str) -> float:
    if denominator == 0:
        logger.debug("%s is 0/0; scored 0.0", what)
        return 0.0
    return numerator / denominator


def _check(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> None:
    if len(gold) != len(predicted):
        raise ValueError(f"gold has {len(gold)} labels but predicted has {len(predicted)}")
    if not gold:
        raise ValueError("no labels to score")


def accuracy(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Share of examples whose predicted label equals the gold label."""
    _check(gold, predicted)
    return sum(g == p for g, p in zip(gold, predicted)) / len(gold)


def _scores(tp: int, fp: int, fn: int, support: int, what: str) -> ClassScores:
    precision = _divide(tp, tp + fp, f"precision of {what}")
    recall = _divide(tp, tp + fn, f"recall of {what}")
    # F from counts (2tp / (2tp + fp + fn)) equals 2PR/(P+R) and has no extra 0/0 case.
    f1 = _divide(2 * tp, 2 * tp + fp + fn, f"F1 of {what}")
    return ClassScores(precision, recall, f1, support)


def classification_report(gold: Sequence[Hashable], predicted: Sequence[Hashable],
                          labels: Sequence[Hashable] | None = None) -> ClassificationReport:
    """Accuracy plus per-class, macro, micro and weighted precision / recall / F1."""
    _check(gold, predicted)
    if labels is None:
        labels = sorted(set(gold) | set(predicted), key=lambda x: (str(type(x)), x))
    labels = list(dict.fromkeys(labels))
    if not labels:
        raise ValueError("labels is empty")
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for g, p in zip(gold, predicted):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    support = Counter(gold)
    per_class = {label: _scores(tp[label], fp[label], fn[label], support[label], repr(label)) for label in labels}
    classes = list(per_class.values())
    total_support = sum(s.support for s in classes)
    macro = ClassScores(*(sum(getattr(s, k) for s in classes) / len(classes) for k in ("precision", "recall", "f1")),
                        total_support)
    weighted = ClassScores(*(_divide(sum(getattr(s, k) * s.support for s in classes), total_support, f"weighted {k}")
                             for k in ("precision", "recall", "f1")), total_support)
    micro = _scores(sum(tp[x] for x in labels), sum(fp[x] for x in labels), sum(fn[x] for x in labels),
                    total_support, "micro average")
    return ClassificationReport(accuracy(gold, predicted), per_class, macro, micro, weighted)


def precision_recall_f1(gold: Sequence[Hashable], predicted: Sequence[Hashable], *, average: str = "macro",
                        labels: Sequence[Hashable] | None = None) -> tuple[float, float, float]:
    """(precision, recall, F1) for one averaging: "macro", "micro" or "weighted"."""
    if average not in ("macro", "micro", "weighted"):
        raise ValueError(f"average must be macro, micro or weighted, not {average!r}")
    scores = getattr(classification_report(gold, predicted, labels), average)
    return scores.precision, scores.recall, scores.f1
