"""`ragtune data prepare`: cleaning, deduplication, balancing, stratified splits and the manifest."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter

import pytest

from conftest import run_cli
from ragtune.errors import ConfigError
from ragtune.finetune.formats import read_examples
from ragtune.finetune.prepare import clean_text, parse_split, prepare


def write_csv(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *rows])
    return str(path)


def write_chat(path, pairs) -> str:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return str(path)


def labelled(counts: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"review {label} number {i}: {'lorem ipsum ' * (i % 4)}{label * 3} {i * 7919}", label)
            for label, n in counts.items() for i in range(n)]


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_clean_text_strips_markup_and_control_characters_but_keeps_code():
    assert clean_text("<p>Hello&nbsp;&amp; <b>bold</b>\x07 world</p><p>Next</p>") == "Hello & bold world\n\nNext"
    assert clean_text("a  \t b   \n\n\n\n  indented line   ") == "a b\n\n  indented line"
    code = "Use `List<String>` and:\n```html\n<p>keep   me</p>\n```"
    assert clean_text(code) == code
    assert clean_text("if a <b and c> d: &copy=1") == "if a <b and c> d: &copy=1"  # not tags, not an entity
    assert clean_text("<script>alert(1)</script>Text<!-- note -->") == "Text"


def test_prepare_chat_cleans_dedups_splits_and_writes_a_manifest(tmp_path):
    pairs = [(f"Question number {i} about topic {i * 31}?", f"Answer {i}: <b>see</b> section {i}.") for i in range(40)]
    pairs += [pairs[0], (pairs[1][0] + "!", pairs[1][1]), ("<br>", "only markup")]  # exact, near, empty after cleaning
    path = write_chat(tmp_path / "raw.jsonl", pairs)
    result = prepare(path, to="chat", dedup=True, seed=3)
    out = tmp_path / "raw-prepared"
    assert result.out_dir == out and sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["valid"], counts["exact_duplicates_removed"], counts["near_duplicates_removed"]) == (43, 1, 1)
    assert counts["empty_after_cleaning"] == 1 and counts["cleaned"] == 43  # 40 <b> answers, 2 copies, 1 <br>
    assert (counts["train"], counts["validation"], counts["test"]) == (32, 4, 4)
    assert manifest["source"]["sha256"] == hashlib.sha256((tmp_path / "raw.jsonl").read_bytes()).hexdigest()
    assert (manifest["format_in"], manifest["format_out"], manifest["seed"]) == ("chat", "chat", 3)
    assert manifest["split"] == {"train": 0.8, "validation": 0.1, "test": 0.1} and manifest["labels"] is None
    assert manifest["ragtune_version"] and manifest["created"].endswith("+00:00")
    emptied = [p for p in manifest["problems"] if p["field"] == "messages[0].content"]
    assert [p["line"] for p in emptied] == [43]
    written = [rec for name in ("train", "validation", "test") for rec in lines(out / f"{name}.jsonl")]
    assert len({json.dumps(r) for r in written}) == 40
    assert all("<b>" not in r["messages"][1]["content"] for r in written)
    assert read_examples(out / "train.jsonl").format == "chat"  # the trainer reads what prepare writes


def test_stratified_split_keeps_label_ratios(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", labelled({"pos": 60, "neg": 30, "neutral": 10}))
    result = prepare(path, to="classify", seed=1)
    after = result.manifest["labels"]["after"]
    assert after["train"] == {"pos": 48, "neg": 24, "neutral": 8}
    assert after["validation"] == after["test"] == {"pos": 6, "neg": 3, "neutral": 1}
    assert result.manifest["labels"]["before"] == {"pos": 60, "neg": 30, "neutral": 10}
    assert set(lines(result.files["test"])[0]) == {"text", "label"}
    again = prepare(path, to="classify", seed=1, out_dir=tmp_path / "again")
    assert (again.files["train"]).read_text() == result.files["train"].read_text()  # seeded


def test_balance_over_and_under_report_before_and_after(tmp_path):
    path = write_csv(tmp_path / "raw.csv", labelled({"pos": 40, "neg": 10}))
    over = prepare(path, to="chat", balance="over", split="0.8,0.2,0", out_dir=tmp_path / "over")
    assert over.manifest["balance"] == {"mode": "over", "train_before": {"pos": 32, "neg": 8},
                                        "train_after": {"pos": 32, "neg": 32}}
    assert over.manifest["labels"]["after"]["validation"] == {"pos": 8, "neg": 2}  # held-out data is not balanced
    train = lines(over.files["train"])
    assert Counter(r["messages"][1]["content"] for r in train) == {"pos": 32, "neg": 32}
    assert len({r["messages"][0]["content"] for r in train}) == 40  # every original kept, neg copied
    assert not (tmp_path / "over" / "test.jsonl").exists()
    under = prepare(path, to="classify", balance="under", split="0.8,0.2,0", out_dir=tmp_path / "under")
    assert under.manifest["balance"]["train_after"] == {"pos": 8, "neg": 8}
    assert under.manifest["counts"]["train"] == 16


def test_tiny_classes_are_kept_in_train_with_a_message(tmp_path):
    path = write_csv(tmp_path / "raw.csv", labelled({"pos": 20, "neg": 20, "rare": 1}))
    result = prepare(path, to="classify")
    assert result.manifest["labels"]["after"]["train"]["rare"] == 1
    assert any("'rare' have a single example left: kept in train" in w for w in result.manifest["warnings"])


def test_alpaca_output_skips_multi_turn_with_a_reason(tmp_path):
    path = tmp_path / "chat.jsonl"
    multi = {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c?"}, {"role": "assistant", "content": "d"}]}
    single = {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}
    path.write_text(json.dumps(single) + "\n" + json.dumps(multi) + "\n")
    result = prepare(path, to="alpaca", split=(1, 0, 0))
    assert lines(result.files["train"]) == [{"instruction": "Say hi", "input": "", "output": "hi"}]
    skipped = [p for p in result.problems if p.field == "example"]
    assert [p.line for p in skipped] == [2] and "--to chat" in skipped[0].fix
    assert result.manifest["counts"]["not_alpaca"] == 1


@pytest.mark.parametrize("split", ["0.8,0.1", "0.8,0.3,0.1", "0.9,-0.1,0.2", "a,b,c", "0,0.5,0.5"])
def test_bad_split_names_the_flag(split):
    with pytest.raises(ConfigError, match="--split .*three shares train,validation,test"):
        parse_split(split)


def test_bad_options_and_inputs(tmp_path):
    chat = write_chat(tmp_path / "c.jsonl", [("q?", "a")])
    with pytest.raises(ConfigError, match="--to classify needs classification input"):
        prepare(chat, to="classify")
    with pytest.raises(ConfigError, match="--balance needs labelled data"):
        prepare(chat, to="chat", balance="over")
    with pytest.raises(ConfigError, match="--to 'sft'"):
        prepare(chat, to="sft")


def test_cli_prepare(tmp_path):
    path = write_csv(tmp_path / "raw.csv", labelled({"pos": 30, "neg": 10}))
    result = run_cli("data", "prepare", path, "--to", "chat", "--balance", "over", "--seed", 5, "--out", tmp_path / "o")
    assert "train before" in result.stdout and "manifest.json" in result.stdout
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["seed"] == 5
    bad = run_cli("data", "prepare", path, "--to", "chat", "--split", "0.5,0.5,0.5", check=False)
    assert bad.returncode == ConfigError.exit_code and "--split '0.5,0.5,0.5'" in bad.stderr
