"""`ragtune data check` and the readers behind it: every bad-input class is reported with the exact
line and field, good lines around it are still read, and the exit code says pass or fail."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from ragtune.errors import LoaderError
from ragtune.finetune.check import check_file
from ragtune.finetune.formats import ChatExample, ClassifyExample, read_examples, write_jsonl

GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris."}]}


def chat(user: str, assistant: str = "An answer.") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def write_lines(path, *lines) -> str:
    """Dicts become JSON lines; strings are written as they are (to plant broken lines)."""
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def only(report, field: str):
    found = [p for p in report.problems if p.field == field]
    assert len(found) == 1, report.problems
    return found[0]


def test_invalid_json_is_reported_on_its_line_and_the_rest_is_read(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", GOOD, '{"messages": [', chat("Second question?"))
    report = check_file(path)
    problem = only(report, "json")
    assert (problem.line, problem.severity) == (2, "error") and "invalid JSON" in problem.message
    assert str(problem).startswith(f"{path}:2: json: invalid JSON")
    assert report.examples == 2 and not report.passed


def test_missing_key_names_the_key(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", GOOD, chat("Another question?"), {"msgs": []})
    problem = only(check_file(path), "messages")
    assert problem.line == 3 and problem.message == "missing key 'messages'"
    assert '"messages": [' in problem.fix  # the fix shows what a record should look like


def test_missing_alpaca_output(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
                       {"instruction": "Add 3 and 3.", "input": ""})
    report = check_file(path)
    assert report.format == "alpaca"
    assert (only(report, "output").line, only(report, "output").message) == (2, "missing key 'output'")


def test_unknown_role(tmp_path):
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}
    path = write_lines(tmp_path / "d.jsonl", GOOD, GOOD | {"weight": 2}, bad)
    problem = only(check_file(path), "messages[1].role")
    assert problem.line == 3 and problem.message == "unknown role 'bot'" and "assistant" in problem.fix


def test_empty_content(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", chat("First?"), chat("Second?"), chat("   "))
    problem = only(check_file(path), "messages[0].content")
    assert (problem.line, problem.message) == (3, "empty content")


def test_no_assistant_turn(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", GOOD, {"messages": [{"role": "user", "content": "Anyone there?"}]})
    problem = only(check_file(path), "messages")
    assert (problem.line, problem.message) == (2, "no assistant turn")


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", GOOD, "", "   ", {"messages": "nope"})
    assert only(check_file(path), "messages").line == 4


def test_line_that_is_not_an_object_and_not_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n[1, 2]\n" + '{"messages": "caf\xe9"}'.encode("latin-1") + b"\n")
    report = check_file(path)
    assert (only(report, "json").line, only(report, "json").message) == (2, "expected a JSON object, got a list")
    assert only(report, "encoding").line == 3 and "iconv" in only(report, "encoding").fix


def test_bad_weight(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", GOOD, GOOD | {"weight": -1})
    assert only(check_file(path), "weight").line == 2


def test_too_long_after_the_chat_template(tmp_path):
    long_answer = "Paris is the capital and the largest city of France, on the river Seine. " * 3
    path = write_lines(tmp_path / "d.jsonl", chat("Short?", "Yes."), chat("Long?", long_answer), chat("Short again?", "Yes."))
    report = check_file(path, model="SmolLM2-135M-Instruct", max_length=40)
    problem = only(report, "messages")
    assert problem.line == 2 and problem.message.startswith(f"{report.max_tokens} tokens after SmolLM2-135M-Instruct")
    assert report.max_tokens > 40 and not report.passed
    assert check_file(path, model="SmolLM2-135M-Instruct", max_length=4096).passed


def test_exact_duplicates_warn_with_both_lines(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", GOOD, chat("Other?"), json.dumps(GOOD, indent=None, separators=(",", ":")))
    report = check_file(path)
    problem = only(report, "example")
    assert (problem.line, problem.message, problem.severity) == (3, "line 3 duplicates line 1", "warning")
    assert report.passed  # duplicates are warnings


def test_near_duplicates_warn_with_both_lines(tmp_path):
    question = "How do I reset the password of my account when the reset email never arrives in my inbox?"
    path = write_lines(tmp_path / "d.jsonl", chat(question, "Check the spam folder, then ask support."),
                       chat("What is the boiling point of water at sea level?", "100 degrees Celsius."),
                       chat(question.replace("password", "pasword"), "Check the spam folder, then ask support!"))
    problem = only(check_file(path), "example")
    assert problem.line == 3 and problem.message.startswith("line 3 is a near duplicate of line 1 (")
    assert not [p for p in check_file(path, near_threshold=0.99).problems]


def test_label_distribution_and_classification_warnings(tmp_path):
    rows = [{"text": f"great product number {i}", "label": "pos"} for i in range(22)]
    rows += [{"text": "awful, broke on day one", "label": "neg"}, {"text": "awful, broke on day one", "label": "pos"}]
    path = write_lines(tmp_path / "c.jsonl", *rows)
    report = check_file(path)
    assert report.format == "classify" and report.labels == {"pos": 23, "neg": 1}
    by_message = {p.message: p for p in report.problems}
    assert by_message["label 'neg' has a single example"].line == 23
    assert "line 24 duplicates line 23, but with label 'pos' instead of 'neg'" in by_message
    assert "labels are imbalanced 23:1 ('pos' 23, 'neg' 1)" in by_message
    assert report.passed


def test_csv_rows_missing_column_and_bad_rows(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('text,label\n"first, with a comma",a\n"a\nmultiline row",b\nonly one field\n,a\nfine,\nlast,b\n')
    report = check_file(path)
    assert [(e.line, e.label) for e in read_examples(path).examples] == [(2, "a"), (3, "b"), (8, "b")]
    assert [(p.line, p.field) for p in report.errors] == [(5, "row"), (6, "text"), (7, "label")]
    header = tmp_path / "h.csv"
    header.write_text("sentence,category\nhello,a\n")
    assert [(p.line, p.field) for p in check_file(header).errors] == [(1, "text"), (1, "label")]


def test_json_array_reports_the_line_each_element_starts_on(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[\n" + json.dumps(GOOD, indent=2) + ",\n" + json.dumps(chat(""), indent=2) + "\n]\n")
    report = check_file(path)
    assert report.examples == 1 and only(report, "messages[0].content").line == 2 + json.dumps(GOOD, indent=2).count("\n") + 1


def test_other_formats_are_detected_and_converted(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "Be kind."}
    result = read_examples(write_lines(tmp_path / "s.jsonl", sharegpt))
    assert result.format == "sharegpt" and [m["role"] for m in result.examples[0].messages] == ["system", "user", "assistant"]
    alpaca = read_examples(write_lines(tmp_path / "a.jsonl", {"instruction": "Translate.", "input": "chat", "output": "cat"}))
    assert alpaca.examples[0].messages == [{"role": "user", "content": "Translate.\n\nchat"}, {"role": "assistant", "content": "cat"}]
    pc = read_examples(write_lines(tmp_path / "p.jsonl", {"prompt": "2+2=", "completion": "4"}))
    assert pc.format == "prompt_completion" and pc.examples[0].messages[1]["content"] == "4"
    pairs = read_examples(write_lines(tmp_path / "n.jsonl", {"sentence1": "A man sleeps.", "sentence2": "A person rests.", "label": 1}))
    assert pairs.examples == [ClassifyExample("A man sleeps.", "1", "A person rests.", 1)]
    unknown = read_examples(write_lines(tmp_path / "u.jsonl", {"question": "?"}))
    assert unknown.format == "unknown" and unknown.problems[0].field == "keys"


def test_empty_binary_and_missing_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert [p.message for p in check_file(tmp_path / "e.jsonl").problems] == ["the file is empty"]
    (tmp_path / "b.jsonl").write_bytes(b"\x00\x01binary")
    assert "binary" in check_file(tmp_path / "b.jsonl").problems[0].message
    with pytest.raises(LoaderError, match="no such file"):
        check_file(tmp_path / "missing.jsonl")


def test_writers_convert_and_skip_what_does_not_fit(tmp_path):
    multi = ChatExample([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], line=7)
    single = ChatExample([{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "r"}], weight=2.0, line=8)
    problems = write_jsonl(tmp_path / "a.jsonl", [multi, single], "alpaca", source="in.jsonl")
    assert [(p.path, p.line) for p in problems] == [("in.jsonl", 7)] and "--to chat" in problems[0].fix
    assert [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()] == [
        {"system": "s", "instruction": "q", "input": "", "output": "r"}]
    write_jsonl(tmp_path / "c.jsonl", [single], "chat")
    assert json.loads((tmp_path / "c.jsonl").read_text())["weight"] == 2.0
    assert read_examples(tmp_path / "c.jsonl").examples[0].messages == single.messages


def test_cli_exit_codes_and_json(tmp_path):
    good = write_lines(tmp_path / "good.jsonl", GOOD, chat("Other?"))
    bad = write_lines(tmp_path / "bad.jsonl", GOOD, "{oops")
    passed = run_cli("data", "check", good, "--json")
    assert json.loads(passed.stdout)["passed"] is True
    failed = run_cli("data", "check", bad, check=False)
    assert failed.returncode == 1 and "invalid JSON" in failed.stdout and "failed" in failed.stdout
    missing = run_cli("data", "check", tmp_path / "nope.jsonl", check=False)
    assert missing.returncode == 1 and "nope.jsonl: no such file" in missing.stderr
