"""Paired significance tests and intervals for comparing strategies on the same examples.

Why paired: every strategy answers the SAME questions, so per-question differences cancel out how
hard each question is. An unpaired test on two means would call most real differences noise on a few
hundred questions; a paired one sees them. This is what lets ``ragtune compare`` say either "B is
better than A by x [lo, hi], p = ..." or "the data cannot separate A and B" instead of always
naming a winner.

- ``paired_bootstrap``: resample examples with replacement, recompute metric(a) - metric(b); the
  interval is the percentile interval of those differences. The p-value uses the shifted-distribution
  method (Efron & Tibshirani 1993, sec. 16.4; the method of Berg-Kirkpatrick et al. 2012 for NLP):
  centre the bootstrap distribution on 0 (the null) and count how often |boot - observed| >= |observed|.
- ``paired_permutation``: sign-flip (randomisation) test on the per-example differences.
- ``mcnemar``: for 0/1 outcomes (EM, accuracy); exact binomial on the discordant pairs when there are
  fewer than 25, else chi-square with continuity correction (statsmodels' and most textbooks' rule).

Monte-Carlo p-values are reported as (count + 1) / (n + 1) so they are never exactly 0 (Davison &
Hinkley 1997); the smallest reportable p is therefore 1 / (n + 1). No correction for testing several
strategies against the best is applied; with many strategies read p-values accordingly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

logger = logging.getLogger(__name__)

EXACT_BELOW = 25  # discordant pairs under which McNemar uses the exact binomial test
_CHUNK_ELEMENTS = 4_000_000  # bounds memory: resamples x examples drawn at once


@dataclass(frozen=True)
class BootstrapResult:
    difference: float  # metric(a) - metric(b) on the observed data
    low: float
    high: float
    p_value: float
    confidence: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class McNemarResult:
    b: int  # a right, b wrong
    c: int  # a wrong, b right
    statistic: float  # min(b, c) for the exact test, the corrected chi-square otherwise
    p_value: float
    exact: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    strategy: str
    best: str
    difference: float  # mean(strategy) - mean(best)
    low: float
    high: float
    p_value: float
    test: str  # "mcnemar" or "paired_bootstrap"
    separable: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _pair(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError("per-example scores must be flat lists")
    if len(x) != len(y):
        raise ValueError(f"paired scores need the same examples: {names[0]} has {len(x)} scores, "
                         f"{names[1]} has {len(y)}")
    if len(x) == 0:
        raise ValueError("no scores to compare")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("scores contain NaN; drop or score those examples first")
    return x, y


def _monte_carlo_p(extreme: int, n: int) -> float:
    return (extreme + 1) / (n + 1)


def _draws(rng: np.random.Generator, high: int, size: int, n: int):
    """n rows of `size` integers in [0, high), in chunks so memory stays bounded for large sets."""
    rows = max(1, _CHUNK_ELEMENTS // size)
    for start in range(0, n, rows):
        yield rng.integers(0, high, size=(min(rows, n - start), size))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, metric: Callable = np.mean, n: int = 10_000,
                     seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
    """Percentile interval and two-sided p-value of metric(a) - metric(b) over paired examples.

    ``metric`` must reduce like numpy (accept ``axis=``): np.mean (default) and np.median do.
    """
    x, y = _pair(a, b)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    observed = float(metric(x) - metric(y))
    rng = np.random.default_rng(seed)
    boots = np.concatenate([metric(x[idx], axis=1) - metric(y[idx], axis=1)
                            for idx in _draws(rng, len(x), len(x), n)])
    alpha = 1 - confidence
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    # Shifted null: how often a resampled difference strays from the observed one by at least as much
    # as the observed one strays from 0. The small tolerance keeps float noise from deciding ties.
    extreme = int(np.sum(np.abs(boots - observed) >= abs(observed) - 1e-12))
    return BootstrapResult(observed, float(low), float(high), _monte_carlo_p(extreme, n), confidence, n)


def paired_permutation(a: Sequence[float], b: Sequence[float], *, n: int = 10_000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value for mean(a) == mean(b) on paired examples.

    Under the null the two strategies are exchangeable on each example, so each difference is as
    likely to have either sign; we flip signs at random and count means at least as far from 0.
    """
    x, y = _pair(a, b)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    diffs = x - y
    observed = abs(float(diffs.mean()))
    rng = np.random.default_rng(seed)
    extreme = 0
    for coins in _draws(rng, 2, len(diffs), n):
        signs = 2.0 * coins - 1.0
        extreme += int(np.sum(np.abs((signs * diffs).mean(axis=1)) >= observed - 1e-12))
    return _monte_carlo_p(extreme, n)


def mcnemar(a_correct: Sequence[bool | int], b_correct: Sequence[bool | int]) -> McNemarResult:
    """McNemar's test on paired right/wrong outcomes; only the discordant pairs carry information."""
    from scipy import stats

    x, y = _pair(a_correct, b_correct, ("a_correct", "b_correct"))
    if not np.isin(x, (0, 1)).all() or not np.isin(y, (0, 1)).all():
        raise ValueError("McNemar needs 0/1 (or bool) outcomes")
    b = int(np.sum((x == 1) & (y == 0)))
    c = int(np.sum((x == 0) & (y == 1)))
    if b + c == 0:
        return McNemarResult(b, c, 0.0, 1.0, True)
    if b + c < EXACT_BELOW:
        p = stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        return McNemarResult(b, c, float(min(b, c)), float(min(1.0, p)), True)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemarResult(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)), False)


def interval_excludes_zero(low: float, high: float) -> bool:
    """True when the interval lies entirely on one side of 0 (a touching endpoint does not count)."""
    return low > 0 or high < 0


def compare_to_best(scores_by_strategy: Mapping[str, Sequence[float]], higher_is_better: bool = True,
                    binary: bool = False, *, n: int = 10_000, seed: int = 0, confidence: float = 0.95,
                    alpha: float = 0.05) -> dict:
    """Pick the best strategy by mean and test every other one against it.

    Returns ``{"best": name, "means": {name: mean}, "comparisons": {name: Comparison}}``. Each
    comparison's difference is mean(other) - mean(best) with its paired-bootstrap interval; the
    p-value is McNemar's when ``binary`` (0/1 scores such as EM or accuracy), else the bootstrap's.
    ``separable`` is True only when the interval excludes 0 AND p < alpha; when it is False the
    caller should say the data cannot separate the two rather than prefer the best. Ties on the
    mean go to the strategy listed first.
    """
    if not scores_by_strategy:
        raise ValueError("no strategies to compare")
    arrays = {name: np.asarray(s, dtype=float) for name, s in scores_by_strategy.items()}
    names = list(arrays)
    for name in names[1:]:
        _pair(arrays[names[0]], arrays[name], (names[0], name))
    means = {name: float(values.mean()) for name, values in arrays.items()}
    sign = 1 if higher_is_better else -1
    best = max(names, key=lambda name: (sign * means[name], -names.index(name)))
    comparisons = compare_to(arrays, best, binary=binary, n=n, seed=seed, confidence=confidence, alpha=alpha)
    return {"best": best, "means": means, "comparisons": comparisons}


def compare_to(scores_by_strategy: Mapping[str, Sequence[float]], reference: str, binary: bool = False, *,
               n: int = 10_000, seed: int = 0, confidence: float = 0.95, alpha: float = 0.05) -> dict[str, Comparison]:
    """Every strategy against `reference` (the best, or a baseline such as rag): mean(other) - mean(reference)
    with its paired-bootstrap interval and McNemar's p (binary scores) or the bootstrap's."""
    arrays = {name: np.asarray(s, dtype=float) for name, s in scores_by_strategy.items()}
    if reference not in arrays:
        raise ValueError(f"no scores for {reference!r} to compare against")
    comparisons = {}
    for name, values in arrays.items():
        if name == reference:
            continue
        boot = paired_bootstrap(values, arrays[reference], n=n, seed=seed, confidence=confidence)
        if binary:
            p_value, test = mcnemar(values, arrays[reference]).p_value, "mcnemar"
        else:
            p_value, test = boot.p_value, "paired_bootstrap"
        separable = interval_excludes_zero(boot.low, boot.high) and p_value < alpha
        comparisons[name] = Comparison(name, reference, boot.difference, boot.low, boot.high, p_value, test, separable)
        logger.debug("%s vs %s: %+.4f [%.4f, %.4f] p=%.4g (%s)", name, reference, boot.difference,
                     boot.low, boot.high, p_value, test)
    return comparisons
