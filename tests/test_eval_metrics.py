"""Parity tests for the evaluation metrics and the significance statistics.

References: expected QA values are worked by hand from the definitions in SQuAD v1.1's
evaluate-v1.1.py and HotpotQA's hotpot_evaluate_v1.py; ROUGE-L and BLEU are compared with
rouge_score and sacrebleu themselves plus values computed by hand; classification against
scikit-learn; McNemar against scipy's binomial / chi-square (statsmodels' definition) and a textbook table.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ragtune.evaluate import classification, significance, text_metrics
from ragtune.qa_metrics import exact_match, f1, hotpot_f1, normalize_answer, token_f1

# --- QA: SQuAD normalisation and HotpotQA's yes/no rule -------------------------------------------

NORMALISED = [
    ("The Cat!", "cat"),
    ("An anthem of the theater", "anthem of theater"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("don't  stop\tnow", "dont stop now"),
    ("a an the", ""),
]


@pytest.mark.parametrize("text, expected", NORMALISED)
def test_normalize_answer_matches_squad(text, expected):
    assert normalize_answer(text) == expected


# (prediction, golds, SQuAD F1, HotpotQA F1), each worked by hand from the official definitions.
F1_CASES = [
    ("Barack Obama", ["Obama"], 2 / 3, 2 / 3),  # P = 1/2, R = 1
    ("New York City", ["York", "New York City, USA"], 6 / 7, 6 / 7),  # best gold: P = 1, R = 3/4
    ("the the cat cat cat", ["cat dog"], 0.4, 0.4),  # multiset overlap 1: P = 1/3, R = 1/2
    ("U.S.A.", ["USA"], 1.0, 1.0),
    ("", ["anything"], 0.0, 0.0),
    ("no", ["no idea"], 2 / 3, 0.0),  # yes/no rule: prediction is "no", gold differs
    ("yes sir", ["yes"], 2 / 3, 0.0),  # yes/no rule: gold is "yes", prediction differs
    ("Yes.", ["yes"], 1.0, 1.0),  # equal after normalising: the rule does not fire
    ("noanswer", ["no answer"], 0.0, 0.0),
    ("no", ["yes", "No!"], 1.0, 1.0),  # rule is per gold; the best gold wins
    ("the capital is no longer Bonn", ["Bonn"], 2 / 6, 2 / 6),  # "no" inside a longer answer: no rule
]


@pytest.mark.parametrize("prediction, golds, squad, hotpot", F1_CASES)
def test_f1_matches_official_definitions(prediction, golds, squad, hotpot):
    assert f1(prediction, golds) == pytest.approx(squad)
    assert f1(prediction, golds, yes_no_rule=True) == pytest.approx(hotpot)
    assert hotpot_f1(prediction, golds) == pytest.approx(hotpot)


def test_token_f1_precision_recall_and_exact_match():
    assert token_f1("Barack Obama", "Obama") == pytest.approx((2 / 3, 0.5, 1.0))
    assert exact_match("The Cat!", ["dog", "cat"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    assert f1("anything", []) == 0.0


# --- Text metrics --------------------------------------------------------------------------------

def test_rouge_l_matches_rouge_score_and_hand_value():
    from rouge_score import rouge_scorer

    target, prediction = "The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."
    # LCS "the quick brown jumps the" = 5 tokens: P = 5/8, R = 5/9, F = 10/17 (rouge_score's README).
    assert text_metrics.rouge_l(prediction, [target]) == pytest.approx(10 / 17)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    golds = ["a cat ran", target, "completely different words"]
    expected = max(scorer.score(g, prediction)["rougeL"].fmeasure for g in golds)
    assert text_metrics.rouge_l(prediction, golds) == pytest.approx(expected)
    assert text_metrics.rouge_l("the cats running", ["the cat runs"]) == pytest.approx(1.0)  # Porter stemmer
    with pytest.raises(TypeError):
        text_metrics.rouge_l("x", "x")
    with pytest.raises(ValueError):
        text_metrics.rouge_l("x", [])


def test_bleu_matches_sacrebleu_and_hand_value():
    import sacrebleu

    # Precisions 5/6, 3/5, 2/4, 1/3 and equal lengths (BP = 1): BLEU = (1/12) ** (1/4).
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    assert text_metrics.corpus_bleu([hyp], [[ref]]) == pytest.approx((1 / 12) ** 0.25, abs=1e-4)
    assert text_metrics.sentence_bleu(hyp, [ref, "a dog"]) == pytest.approx(
        sacrebleu.sentence_bleu(hyp, [ref, "a dog"]).score / 100)
    assert text_metrics.sentence_bleu("one two three four five", ["one two three four five"]) == pytest.approx(1.0)
    predictions = ["the cat sat on the mat", "a dog barked loudly at night", "hello world"]
    golds = [["the cat sat on a mat"], ["a dog barked at night", "the dog barked loudly"], ["hello there world"]]
    padded = [[g[i] if i < len(g) else None for g in golds] for i in range(2)]
    assert text_metrics.corpus_bleu(predictions, golds) == pytest.approx(
        sacrebleu.corpus_bleu(predictions, padded).score / 100)
    single = [g[:1] for g in golds]
    assert text_metrics.corpus_bleu(predictions, single) == pytest.approx(
        sacrebleu.corpus_bleu(predictions, [[g[0] for g in golds]]).score / 100)
    with pytest.raises(ValueError, match="3 predictions but 2"):
        text_metrics.corpus_bleu(predictions, golds[:2])


def test_perplexity():
    assert text_metrics.perplexity([math.log(0.5)] * 4) == pytest.approx(2.0)
    assert text_metrics.perplexity([math.log(0.25), 0.0]) == pytest.approx(2.0)
    assert text_metrics.perplexity(iter([0.0, 0.0])) == pytest.approx(1.0)
    # Token-weighted: 3 tokens at p = 1/2 and 1 token at p = 1/16 -> exp(-(3 ln 1/2 + ln 1/16) / 4) = 2 ** 1.75.
    assert text_metrics.corpus_perplexity([[math.log(0.5)] * 3, [math.log(1 / 16)]]) == pytest.approx(2 ** 1.75)
    with pytest.raises(ValueError, match="at least one token"):
        text_metrics.perplexity([])
    with pytest.raises(ValueError):
        text_metrics.perplexity([0.5])
    with pytest.raises(ValueError):
        text_metrics.perplexity([float("nan")])


def test_citations():
    assert text_metrics.cited_indices("Paris [2], founded early [1, 3]; see [2].") == [2, 1, 3]
    assert text_metrics.cited_ids("A [1] and B [3] and C [9]", ["d1", "d2", "d3"]) == ["d1", "d3"]
    assert text_metrics.citation_scores(["d1", "d3", "d3"], ["d1", "d2"]) == (0.5, 0.5)
    assert text_metrics.citation_scores(["d1"], ["d1", "d2", "d4", "d5"]) == (1.0, 0.25)
    assert text_metrics.citation_scores([], []) == (1.0, 1.0)
    assert text_metrics.citation_scores([], ["d1"]) == (0.0, 0.0)
    assert text_metrics.citation_scores(["d1"], []) == (0.0, 1.0)


# --- Classification vs scikit-learn --------------------------------------------------------------

def _label_sets():
    rng = np.random.default_rng(12)
    for size, classes in [(50, ["yes", "no", "maybe"]), (200, [0, 1, 2, 3, 4]), (7, ["a", "b"]), (30, [1, 2])]:
        gold = list(rng.choice(classes, size=size))
        predicted = list(rng.choice(classes + ["unseen-by-gold"] if isinstance(classes[0], str) else classes,
                                    size=size))
        yield [x.item() for x in gold], [x.item() for x in predicted]
    yield ["yes"] * 5, ["yes"] * 5  # one class, perfect
    yield ["yes", "no", "no"], ["maybe", "maybe", "maybe"]  # nothing right, a class only predicted


@pytest.mark.parametrize("gold, predicted", list(_label_sets()))
def test_classification_matches_sklearn(gold, predicted):
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    report = classification.classification_report(gold, predicted)
    assert report.accuracy == pytest.approx(accuracy_score(gold, predicted))
    labels = list(report.per_class)
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        ours = report.per_class[label]
        assert (ours.precision, ours.recall, ours.f1, ours.support) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert sorted(labels, key=str) == sorted(np.unique(np.array(gold + predicted)).tolist(), key=str)
    for average in ("macro", "micro", "weighted"):
        expected = precision_recall_fscore_support(gold, predicted, average=average, zero_division=0)[:3]
        assert classification.precision_recall_f1(gold, predicted, average=average) == pytest.approx(expected)


def test_classification_with_unseen_label_and_validation():
    from sklearn.metrics import precision_recall_fscore_support

    gold, predicted = ["yes", "no", "yes", "no"], ["yes", "yes", "yes", "no"]
    labels = ["yes", "no", "maybe"]  # "maybe" appears nowhere: 0.0 and still counted in macro
    report = classification.classification_report(gold, predicted, labels=labels)
    assert report.per_class["maybe"] == classification.ClassScores(0.0, 0.0, 0.0, 0)
    for average in ("macro", "micro", "weighted"):
        expected = precision_recall_fscore_support(gold, predicted, labels=labels, average=average, zero_division=0)
        assert classification.precision_recall_f1(gold, predicted, average=average, labels=labels) == \
            pytest.approx(expected[:3])
    assert report.as_dict()["per_class"]["maybe"]["f1"] == 0.0
    with pytest.raises(ValueError, match="3 labels but predicted has 2"):
        classification.accuracy(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError):
        classification.precision_recall_f1(gold, predicted, average="samples")


# --- Significance --------------------------------------------------------------------------------

def _clear_pair(size=200, gap=0.1, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.6, 0.15, size)
    return a + gap + rng.normal(0, 0.05, size), a


def test_bootstrap_detects_clear_difference_and_matches_scipy():
    from scipy import stats

    better, worse = _clear_pair()
    result = significance.paired_bootstrap(better, worse, n=5000)
    assert result.difference == pytest.approx(better.mean() - worse.mean())
    assert result.p_value < 0.01
    assert significance.interval_excludes_zero(result.low, result.high)
    assert result.low < result.difference < result.high
    reference = stats.bootstrap((better, worse), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True,
                                n_resamples=5000, method="percentile", random_state=3).confidence_interval
    assert result.low == pytest.approx(reference.low, abs=0.003)
    assert result.high == pytest.approx(reference.high, abs=0.003)


def test_identical_and_near_identical_are_not_separable():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2, 100).astype(float)
    same = significance.paired_bootstrap(a, a, n=2000)
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not significance.interval_excludes_zero(same.low, same.high)
    b = a.copy()
    one, zero = int(np.flatnonzero(a == 1)[0]), int(np.flatnonzero(a == 0)[0])
    b[one], b[zero] = 0.0, 1.0  # two discordant pairs, one each way
    near = significance.paired_bootstrap(a, b, n=2000)
    assert near.p_value > 0.5 and not significance.interval_excludes_zero(near.low, near.high)
    assert significance.paired_permutation(a, a, n=500) == 1.0
    assert significance.mcnemar(a, b).p_value == 1.0


def test_reproducible_with_seed_and_validates_input():
    better, worse = _clear_pair(size=40, gap=0.02)
    first = significance.paired_bootstrap(better, worse, n=1000, seed=7)
    assert significance.paired_bootstrap(better, worse, n=1000, seed=7) == first
    assert significance.paired_bootstrap(better, worse, n=1000, seed=8) != first
    assert significance.paired_permutation(better, worse, n=1000, seed=7) == \
        significance.paired_permutation(better, worse, n=1000, seed=7)
    with pytest.raises(ValueError, match=r"a has 3 scores, b has 4"):
        significance.paired_bootstrap([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"3 .*4"):
        significance.paired_permutation([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"3 .*2"):
        significance.mcnemar([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match=r"base has 3 scores, rag has 2"):
        significance.compare_to_best({"base": [1, 0, 1], "rag": [1, 1]})
    with pytest.raises(ValueError):
        significance.paired_bootstrap([], [])
    with pytest.raises(ValueError):
        significance.paired_bootstrap([1, 2], [1, 2], confidence=1.5)
    with pytest.raises(ValueError):
        significance.mcnemar([0, 2], [1, 0])


def test_permutation_matches_exhaustive_enumeration():
    a, b = [0.9, 0.7, 0.8, 0.4, 0.95, 0.6], [0.5, 0.6, 0.85, 0.3, 0.5, 0.55]
    diffs = np.subtract(a, b)
    flips = [abs((np.array(s) * diffs).mean()) for s in itertools.product((1, -1), repeat=len(diffs))]
    exact = np.mean(np.array(flips) >= abs(diffs.mean()) - 1e-12)  # 64 sign patterns
    assert significance.paired_permutation(a, b, n=20000) == pytest.approx(exact, abs=0.01)
    better, worse = _clear_pair()
    assert significance.paired_permutation(better, worse, n=2000) < 0.01


def _outcomes(both_right, b, c, both_wrong):
    """Paired outcomes with the given 2x2 table: b = first right only, c = second right only."""
    first = [1] * both_right + [1] * b + [0] * c + [0] * both_wrong
    second = [1] * both_right + [0] * b + [1] * c + [0] * both_wrong
    return first, second


def test_mcnemar_exact_and_chi_square():
    from scipy import stats

    # Exact: b = 1, c = 9: two-sided binomial p = 2 * (C(10,0) + C(10,1)) / 2**10 = 22/1024.
    result = significance.mcnemar(*_outcomes(30, 1, 9, 10))
    assert (result.b, result.c, result.statistic, result.exact) == (1, 9, 1.0, True)
    assert result.p_value == pytest.approx(22 / 1024)
    # 24 discordant pairs: still exact; 25: chi-square with continuity correction (statsmodels' rule).
    at_24 = significance.mcnemar(*_outcomes(5, 8, 16, 5))
    assert at_24.exact and at_24.p_value == pytest.approx(stats.binomtest(8, 24, 0.5).pvalue)
    at_25 = significance.mcnemar(*_outcomes(5, 8, 17, 5))
    assert not at_25.exact
    assert at_25.statistic == pytest.approx((9 - 1) ** 2 / 25)
    assert at_25.p_value == pytest.approx(stats.chi2.sf(64 / 25, 1))
    # Textbook (Agresti, Categorical Data Analysis: presidential approval, 794/150/86/570):
    # corrected chi-square = (|150 - 86| - 1)^2 / 236 = 16.82, p = 4.1e-5.
    agresti = significance.mcnemar(*_outcomes(794, 150, 86, 570))
    assert agresti.statistic == pytest.approx(16.818, abs=1e-3)
    assert agresti.p_value == pytest.approx(4.11e-5, rel=0.01)
    assert significance.mcnemar([1, 0], [1, 0]) == significance.McNemarResult(0, 0, 0.0, 1.0, True)


def test_compare_to_best():
    better, worse = _clear_pair(size=150)
    rng = np.random.default_rng(9)
    twin = better + rng.normal(0, 0.002, len(better))  # practically the same as the best
    result = significance.compare_to_best({"base": worse, "rag": better, "ft+rag": twin}, n=2000)
    assert result["best"] in ("rag", "ft+rag")
    other = "ft+rag" if result["best"] == "rag" else "rag"
    base = result["comparisons"]["base"]
    assert base.difference < 0 and base.separable and base.test == "paired_bootstrap"
    assert base.high < 0 and base.p_value < 0.01
    assert not result["comparisons"][other].separable
    assert set(result["means"]) == {"base", "rag", "ft+rag"} and result["best"] not in result["comparisons"]

    lower = significance.compare_to_best({"slow": better, "fast": worse}, higher_is_better=False, n=500)
    assert lower["best"] == "fast" and lower["comparisons"]["slow"].difference > 0

    right_a, right_b = _outcomes(40, 2, 30, 28)  # b clearly better on 0/1 outcomes
    binary = significance.compare_to_best({"a": right_a, "b": right_b}, binary=True, n=2000)
    assert binary["best"] == "b"
    cmp = binary["comparisons"]["a"]
    assert cmp.test == "mcnemar" and cmp.separable
    assert cmp.p_value == pytest.approx(significance.mcnemar(right_a, right_b).p_value)
    assert cmp.as_dict()["strategy"] == "a"

    tie = significance.compare_to_best({"x": [1, 0, 1, 0], "y": [0, 1, 0, 1]}, binary=True, n=500)
    assert tie["best"] == "x" and not tie["comparisons"]["y"].separable
    assert significance.compare_to_best({"only": [0.5, 0.7]})["comparisons"] == {}
    with pytest.raises(ValueError):
        significance.compare_to_best({})
