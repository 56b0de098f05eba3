"""The reader adapter (`ragtune raft reader`): its training examples are the answer pipeline's own
prompt with a verbatim target, the teacher's pairs are checked against their chunk, and a trained
reader is installed in the knowledge base and used by `ask`."""

from __future__ import annotations

import json
import random

import pytest

from conftest import kb_of_texts, run_cli

from ragtune.errors import ConfigError
from ragtune.generate.base import Generation
from ragtune.raft import register_teacher

TOWNS = {"Brindlemoor": ("Ilsa Varnack", "copper bells"), "Quenholt": ("Tomas Ederle", "glass floats"),
         "Sarrow Pike": ("Ottilie Brask", "felt hats"), "Wendmere": ("Casimir Loy", "salted eel"),
         "Harrowgate Sound": ("Petra Oyelaran", "rope ladders"), "Calder Fen": ("Ambrose Kettel", "clay pipes")}


def town_text(town: str) -> str:
    mayor, goods = TOWNS[town]
    return (f"{town} is a small harbour town on the northern coast. The mayor of {town} since 2029 is {mayor}. "
            f"The town is known for its {goods}, which are sold at the Saturday market. "
            f"A ferry connects {town} with the islands twice a week.")


def hotpot_line(n: int, town: str) -> dict:
    """One question in IRCoT's HotpotQA layout: the gold paragraph among the other towns'."""
    others = [t for t in TOWNS if t != town]
    contexts = [{"id": str(i), "title": t, "paragraph_text": town_text(t), "is_supporting": t == town}
                for i, t in enumerate([town, *others[:3]])]
    random.Random(n).shuffle(contexts)
    return {"question_id": f"q{n}", "question_text": f"Who is the mayor of {town} since 2029?",
            "answers_objects": [{"spans": [TOWNS[town][0]]}], "contexts": contexts}


class PairTeacher:
    name = "pairs"
    context_window = 4096

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, messages, *, max_new_tokens=256, temperature=0.0, on_text=None):
        chunk = messages[-1]["content"].split("Document:\n", 1)[1].split("\n\nWrite", 1)[0]
        town = next(t for t in TOWNS if chunk.startswith(t))
        mayor, goods = TOWNS[town]
        return Generation(f"Q: Who is the mayor of {town} since 2029?\nA: {mayor}.\n"
                          f"Q: Which goods is {town} known for?\nA: {goods}\n"
                          f"Q: What is {town} known for?\nA: its silver spoons\n"  # invented: not in the chunk
                          f"Q: Who is the mayor of {town} since 2029?\nA: {mayor}\n"  # a duplicate
                          f"Q: Which town is a small harbour town called {town}?\nA: {town}")  # answer in question


def test_examples_are_the_pipeline_prompt_with_a_verbatim_target(tmp_path):
    from ragtune.answer import grounded
    from ragtune.answer.pipeline import prepare
    from ragtune.answer.protocols import ReaderProtocol
    from ragtune.raft.reader_data import Counts, TokenCounter, mix_items, reader_example

    path = tmp_path / "mix.jsonl"
    lines = [json.dumps(hotpot_line(n, t)) for n, t in enumerate(TOWNS)]
    lines.insert(2, json.dumps({"question_id": "bad", "question_text": "Who?", "contexts": []}))
    lines.insert(3, "{not json")
    path.write_text("\n".join(lines) + "\n")
    items, problems = mix_items(path)
    assert len(items) == len(TOWNS)
    assert {(p.line, p.field) for p in problems} >= {(3, "answers")} and len(problems) == 2
    counter, counts = TokenCounter("SmolLM2-135M-Instruct"), Counts()

    row = reader_example(items[0], counter, random.Random(0), p=1.0, counts=counts)
    messages = row["messages"]
    assert messages[-1]["content"] == (f"Answer: Ilsa Varnack\n"
                                       f"Quote: The mayor of Brindlemoor since 2029 is Ilsa Varnack.")
    assert messages[0]["content"] == grounded.SYSTEMS["answer-first"]
    shown_titles = [line.split("] ", 1)[1] for line in messages[1]["content"].splitlines() if line.startswith("[")]
    assert "Brindlemoor" in shown_titles and len(shown_titles) == 4  # the oracle among 3 distractors
    # the prompt is exactly the pipeline's for these passages, in the order shown
    hits = sorted(items[0].oracles + items[0].distractors, key=lambda h: shown_titles.index(h.title))
    prompt = prepare(ReaderProtocol(), items[0].question, hits, counter)[0]
    assert prompt.messages == messages[:-1]

    absent = reader_example(items[1], counter, random.Random(0), p=0.0, counts=counts)
    assert absent["messages"][-1]["content"] == "Answer: not found in the sources"
    assert "Quenholt" not in absent["messages"][1]["content"].split("Question:")[0]
    assert counts.values == {"oracle_present": 1, "oracle_absent": 1}


def test_teacher_pairs_must_hold_their_answer_in_the_chunk(tmp_path):
    from ragtune.raft.reader_teacher import kb_items, parse_pairs

    register_teacher("pairs", lambda **_: PairTeacher())
    assert parse_pairs("1. Q: Who is it?\nA: Bob.\nQ: dangling?") == [("Who is it?", "Bob")]
    kb = kb_of_texts(tmp_path, {f"{t}.txt": town_text(t) for t in TOWNS})
    kb.close()
    from contextlib import nullcontext

    items, report = kb_items(tmp_path / "kb", "pairs", 4, stage=lambda _text: nullcontext())
    assert len(items) == 4 and report["questions"] == 4 and report["chunks_asked"] == 4  # one batch of 4 chunks
    assert report["dropped"] == {"answer_not_in_chunk": 4, "duplicate": 4, "answer_in_question": 4}
    assert {i.answer for i in items} <= {v for pair in TOWNS.values() for v in pair}
    for item in items:
        town = next(t for t in TOWNS if t in item.question)
        assert item.answer in TOWNS[town] and item.oracles[0].text.startswith(town)
        assert item.oracles[0].chunk_id not in {h.chunk_id for h in item.distractors}
        assert item.distractors  # the KB's own retriever's other hits


def test_prompt_reader_without_a_reader_says_how_to_train_one(tmp_path):
    from ragtune.raft.reader import find_reader, reader_choice

    assert find_reader(tmp_path, "SmolLM2-135M-Instruct") is None
    assert reader_choice(tmp_path, "SmolLM2-135M-Instruct", "auto", None) == (None, "auto", None)
    with pytest.raises(ConfigError, match="ragtune raft reader"):
        reader_choice(tmp_path, "SmolLM2-135M-Instruct", "reader", None)


@pytest.mark.parametrize("reader_score, grounded_score, used", [(0.7, 0.6, True), (0.6, 0.6, True), (0.5, 0.6, False)])
def test_auto_uses_a_reader_only_where_it_scored_at_least_as_well(tmp_path, reader_score, grounded_score, used):
    from ragtune.generate.llamacpp import unavailable_reason
    from ragtune.raft.reader import reader_choice, reader_path

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    folder = reader_path(tmp_path, "SmolLM2-135M-Instruct")
    folder.mkdir(parents=True)
    (folder / "adapter.gguf").write_bytes(b"GGUF")
    held = {"n": 12, "grounded": {"right_and_cited": grounded_score}, "reader": {"right_and_cited": reader_score},
            "reader_better": reader_score >= grounded_score}
    (folder / "reader.json").write_text(json.dumps({"model": "SmolLM2-135M-Instruct", "held_out": held,
                                                    "trained_on": {"kb": {"questions": 80}}}))
    lora, prompt, note = reader_choice(tmp_path, "SmolLM2-135M-Instruct", "auto", None)
    assert (lora == str(folder / "adapter.gguf") and prompt == "reader") if used else (lora is None and prompt == "auto")
    assert f"{reader_score:.2f}" in note and f"{grounded_score:.2f}" in note
    assert reader_choice(tmp_path, "SmolLM2-135M-Instruct", "reader", None)[1] == "reader"  # asked for: always
    assert reader_choice(tmp_path, "SmolLM2-135M-Instruct", "grounded", None) == (None, "grounded", None)


@pytest.mark.slow
def test_raft_reader_trains_installs_and_ask_uses_it(tmp_path):
    pytest.importorskip("llama_cpp")
    from ragtune.generate.llamacpp import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    kb = kb_of_texts(tmp_path, {f"{t}.txt": town_text(t) for t in TOWNS})
    kb.close()
    mix = tmp_path / "mix.jsonl"
    mix.write_text("".join(json.dumps(hotpot_line(n, t)) + "\n" for n in range(4) for t in TOWNS))
    args = ("raft", "reader", tmp_path / "kb", "--model", "SmolLM2-135M-Instruct", "--mix", mix, "--minutes", "0.2",
            "--threads", "2", "--json")
    meta = json.loads(run_cli(*args).stdout)
    folder = tmp_path / "kb" / "readers" / "SmolLM2-135M-Instruct"
    assert meta["adapter"] == str(folder / "adapter.gguf") and (folder / "adapter.gguf").stat().st_size > 10_000
    assert meta["protocol"] == "reader" and meta["counts"]["train_examples"] >= 8
    assert json.loads((folder / "reader.json").read_text())["model"] == "SmolLM2-135M-Instruct"

    assert "held_out" not in meta  # a public set's held-out questions have no passages in this KB

    question = "Who is the mayor of Wendmere since 2029?"
    auto = run_cli("ask", tmp_path / "kb", question, "--model", "SmolLM2-135M-Instruct", "--json", "--threads", "2")
    assert json.loads(auto.stdout)["protocol"] == "rag"  # SmolLM2's profile: an unmeasured reader is not the default
    note = " ".join(auto.stderr.split())  # the terminal wraps the note
    assert "not using the reader" in note and "not measured" in note
    used = run_cli("ask", tmp_path / "kb", question, "--model", "SmolLM2-135M-Instruct", "--prompt", "reader",
                   "--json", "--threads", "2")
    assert json.loads(used.stdout)["protocol"] == "reader"
    assert "reading with the reader adapter" in " ".join(used.stderr.split())
    from ragtune.raft.reader import reader_choice

    # an explicit other prompt, or another adapter, is answered without the reader (what `ask` is given)
    assert reader_choice(tmp_path / "kb", "SmolLM2-135M-Instruct", "grounded", None) == (None, "grounded", None)
    assert reader_choice(tmp_path / "kb", "SmolLM2-135M-Instruct", "auto", "x.gguf") == ("x.gguf", "auto", None)

    # a second reader, also from questions the teacher writes over the KB: scored on the held-out
    # ones against the grounded prompt; it replaces the first, which is kept
    from contextlib import nullcontext

    from ragtune.raft.reader import ReaderOptions, train_reader

    register_teacher("pairs", lambda **_: PairTeacher())
    second = train_reader(ReaderOptions(kb=tmp_path / "kb", model="SmolLM2-135M-Instruct", mix=mix, synthesize=12,
                                        teacher="pairs", minutes=0.1, eval_share=0.1, seed=1, threads=2),
                          stage=lambda _text: nullcontext())
    assert second["trained_on"]["kb"]["questions"] == 12
    held = second["held_out"]
    assert held["n"] >= 1 and set(held) == {"n", "grounded", "reader", "reader_better"}
    assert 0 <= held["reader"]["right_and_cited"] <= held["reader"]["right"] <= 1
    assert (folder.parent / "SmolLM2-135M-Instruct.previous" / "adapter.gguf").is_file()
    assert json.loads((folder / "reader.json").read_text())["recipe"]["seed"] == 1


def test_the_teachers_questions_are_kept_for_the_next_build(tmp_path):
    """A new --p or --minutes must not ask the teacher again: its questions are kept, keyed by what made them."""
    from contextlib import nullcontext

    from ragtune.raft.reader import ReaderOptions, _synthesized

    calls = []

    class Counting(PairTeacher):
        def generate(self, messages, **options):
            calls.append(1)
            return super().generate(messages, **options)

    register_teacher("counting", lambda **_: Counting())
    kb_of_texts(tmp_path, {f"{t}.txt": town_text(t) for t in TOWNS}).close()
    options = ReaderOptions(kb=tmp_path / "kb", teacher="counting", synthesize=6)
    first, report = _synthesized(options, "SmolLM2-135M-Instruct", 6, lambda _text: nullcontext())
    asked = len(calls)
    again, report_again = _synthesized(options, "SmolLM2-135M-Instruct", 6, lambda _text: nullcontext())
    assert asked >= 3 and len(calls) == asked and report_again == report
    assert [(i.question, i.answer, [h.text for h in i.oracles], [h.chunk_id for h in i.distractors]) for i in again] == \
        [(i.question, i.answer, [h.text for h in i.oracles], [h.chunk_id for h in i.distractors]) for i in first]
    options.seed = 1  # other settings: asked again
    _synthesized(options, "SmolLM2-135M-Instruct", 6, lambda _text: nullcontext())
    assert len(calls) > asked
