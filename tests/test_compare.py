"""`ragtune compare` over synthetic stored runs: seeded per-example scores written with the runs DB's
own API, so the tests need no model and run in seconds."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from ragtune.errors import ConfigError
from ragtune.evaluate.compare import compare_runs
from ragtune.evaluate.report import write_reports
from ragtune.store.runs import RunsDB

N = 200
N_BOOT = 2000


def _dataset(tmp_path):
    path = tmp_path / "eval.jsonl"
    with open(path, "w") as handle:
        for i in range(N):
            handle.write(json.dumps({"id": f"q{i}", "question": f"question {i}?", "answers": [f"answer {i}"],
                                     "category": "bridge" if i % 2 else "comparison"}) + "\n")
    return path


def _add_run(db, dataset, strategy, f1_mean, *, seed, latency, skip=(), prediction=None, base=None, first=None):
    """A run whose per-example F1 is a seeded draw around f1_mean; `base` shares per-example noise
    so two runs are paired as real strategies are (the same hard questions are hard for both)."""
    rng = np.random.default_rng(seed)
    common = base if base is not None else np.zeros(N)
    f1 = np.clip(f1_mean + common + rng.normal(0, 0.15, N), 0, 1)
    if first is not None:  # q0's score, so the report shows it among the most disputed examples
        f1[0] = first
    run_id = db.create_run(strategy=strategy, dataset_path=str(dataset), dataset_sha256="same", model="m",
                           model_hash=None, kb_path="kb" if "rag" in strategy else None, k=None, config={})
    for i in range(N):
        if i in skip:
            continue
        text = prediction if (prediction and i == 0) else f"answer {i} by {strategy}"
        db.add_prediction(run_id, f"q{i}", prediction=text, scores={"f1": float(f1[i]), "em": float(f1[i] > 0.5)},
                          retrieved_ids=[f"d{i}"] if "rag" in strategy else [], prompt_tokens=50,
                          completion_tokens=8, latency_s=float(latency + rng.uniform(0, 0.05)))
    db.finish(run_id)
    return run_id


@pytest.fixture
def three(tmp_path):
    dataset = _dataset(tmp_path)
    db = RunsDB(tmp_path / "runs.db")
    shared = np.random.default_rng(99).normal(0, 0.2, N)
    ids = [_add_run(db, dataset, "base", 0.2, seed=1, latency=0.2, base=shared, first=0.0),
           _add_run(db, dataset, "rag", 0.6, seed=2, latency=0.5, base=shared, skip={5, 7},
                    prediction="<script>alert(1)</script>", first=1.0),
           _add_run(db, dataset, "ft+rag", 0.61, seed=3, latency=0.4, base=shared)]
    yield db, ids
    db.close()


def test_inseparable_top_says_so_and_prefers_retrieval(three):
    db, ids = three
    result = compare_runs(db, ids, knowledge_changes="daily", n_boot=N_BOOT)
    assert result["metric"] == "f1" and result["dropped_examples"] == 2 and result["n_examples"] == N - 2
    rec = result["recommendation"]
    assert set(rec["tied"]) == {"rag", "ft+rag"}
    text = " ".join(rec["reasons"])
    assert "cannot separate" in text and "95% interval" in text
    assert rec["strategy"] in ("rag", "ft+rag") and "s (p95" in text and "changes daily" in text
    assert not result["differences"]["f1"]["rows"]["base"]["p_value"] > 0.05
    assert "base" in result["differences"]["em"]["rows"] or result["differences"]["em"]["best"] == "base"
    assert set(result["categories"]) == {"bridge", "comparison"}


def test_changing_knowledge_prefers_retrieval_over_a_faster_tie(tmp_path):
    dataset = _dataset(tmp_path)
    shared = np.random.default_rng(99).normal(0, 0.2, N)
    with RunsDB(tmp_path / "runs.db") as db:
        ids = [_add_run(db, dataset, "ft", 0.6, seed=4, latency=0.1, base=shared),
               _add_run(db, dataset, "rag", 0.61, seed=5, latency=0.5, base=shared)]
        daily = compare_runs(db, ids, knowledge_changes="daily", n_boot=N_BOOT)["recommendation"]
        never = compare_runs(db, ids, knowledge_changes="never", n_boot=N_BOOT)["recommendation"]
    assert set(daily["tied"]) == {"ft", "rag"}
    assert daily["strategy"] == "rag" and any("changes daily: rag retrieve" in r for r in daily["reasons"])
    assert never["strategy"] == "ft" and any("fastest" in r and "0.1" in r for r in never["reasons"])


def test_never_changing_knowledge_prefers_the_faster(three):
    db, ids = three
    rec = compare_runs(db, ids, knowledge_changes="never", n_boot=N_BOOT)["recommendation"]
    assert rec["strategy"] == "ft+rag" and any("fastest" in r for r in rec["reasons"])


def test_clear_best_is_recommended_with_its_interval(three):
    db, ids = three
    rec = compare_runs(db, ids[:2], n_boot=N_BOOT)["recommendation"]
    assert rec["strategy"] == "rag" and rec["tied"] == ["rag"]
    assert "95% interval [" in rec["reasons"][0] and "separates from zero" in rec["reasons"][0]


def test_errors_name_the_flag(three, tmp_path):
    db, ids = three
    with pytest.raises(ConfigError, match="--runs: no run 'nope'"):
        compare_runs(db, [ids[0], "nope"])
    other = db.create_run(strategy="rag", dataset_path="x", dataset_sha256="other", model=None, model_hash=None,
                          kb_path=None, k=None, config={})
    with pytest.raises(ConfigError, match="--runs: the runs were made on different datasets"):
        compare_runs(db, [ids[0], other])


def test_reports(three, tmp_path):
    db, ids = three
    result = compare_runs(db, ids, knowledge_changes="daily", n_boot=N_BOOT)
    data = write_reports(result, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["report"] == str(tmp_path / "out" / "report.html") == data["report"]
    assert set(on_disk["strategies"]) == {"base", "rag", "ft+rag"}
    for values in on_disk["strategies"].values():
        assert isinstance(values["f1"], float) and isinstance(values["latency_p50_s"], float)
    assert on_disk["recommendation"]["strategy"] in ("rag", "ft+rag") and on_disk["recommendation"]["reasons"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") == 3  # bars, latency, category heat map
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "cannot separate" in page
    assert "<link" not in page and "src=" not in page and "@import" not in page  # nothing external to load
    assert "Recommendation" in (tmp_path / "out" / "report.md").read_text()


def test_cli_json_and_unknown_run(three, tmp_path, monkeypatch, capsys):
    from ragtune import cli

    db, ids = three
    out = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["ragtune", "compare", "--runs", *ids, "--runs-db", str(db.path),
                                      "--knowledge-changes", "daily", "--out", str(out), "--json"])
    cli.main()
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"strategies", "recommendation", "report"} and data["report"] == str(out / "report.html")
    monkeypatch.setattr(sys, "argv", ["ragtune", "compare", "--runs", ids[0], "zzz", "--runs-db", str(db.path),
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2 and "--runs" in capsys.readouterr().err


def test_a_tie_within_latency_noise_prefers_the_strategy_without_training(tmp_path):
    """PubMedQA's case: rag and ft+rag score alike and ft+rag is 5% faster (noise between identical
    prompts): the untrained rag is recommended, and a latency gap inside 10% is not a reason."""
    dataset = _dataset(tmp_path)
    shared = np.random.default_rng(7).normal(0, 0.2, N)
    with RunsDB(tmp_path / "runs.db") as db:
        ids = [_add_run(db, dataset, "ft+rag", 0.6, seed=4, latency=0.95, base=shared),
               _add_run(db, dataset, "rag", 0.6, seed=5, latency=1.0, base=shared)]
        rec = compare_runs(db, ids, knowledge_changes="monthly", n_boot=N_BOOT)["recommendation"]
    assert set(rec["tied"]) == {"ft+rag", "rag"}
    assert rec["strategy"] == "rag" and any("needs no training" in r for r in rec["reasons"])


def test_every_strategy_against_a_named_baseline(three, tmp_path):
    """`compare --baseline rag`: each other strategy's difference to rag with its interval and p, whatever the best."""
    db, ids = three
    result = compare_runs(db, ids, n_boot=N_BOOT, baseline="rag")
    versus = result["versus"]
    assert versus["baseline"] == "rag" and versus["metric"] == "f1" and set(versus["rows"]) == {"base", "ft+rag"}
    base = versus["rows"]["base"]
    means = result["strategies"]
    assert base["difference"] == pytest.approx(means["base"]["f1"] - means["rag"]["f1"])
    assert base["low"] <= base["difference"] <= base["high"] < 0 and base["separable"] and base["p_value"] < 0.05
    assert not versus["rows"]["ft+rag"]["separable"]  # 0.61 vs 0.6: the data cannot tell them apart
    data = write_reports(result, tmp_path / "out")
    assert data["versus"] == versus and "Against rag" in (tmp_path / "out" / "report.md").read_text()
    assert "versus" not in write_reports(compare_runs(db, ids, n_boot=N_BOOT), tmp_path / "plain")
    with pytest.raises(ConfigError, match="--baseline raft: no such strategy"):
        compare_runs(db, ids, n_boot=N_BOOT, baseline="raft")
