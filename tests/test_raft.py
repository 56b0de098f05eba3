"""RAFT dataset builder: a toy knowledge base and a deterministic fake teacher registered through
`register_teacher`, the same path `ragtune raft build --teacher NAME` takes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ragtune.errors import ConfigError
from ragtune.generate.base import Generation
from ragtune.raft import make_teacher, register_teacher
from ragtune.raft.builder import BuildOptions, build_raft
from ragtune.raft.prompt import normalize_ws, quotes, raft_messages
from ragtune.raft.teacher import ANSWER_SYSTEM, CLOSED_BOOK_SYSTEM, QUESTIONS_SYSTEM

TESTS = Path(__file__).resolve().parent
DOCS = {
    "festival.txt": "The Zorblat festival is held in the town of Kremsville every March. Visitors eat smoked plums there.",
    "bridge.txt": "The Halvard bridge crosses the river Otter. The bridge was finished in 1921 and painted green.",
    "orchard.txt": "Quince orchards need well drained soil and cold winters. Growers in Kremsville prune them in February.",
    "harbour.txt": "The harbour of Selby Cove shelters forty fishing boats. Its lighthouse was first lit in 1864.",
    "mill.txt": "The old mill on the river Otter ground rye until 1950. Today the building is a bread museum.",
    "library.txt": "The Kremsville library keeps nine thousand maps. Its reading room opens at seven in the morning.",
    "school.txt": "The village school of Brenna teaches forty pupils. Lessons there start with a song every Monday.",
    "forest.txt": "The Darrow forest covers twelve square miles of oak. Red deer graze its clearings in autumn.",
    "station.txt": "The Brenna railway station opened in 1887. Trains to the coast leave from platform two hourly.",
    "market.txt": "The Saturday market in Selby Cove sells cheese from goats. Its oldest stall belongs to the Pryce family.",
}
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]")
_QUESTION = "What does the text say about {}?"


def _subject(sentence: str) -> str:
    return " ".join(sentence.split()[:4])


def _answer_of(sentence: str) -> str:
    return " ".join(sentence.rstrip(".!?").split()[-2:])


class FakeTeacher:
    """Deterministic: one question per sentence (plus a duplicate and a near duplicate), quoted answers.
    Sentences about Zorblat get an invented quote, also when re-asked (dropped); Halvard ones only on
    the first try (repaired); lighthouse answers are not in the chunk (unanswerable); the mill is known
    closed-book (dropped); the oak forest is answered without a quote (templated).
    RAFT_FAKE_KILL_AFTER=n SIGKILLs the process at call n + 1."""

    name = "fake-teacher"
    context_window = 4096

    def __init__(self):
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, messages, *, max_new_tokens=256, temperature=0.0, on_text=None):
        self.calls += 1
        if os.environ.get("RAFT_FAKE_KILL_AFTER") and self.calls > int(os.environ["RAFT_FAKE_KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
        system, user = messages[0]["content"], messages[1]["content"]
        if system == QUESTIONS_SYSTEM:
            chunk = user.split("Document:\n", 1)[1].split("\n\nWrite", 1)[0]
            subjects = [_subject(s) for s in _SENTENCE.findall(chunk)]
            lines = [_QUESTION.format(s) for s in subjects]
            lines += [_QUESTION.format(subjects[0]).replace("?", " ?"), f"So, what does the text say about {subjects[0]}?"]
            return Generation("\n".join(f"{n}. {line}" for n, line in enumerate(lines, 1)))
        if system == ANSWER_SYSTEM:
            user = next(m["content"] for m in reversed(messages) if m["role"] == "user" and "Context:" in m["content"])
            retry = messages[-1]["content"].startswith("These quotes")
            context = user.split("Context:\n", 1)[1].split("\n\nQuestion: ", 1)[0]
            subject = re.search(r"say about (.+?) ?\?", user).group(1)
            sentence = next(s.strip() for s in _SENTENCE.findall(context) if s.strip().startswith(subject))
            if "oak" in sentence:
                return Generation("twelve square miles")  # answers without quoting
            invent = "Zorblat" in sentence or ("Halvard" in sentence and not retry)
            quote = "The festival is held on the moon." if invent else sentence.replace(" ", "  \n", 1)
            answer = "purple elephants" if "lighthouse" in sentence else _answer_of(sentence)
            return Generation(f"We need {subject}. ##begin_quote##{quote}##end_quote## So that is it.\n<ANSWER>: {answer}")
        if system == CLOSED_BOOK_SYSTEM:
            if "mill" in user:
                return Generation(_answer_of(DOCS["mill.txt"].split(". ")[0]))
            return Generation("unknown")
        raise AssertionError(f"unexpected teacher prompt: {system}")


register_teacher("fake", lambda **_: FakeTeacher())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy KB (WordLlama: fast) and the SmolLM2 tokenizer saved as a local target-model folder."""
    from ragtune.config import KBConfig
    from ragtune.kb import KnowledgeBase
    from ragtune.raft.windows import load_target_tokenizer

    root = tmp_path_factory.mktemp("raft")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    with KnowledgeBase.init(root / "kb", KBConfig(embedder="WordLlama", threads=1)) as kb:
        kb.ingest([root / "docs"])
    load_target_tokenizer("SmolLM2-135M-Instruct").save_pretrained(root / "target")
    (root / "target" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return root, load_target_tokenizer(str(root / "target"))


def _build(toy, out, **options):
    root, tokenizer = toy
    settings = dict(teacher="fake", per_chunk=5, k=3, chunk_tokens=64, threads=1, eval_share=0.2,
                    target_model=str(root / "target"))
    settings.update(options)
    return build_raft(root / "kb", BuildOptions(out=out, **settings), tokenizer=tokenizer)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generated_build_filters_verifies_quotes_and_never_uses_the_oracle_as_distractor(toy, tmp_path):
    from ragtune.evaluate.dataset import read_eval_set
    from ragtune.finetune.formats import read_examples

    manifest = _build(toy, tmp_path / "out")
    counts, dropped = manifest["counts"], manifest["dropped"]
    # 2 sentences a chunk, plus a duplicate and a near duplicate of the first: both caught
    assert counts["questions_generated"] == 4 * len(DOCS)
    assert dropped["duplicate"] == dropped["near_duplicate"] == len(DOCS)
    assert dropped["invented_quote"] == 1 and counts["quotes_invented"] == 3 and counts["repaired"] == 1
    assert dropped["unanswerable"] == 1 and dropped["closed_book"] == 1 and counts["templated"] == 1
    assert manifest["dropped_samples"]["invented_quote"] == [_QUESTION.format("The Zorblat festival is")]
    examples = _read(tmp_path / "out" / "examples.jsonl")
    assert len(examples) == 2 * len(DOCS) - 3 == counts["train_examples"] + counts["eval_examples"]
    assert counts["eval_examples"] > 0 and counts["hard_distractors"] > 0
    assert manifest["p"] == 0.8 and manifest["k"] == 3 and manifest["distractors"] == "hard" and manifest["seed"] == 0
    assert manifest["teacher"] == "fake-teacher"

    chats = _read(tmp_path / "out" / "chat.jsonl")
    train = [e for e in examples if e["split"] == "train"]
    assert len(chats) == len(train)
    records = [json.loads(line) for line in (tmp_path / "out" / ".raft-build" / "items.jsonl").read_text().splitlines()]
    full = {e["id"]: e for r in records for e in r["examples"]}
    for example, chat in zip(train, chats):
        detail = full[example["id"]]
        assert len(example["documents"]) == 4 and len(set(example["documents"])) == 4
        assert (example["oracle"]["key"] in example["documents"]) == example["oracle_present"]
        assert example["documents"].count(example["oracle"]["key"]) <= 1
        assistant = chat["messages"][2]["content"]
        assert quotes(assistant) and all(normalize_ws(q) in normalize_ws(detail["oracle_text"]) for q in quotes(assistant))
        assert assistant.endswith(f"<ANSWER>: {example['answer']}")
        assert "Zorblat" not in assistant and "moon" not in assistant
    for detail in full.values():  # distractors never repeat the oracle's text either
        others = detail["messages"][1]["content"].split("<DOCUMENT ")[1:]
        oracle_copies = sum(normalize_ws(detail["oracle_text"]) in normalize_ws(o) for o in others)
        assert oracle_copies == (1 if detail["oracle_present"] else 0)

    [oak] = [e for e in full.values() if "Darrow" in e["question"]]
    assert oak["cot"].endswith("##begin_quote##The Darrow forest covers twelve square miles of oak.##end_quote##\n"
                               "This states the answer directly, so the answer is twelve square miles.\n"
                               "<ANSWER>: twelve square miles")

    read = read_examples(tmp_path / "out" / "chat.jsonl")
    assert read.format == "chat" and not read.problems and len(read.examples) == len(chats)
    completion = read_examples(tmp_path / "out" / "completion.jsonl")
    assert completion.format == "prompt_completion" and [e.messages for e in completion.examples] == [c["messages"] for c in chats]
    evals, problems = read_eval_set(tmp_path / "out" / "eval.jsonl")
    assert not problems and len(evals) == counts["eval_examples"] and all(e.gold_doc_ids and e.context for e in evals)


def test_the_oracle_is_present_with_probability_p(toy, tmp_path):
    questions = tmp_path / "questions.jsonl"
    rows = []
    for i in range(300):
        name = sorted(DOCS)[i % len(DOCS)]
        sentence = _SENTENCE.findall(DOCS[name])[i % 2].strip()
        rows.append({"id": f"q{i}", "question": f"Question {i}: {_QUESTION.format(_subject(sentence))}",
                     "gold_doc_ids": [name], "answers": [_answer_of(sentence)]})
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = _build(toy, tmp_path / "p07", teacher=None, questions=questions, p=0.7, eval_share=0.0, batch=64)
    share = manifest["counts"]["oracle_present_share"]
    assert manifest["counts"]["examples"] == 300 and abs(share - 0.7) < 0.08, share  # sd 0.026
    examples = _read(tmp_path / "p07" / "examples.jsonl")
    chats = _read(tmp_path / "p07" / "chat.jsonl")
    for example, chat in zip(examples, chats):
        oracle = DOCS[Path(example["oracle"]["source"]).name]
        [quote] = quotes(chat["messages"][2]["content"])  # the template CoT quotes the answer's sentence
        assert normalize_ws(quote) in oracle and example["answer"] in quote
    for p, expected in ((1.0, 40), (0.0, 0)):
        manifest = _build(toy, tmp_path / f"p{p}", teacher=None, questions=questions, p=p, limit=40, eval_share=0.0,
                          distractors="random", k=2)
        assert manifest["counts"]["oracle_present"] == expected and manifest["counts"]["hard_distractors"] == 0


def _cli(toy, out, *extra, env=None):
    root, _ = toy
    runner = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_raft; "
              "from ragtune.raft.cli import raft_app; raft_app(sys.argv[1:], prog_name='ragtune raft')")
    args = ["build", root / "kb", "--out", out, "--teacher", "fake", "--per-chunk", "5", "--k", "3", "--chunk-tokens",
            "64", "--threads", "1", "--eval-share", "0.2", "--target-model", root / "target", "--batch", "3", "--json",
            *extra]
    return subprocess.run([sys.executable, "-c", runner, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.integration
def test_resume_after_sigkill_gives_the_same_dataset(toy, tmp_path):
    whole = _cli(toy, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = _cli(toy, tmp_path / "resumed", env={"RAFT_FAKE_KILL_AFTER": "20"})
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "resumed" / ".raft-build" / "state.json").read_text())
    assert 0 < state["items"] < len(DOCS)
    with open(tmp_path / "resumed" / ".raft-build" / "items.jsonl", "a") as part:
        part.write('{"item": 99, "torn')  # what a kill in the middle of a write leaves
    resumed = _cli(toy, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["counts"]["items"] == len(DOCS)
    for name in ("chat.jsonl", "completion.jsonl", "eval.jsonl", "examples.jsonl", "manifest.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    with pytest.raises(ConfigError, match=r"other settings.*differs in: seed"):
        _build(toy, tmp_path / "resumed", seed=1, batch=3)


def test_documents_are_reassembled_from_overlapping_chunks_and_cut_by_target_tokens(toy, tmp_path):
    from ragtune.config import KBConfig
    from ragtune.kb import KnowledgeBase
    from ragtune.raft.windows import load_windows

    _, tokenizer = toy
    paragraphs = [" ".join(f"Sentence {p}.{i} tells of {word} number {i * p}." for i in range(12))
                  for p, word in enumerate(["rivers", "bridges", "mills", "orchards"])]
    text = "\n\n".join(paragraphs)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "long.txt").write_text(text)
    with KnowledgeBase.init(tmp_path / "kb", KBConfig(embedder="WordLlama", chunk_size=48, chunk_overlap=8)) as kb:
        kb.ingest([tmp_path / "docs"])
        assert kb.stats()["chunks"] > 4  # overlapping embedder-token chunks
        windows = load_windows(kb.store, tokenizer, 40)
    assert normalize_ws(" ".join(w.text for w in windows)) == normalize_ws(text)
    assert all(len(tokenizer(w.text, add_special_tokens=False)["input_ids"]) <= 40 for w in windows)
    assert all(text[w.start:w.end] == w.text for w in windows)  # offsets are the document's own


def test_too_few_chunks_and_bad_settings_are_clear_errors(toy, tmp_path):
    with pytest.raises(ConfigError, match=r"holds 10 document window\(s\).*--k 12.*lower --k"):
        _build(toy, tmp_path / "a", k=12)
    with pytest.raises(ConfigError, match="--p 1.5 is invalid; give the probability"):
        _build(toy, tmp_path / "b", p=1.5)
    with pytest.raises(ConfigError, match="needs a teacher"):
        _build(toy, tmp_path / "c", teacher=None)
    with pytest.raises(ConfigError, match="--distractors 'near' is invalid"):
        _build(toy, tmp_path / "d", distractors="near")


def test_questions_file_reports_bad_lines_and_builds_the_rest(toy, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join([
        json.dumps({"id": "a", "question": "Where is the Zorblat festival held?", "gold_doc_ids": ["festival.txt"],
                    "answers": ["Kremsville"]}),
        '{"question": "broken json", ',
        json.dumps({"id": "b", "question": "Who owns the oldest stall?", "gold_doc_ids": ["nowhere.txt"], "answers": ["x"]}),
        json.dumps({"id": "c", "question": "How many maps?", "answers": ["nine thousand"]}),
        json.dumps({"id": "d", "question": "When does the reading room open?", "answers": ["seven in the morning"],
                    "context": "Its reading room opens at seven in the morning."}),
        json.dumps({"id": "e", "question": "What do the deer graze?", "gold_doc_ids": ["forest"]}),
    ]) + "\n")
    manifest = _build(toy, tmp_path / "out", teacher=None, questions=questions, eval_share=0.0, k=2)
    problems = {(p["line"], p["field"]) for p in manifest["problems"]}
    assert problems == {(2, "json"), (3, "gold_doc_ids"), (4, "gold_doc_ids"), (6, "answers")}
    assert all(p["fix"] for p in manifest["problems"])
    examples = _read(tmp_path / "out" / "examples.jsonl")
    assert [e["id"] for e in examples] == ["a", "d"]
    assert examples[1]["oracle"]["source"].endswith("library.txt")  # the passage was found in its window


def test_a_multi_hop_question_has_every_gold_document_as_oracle(toy, tmp_path):
    """HotpotQA's setting: two supporting documents, both shown together (or both left out, replaced by
    distractors so every example shows k + 2 documents), and the chain of thought quotes each of them."""
    questions = tmp_path / "q.jsonl"
    rows = [{"id": f"m{i}", "question": "In which town does the festival with smoked plums take place, "
             "where growers prune quince in February?", "gold_doc_ids": ["orchard.txt", "festival.txt"],
             "answers": ["Kremsville"]} for i in range(12)]
    rows.append({"id": "same-doc-twice", "question": "When did the mill stop grinding rye?",
                 "gold_doc_ids": ["mill.txt", "mill"], "answers": ["1950"]})
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = _build(toy, tmp_path / "out", teacher=None, questions=questions, eval_share=0.0, k=2, p=0.5)
    examples = {e["id"]: e for e in _read(tmp_path / "out" / "examples.jsonl")}
    chats = [json.loads(line) for line in (tmp_path / "out" / "chat.jsonl").read_text().splitlines()]
    assert manifest["counts"]["train_examples"] == 13
    assert 0 < sum(examples[f"m{i}"]["oracle_present"] for i in range(12)) < 12  # p = 0.5 over 12 draws
    for i in range(12):
        example = examples[f"m{i}"]
        keys = [o["key"] for o in example["oracles"]]
        assert [Path(k.split("#")[0]).name for k in keys] == ["festival.txt", "orchard.txt"]  # the answer's first
        assert len(example["documents"]) == 4 and len(set(example["documents"])) == 4
        shown = [k in example["documents"] for k in keys]
        assert shown == [example["oracle_present"]] * 2
        reply = chats[i]["messages"][-1]["content"]
        assert [Path(k.split("#")[0]).name for k in keys] and len(quotes(reply)) == 2
        assert "Growers in Kremsville prune them in February" in quotes(reply)[0]  # the bridge, then the answer
        assert "held in the town of Kremsville" in quotes(reply)[1]
    assert len(examples["same-doc-twice"]["oracles"]) == 1  # one document named twice is one oracle
    assert len(examples["same-doc-twice"]["documents"]) == 3


def test_inference_wraps_documents_exactly_as_training_and_verifies_quotes(toy):
    from ragtune.answer.prompt import build_prompt
    from ragtune.kb import KnowledgeBase
    from ragtune.answer.pipeline import ask
    from ragtune.raft.prompt import raft_templates

    root, _ = toy
    with KnowledgeBase.open(root / "kb", readonly=True, threads=1) as kb:
        hits = kb.search("When was the Halvard bridge finished?", 3)
        fake = FakeTeacher()
        fake.generate = lambda messages, **_: Generation(
            "The bridge: ##begin_quote##The bridge was finished  in 1921##end_quote## and "
            "##begin_quote##It was built of gold.##end_quote## ##begin_quote## and ##end_quote##\n<ANSWER>: 1921")
        prompt = build_prompt("When was the Halvard bridge finished?", hits, fake, templates=raft_templates())
        assert prompt.messages == raft_messages("When was the Halvard bridge finished?", hits)
        result = ask(kb, "When was the Halvard bridge finished?", fake, k=3, prompt="raft", kb_lock=threading.Lock())
    assert result.bare == "1921" and result.protocol == "raft" and not result.rejected
    sources = result.prompt.sources
    bridge = next(n for n, h in enumerate(sources, 1) if h.source.endswith("bridge.txt"))
    assert [(q["text"], q["n"], q["doc_id"]) for q in result.quotes] == [
        ("The bridge was finished  in 1921", bridge, sources[bridge - 1].doc_id)]
    assert result.answer == f"1921 [{bridge}]"  # the citation is the verified quote's source
    assert result.invented == ["It was built of gold.", "and"]  # a one-word "quote" is no evidence


def test_quote_review_rejects_parroted_markers_and_accepts_whitespace_changes():
    from ragtune.raft.judge import copies_example, review, supported
    from ragtune.raft.prompt import final_answer, with_final_answer

    oracle = "The Halvard bridge crosses the river Otter.\nIt was finished in 1921 and is painted green."
    parroted = "Copy sentences between ##begin_quote## and ##end_quote##.\n<ANSWER>: green"
    assert review(parroted, oracle).status == "invented_quote"
    good = "It says ##begin_quote##river Otter. It  was finished##end_quote##.\n<ANSWER>: 1921\nmore text"
    assert review(good, oracle).status == "ok" and final_answer(good) == "1921"
    assert review("##begin_quote##It was finished in 1921\n<ANSWER>: 1921", oracle).status == "invented_quote"
    assert review("It was finished in 1921.", oracle).status == "no_quote"
    assert copies_example("##begin_quote##It was finished in 1921##end_quote## so Robert Stevenson built it", oracle)
    assert not copies_example("##begin_quote##It was finished in 1921##end_quote##\n<ANSWER>: 1921", oracle)
    assert with_final_answer(good, "in 1921") == "It says ##begin_quote##river Otter. It  was finished##end_quote##.\n<ANSWER>: in 1921"
    assert supported("1921", oracle) and supported("painted green", oracle) and supported("yes", oracle)
    assert not supported("purple elephants", oracle) and not supported("unknown", oracle)


def test_teacher_registry_templates_and_help(tmp_path):
    from typer.testing import CliRunner

    from ragtune.raft.cli import raft_app
    from ragtune.raft.teacher import TeacherTemplates, parse_questions

    assert isinstance(make_teacher("fake"), FakeTeacher) and make_teacher(None) is None
    with pytest.raises(ConfigError, match=r"--teacher 'nonesuch' is not a registered teacher \(fake.*SmolLM2"):
        make_teacher("nonesuch")
    bad = tmp_path / "t.txt"
    bad.write_text("Write {n} questions.")
    with pytest.raises(ConfigError, match=r"--template .*lacks \{chunk\}"):
        TeacherTemplates.from_file(bad)
    good = tmp_path / "t.yaml"
    good.write_text("questions: 'Chunk: {chunk}. Give {n} questions about {{it}}.'\n")
    assert TeacherTemplates.from_file(good).questions.startswith("Chunk: {chunk}")
    assert parse_questions("1. Who built it then?\n- Who built it then?\nQ3: What is the colour there?\nok", 5) == [
        "Who built it then?", "What is the colour there?"]
    help_text = CliRunner().invoke(raft_app, ["build", "--help"], env={"COLUMNS": "300"}).output
    assert "probability that the oracle document is present" in " ".join(help_text.split())


def test_raft_recipe_loads_and_trains_on_the_assistant_turn_only():
    from ragtune.finetune.recipe import load_recipe

    recipe = load_recipe(TESTS.parent / "recipes" / "smollm2-raft.yaml")
    assert recipe.method == "lora" and recipe.model == "SmolLM2-135M-Instruct"
    assert recipe.data.format == "chat" and recipe.data.max_length >= 896 and recipe.data.train.is_file()


@pytest.mark.slow
def test_real_packaged_teacher_builds_and_every_kept_quote_is_verified(toy, tmp_path):
    from ragtune.generate.llamacpp import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    manifest = _build(toy, tmp_path / "real", teacher="SmolLM2-135M-Instruct", per_chunk=2, limit=1, eval_share=0.0)
    counts, dropped = manifest["counts"], manifest["dropped"]
    assert counts["items"] == 1 and manifest["teacher"] == "SmolLM2-135M-Instruct"
    assert counts["examples"] + sum(n for reason, n in dropped.items() if reason != "no_question") == \
        counts["questions_generated"]
    for record in _read(tmp_path / "real" / ".raft-build" / "items.jsonl"):
        for example in record["examples"]:
            found = quotes(example["cot"])
            assert found and all(normalize_ws(q) in normalize_ws(example["oracle_text"]) for q in found)
