"""`ragtune choose`: questions split, FT and RAFT data built, both trained within the budget,
five strategies compared on the held-out questions, a recommendation and reports; a rerun resumes."""

from __future__ import annotations

import json

import pytest

from conftest import kb_of_texts, run_cli

from ragtune.errors import ConfigError

DOCS = {
    "festival.txt": "The Zorblat festival is held in the town of Kremsville every March. Visitors eat smoked plums "
                    "and watch the lantern parade on the last night.",
    "bridge.txt": "The Halvard bridge crosses the river Otter. It was finished in 1921 and is painted green. "
                  "It carries a railway and a footpath.",
    "orchard.txt": "Quince orchards need well drained soil and a cold winter to set fruit reliably. "
                   "Growers prune them in late winter.",
    "mill.txt": "The Brackwater mill grinds rye with a water wheel built in 1874. The miller sells flour on Saturdays.",
}
QUESTIONS = [
    ("In which town is the Zorblat festival held?", "Kremsville", "festival.txt"),
    ("What do visitors eat at the Zorblat festival?", "smoked plums", "festival.txt"),
    ("When is the Zorblat festival held?", "every March", "festival.txt"),
    ("Which river does the Halvard bridge cross?", "the river Otter", "bridge.txt"),
    ("In which year was the Halvard bridge finished?", "1921", "bridge.txt"),
    ("What colour is the Halvard bridge painted?", "green", "bridge.txt"),
    ("What soil do quince orchards need?", "well drained soil", "orchard.txt"),
    ("When do growers prune quince trees?", "in late winter", "orchard.txt"),
    ("What grain does the Brackwater mill grind?", "rye", "mill.txt"),
    ("When was the Brackwater mill's water wheel built?", "1874", "mill.txt"),
]


@pytest.mark.slow
def test_choose_builds_trains_compares_and_resumes(tmp_path):
    from ragtune.kb import KnowledgeBase

    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    with KnowledgeBase.init(tmp_path / "kb") as kb:
        kb.threads = 2
        kb.ingest([folder])
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answers": [a], "gold_doc_ids": [d]}) + "\n"
                                 for i, (q, a, d) in enumerate(QUESTIONS)))
    out = tmp_path / "choose"
    args = ["choose", tmp_path / "kb", "--questions", questions, "--out", out, "--budget", "0.3", "--threads", "2",
            "--weight-format", "source", "--json"]
    data = json.loads(run_cli(*args, timeout=900).stdout)
    assert set(data["strategies"]) == {"base", "rag", "ft", "ft+rag", "raft+rag"}
    assert data["recommendation"]["reasons"] and (out / "report" / "report.html").is_file()
    assert set(data["versus"]["rows"]) == {"base", "ft", "ft+rag", "raft+rag"}  # each against rag, with its interval
    for name in ("ft", "raft+rag"):  # both trained, and what it cost is reported
        assert data["strategies"][name]["training"]["train_seconds"] > 0
    manifest = json.loads((out / "raft-data" / "manifest.json").read_text())
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == len(QUESTIONS) and not {e["id"] for e in train} & {e["id"] for e in test}
    assert manifest["counts"]["train_examples"] == len(train)
    assert (out / "runs" / "ft" / "metrics.json").is_file() and (out / "runs" / "raft" / "metrics.json").is_file()
    stamp = (out / "runs" / "raft" / "metrics.json").stat().st_mtime

    again = json.loads(run_cli(*args, timeout=600).stdout)  # a rerun resumes: nothing retrained, same runs
    assert (out / "runs" / "raft" / "metrics.json").stat().st_mtime == stamp
    assert {n: s["run_id"] for n, s in again["strategies"].items()} == {n: s["run_id"] for n, s in data["strategies"].items()}


def test_choose_needs_questions_or_synthesize(tmp_path):
    result = run_cli("choose", tmp_path, "--out", tmp_path / "o", check=False)
    assert result.returncode == 2 and "--questions" in result.stderr and "--synthesize" in result.stderr
    result = run_cli("choose", tmp_path, "--synthesize", "5", "--out", tmp_path / "o", check=False)
    assert result.returncode == 2 and "--teacher" in result.stderr


def test_synthesized_questions_hold_whole_chunks_out_and_are_kept_for_a_rerun(tmp_path):
    """`choose --synthesize`: the teacher writes questions with short answers; those whose answer is in
    the chunk survive, whole chunks go to the held-out part, and a rerun does not ask the teacher again."""
    from contextlib import nullcontext

    from test_reader import TOWNS, PairTeacher, town_text

    from ragtune.raft import register_teacher
    from ragtune.workflow.choose import ChooseOptions
    from ragtune.workflow.synthesis import synthesized_split

    calls = []

    class Counting(PairTeacher):
        def generate(self, messages, **options):
            calls.append(1)
            return super().generate(messages, **options)

    register_teacher("pairs-choose", lambda **_: Counting())
    kb_of_texts(tmp_path, {f"{t}.txt": town_text(t) for t in TOWNS}).close()
    options = ChooseOptions(kb=tmp_path / "kb", out=tmp_path / "out", synthesize=12, teacher="pairs-choose")
    (tmp_path / "out").mkdir()
    train, test, report = synthesized_split(options, tmp_path / "out", lambda _text: nullcontext())
    assert report["questions"] == 12 and (len(train), len(test)) == (8, 4)  # 2 usable pairs of 5 per town
    assert report["dropped"] == {"answer_not_in_chunk": 6, "duplicate": 6, "answer_in_question": 6}
    assert all(e.answers and e.gold_doc_ids for e in train + test)
    towns = lambda examples: {next(t for t in TOWNS if t in e.question) for e in examples}  # noqa: E731
    assert not towns(train) & towns(test)  # a held-out question's chunk trains nothing
    assert all(e.context and e.answers[0] in e.context for e in train) and not any(e.context for e in test)
    asked = len(calls)
    again = synthesized_split(options, tmp_path / "out", lambda _text: nullcontext())
    assert len(calls) == asked and [e.question for e in again[1]] == [e.question for e in test]


def test_too_few_synthesized_questions_stop_choose_before_any_training(tmp_path):
    from contextlib import nullcontext

    from test_reader import TOWNS, PairTeacher, town_text

    from ragtune.raft import register_teacher
    from ragtune.workflow.choose import ChooseOptions, choose

    register_teacher("pairs-few", lambda **_: PairTeacher())
    kb_of_texts(tmp_path, {f"{t}.txt": town_text(t) for t in TOWNS}).close()
    options = ChooseOptions(kb=tmp_path / "kb", out=tmp_path / "out", synthesize=6, teacher="pairs-few")
    with pytest.raises(ConfigError) as caught:
        choose(options, stage=lambda _text: nullcontext())
    message = " ".join(str(caught.value).split())
    assert "--synthesize 6: the teacher (pairs-few) wrote" in message and "6 are usable (4 to train, 2 held out)" in message
    assert "at least 8 and 4" in message and "answer not in chunk" in message and "--synthesize 40" in message
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "out" / "raft-data").exists()
