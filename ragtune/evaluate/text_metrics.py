"""Text-overlap, perplexity and citation metrics as pure functions.

Why libraries for ROUGE and BLEU: both have many small variants (tokenisation, stemming, smoothing,
brevity penalty) and numbers only compare across papers when computed the reference way. ROUGE-L
uses Google's ``rouge_score`` (the package behind most published ROUGE numbers) with the Porter
stemmer; BLEU uses ``sacrebleu`` with its defaults (13a tokenisation, exponential smoothing for
sentence BLEU), whose signature is what papers report. Both are imported lazily so ragtune's core
imports stay light.

Scales: every function here returns a value in [0, 1] except ``perplexity`` (>= 1). sacrebleu reports
BLEU on 0-100; we divide by 100 so BLEU sits on the same scale as EM, F1 and ROUGE-L in one table.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

logger = logging.getLogger(__name__)

CITATION_MARK = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _check_golds(golds: Sequence[str]) -> list[str]:
    if isinstance(golds, str):
        raise TypeError("golds must be a list of reference strings, not one string")
    golds = list(golds)
    if not golds:
        raise ValueError("at least one gold reference is needed")
    return golds


def rouge_l(prediction: str, golds: Sequence[str]) -> float:
    """ROUGE-L F-measure (longest common subsequence), best over the golds.

    Max over golds, as SQuAD does for F1: any of the accepted answers counts as right. Note that
    rouge_score's tokenizer keeps only [a-z0-9] tokens, so text in other scripts scores 0.
    """
    scorer = _rouge_scorer()
    return max(scorer.score(gold, prediction)["rougeL"].fmeasure for gold in _check_golds(golds))


def sentence_bleu(prediction: str, golds: Sequence[str]) -> float:
    """sacrebleu's sentence BLEU of one prediction against all its golds (multi-reference), in [0, 1].

    Sentence BLEU is noisy for short answers; prefer ``corpus_bleu`` for the headline number and use
    this one for per-example scores (bootstrap intervals, side-by-side examples).
    """
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, _check_golds(golds)).score / 100.0


def corpus_bleu(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU over a set, in [0, 1]; each prediction may have any number of golds.

    sacrebleu wants reference *streams* (the i-th reference of every example); examples with fewer
    golds are padded with None, which sacrebleu skips.
    """
    import sacrebleu

    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold lists")
    if not predictions:
        raise ValueError("corpus BLEU of an empty set is undefined")
    gold_lists = [_check_golds(g) for g in golds]
    width = max(len(g) for g in gold_lists)
    streams = [[g[i] if i < len(g) else None for g in gold_lists] for i in range(width)]
    return sacrebleu.corpus_bleu(list(predictions), streams).score / 100.0


def perplexity(token_logprobs: Iterable[float]) -> float:
    """exp(-mean natural-log probability) of the reference tokens under the model.

    Why it is here: perplexity of the gold answer measures what a fine-tuned model has absorbed even
    when its generations are scored 0 by EM. Pass the log-probabilities (natural log) of the answer
    tokens only, not of the prompt. Raises ValueError on empty input (undefined, not 1.0) and on
    NaN or positive values (a log-probability is <= 0).
    """
    values = [float(x) for x in token_logprobs]
    if not values:
        raise ValueError("perplexity needs at least one token log-probability; got none")
    if any(math.isnan(x) or x > 1e-6 for x in values):
        raise ValueError("token log-probabilities must be natural logs <= 0 and not NaN")
    return math.exp(-math.fsum(values) / len(values))


def corpus_perplexity(logprobs_per_example: Iterable[Iterable[float]]) -> float:
    """Token-weighted perplexity over a set: exp(-total logprob / total tokens).

    Weighted by tokens (not a mean of per-example perplexities), the usual language-model convention,
    so a long answer counts more than a short one.
    """
    flat = [x for example in logprobs_per_example for x in example]
    return perplexity(flat)


def cited_indices(answer: str) -> list[int]:
    """Source numbers cited in an answer as "[2]" or "[1, 3]", in order of first appearance."""
    seen: dict[int, None] = {}
    for match in CITATION_MARK.finditer(answer):
        for part in re.split(r"[,;]", match.group(1)):
            seen.setdefault(int(part), None)
    return list(seen)


def cited_ids(answer: str, retrieved_ids: Sequence[str]) -> list[str]:
    """Document ids an answer cites, mapping "[n]" to the n-th retrieved document (1-based).

    Numbers outside 1..len(retrieved_ids) cite nothing that was shown to the model; they are dropped
    here and logged, and so count against nothing (citation_scores sees only real ids).
    """
    ids = []
    for number in cited_indices(answer):
        if 1 <= number <= len(retrieved_ids):
            ids.append(retrieved_ids[number - 1])
        else:
            logger.debug("citation [%d] is outside the %d retrieved sources", number, len(retrieved_ids))
    return ids


def citation_scores(cited: Iterable[str], gold: Iterable[str]) -> tuple[float, float]:
    """(precision, recall) of the cited document ids against the gold document ids, as sets.

    precision = |cited & gold| / |cited|: how many citations point at a gold document.
    recall    = |cited & gold| / |gold|:  how many gold documents were cited.
    Duplicates are ignored. Empty sides, chosen so no case divides by zero and none rewards silence:
      - both empty:              (1.0, 1.0)  nothing to cite and nothing cited is correct;
      - nothing cited, gold set: (0.0, 0.0)  an uncited answer earns no citation credit;
      - cited, no gold ids:      (0.0, 1.0)  every citation is unsupported, nothing was missed.
    Examples without gold ids usually carry no signal: callers that aggregate may prefer to skip them.
    """
    cited_set, gold_set = set(cited), set(gold)
    if not cited_set and not gold_set:
        return 1.0, 1.0
    hits = len(cited_set & gold_set)
    precision = hits / len(cited_set) if cited_set else 0.0
    recall = hits / len(gold_set) if gold_set else 1.0
    return precision, recall
