"""The evaluation-set format (read/write, per-line errors) and its importers, on tiny fixtures and on
the real shared data sets when they are present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.errors import ConfigError
from ragtune.evaluate.dataset import EvalExample, read_eval_set, write_eval_set
from ragtune.evaluate.importers import import_eval_set, parse_gorilla_code

from conftest import run_cli

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


def write_lines(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


# -- the format ----------------------------------------------------------------------------------
def test_round_trip(tmp_path):
    examples = [
        EvalExample(id="q1", question="Capital of France?", answers=["Paris", "paris"], gold_doc_ids=["d1"],
                    category="geo", split="test", context="Paris is the capital.", metadata={"n": 1}),
        EvalExample(id="q2", question="Is it raining?", answers=[], label="maybe"),
        EvalExample(id="q3", question="Which doc?", answers=[], gold_doc_ids=["d7"]),
    ]
    target = tmp_path / "sub" / "set.jsonl"
    assert write_eval_set(examples, target) == 3
    again, problems = read_eval_set(target)
    assert problems == [] and again == examples
    assert not list(target.parent.glob(".*.tmp"))  # the temporary file was renamed, not left behind
    assert "gold_doc_ids" not in target.read_text().splitlines()[1]  # defaults are left out


def test_bad_records_are_reported_and_the_rest_kept(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        {"id": "a", "question": "ok?", "answers": ["yes"]},                 # 1
        {"id": "b", "answers": ["x"]},                                      # 2 no question
        {"id": "c", "question": "q", "answers": "Paris"},                   # 3 answers not a list
        {"id": "a", "question": "again", "answers": ["y"]},                 # 4 duplicate of line 1
        '{"id": "d", "question": ',                                         # 5 broken JSON
        {"id": "e", "question": "q", "answers": []},                        # 6 nothing to score
        {"id": "f", "question": "q", "answer": ["typo"], "answers": ["z"]},  # 7 unknown field
        {"id": 5, "question": "q", "answers": ["n"]},                       # 8 id not a string
        {"id": "g", "question": "fine", "answers": ["1", "2"]},             # 9
    ])
    examples, problems = read_eval_set(path)
    assert [e.id for e in examples] == ["a", "g"]
    found = {(p.line, p.field) for p in problems}
    assert {(2, "question"), (3, "answers"), (4, "id"), (5, "json"), (7, "answer"), (8, "id")} <= found
    assert any(p.line == 6 and "gold_doc_ids" in p.message for p in problems)
    duplicate = next(p for p in problems if p.line == 4)
    assert "line 1" in duplicate.message and "line 4" in duplicate.message
    assert all(p.path == str(path) and p.fix for p in problems)
    assert str(path) + ":3: answers" in str(next(p for p in problems if p.line == 3))


# -- importers on fixtures -----------------------------------------------------------------------
def test_beir_fixture(tmp_path):
    (tmp_path / "qrels").mkdir()
    write_lines(tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "x"}, {"_id": "d2", "text": "y"}])
    write_lines(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}])
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    examples = import_eval_set("beir", tmp_path)
    assert [(e.id, e.gold_doc_ids, e.answers, e.split) for e in examples] == [("q1", ["d2", "d1"], [], "test")]
    with pytest.raises(ConfigError, match="splits here: test"):
        import_eval_set("beir", tmp_path, split="dev")


def test_squad_fixture(tmp_path):
    data = {"version": "v2.0", "data": [{"title": "France", "paragraphs": [{"context": "Paris is the capital.", "qas": [
        {"id": "s1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0},
                                                         {"text": "Paris", "answer_start": 0},
                                                         {"text": "Paris.", "answer_start": 0}]},
        {"id": "s2", "question": "King?", "answers": [], "is_impossible": True}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(data))
    one, two = import_eval_set("squad", tmp_path / "squad.json")
    assert one.answers == ["Paris", "Paris."] and one.context == "Paris is the capital."
    assert one.metadata == {"title": "France"}
    assert two.answers == [] and two.metadata["is_impossible"] is True
    (tmp_path / "other.json").write_text('{"questions": []}')
    with pytest.raises(ConfigError, match="other.json.*SQuAD"):
        import_eval_set("squad", tmp_path / "other.json")


def test_hotpotqa_fixture_both_forms(tmp_path):
    ircot = {"question_id": "h1", "question_text": "Who?", "answers_objects": [{"spans": ["Ann", "Ann"]}],
             "contexts": [{"title": "A", "paragraph_text": "..", "is_supporting": True},
                          {"title": "B", "paragraph_text": "..", "is_supporting": False},
                          {"title": "C", "paragraph_text": "..", "is_supporting": True}]}
    example, = import_eval_set("hotpotqa", write_lines(tmp_path / "dev.jsonl", [ircot]))
    assert (example.id, example.answers, example.gold_doc_ids, example.category) == ("h1", ["Ann"], ["A", "C"], None)
    original = [{"_id": "h2", "question": "Which?", "answer": "yes", "type": "comparison", "level": "hard",
                 "supporting_facts": [["X", 0], ["Y", 1], ["X", 2]], "context": []}]
    (tmp_path / "orig.json").write_text(json.dumps(original))
    example, = import_eval_set("hotpotqa", tmp_path / "orig.json")
    assert (example.gold_doc_ids, example.category, example.metadata) == (["X", "Y"], "comparison", {"level": "hard"})
    with pytest.raises(ConfigError, match=r"bad.jsonl:1"):
        import_eval_set("hotpotqa", write_lines(tmp_path / "bad.jsonl", [{"foo": 1}]))


def test_pubmedqa_fixture(tmp_path):
    data = {"123": {"QUESTION": "Does it work?", "CONTEXTS": ["Part one.", "Part two."], "final_decision": "maybe",
                    "LONG_ANSWER": "Perhaps.", "YEAR": "2001"}}
    (tmp_path / "pqal_train.json").write_text(json.dumps(data))
    example, = import_eval_set("pubmedqa", tmp_path)  # the folder finds the file
    assert (example.id, example.label, example.answers, example.gold_doc_ids) == ("123", "maybe", ["maybe"], ["123"])
    assert example.context == "Part one. Part two." and example.metadata == {"long_answer": "Perhaps.", "year": "2001"}
    (tmp_path / "pqal_train.json").write_text(json.dumps({"123": {"QUESTION": "no decision"}}))
    with pytest.raises(ConfigError, match="final_decision"):
        import_eval_set("pubmedqa", tmp_path)


def test_gorilla_fixture_both_code_forms(tmp_path):
    api = {"domain": "Classification", "api_name": "m", "framework": "PyTorch",
           "api_call": "torch.hub.load(repo_or_dir='o/r',  model='m')"}
    records = [
        {"code": "{'Instruction': Classify an image, please., 'Output': {'domain': 'Classification', 'api_call': 'x'}}",
         "api_call": api["api_call"], "provider": "PyTorch", "api_data": api},
        {"code": "###Instruction: Pick a model.\n###Output: {'api_call': 'y'}", "api_data": api},
    ]
    one, two = import_eval_set("gorilla-torchhub", write_lines(tmp_path / "torchhub_eval.jsonl", records))
    assert one.question == "Classify an image, please."
    assert one.answers == ["{'domain': 'Classification', 'api_call': 'x'}"]
    assert one.gold_doc_ids == ["torch.hub.load(repo_or_dir='o/r', model='m')"] == two.gold_doc_ids
    assert (two.id, two.question, two.answers) == ("torchhub-2", "Pick a model.", ["{'api_call': 'y'}"])
    assert parse_gorilla_code("{'Instruction': Judge., 'Input': 'a. b.', 'Output': 'contradiction'}") == \
        ("Judge.", "a. b.", "contradiction")
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: expected Gorilla"):
        import_eval_set("gorilla-torchhub", write_lines(tmp_path / "bad.jsonl", [{"code": "free text"}]))


def test_csv_fixture(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('qid,q,a,cls\n1,"Capital of France?",Paris|paris ,geo\n2,Colour of the sky?,blue,nature\n')
    one, two = import_eval_set("csv", path, question_col="q", answer_col="a", id_col="qid", category_col="cls")
    assert (one.id, one.answers, one.category) == ("1", ["Paris", "paris"], "geo")
    assert (two.id, two.question) == ("2", "Colour of the sky?")
    with pytest.raises(ConfigError, match="column.*nope.*not in the header"):
        import_eval_set("csv", path, question_col="nope")
    with pytest.raises(ConfigError, match="--split"):
        import_eval_set("csv", path, split="test")
    with pytest.raises(ConfigError, match="unknown importer"):
        import_eval_set("parquet", path)


# -- importers on the real shared data -----------------------------------------------------------
def test_real_beir_scifact():
    examples = import_eval_set("beir", shared("scifact"), split="train")
    assert len(examples) == 809 and all(e.gold_doc_ids and not e.answers for e in examples)
    assert examples[0].id == "0" and examples[0].gold_doc_ids == ["31715818"]


def test_real_hotpotqa():
    examples = import_eval_set("hotpotqa", shared("hotpotqa-dev500"))
    assert len(examples) == 500 and all(len(e.gold_doc_ids) == 2 and e.answers for e in examples)
    first = examples[0]
    assert first.id == "5a8c7595554299585d9e36b6" and first.answers == ["Chief of Protocol"]
    assert first.gold_doc_ids == ["Shirley Temple", "Kiss and Tell (1945 film)"]


def test_real_pubmedqa():
    examples = import_eval_set("pubmedqa", shared("pubmedqa"))
    assert len(examples) == 500
    counts = {label: sum(e.label == label for e in examples) for label in ("yes", "no", "maybe")}
    assert counts == {"yes": 276, "no": 169, "maybe": 55}
    first = next(e for e in examples if e.id == "10808977")
    assert first.answers == ["yes"] and first.gold_doc_ids == ["10808977"]
    assert first.question == "Can tailored interventions increase mammography use among HMO women?"


def test_real_gorilla_torchhub():
    folder = shared("gorilla-torchhub")
    examples = import_eval_set("gorilla-torchhub", folder / "torchhub_train.jsonl")
    assert len(examples) == 837
    api_ids = {" ".join(json.loads(line)["api_call"].split()) for line in open(folder / "torchhub_api.jsonl")}
    assert {g for e in examples for g in e.gold_doc_ids} <= api_ids  # every gold id names a KB doc
    first = examples[0]
    assert first.question.startswith("I need an API that can estimate the relative depth")
    assert first.gold_doc_ids == ["torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='DPT_Hybrid', pretrained=True)"]
    assert "'api_call'" in first.answers[0] and first.metadata["api_name"] == "MiDaS"
    assert examples[356].answers == ["contradiction"] and "\nInput: " in examples[356].question


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_import_writes_the_format(tmp_path):
    source = tmp_path / "qa.csv"
    source.write_text("question,answer,label\nIs water wet?,yes,yes\nIs fire cold?,no,no\n")
    target = tmp_path / "set.jsonl"
    result = run_cli("eval", "import", "csv", source, "--out", target, "--label-col", "label", "--json")
    summary = json.loads(result.stdout)
    assert summary["examples"] == 2 and summary["labels"] == {"yes": 1, "no": 1} and summary["out"] == str(target)
    examples, problems = read_eval_set(target)
    assert problems == [] and [e.label for e in examples] == ["yes", "no"]
    human = run_cli("eval", "import", "csv", source, "--out", target)
    assert "wrote 2 examples" in human.stdout
    failed = run_cli("eval", "import", "squad", source, "--out", target, check=False)
    assert failed.returncode == 2 and "squad" in failed.stderr and "qa.csv" in failed.stderr
