"""Fine-tuning data formats: read five common layouts into two canonical example types, write them back.

In: OpenAI chat JSONL, alpaca, ShareGPT and prompt/completion (all become `ChatExample`) and
classification JSONL/CSV/TSV (`ClassifyExample`). A `.json` file may hold one JSON array instead of
lines. Line numbers are the 1-based physical line where a record starts, so they match an editor
for JSONL, JSON arrays and CSV rows alike (CSV: the header is line 1).

Bad records never stop a read: each becomes a `Problem` naming file, line, field and the fix, and is
skipped (the first problem of a record is reported); the trainer and `data check` share this code,
and the parsing underneath is the record reader that knowledge-base ingest uses too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..ingest.record_reader import Problem, RecordReader

FORMATS = ("chat", "alpaca", "sharegpt", "prompt_completion", "classify")
OUTPUTS = ("chat", "alpaca", "classify")
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
_SHAPES = {
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
    "alpaca": '{"instruction": "...", "input": "", "output": "..."}',
    "sharegpt": '{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "classify": '{"text": "...", "label": "..."}',
}


@dataclass
class ChatExample:
    """A conversation in OpenAI roles; a message may carry OpenAI's per-message `weight` (0 or 1)."""

    messages: list[dict]
    weight: float = 1.0
    line: int = 0


@dataclass
class ClassifyExample:
    text: str
    label: str
    text_pair: str | None = None
    line: int = 0


@dataclass
class ReadResult:
    format: str  # one of FORMATS, or "unknown" when no record had recognisable keys
    examples: list
    problems: list[Problem]

    def __post_init__(self):
        self.problems.sort(key=lambda p: p.line)


class _Bad(Exception):
    """Raised by the record converters; `<shape>` in the fix becomes the format's example record."""

    def __init__(self, field: str, message: str, fix: str):
        super().__init__(message)
        self.field, self.message, self.fix = field, message, fix

    def problem(self, path: str, line: int, fmt: str) -> Problem:
        return Problem(path, line, self.field, self.message, self.fix.replace("<shape>", _SHAPES[fmt]))


def _missing(key: str, where: str | None = None) -> _Bad:
    return _Bad(where or key, f"missing key {key!r}", "add it; a record of this format looks like <shape>")


def _text(record: dict, key: str, *, where: str | None = None, required: bool = True) -> str:
    """A string field; OpenAI content parts (a list of text parts) are joined."""
    where, value = where or key, record.get(key)
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                       for p in value):
        value = "\n".join(p["text"] for p in value)
    if value is None:
        if required:
            raise _missing(key, where)
        return ""
    if not isinstance(value, str):
        raise _Bad(where, f"expected a string, got {_json_type(value)}", "write the text as a JSON string (or text parts)")
    if required and not value.strip():
        raise _Bad(where, "empty content", "write the text, or remove it")
    return value


def _finite(value) -> bool:
    """A JSON number that fits a float (a 400-digit integer overflows float() and math.isfinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _weight(value, where: str, *, per_message: bool = False) -> float:
    number = _finite(value)
    if per_message and not (number and value in (0, 1)):
        raise _Bad(where, f"message weight must be 0 or 1, got {value!r}", "use 0 to skip learning this reply, 1 to learn it")
    if not (number and value >= 0):
        raise _Bad(where, f"weight must be a number >= 0, got {value!r}", "use 1 for a normal example, 0 to skip it")
    return float(value)


def _messages(turns, key: str, role_key: str, content_key: str, roles: dict) -> list[dict]:
    if turns is None:
        raise _missing(key)
    if not isinstance(turns, list) or not turns:
        raise _Bad(key, "expected a non-empty list of messages", "write the conversation as <shape>")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _Bad(where, f"expected a message object, got {_json_type(turn)}", "write each message as in <shape>")
        rk, ck = (role_key, content_key) if role_key in turn or "role" not in turn else ("role", "content")
        role = turn.get(rk)
        if role is None:
            raise _Bad(f"{where}.{rk}", f"missing key {rk!r}", "give every message its role, as in <shape>")
        if not isinstance(role, str) or role not in roles:
            raise _Bad(f"{where}.{rk}", f"unknown role {role!r}", f"use one of {', '.join(roles)}")
        message = {"role": roles[role], "content": _text(turn, ck, where=f"{where}.{ck}")}
        if turn.get("weight") is not None:
            message["weight"] = int(_weight(turn["weight"], f"{where}.weight", per_message=True))
        messages.append(message)
    if not any(m["role"] == "assistant" for m in messages):
        raise _Bad(key, "no assistant turn", "add an assistant message: it is the text the model learns to write")
    return messages


def _chat_example(fmt: str, record: dict, line: int) -> ChatExample:
    """A chat, alpaca, ShareGPT or prompt/completion record as a ChatExample."""
    if fmt == "chat":
        messages = _messages(record.get("messages"), "messages", "role", "content", _CHAT_ROLES)
    elif fmt == "sharegpt":
        messages = _messages(record.get("conversations"), "conversations", "from", "value", _SHAREGPT_ROLES)
    else:
        ask, answer = ("instruction", "output") if fmt == "alpaca" else ("prompt", "completion")
        user, assistant = _text(record, ask), _text(record, answer)
        extra = _text(record, "input", required=False) if fmt == "alpaca" else ""
        messages = [{"role": "user", "content": f"{user}\n\n{extra}" if extra.strip() else user},
                    {"role": "assistant", "content": assistant}]
    if fmt != "chat" and messages[0]["role"] != "system":  # alpaca/ShareGPT exports may keep it beside the turns
        system = _text(record, "system", required=False)
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + messages
    return ChatExample(messages, 1.0 if record.get("weight") is None else _weight(record["weight"], "weight"), line)


def _label(value) -> str:
    if value is None:
        raise _missing("label")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise _Bad("label", f"expected one label (string or integer), got {_json_type(value)}",
                   "give each example a single label; multi-label data is not supported")
    if not value.strip():
        raise _Bad("label", "empty label", "write the class name, or remove the line")
    return value.strip()


def _classify(record: dict, line: int) -> ClassifyExample:
    first, second = ("text", "text_pair") if "text" in record or "sentence1" not in record else ("sentence1", "sentence2")
    text, pair = _text(record, first), _text(record, second, required=False)
    return ClassifyExample(text, _label(record.get("label")), pair if pair.strip() else None, line)


_DETECT = [("chat", {"messages"}), ("sharegpt", {"conversations"}), ("alpaca", {"instruction", "output"}),
           ("prompt_completion", {"prompt", "completion"}), ("classify", {"text", "label"}),
           ("classify", {"text", "text_pair"}), ("classify", {"sentence1", "sentence2"})]


def detect_format(record) -> str | None:
    """The format a record's keys announce (first match in _DETECT), or None."""
    keys = set(record) if isinstance(record, dict) else set()
    return next((fmt for fmt, needed in _DETECT if needed <= keys), None)


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _csv_examples(reader: RecordReader, records: list, problems: list[Problem]) -> list:
    """Classification examples from CSV/TSV rows: a header naming text[,text_pair],label is required."""
    if reader.header is None:
        return []
    header = [h.lower() for h in reader.header]
    first = "text" if "text" in header or "sentence1" not in header else "sentence1"
    missing = [column for column in (first, "label") if column not in header]
    problems += [Problem(reader.name, reader.header_line, column, f"no {column!r} column (header: {', '.join(header)})",
                         "name the columns text[,text_pair],label in the first row") for column in missing]
    if missing:
        return []
    examples = []
    for record in records:
        try:
            examples.append(_classify({k.lower(): v for k, v in record.value.items()}, record.line))
        except _Bad as exc:
            problems.append(exc.problem(reader.name, record.line, "classify"))
    return examples


def read_examples(path, format: str = "auto") -> ReadResult:
    """Read a fine-tuning file; the format comes from the first record with recognisable keys.

    The shared record reader does the parsing (see ragtune/ingest/record_reader.py): every bad line
    is a Problem here, undecodable lines are reported rather than guessed at, ragged CSV rows skipped.
    """
    if format not in ("auto", *FORMATS):
        raise ConfigError(f"--format {format!r} is not one of auto, {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    reader = RecordReader(path, guess_encoding=False, sniff_delimiter=False, ragged="skip")
    records = list(reader)  # fine-tuning files are small; raises LoaderError when unreadable
    name, problems = reader.name, reader.problems
    if reader.kind in ("csv", "tsv"):
        if format not in ("auto", "classify"):
            raise ConfigError(f"{name}: CSV/TSV files hold classification data (text[,text_pair],label); "
                              f"--format {format} needs JSONL")
        return ReadResult("classify", _csv_examples(reader, records, problems), problems)
    fmt = format if format != "auto" else next((f for r in records if (f := detect_format(r.value))), None)
    if fmt is None:
        if records:
            record = records[0].value
            keys = sorted(record) if isinstance(record, dict) else _json_type(record)
            problems.append(Problem(name, records[0].line, "keys", f"cannot tell the format from {keys}",
                                    "use one of " + "; ".join(f"{k}: {v}" for k, v in _SHAPES.items())))
        return ReadResult("unknown", [], problems)
    examples = []
    for record in records:
        if not isinstance(record.value, dict):
            problems.append(Problem(name, record.line, "json", f"expected a JSON object, got {_json_type(record.value)}",
                                    f"write one object per line, like {_SHAPES[fmt]}"))
            continue
        try:
            example = _classify(record.value, record.line) if fmt == "classify" else _chat_example(fmt, record.value, record.line)
        except _Bad as exc:
            problems.append(exc.problem(name, record.line, fmt))
            continue
        examples.append(example)
    return ReadResult(fmt, examples, problems)


def unfit_reason(example, to: str) -> tuple[str, str] | None:
    """(message, fix) when `example` cannot be written as `to`, else None."""
    if to == "classify" and isinstance(example, ChatExample):
        return "a conversation has no label", "--to classify needs classification input (text, label)"
    if to == "alpaca" and isinstance(example, ChatExample):
        roles = [m["role"] for m in example.messages if m["role"] != "system"]
        if roles != ["user", "assistant"]:
            return (f"{len(roles)} turns ({', '.join(roles)}) do not fit alpaca's one instruction -> one output",
                    "use --to chat to keep multi-turn conversations")
    return None


def to_record(example, to: str) -> dict:
    """The JSON object for one example in output format `to` (check `unfit_reason` first)."""
    if isinstance(example, ClassifyExample):
        if to == "classify":
            pair = {"text_pair": example.text_pair} if example.text_pair else {}
            return {"text": example.text, **pair, "label": example.label}
        if to == "alpaca":
            return {"instruction": example.text, "input": example.text_pair or "", "output": example.label}
        user = f"{example.text}\n\n{example.text_pair}" if example.text_pair else example.text
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": example.label}]}
    if to == "alpaca":
        system = [m["content"] for m in example.messages if m["role"] == "system"]
        user, assistant = (m["content"] for m in example.messages if m["role"] != "system")
        return {**({"system": "\n\n".join(system)} if system else {}), "instruction": user, "input": "", "output": assistant}
    return {"messages": example.messages, **({"weight": example.weight} if example.weight != 1.0 else {})}


def write_jsonl(path, examples, to: str, *, source: str | None = None) -> list[Problem]:
    """Write `examples` as `to` JSONL (atomically); those that do not fit are skipped and returned.

    The returned problems name `source` (the input file) and the example's line there.
    """
    if to not in OUTPUTS:
        raise ConfigError(f"--to {to!r} is not one of {', '.join(OUTPUTS)}")
    path = Path(path)
    problems, temporary = [], path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for example in examples:
            reason = unfit_reason(example, to)
            if reason:
                problems.append(Problem(source or str(path), example.line, "example", *reason, severity="warning"))
                continue
            handle.write(json.dumps(to_record(example, to), ensure_ascii=False) + "\n")
    os.replace(temporary, path)
    return problems
