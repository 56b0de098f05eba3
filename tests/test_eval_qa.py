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
            "--runs-db", str(db_path), "--json", "--concurrency", "1", *COMMON]  # one answer at a time: a kill lands between them
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


def test_compare_strategies_runs_each_then_compares_with_quick_caveat(setup):
    """`compare --strategies base,rag --dataset --kb --quick` answers with both, stores both runs and
    prints the documented JSON: strategies with metrics and latency, a recommendation with reasons."""
    root, kb, dataset = setup
    db_path, out_dir = root / "strategies.db", root / "report"
    result = run_cli("compare", "--strategies", "base,rag", "--dataset", dataset, "--kb", kb, "--k", "2",
                     "--runs-db", db_path, "--quick", "--out", out_dir, "--json", "--judge", "SmolLM2-135M-Instruct",
                     *COMMON)
    data = json.loads(result.stdout)
    assert set(data["strategies"]) == {"base", "rag"}
    for name, stats in data["strategies"].items():
        assert 0.0 <= stats["f1"] <= 1.0 and stats["latency_p50_s"] > 0 and stats["strategy"] == name
    assert "faithfulness" in data["strategies"]["rag"] and "faithfulness" not in data["strategies"]["base"]
    # the judge (grammar-constrained on llama.cpp) scored the RAG answers; failures would be counted, not dropped
    assert data["strategies"]["rag"]["judge_failed"] == 0.0 and 0.0 <= data["strategies"]["rag"]["judge_faithfulness"] <= 1.0
    assert data["recommendation"]["strategy"] in (None, "base", "rag") and data["recommendation"]["reasons"]
    assert any("--quick" in reason for reason in data["recommendation"]["reasons"])
    assert data["report"] == str(out_dir / "report.html") and (out_dir / "report.html").is_file()
    with RunsDB(db_path) as db:
        runs = db.runs()
        assert sorted(run["strategy"] for run in runs) == ["base", "rag"]
        assert all(run["status"] == "finished" and run["config"]["quick"] for run in runs)
        assert all(len(db.predictions(run["id"])) == len(QUESTIONS) for run in runs)


def test_compare_needs_runs_or_strategies_and_names_missing_flags(setup):
    root, kb, dataset = setup
    for args, flag in ((("--out", root / "x"), "--runs"),
                       (("--strategies", "base,ft", "--dataset", dataset, "--out", root / "x"), "--ft-model"),
                       (("--strategies", "rag", "--dataset", dataset, "--out", root / "x"), "--kb"),
                       (("--strategies", "base,nope", "--dataset", dataset, "--out", root / "x"), "nope"),
                       (("--strategies", "base", "--out", root / "x"), "--dataset")):
        result = run_cli("compare", *args, check=False)
        assert result.returncode == 2, result.stderr
        assert flag in result.stderr and "Traceback" not in result.stderr


def test_concurrent_rag_retrieves_as_sequential_and_stores_in_order(setup, tmp_path):
    """RAG answers several questions at once (the KB under a lock, generation overlapping): the
    sources shown are those of a one-at-a-time run, and every example is stored once, in order."""
    from ragtune.evaluate.runner import run_eval
    from ragtune.evaluate.strategies import RagStrategy
    from ragtune.generate import make_generator
    from ragtune.kb import KnowledgeBase

    _, kb_path, dataset = setup
    generator = make_generator("SmolLM2-135M-Instruct", threads=2, slots=4)
    retrieved = {}
    with KnowledgeBase.open(kb_path, threads=2) as kb:
        for concurrency in (1, 4):
            with RunsDB(tmp_path / f"c{concurrency}.db") as db:
                strategy = RagStrategy(kb, generator, k=2, max_new_tokens=16)
                summary = run_eval(dataset, strategy, db, model="SmolLM2-135M-Instruct", concurrency=concurrency,
                                   config={"max_new_tokens": 16})
                rows = db.predictions(summary["run_id"])
            assert [row["example_id"] for row in rows] == [q["id"] for q in QUESTIONS]
            retrieved[concurrency] = [row["retrieved_ids"] for row in rows]
    assert retrieved[1] == retrieved[4]


def test_quick_sample_is_fixed_and_stratified():
    from ragtune.evaluate.dataset import EvalExample
    from ragtune.evaluate.plan import quick_sample

    examples = [EvalExample(id=str(i), question="q?", answers=["a"], category="rare" if i % 10 == 0 else "common")
                for i in range(200)]
    first, second = quick_sample(examples, 40), quick_sample(examples, 40)
    assert [e.id for e in first] == [e.id for e in second] and len(first) == 40
    assert [int(e.id) for e in first] == sorted(int(e.id) for e in first)  # file order kept
    assert sum(e.category == "rare" for e in first) == 20  # round-robin: the rare category is not drowned
    assert quick_sample(examples[:10], 40) == examples[:10]


def test_training_cost_is_read_from_a_run_and_changed_settings_do_not_resume(tmp_path):
    from ragtune.evaluate.dataset import EvalExample, write_eval_set
    from ragtune.evaluate.plan import training_cost
    from ragtune.evaluate.runner import run_eval

    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"seconds": 412.5, "train_tokens": 123456, "method": "lora",
                                                      "data": {"train_examples": 300}, "metrics": {}}))
    for path in (run_dir, run_dir / "model"):
        cost = training_cost(str(path))
        assert cost["train_seconds"] == 412.5 and cost["train_tokens"] == 123456 and cost["train_examples"] == 300
    assert training_cost("SmolLM2-135M-Instruct") is None

    dataset = tmp_path / "set.jsonl"
    write_eval_set([EvalExample(id=f"q{i}", question="q?", answers=["a"]) for i in range(3)], dataset)

    class Once:
        name, uses_retrieval, concurrent_safe = "base", False, True

        def answer(self, example):
            if example.id == "q1":
                raise KeyboardInterrupt  # the run stops part-way, as after a kill
            return {"prediction": "a", "retrieved_ids": [], "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.1}

    with RunsDB(tmp_path / "runs.db") as db:
        with pytest.raises(KeyboardInterrupt):
            run_eval(dataset, Once(), db, config={"max_new_tokens": 16})
        [first] = db.runs()
        Once.answer = lambda self, example: {"prediction": "a", "retrieved_ids": [], "prompt_tokens": 1,
                                             "completion_tokens": 1, "latency_s": 0.1}
        changed = run_eval(dataset, Once(), db, config={"max_new_tokens": 32})  # another budget: a new run
        same = run_eval(dataset, Once(), db, config={"max_new_tokens": 16})  # the same settings: resumed
    assert changed["run_id"] != first["id"] and same["run_id"] == first["id"] and same["n"] == 3


def test_labelled_sets_ask_for_a_label_in_the_scored_vocabulary():
    from ragtune.evaluate.dataset import EvalExample
    from ragtune.evaluate.strategies import BaseStrategy, dataset_labels, label_style

    examples = [EvalExample(id=str(i), question="q?", answers=[label], label=label)
                for i, label in enumerate(["yes", "no", "yes", "maybe", "yes", "no"])]
    assert dataset_labels(examples) == ["yes", "no", "maybe"]  # most frequent first
    assert dataset_labels(examples + [EvalExample(id="x", question="q?", answers=["a"])]) is None

    class Recorder:
        def generate(self, messages, **_):
            from ragtune.generate.base import Generation

            self.messages = messages
            return Generation(text="maybe\nmore text", prompt_tokens=3, completion_tokens=2)

    generator = Recorder()
    output = BaseStrategy(generator, style=label_style(["yes", "no", "maybe"])).answer(examples[0])
    assert generator.messages[-1]["content"].endswith("Answer with one word: yes, no, maybe.")
    # truthful worked examples, one per polar label, so the frequent label is not primed
    assert [m["content"] for m in generator.messages[1:4:2]] == ["yes", "no"] and output["prediction"] == "maybe"
    assert label_style(["no", "yes"]).closed_example[1]["content"] == "yes"  # never "France? -> no"
    assert label_style(["billing", "refund"]).closed_example == ()  # no true Eiffel answer among classes


def test_raft_strategy_answers_after_the_tag_and_cites_only_verified_quotes(setup):
    """raft+rag: the retrieved documents in the RAFT prompt; the prediction is the text after
    <ANSWER>:, and only a quote found verbatim in a document given counts as a citation."""
    from ragtune.evaluate.dataset import EvalExample
    from ragtune.evaluate.strategies import make_strategy
    from ragtune.generate.base import Generation
    from ragtune.kb import KnowledgeBase

    class RaftReply:
        name, context_window = "fake-raft", 4096

        def count_tokens(self, text):
            return len(text.split())

        def generate(self, messages, **_):
            self.messages = messages
            return Generation(text="The festival ##begin_quote##is held in the town of Kremsville every March"
                                   "##end_quote## and ##begin_quote##it is held in Paris##end_quote##.\n"
                                   "<ANSWER>: Kremsville\nextra", prompt_tokens=50, completion_tokens=30)

    _, kb_path, _ = setup
    example = EvalExample(id="q1", question="In which town is the Zorblat festival held?", answers=["Kremsville"],
                          gold_doc_ids=["festival.txt"])
    generator = RaftReply()
    with KnowledgeBase.open(kb_path, threads=2) as kb:
        strategy = make_strategy("raft+rag", generator, kb=kb, k=2)
        output = strategy.answer(example)
        assert "<DOCUMENT 1:" in generator.messages[-1]["content"]
        closed = make_strategy("raft", generator, kb=kb, k=2).answer(example)
        assert "<DOCUMENT" not in generator.messages[-1]["content"]
    assert strategy.uses_retrieval and strategy.max_new_tokens >= 256
    assert output["prediction"] == "Kremsville" and output["cited_ids"] == ["festival.txt"]
    assert "festival.txt" in output["retrieved_ids"] and output["source_texts"]
    assert closed["prediction"] == "Kremsville" and closed["retrieved_ids"] == [] and closed["cited_ids"] == []


def test_ask_prompt_raft_json_has_answer_reasoning_and_checked_citations(setup):
    _, kb, _ = setup
    result = run_cli("ask", kb, "In which town is the Zorblat festival held?", "--prompt", "raft", "--k", "2",
                     "--max-tokens", "48", "--threads", "2", "--json")
    data = json.loads(result.stdout)
    assert {"answer", "reasoning", "citations", "quotes", "sources", "invented_quotes", "protocol"} <= set(data)
    assert len(data["sources"]) == 2 and "<DOCUMENT 1:" in data["prompt"] and data["protocol"] == "raft"
    assert all(1 <= q["n"] <= 2 for q in data["quotes"])  # only verified quotes become citations
    assert [c["n"] for c in data["citations"]] == list(dict.fromkeys(q["n"] for q in data["quotes"]))
    bad = run_cli("ask", kb, "q?", "--prompt", "nope", check=False)
    assert bad.returncode == 2 and "--prompt" in bad.stderr
