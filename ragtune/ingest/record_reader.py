"""One hardened reader for record files (JSONL, JSON, CSV/TSV), shared by knowledge-base ingest and
fine-tuning data so both treat hostile input alike.

It yields `Record(line, value, index)` for each good record and reports each bad one as a `Problem`
(file, 1-based physical line where the record starts, field, message, fix); the rest of the file
goes on. Line 0 means the whole file. Callers decide what problems mean: ingest warns, `data check`
fails. No input bytes raise: invalid JSON, nesting over MAX_DEPTH (callers recurse into values),
lone surrogate escapes (they cannot be encoded to UTF-8 later), huge integers, csv errors,
undecodable lines, records over MAX_RECORD_CHARS and MemoryError are per-record problems; anything
else becomes a line-0 "reader" problem (a bug; the fuzz test checks for it). A missing or unreadable
file raises LoaderError, as loaders do. JSONL and CSV are streamed (ingest reads files of hundreds
of MB); a .json file is one JSON value and is read whole (bounded by ingest's max_file_mb).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain, islice
from pathlib import Path

from ..errors import LoaderError
from .documents import READ_BLOCK_BYTES, NotText, sniff_encoding

log = logging.getLogger(__name__)

MAX_RECORD_CHARS = 16 * 2**20  # one JSONL line or CSV field; bounds memory when a quote never closes
MAX_DEPTH = 200  # JSON nesting; deeper values would make json.dumps/repr in callers hit the recursion limit
READ_BLOCK_CHARS = 1 << 20
SNIFF_CHARS = 8192
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
EMPTY = "the file is empty"
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_CR = re.compile("(?<=\r)(?!\n)")
_JSON_FIX = "make the record one complete JSON value; look for a missing quote or brace, or a trailing comma"


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
class Record:
    """A good record: the line it starts on, its value (JSON value, or column -> cell for CSV) and its
    position among the file's records (None for the single value of a .json document)."""

    line: int
    value: object
    index: int | None


SKIPPED = object()  # what a check returns for a record it has reported


class RecordReader:
    """Iterate over a record file's good records; problems go to `on_problem` or `self.problems`.

    `kind` is jsonl, json, csv or tsv (default: from the suffix, JSONL otherwise). `guess_encoding`:
    decode a file whose start is not UTF-8 with charset-normalizer's guess (ingest) instead of
    reporting each bad line (fine-tuning). `sniff_delimiter`: pick a .csv delimiter among , ; tab |.
    `ragged`: "keep" rows whose field count differs from the header (a warning; missing cells
    absent, extra ones as extra_N) or "skip" them (an error).
    """

    def __init__(self, path, kind: str | None = None, *, guess_encoding: bool = False, sniff_delimiter: bool = False,
                 ragged: str = "skip", on_problem: Callable[[Problem], None] | None = None,
                 max_record_chars: int = MAX_RECORD_CHARS):
        self.path = Path(path)
        self.name = str(self.path)
        self.kind = kind or KINDS.get(self.path.suffix.lower(), "jsonl")
        self.guess_encoding, self.sniff_delimiter, self.ragged = guess_encoding, sniff_delimiter, ragged
        self.max_record_chars = max_record_chars
        self.problems: list[Problem] = []
        self._sink = on_problem or self.problems.append
        self.failure: Problem | None = None  # the first whole-file error: nothing could be read
        self.errors = 0
        self.header: list[str] | None = None  # CSV column names, from the row at header_line
        self.header_line, self.delimiter = 0, "\t" if self.kind == "tsv" else ","
        self._bad: set[int] = set()  # lines reported as undecodable or too long: their records are skipped
        self._seen_text = False

    def report(self, line: int, field: str, message: str, fix: str, severity: str = "error") -> None:
        problem = Problem(self.name, line, field, message, fix, severity)
        if severity == "error":
            self.errors += 1
            if line == 0 and self.failure is None:
                self.failure = problem
        self._sink(problem)

    def __iter__(self) -> Iterator[Record]:
        handle = self._open()
        if handle is None:
            return
        try:
            with handle:
                if self.kind == "jsonl":
                    yield from self._json_lines(self._lines(handle, self.max_record_chars))
                else:
                    yield from (self._json if self.kind == "json" else self._csv)(handle)
        except OSError as exc:
            raise LoaderError(self.name, f"read failed ({exc.strerror or exc}); check the disk and retry") from None
        except Exception as exc:  # noqa: BLE001 - the promise is that no input bytes raise
            log.exception("record reader failed on %s", self.name)
            self.report(0, "reader", f"unexpected {type(exc).__name__} while reading: {exc}",
                        "report this as a ragtune bug with the file attached; the records before it were read")
            return
        if not self._seen_text and self.failure is None:
            self.report(0, "file", EMPTY, "add records: one JSON object per line, or a CSV header and rows")

    # -- bytes to lines ----------------------------------------------------------------------
    def _open(self):
        """A text handle in the sniffed encoding, or None after reporting why the file is not text."""
        try:
            with open(self.path, "rb") as raw:
                sample = raw.read(READ_BLOCK_BYTES)
            encoding, note = sniff_encoding(sample, guess_legacy=self.guess_encoding)
            # surrogateescape keeps undecodable UTF-8 bytes visible so each bad line can be reported.
            errors = "surrogateescape" if encoding == "utf-8-sig" else "replace"
            handle = open(self.path, encoding=encoding, errors=errors, newline="")
        except FileNotFoundError:
            raise LoaderError(self.name, "no such file; check the path") from None
        except OSError as exc:
            raise LoaderError(self.name, f"cannot read ({exc.strerror or exc}); give a readable file") from None
        except NotText as exc:
            self.report(0, "file", exc.reason, exc.fix)
            return None
        if note:
            self.report(0, "encoding", note, "re-save the file as UTF-8 to be sure", "warning")
        return handle

    def _lines(self, handle, cap: int | None) -> Iterator[tuple[int, str]]:
        """Physical lines with their "\\n" (split on "\\n" only, like editors' line numbers).

        A line with undecodable bytes or over `cap` characters is reported here and comes out empty
        (its number in self._bad), so line numbers stay right and the record around it is skipped.
        Memory stays bounded by `cap`: the rest of an over-long line is discarded as it is read.
        """
        number, pending, size, overlong = 0, [], 0, False
        while block := handle.read(READ_BLOCK_CHARS):
            if not self._seen_text and block.strip():
                self._seen_text = True
            parts = block.split("\n")
            if len(parts) == 1:
                size += len(block)
                overlong = overlong or (cap is not None and size > cap)
                pending = [] if overlong else pending + [block]
                continue
            escaped = _ESCAPED_BYTE.search(block) is not None
            for i, part in enumerate(parts[:-1]):
                number += 1
                if i == 0:  # the end of a line begun in earlier blocks
                    size += len(part)
                    overlong = overlong or (cap is not None and size > cap)
                    part, pending = "".join(pending) + part, []
                yield number, self._checked(number, part + "\n", escaped or i == 0, overlong, size)
                overlong, size = False, 0
            pending, size = [parts[-1]], len(parts[-1])
            overlong = cap is not None and size > cap
        last = "".join(pending)
        if overlong or last:
            yield number + 1, self._checked(number + 1, last, True, overlong, size)

    def _checked(self, number: int, line: str, escaped: bool, overlong: bool, size: int) -> str:
        bad = _ESCAPED_BYTE.search(line) if escaped and not overlong else None
        if not overlong and bad is None:
            return line
        self._bad.add(number)
        if overlong:
            self.report(number, "record", f"line is over {self.max_record_chars:,} characters ({size:,} or more)",
                        "split the record; one record this large is almost certainly a broken file")
        else:
            self.report(number, "encoding", f"not UTF-8 (byte {ord(bad.group()) - 0xDC00:#04x} at column "
                        f"{bad.start() + 1})", "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8")
        return "\n" if line.endswith("\n") else ""

    def _touches_bad(self, first: int, last: int) -> bool:
        """Whether a record on lines first..last includes a line already reported as bad."""
        return bool(self._bad) and any(n in self._bad for n in range(first, last + 1))

    # -- JSON ------------------------------------------------------------------------------------
    def _value(self, line: int, text: str, start: int, end: int, value) -> object:
        """`value` (decoded from text[start:end]) after the checks json.loads does not make, or
        SKIPPED after reporting why not."""
        deep = text.count("[", start, end) + text.count("{", start, end) > MAX_DEPTH
        escapes = _SURROGATE_ESCAPE.search(text, start, end) is not None
        stack = [(value, 1)] if deep or escapes else []
        while stack:
            item, depth = stack.pop()
            if isinstance(item, (dict, list)):
                if depth > MAX_DEPTH:
                    return self._skip(line, "json", f"nested deeper than {MAX_DEPTH} levels", "flatten the record")
                stack.extend((child, depth + 1) for child in ([*item, *item.values()] if isinstance(item, dict) else item))
            elif isinstance(item, str) and escapes and _SURROGATE.search(item):
                return self._skip(line, "json", "a \\u escape is a lone UTF-16 surrogate (such as \\ud800), not a "
                                  "character", "write the character itself, or a complete surrogate pair")
        return value

    def _skip(self, line: int, field: str, message: str, fix: str) -> object:
        self.report(line, field, message, fix)
        return SKIPPED

    def _decode(self, text: str, pos: int, line: int, fix: str = _JSON_FIX) -> tuple[object, int]:
        """raw_decode at `pos`: (value, end), or (SKIPPED, -1) after reporting why it failed."""
        try:
            return json.JSONDecoder().raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            return self._skip(exc.lineno + line - 1, "json", f"invalid JSON: {exc.msg} at column {exc.colno}", fix), -1
        except (ValueError, RecursionError, MemoryError) as exc:  # ValueError: an integer over Python's digit limit
            message, fix = {RecursionError: ("invalid JSON: nested too deeply", "flatten the record"),
                            MemoryError: ("record too large to decode", "split the record")
                            }.get(type(exc), (f"invalid JSON: {exc}", "write very long numbers as strings"))
            return self._skip(line, "json", message, fix), -1

    def _json_lines(self, lines: Iterable[tuple[int, str]]) -> Iterator[Record]:
        index = 0
        for number, line in lines:
            if number in self._bad or not line.strip():
                continue
            line = line.removesuffix("\n")  # an error at the end must not count as the next line
            value, end = self._decode(line, _WHITESPACE.match(line).end(), number)
            if end >= 0 and _WHITESPACE.match(line, end).end() < len(line):
                value = self._skip(number, "json", f"invalid JSON: extra data at column {end + 1}", _JSON_FIX)
            if value is not SKIPPED and self._value(number, line, 0, len(line), value) is not SKIPPED:
                yield Record(number, value, index)
                index += 1

    def _json(self, handle) -> Iterator[Record]:
        """A .json file: an array (elements with their lines), one value, or JSON Lines misnamed."""
        lines = list(self._lines(handle, None))
        text = "".join(line for _, line in lines)
        start = _WHITESPACE.match(text).end()
        filled = list(islice((line for _, line in lines if line.strip()), 2))
        if start == len(text):
            return
        if text[start] == "[":
            yield from self._json_array(text, start + 1)
        elif len(filled) > 1 and filled[0].lstrip().startswith("{") and filled[0].rstrip().endswith("}"):
            yield from self._json_lines(lines)  # one object per line, in a file named .json
        else:
            line = 1 + text.count("\n", 0, start)
            value, end = self._decode(text, start, 1)
            rest = _WHITESPACE.match(text, end).end() if end >= 0 else len(text)
            if rest < len(text):
                self._skip(1 + text.count("\n", 0, rest), "json", "extra data after the JSON value",
                           "a .json file holds one value; name a file with one object per line .jsonl")
            elif value is not SKIPPED and not self._touches_bad(line, line + text.count("\n", start, end)):
                if self._value(line, text, start, end, value) is not SKIPPED:
                    yield Record(line, value, None)

    def _json_array(self, text: str, pos: int) -> Iterator[Record]:
        """Elements of a top-level JSON array with the line each starts on.

        Hand-written around `raw_decode` because `json.load` gives no element positions; a syntax
        error ends the read there (nothing after it can be located), keeping the elements before it.
        """
        index, line, counted = 0, 1, 0
        while True:
            pos = _WHITESPACE.match(text, pos).end()
            line, counted = line + text.count("\n", counted, pos), pos
            if pos < len(text) and text[pos] == "]":  # empty array, or a trailing comma (tolerated)
                pos += 1
                break
            value, end = self._decode(text, pos, 1, "fix it there; the rest of the array cannot be read past it")
            if end < 0:
                return
            if end - pos > self.max_record_chars:
                self._skip(line, "record", f"element is over {self.max_record_chars:,} characters", "split it")
            elif not self._touches_bad(line, line + text.count("\n", pos, end)):
                if self._value(line, text, pos, end, value) is not SKIPPED:
                    yield Record(line, value, index)
            index += 1
            pos = _WHITESPACE.match(text, end).end()
            if pos < len(text) and text[pos] in ",]":
                pos += 1
                if text[pos - 1] == "]":
                    break
            else:
                self._skip(line + text.count("\n", counted, min(pos, len(text))), "json",
                           "expected ',' or ']' after an array element",
                           "separate elements with commas and close the array with ]")
                return
        rest = _WHITESPACE.match(text, pos).end()
        if rest < len(text):
            self._skip(1 + text.count("\n", 0, rest), "json", "extra data after the array",
                       "a .json file holds one array; remove what follows its closing ]")

    # -- CSV / TSV -------------------------------------------------------------------------------
    def _csv(self, handle) -> Iterator[Record]:
        """Rows as column -> cell dicts; the first non-blank row is the header."""
        # csv's own field limit (128 KiB) would reject a long article in one cell; ours bounds the same
        # memory for every format. Raised, never lowered: process-wide, and harmless to other csv users.
        if csv.field_size_limit() < self.max_record_chars:
            csv.field_size_limit(self.max_record_chars)
        lines: Iterator[tuple[int, str]] = self._lines(handle, self.max_record_chars)
        if self.kind == "csv" and self.sniff_delimiter:
            head, size = [], 0
            while size < SNIFF_CHARS and (item := next(lines, None)) is not None:
                head.append(item)
                size += len(item[1])
            self.delimiter = _sniff("".join(text for _, text in head)[:SNIFF_CHARS], size < SNIFF_CHARS)
            lines = chain(head, lines)
        at = [0, False]  # the line just fed to csv (lone-\r breaks counted), and whether its row met a bad line

        def feed():
            shift = 0  # a lone \r ends a row too (old Mac exports); csv would call it a newline in a field
            for number, text in lines:
                at[1] = at[1] or number in self._bad
                for piece in [p for p in _LONE_CR.split(text) if p] if "\r" in text else [text]:
                    at[0] = number + shift
                    shift += 1
                    yield piece
                shift -= 1

        reader = csv.reader(feed(), delimiter=self.delimiter)
        previous, index = 0, 0
        while True:
            row, error = None, None
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, ValueError, MemoryError) as exc:
                error = exc
            start, previous, bad, at[1] = previous + 1, at[0], at[1], False
            if error is not None or bad:  # a bad line was reported where it was read
                if error is not None and start <= previous:
                    self.report(start, "header" if self.header is None else "csv", f"unreadable row: {error}",
                                f'fix the quoting of this row: quote cells that contain {self.delimiter!r}, '
                                'quotes or line breaks, and double quotes inside them ("")')
                if self.header is None or start > previous:
                    return  # no header: no row can be named; no line consumed: stop rather than loop
                continue
            if not any(cell.strip() for cell in row):
                continue
            if self.header is None:
                self.header, self.header_line = [h.strip() or f"column{i + 1}" for i, h in enumerate(row)], start
                continue
            if len(row) != len(self.header) and not self._ragged(start, len(row)):
                continue
            names = self.header + [f"extra_{i + 1}" for i in range(len(row) - len(self.header))]
            yield Record(start, dict(zip(names, row)), index)
            index += 1

    def _ragged(self, line: int, count: int) -> bool:
        """Report a row whose field count differs from the header's; True when it is kept."""
        header = self.header or []
        message = f"{count} fields but the header has {len(header)} ({', '.join(header[:8])}{', ...' * (len(header) > 8)})"
        fix = f'quote cells that contain {self.delimiter!r} or line breaks: "a{self.delimiter} b"'
        if self.ragged == "skip":
            self.report(line, "row", message, fix)
            return False
        kept = "missing ones left empty" if count < len(header) else "extra ones kept as extra_N"
        self.report(line, "row", f"{message}; {kept}", fix, "warning")
        return True


def _sniff(sample: str, complete: bool) -> str:
    """The delimiter among , ; tab | that splits the sample's rows most consistently into 2+ fields.

    Used instead of csv.Sniffer, whose back-referencing regexes are quadratic (a second on 8 KB of
    `,"`); this parses the sample once per candidate. The sample's last row is dropped unless it is
    `complete` (it may be cut short). Ties keep the earlier candidate, so "," wins them.
    """
    best, best_score = ",", (0.0, 0)
    for delimiter in ",;\t|":
        try:
            counts = [len(row) for row in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if row]
        except (csv.Error, ValueError):
            continue
        counts = counts if complete or len(counts) < 2 else counts[:-1]
        mode, agreeing = Counter(counts).most_common(1)[0] if counts else (0, 0)
        score = (agreeing / max(len(counts), 1), mode)
        if mode >= 2 and score > best_score:
            best, best_score = delimiter, score
    return best
