"""Ranking metrics as pure functions, defined exactly as trec_eval defines them.

Why by hand: pytrec_eval needs a C build and ranx pulls numba; these five formulas are short, and
tests/test_metrics.py checks them against pytrec_eval (trec_eval's own code) so they cannot drift.

`qrels` maps query id -> {doc id: graded relevance}; `run` maps query id -> {doc id: score}.
Ties in a run are broken like trec_eval: higher score first, then doc id descending.
"""

from __future__ import annotations

import math
from statistics import fmean

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")


def ranked(scores: dict[str, float]) -> list[str]:
    """Doc ids best first, with trec_eval's tie-break (score desc, then doc id desc)."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def ndcg_at(ranking: list[str], relevance: dict[str, int], k: int) -> float:
    gains = [relevance.get(doc, 0) for doc in ranking[:k]]
    dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains) if gain > 0)
    ideal = sorted((grade for grade in relevance.values() if grade > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranking: list[str], relevance: dict[str, int], k: int) -> float:
    relevant = {doc for doc, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at(ranking: list[str], relevance: dict[str, int], k: int) -> float:
    for rank, doc in enumerate(ranking[:k], start=1):
        if relevance.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def average_precision_at(ranking: list[str], relevance: dict[str, int], k: int) -> float:
    relevant = {doc for doc, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    found, total = 0, 0.0
    for rank, doc in enumerate(ranking[:k], start=1):
        if doc in relevant:
            found += 1
            total += found / rank
    return total / len(relevant)


def per_query(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each metric for each judged query; a query the run did not answer scores zero."""
    results = {}
    for query_id, relevance in qrels.items():
        if not any(grade > 0 for grade in relevance.values()):
            continue  # trec_eval skips queries without a relevant document
        ranking = ranked(run.get(query_id, {}))
        results[query_id] = {
            "ndcg@10": ndcg_at(ranking, relevance, 10),
            "recall@10": recall_at(ranking, relevance, 10),
            "recall@100": recall_at(ranking, relevance, 100),
            "mrr@10": mrr_at(ranking, relevance, 10),
            "map@100": average_precision_at(ranking, relevance, 100),
        }
    return results


def evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the judged queries, plus the number of queries."""
    scores = per_query(qrels, run)
    summary = {name: round(fmean(s[name] for s in scores.values()), 5) if scores else 0.0 for name in METRICS}
    summary["queries"] = len(scores)
    return summary
