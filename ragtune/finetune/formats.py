"""Fine-tuning data formats: read five common layouts into two canonical example types, write them back.

In: OpenAI chat JSONL, alpaca, ShareGPT and prompt/completion (all become `ChatExample`) and
classification JSONL/CSV/TSV (`ClassifyExample`). A `.json` file may hold one JSON array instead of
lines. Line numbers are the 1-based physical line where a record starts, so they match an editor
for JSONL, JSON arrays and CSV rows alike (CSV: the header is line 1).

Bad records never stop a read: each becomes a `Problem` naming file, line, field and the fix, and is
skipped (the first problem of a record is reported); the trainer and `data check` share this code.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError, LoaderError

FORMATS = ("chat", "alpaca", "sharegpt", "prompt_completion", "classify")
OUTPUTS = ("chat", "alpaca", "classify")
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_SHAPES = {
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
    "alpaca": '{"instruction": "...", "input": "", "output": "..."}',
    "sharegpt": '{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "classify": '{"text": "...", "label": "..."}',
}
_WHITESPACE = re.compile(r"[ \t\n\r]*")


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
class Problem:
    """One thing wrong with one record (line 0: the whole file); `fix` tells the user what to do."""

    path: str
    line: int
    field: str
    message: str
    fix: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field}: {self.message} ({self.fix})"

    def as_dict(self) -> dict:
        return asdict(self)


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


def _weight(value, where: str, *, per_message: bool = False) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
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


def _decode(path: str, data: bytes, problems: list[Problem]) -> tuple[str, set[int]]:
    """The text, and the lines that are not UTF-8 (each reported; their records are skipped)."""
    try:
        return data.decode("utf-8-sig"), set()
    except UnicodeDecodeError:
        pass
    bad = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.add(number)
            problems.append(Problem(path, number, "encoding", f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})",
                                    "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"))
    return data.decode("utf-8-sig", errors="replace"), bad


def _json_lines(path: str, text: str, bad: set[int], problems: list[Problem]) -> list[tuple[int, object]]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if number in bad or not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except (ValueError, RecursionError) as exc:
            why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            problems.append(Problem(path, number, "json", f"invalid JSON: {why}", "make the line one complete JSON object; "
                                    "look for a missing quote or brace, or a trailing comma"))
    return records


def _json_array(path: str, text: str, bad: set[int], problems: list[Problem]) -> list[tuple[int, object]]:
    """Elements of a top-level JSON array with the line each starts on.

    Hand-written around `raw_decode` because `json.load` gives no element positions; a syntax error
    ends the read there (nothing after it can be located), keeping the elements before it.
    """
    decoder, records = json.JSONDecoder(), []
    pos, line, counted = text.index("[") + 1, 1, 0
    while True:
        pos = _WHITESPACE.match(text, pos).end()
        if pos < len(text) and text[pos] == "]":
            return records
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            error = isinstance(exc, json.JSONDecodeError)
            problems.append(Problem(path, exc.lineno if error else line, "json", "invalid JSON: " + (
                f"{exc.msg} at column {exc.colno}" if error else "nested too deeply"),
                "fix the syntax there; the rest of the array cannot be read past it"))
            return records
        if not bad & set(range(line, line + text.count("\n", pos, end) + 1)):
            records.append((line, value))
        pos = _WHITESPACE.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            where = line + text.count("\n", counted, min(pos, len(text)))
            problems.append(Problem(path, where, "json", "expected ',' or ']' after an array element",
                                    "separate elements with commas and close the array with ]"))
            return records


def _csv_examples(path: str, text: str, bad: set[int], delimiter: str, problems: list[Problem]) -> list:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
    first = "text" if "text" in header or "sentence1" not in header else "sentence1"
    missing = [column for column in (first, "label") if column not in header]
    problems += [Problem(path, 1, column, f"no {column!r} column (header: {', '.join(header)})",
                         "name the columns text[,text_pair],label in the first row") for column in missing]
    if missing:
        return []
    examples, previous = [], reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return examples
        except csv.Error as exc:
            problems.append(Problem(path, reader.line_num, "csv", str(exc), "fix the quoting of this row"))
            previous = reader.line_num
            continue
        start, previous = previous + 1, reader.line_num
        if not any(cell.strip() for cell in row) or bad & set(range(start, previous + 1)):
            continue
        if len(row) != len(header):
            problems.append(Problem(path, start, "row", f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}",
                                    f'quote fields that contain {delimiter!r} or line breaks: "a{delimiter} b"'))
            continue
        try:
            examples.append(_classify(dict(zip(header, row)), start))
        except _Bad as exc:
            problems.append(exc.problem(path, start, "classify"))


def read_examples(path, format: str = "auto") -> ReadResult:
    """Read a fine-tuning file; the format comes from the first record with recognisable keys."""
    if format not in ("auto", *FORMATS):
        raise ConfigError(f"--format {format!r} is not one of auto, {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    name, problems = str(path), []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LoaderError(name, "no such file; check the path") from None
    except OSError as exc:
        raise LoaderError(name, f"cannot read ({exc.strerror or exc}); give a readable JSONL, JSON or CSV file") from None
    if not data.strip():
        return ReadResult("unknown", [], [Problem(name, 0, "file", "the file is empty", "add one example per line")])
    if b"\x00" in data[:8192]:
        return ReadResult("unknown", [], [Problem(name, 0, "file", "binary file (NUL bytes), not text",
                                                  "give a UTF-8 JSONL, JSON or CSV file (re-save UTF-16 as UTF-8)")])
    text, bad = _decode(name, data, problems)
    delimiter = _CSV_DELIMITERS.get(path.suffix.lower())
    if delimiter:
        if format not in ("auto", "classify"):
            raise ConfigError(f"{name}: CSV/TSV files hold classification data (text[,text_pair],label); "
                              f"--format {format} needs JSONL")
        return ReadResult("classify", _csv_examples(name, text, bad, delimiter, problems), problems)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        records = _json_array(name, text, bad, problems)
    else:
        records = _json_lines(name, text, bad, problems)
    fmt = format if format != "auto" else next((f for _, r in records if (f := detect_format(r))), None)
    if fmt is None:
        if records:
            line, record = records[0]
            keys = sorted(record) if isinstance(record, dict) else _json_type(record)
            problems.append(Problem(name, line, "keys", f"cannot tell the format from {keys}",
                                    "use one of " + "; ".join(f"{k}: {v}" for k, v in _SHAPES.items())))
        return ReadResult("unknown", [], problems)
    examples = []
    for line, record in records:
        if not isinstance(record, dict):
            problems.append(Problem(name, line, "json", f"expected a JSON object, got {_json_type(record)}",
                                    f"write one object per line, like {_SHAPES[fmt]}"))
            continue
        try:
            examples.append(_classify(record, line) if fmt == "classify" else _chat_example(fmt, record, line))
        except _Bad as exc:
            problems.append(exc.problem(name, line, fmt))
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
