"""`ragtune eval qa` and the runs database: stored predictions, scores, summaries and SIGKILL resume."""

from __future__ import annotations

import json
import signal
import sqlite3
import statistics
import subprocess
import time

import pytest

from conftest import RAGTUNE, run_cli
from ragtune.store.runs import RunsDB, file_sha256

DOCS = {
    "festival.txt": "The Zorblat festival is held in the town of Kremsville every March. Visitors eat smoked plums.",
    "bridge.txt": "The Halvard bridge crosses the river Otter. It was finished in 1921 and is painted green.",
    "orchard.txt": "Quince orchards need well drained soil and a cold winter to set fruit reliably.",
}
QUESTIONS = [
    {"id": "q1", "question": "In which town is the Zorblat festival held?", "answers": ["Kremsville"],
     "gold_doc_ids": ["festival.txt"]},
    {"id": "q2", "question": "In which year was the Halvard bridge finished?", "answers": ["1921"],
     "gold_doc_ids": ["bridge.txt"]},
    {"id": "q3", "question": "What colour is the Halvard bridge painted?", "answers": ["green"],
     "gold_doc_ids": ["bridge.txt"]},
    {"id": "q4", "question": "Do quince orchards need a cold winter?", "answers": ["yes"], "label": "yes",
     "gold_doc_ids": ["orchard.txt"]},
    {"id": "q5", "question": "What do visitors eat at the Zorblat festival?", "answers": ["smoked plums"],
     "gold_doc_ids": ["festival.txt"]},
]
COMMON = ("--threads", "2", "--max-tokens", "24", "--model", "SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ragtune.kb import KnowledgeBase

    root = tmp_path_factory.mktemp("evalqa")
    folder = root / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    with KnowledgeBase.init(root / "kb") as kb:
        kb.threads = 2
        kb.ingest([folder])
    dataset = root / "qa.jsonl"
    dataset.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return root, root / "kb", dataset


@pytest.fixture(scope="module")
def rag_run(setup):
    root, kb, dataset = setup
    db_path = root / "rag-runs.db"
    result = run_cli("eval", "qa", "--dataset", dataset, "--strategy", "rag", "--kb", kb, "--k", "2",
                     "--runs-db", db_path, "--json", *COMMON)
    return json.loads(result.stdout), db_path


def _means(predictions):
    names = {name for row in predictions for name in row["scores"]}
    return {name: statistics.fmean(row["scores"][name] for row in predictions if name in row["scores"]) for name in names}


def test_rag_run_stores_every_prediction_with_retrieved_ids_and_scores(setup, rag_run):
    summary, db_path = rag_run
    _, kb, dataset = setup
    with RunsDB(db_path) as db:
        [run] = db.runs()
        predictions = db.predictions(run["id"])
    assert summary["run_id"] == run["id"] and summary["strategy"] == "rag" and summary["n"] == len(QUESTIONS)
    assert run["status"] == "finished" and run["finished"] and run["k"] == 2 and run["model"] == "SmolLM2-135M-Instruct"
    assert run["dataset_sha256"] == file_sha256(dataset) and run["model_hash"].startswith("meta-sha256:")
    assert run["config"]["max_new_tokens"] == 24 and run["kb_path"] == str(kb.resolve())
    assert sorted(row["example_id"] for row in predictions) == [q["id"] for q in QUESTIONS]
    for row in predictions:
        assert 1 <= len(row["retrieved_ids"]) <= 2
        assert {"em", "f1", "rouge_l", "recall_at_k", "citation_precision", "citation_recall"} <= set(row["scores"])
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["latency_s"] > 0
    assert "correct" in next(row for row in predictions if row["example_id"] == "q4")["scores"]
    # gold ids given as file names are matched to the retrieved documents: the tiny KB finds them
    assert summary["metrics"]["recall_at_k"] >= 0.8


def test_summary_metrics_are_the_means_of_the_stored_scores(rag_run):
    summary, db_path = rag_run
    with RunsDB(db_path) as db:
        predictions = db.predictions(summary["run_id"])
    means = _means(predictions)
    assert set(summary["metrics"]) == set(means)
    for name, value in means.items():
        assert summary["metrics"][name] == pytest.approx(value)
    latencies = sorted(row["latency_s"] for row in predictions)
    assert summary["latency_p50_s"] == pytest.approx(latencies[len(latencies) // 2])
    assert latencies[0] <= summary["latency_p95_s"] <= latencies[-1]


def test_base_run_has_no_retrieved_ids_and_uses_the_default_db(setup):
    root, _, dataset = setup
    workdir = root / "base-cwd"
    workdir.mkdir()
    result = run_cli("eval", "qa", "--dataset", dataset, "--strategy", "base", "--limit", "2", "--json", *COMMON,
                     cwd=workdir)
    summary = json.loads(result.stdout)
    assert summary["n"] == 2 and summary["strategy"] == "base"
    with RunsDB(workdir / "ragtune-runs.db") as db:
        [run] = db.runs()
        predictions = db.predictions(run["id"])
    assert run["kb_path"] is None and run["k"] is None and run["status"] == "finished"
    assert [row["example_id"] for row in predictions] == ["q1", "q2"]
    for row in predictions:
        assert row["retrieved_ids"] == [] and not {"recall_at_k", "citation_precision"} & set(row["scores"])
        assert {"em", "f1", "rouge_l"} <= set(row["scores"])


@pytest.mark.parametrize("strategy", ["ft", "ft+rag"])
def test_fine_tuned_strategy_without_model_names_the_flag(setup, strategy):
    _, kb, dataset = setup
    result = run_cli("eval", "qa", "--dataset", dataset, "--strategy", strategy, "--kb", kb, check=False)
    assert result.returncode == 2
    assert "--model" in result.stderr and "error" in result.stderr and "Traceback" not in result.stderr


def test_sigkill_mid_run_resumes_with_each_example_once(setup):
    root, kb, dataset = setup
    db_path = root / "killed.db"
    args = [*RAGTUNE, "eval", "qa", "--dataset", str(dataset), "--strategy", "rag", "--kb", str(kb), "--k", "2",
            "--runs-db", str(db_path), "--json", *COMMON]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stored = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if db_path.exists():
                try:
                    with sqlite3.connect(db_path) as conn:
                        stored = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
                except sqlite3.OperationalError:  # schema not created yet
                    stored = 0
                if stored:
                    break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    with RunsDB(db_path) as db:
        [run] = db.runs()
        before = {row["example_id"]: row for row in db.predictions(run["id"])}
    assert run["status"] == "running" and 1 <= len(before) < len(QUESTIONS)

    summary = json.loads(run_cli(*args[len(RAGTUNE):]).stdout)
    assert summary["run_id"] == run["id"] and summary["n"] == len(QUESTIONS)
    with RunsDB(db_path) as db:
        [run] = db.runs()
        after = db.predictions(run["id"])
    assert run["status"] == "finished"
    assert sorted(row["example_id"] for row in after) == [q["id"] for q in QUESTIONS]  # each exactly once
    for row in after:  # what was stored before the kill is kept, not re-answered
        if row["example_id"] in before:
            assert row["created"] == before[row["example_id"]]["created"]
            assert row["prediction"] == before[row["example_id"]]["prediction"]


def test_concurrent_answers_are_stored_once_each_in_order(tmp_path):
    """--concurrency answers several examples at once; each is still stored exactly once, and a
    strategy that is not safe to share (RAG's knowledge base) runs one at a time."""
    import threading
    import time as clock

    from ragtune.evaluate.dataset import EvalExample, write_eval_set
    from ragtune.evaluate.runner import run_eval
    from ragtune.store.runs import RunsDB

    examples = [EvalExample(id=f"q{i}", question=f"question {i}?", answers=[f"answer {i}"]) for i in range(10)]
    dataset = tmp_path / "set.jsonl"
    write_eval_set(examples, dataset)

    class Echo:
        name, uses_retrieval = "base", False

        def __init__(self, safe):
            self.concurrent_safe, self.active, self.peak, self.lock = safe, 0, 0, threading.Lock()

        def answer(self, example):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            clock.sleep(0.05)
            with self.lock:
                self.active -= 1
            return {"prediction": example.question.replace("question", "answer").rstrip("?"), "retrieved_ids": [],
                    "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.05}

    for safe, expected_peak in ((True, 3), (False, 1)):
        strategy = Echo(safe)
        with RunsDB(tmp_path / f"runs-{safe}.db") as db:
            summary = run_eval(dataset, strategy, db, model="echo", concurrency=3)
            stored = db.predictions(summary["run_id"])
        assert [row["example_id"] for row in stored] == [ex.id for ex in examples]
        assert summary["metrics"]["em"] == 1.0 and strategy.peak == expected_peak
