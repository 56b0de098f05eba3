"""The shared record reader behind ingest and fine-tuning data: one bad record is reported with its
line and the rest of the file is read, through both callers alike; and no input bytes raise or hang.

RAGTUNE_FUZZ_EXAMPLES=5000 pytest tests/test_record_reader.py -k fuzz   # a longer, randomised soak
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import time
import tracemalloc
from contextlib import contextmanager
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragtune.config import IngestOptions
from ragtune.errors import LoaderError
from ragtune.finetune.check import check_file
from ragtune.finetune.formats import read_examples
from ragtune.ingest.documents import FileContext
from ragtune.ingest.loaders import LOADERS
from ragtune.ingest.record_reader import MAX_RECORD_CHARS, RecordReader
from ragtune.ingest.records import MAX_WARNINGS

# Over csv's default field limit (131072): a caption and a 136K-character hex dump, as in an export
# with an embedded image. One word that long is a single unknown token, so it is cheap to embed.
OVER_CSV_LIMIT = "Otters hold hands while they sleep. " + "89504e470d0a1a0a" * 8500


def record(text: str) -> dict:
    """A record both callers accept: ingest reads "text", fine-tuning reads "messages" (chat)."""
    return {"text": text, "messages": [{"role": "user", "content": f"About: {text}"},
                                       {"role": "assistant", "content": text}]}


def write_deep_jsonl(path) -> None:
    lines = [json.dumps(record("Beavers build dams.")), json.dumps(record("Herons eat fish.")),
             "[" * 100000, json.dumps(record("Kelp forests shelter otters."))]
    path.write_text("\n".join(lines) + "\n")


def write_big_csv(path) -> None:
    """Line 3 has one cell over csv's default field limit (fine now); line 4 one over ours (reported)."""
    rows = ["text,label", "Salmon swim upstream.,fish", f'"{OVER_CSV_LIMIT}",otter',
            f"{'x' * (MAX_RECORD_CHARS + 10)},junk", "Puffins nest on cliffs.,bird"]
    path.write_text("\n".join(rows) + "\n")


def sources(kb) -> set[str]:
    return {row[0] for row in kb.store.conn.execute("SELECT source FROM documents")}


def test_huge_csv_cell_and_deep_jsonl_line_fail_only_their_records_in_ingest(tmp_path, make_kb):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nSea otters use stones to open shellfish.")
    write_big_csv(docs / "big.csv")
    write_deep_jsonl(docs / "deep.jsonl")
    kb = make_kb()
    report = kb.ingest([docs])
    assert (report.ingested, report.failed) == (3, 0), report.failures
    csv_path, jsonl_path = docs / "big.csv", docs / "deep.jsonl"
    assert {s for s in sources(kb) if s.startswith(str(csv_path))} == {f"{csv_path}#row{n}" for n in (2, 3, 5)}
    assert {s for s in sources(kb) if s.startswith(str(jsonl_path))} == {f"{jsonl_path}#L{n}" for n in (1, 2, 4)}
    assert str(docs / "good.md") in sources(kb)
    warnings = "\n".join(report.warnings)
    assert f"{csv_path}:4: line is over" in warnings and f"{csv_path}:3:" not in warnings
    assert f"{jsonl_path}:3: invalid JSON: nested too deeply" in warnings
    assert kb.search("otters hold hands while they sleep", k=1)[0].source == f"{csv_path}#row3"


def test_the_same_files_report_the_same_lines_as_fine_tuning_data(tmp_path):
    write_big_csv(tmp_path / "big.csv")
    write_deep_jsonl(tmp_path / "deep.jsonl")
    rows = read_examples(tmp_path / "big.csv")
    assert [e.line for e in rows.examples] == [2, 3, 5] and [p.line for p in rows.problems] == [4]
    report = check_file(tmp_path / "deep.jsonl")
    assert report.examples == 3 and [(p.line, p.field) for p in report.errors] == [(3, "json")]
    assert [e.line for e in read_examples(tmp_path / "deep.jsonl").examples] == [1, 2, 4]


def test_one_policy_for_encodings_depth_and_surrogates(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": "ok"}).encode(), '{"text": "caf\xe9"}'.encode("latin-1"),
             b'{"text": "\\ud800 lone"}', b'{"text": "\\ud83d\\ude00 pair"}',
             b'{"text": "deep", "m": ' + b"[" * 300 + b"]" * 300 + b"}", b'{"n": ' + b"9" * 5000 + b"}"]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    reader = RecordReader(path)
    assert [(r.line, r.value["text"]) for r in reader] == [(1, "ok"), (4, "\U0001F600 pair")]
    assert [(p.line, p.field) for p in reader.problems] == [(2, "encoding"), (3, "json"), (5, "json"), (6, "json")]
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes('{"text": "héron"}\n'.encode("utf-16"))
    assert [r.value for r in RecordReader(utf16)] == [{"text": "héron"}]
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\x7fELF\x00\x01" * 100)
    reader = RecordReader(binary)
    assert list(reader) == [] and reader.failure and "binary" in reader.failure.message


def test_json_files_array_document_and_misnamed_jsonl(tmp_path):
    array = tmp_path / "a.json"
    array.write_text('[\n  {"text": "one"},\n  ' + "[" * 300 + "]" * 300 + ',\n  {"text": "three"}\n]\n')
    reader = RecordReader(array)
    assert [(r.line, r.index) for r in reader] == [(2, 0), (4, 2)] and [p.line for p in reader.problems] == [3]
    lines = tmp_path / "l.json"
    lines.write_text('{"text": "one"}\n{"text": "two"}\n{broken\n')
    reader = RecordReader(lines)
    assert [r.line for r in reader] == [1, 2] and [p.line for p in reader.problems] == [3]


def test_csv_delimiter_sniffing_rows_across_lines_and_ragged_rows(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(codecs.BOM_UTF8 + b'name;notes\r\nlamp;"bright, warm"\r\n\r\nchair;"two\r\nlines"\r\ndesk\r\n')
    reader = RecordReader(path, sniff_delimiter=True, ragged="keep")
    assert [(r.line, r.value) for r in reader] == [(2, {"name": "lamp", "notes": "bright, warm"}),
                                                  (4, {"name": "chair", "notes": "two\r\nlines"}), (6, {"name": "desk"})]
    assert [(p.line, p.severity) for p in reader.problems] == [(6, "warning")]
    strict = RecordReader(path, sniff_delimiter=True, ragged="skip")
    assert [r.line for r in strict] == [2, 4] and [(p.line, p.field) for p in strict.problems] == [(6, "row")]
    mac = tmp_path / "mac.csv"  # classic Mac exports end rows with a lone \r
    mac.write_bytes(b'name,notes\rlamp,bright\rchair,"two\rlines"\rdesk,oak\r')
    assert [(r.line, r.value["name"]) for r in RecordReader(mac, sniff_delimiter=True)] == [(2, "lamp"), (3, "chair"), (5, "desk")]


def test_jsonl_is_streamed_not_read_whole(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text((json.dumps({"text": "Salmon swim upstream to spawn in gravel beds. " * 350}) + "\n") * 1500)
    tracemalloc.start()
    try:
        count = sum(1 for _ in RecordReader(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 1500 and peak < path.stat().st_size / 2, peak  # 24 MB file, ~5 MB peak


def test_ingest_warnings_are_capped_per_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"text": "One good line."}) + "\n" + "{oops\n" * 150 + '{"body": "no text"}\n' * 100)
    ctx = FileContext(path, "filehash", "docid", IngestOptions())
    assert len(list(LOADERS[".jsonl"](ctx))) == 1
    assert len(ctx.warnings) == MAX_WARNINGS + 1 and ctx.warnings[-1].endswith("50 more problems not shown")


# -- fuzzing -------------------------------------------------------------------------------------
SOAK = os.environ.get("RAGTUNE_FUZZ_EXAMPLES")
EXAMPLES = int(SOAK or 100)  # per test: the 8 fuzz tests take ~10 s together
SEEDS = {
    ".jsonl": b"".join(json.dumps(record(t)).encode() + b"\n" for t in ("Otters float.", "Seals dive.")),
    ".json": json.dumps([{"text": "Otters float.", "label": "a"}, {"text": "Seals dive.", "label": "b"}], indent=1).encode(),
    ".csv": b'text,label\n"Otters float, together.",a\nSeals dive.,b\n',
    ".tsv": b"text\tlabel\nOtters float.\ta\nSeals dive.\tb\n",
}
HOSTILE = [b"[" * 3000, b'{"a":' * 3000, b"[" * 250, b'"' + b"x" * 140_000 + b'"', b"y" * 140_000, b"\x00", b"\xff",
           b"\xc3\x28", b"\xed\xa0\x80", b"\\ud800", b'"\\udfff"', b"\r\n", b"\r", b"\n", codecs.BOM_UTF8,
           codecs.BOM_UTF16_LE, b'"', b",", b";", b"\t", b"9" * 5000, b"NaN", b"]", b"}", b"\xe9", b'{"text": 1}']


# Bytes that mean something to a JSON or CSV parser, for random "almost records".
TOKENS = [bytes([b]) for b in b'[]{}",:;|\t\r\n\\ u0123456789abcdefnrtl.-+eE'] + [b"\xc3\xa9", b"\xff", b"\x00", b"\\ud800"]


@st.composite
def mutated(draw, suffix: str) -> bytes:
    data = bytearray(SEEDS[suffix])
    for _ in range(draw(st.integers(0, 6))):
        op, pos = draw(st.sampled_from(["insert", "delete", "replace", "hostile"])), draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "replace" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.sampled_from(HOSTILE))
    if draw(st.integers(0, 9)) == 0:  # sometimes the whole file as UTF-16 with a BOM
        data = bytearray(bytes(data).decode("utf-8", "replace").encode("utf-16"))
    return bytes(data)


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """Fail (not wait forever) when one example runs away: SIGALRM interrupts Python-level loops."""

    def expire(*_):
        raise Hang(f"one example ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    pending, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # pytest-timeout's own alarm, if any
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if pending:
            signal.setitimer(signal.ITIMER_REAL, max(pending - (time.monotonic() - started), 0.001))


def throw_at_everything(path) -> None:
    """The reader in both policies, ingest's loader and read_examples: nothing but LoaderError from
    a loader (a whole-file failure such as binary content) may come out; every Problem is well formed."""
    for policy in ({"guess_encoding": False, "ragged": "skip"}, {"guess_encoding": True, "sniff_delimiter": True, "ragged": "keep"}):
        reader = RecordReader(path, **policy)
        records = list(reader)
        assert all(r.line >= 1 for r in records)
        for problem in reader.problems:
            assert problem.path == str(path) and problem.line >= 0 and problem.fix.strip(), problem
            assert problem.field != "reader", problem  # the last-resort guard fired: a reader bug
    ctx = FileContext(path, "filehash", "docid", IngestOptions())
    try:
        for document in LOADERS[path.suffix](ctx):
            list(document.segments)
            document.content_hash.encode()
    except LoaderError as exc:
        assert "\n" not in exc.reason
    assert all(isinstance(w, str) for w in ctx.warnings)
    result = read_examples(path)
    for problem in result.problems:
        assert problem.line >= 0 and problem.fix.strip() and problem.field != "reader", problem


FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10), database=None, derandomize=not SOAK,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("suffix", list(SEEDS))
def test_fuzz_mutated_records_never_raise(suffix, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / f"data{suffix}"

    @FUZZ
    @given(mutated(suffix))
    def check(data):
        path.write_bytes(data)
        with deadline(10):
            throw_at_everything(path)

    check()


@pytest.mark.parametrize("suffix", list(SEEDS))
def test_fuzz_random_bytes_never_raise(suffix, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / f"data{suffix}"

    @FUZZ
    @given(st.one_of(st.binary(max_size=4096), st.text(max_size=1000).map(str.encode),
                     st.lists(st.sampled_from(TOKENS)).map(b"".join)))
    def check(data):
        path.write_bytes(data)
        with deadline(10):
            throw_at_everything(path)

    check()
