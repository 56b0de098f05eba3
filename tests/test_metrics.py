"""Retrieval metrics match trec_eval (through pytrec_eval) on random runs and hand-computed cases."""

from __future__ import annotations

import math
import random

import pytest

from ragtune.evaluate.metrics import evaluate, ndcg_at, per_query

pytrec_eval = pytest.importorskip("pytrec_eval")


def test_hand_computed_case():
    relevance = {"a": 1, "b": 2}
    ranking = ["x", "b", "y", "a"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at(ranking, relevance, 10) == pytest.approx(dcg / idcg)
    scores = per_query({"q": relevance}, {"q": {"x": 4, "b": 3, "y": 2, "a": 1}})["q"]
    assert scores["mrr@10"] == 0.5
    assert scores["recall@10"] == 1.0
    assert scores["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_unanswered_query_scores_zero_and_unjudged_query_is_skipped():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    summary = evaluate(qrels, {"q1": {"a": 1.0}})
    assert summary["queries"] == 2
    assert summary["ndcg@10"] == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_parity_with_trec_eval(seed):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(40):
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 1, 2]) for d in judged}
        retrieved = rng.sample(docs, rng.randint(0, 150))
        # coarse scores create ties, which both sides must break the same way
        run[f"q{q}"] = {d: float(rng.randint(0, 40)) for d in retrieved}
    ours = per_query(qrels, run)

    measures = {"ndcg_cut_10", "recall_10", "recall_100", "map_cut_100"}
    reference = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {q: dict(sorted(r.items(), key=lambda i: (i[1], i[0]), reverse=True)[:10]) for q, r in run.items()}
    reference_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    assert set(ours) == {q for q, rel in qrels.items() if any(rel.values())}
    for query_id, scores in ours.items():
        ref = reference.get(query_id, {})
        assert scores["ndcg@10"] == pytest.approx(ref.get("ndcg_cut_10", 0.0), abs=1e-4)
        assert scores["recall@10"] == pytest.approx(ref.get("recall_10", 0.0), abs=1e-4)
        assert scores["recall@100"] == pytest.approx(ref.get("recall_100", 0.0), abs=1e-4)
        assert scores["map@100"] == pytest.approx(ref.get("map_cut_100", 0.0), abs=1e-4)
        assert scores["mrr@10"] == pytest.approx(reference_rr.get(query_id, {}).get("recip_rank", 0.0), abs=1e-4)


def test_squad_answer_metrics():
    from ragtune.qa_metrics import exact_match, f1, normalize_answer

    assert normalize_answer("The  Chief of Protocol [1].") == "chief of protocol"
    assert exact_match("the Chief of Protocol [2]", ["Chief of Protocol"]) == 1.0
    assert f1("chief protocol officer", ["Chief of Protocol"]) == pytest.approx(2 / 3)  # P = R = 2/3
    assert f1("nothing", ["Chief of Protocol"]) == 0.0
