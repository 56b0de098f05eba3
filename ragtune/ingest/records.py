"""Record formats: CSV/TSV rows and JSON/JSONL objects, one document per record.

Parsing is the shared record reader's (record_reader.py, also behind fine-tuning data): a bad record
becomes a warning naming its line and the fix, and is skipped; the rest of the file goes on. A file
fails only when nothing in it is usable (binary, empty, or no record with text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from .clean import clean_text
from .documents import FileContext, LoadedDocument, Segment, sha256_text
from .record_reader import EMPTY, Problem, RecordReader

_SCALARS = (str, int, float, bool, type(None))
MAX_WARNINGS = 200  # per file: a broken 500 MB export must not put a million lines into the report


class _Warnings:
    """Record warnings of one file (the reader's problems and the loaders' own), at most MAX_WARNINGS
    plus a count of the rest."""

    def __init__(self, ctx: FileContext):
        self.ctx, self.count = ctx, 0

    def __call__(self, problem: Problem) -> None:
        where = f"{problem.path}:{problem.line}" if problem.line else problem.path
        skipped = "; record skipped" if problem.severity == "error" and problem.line else ""
        self.text(f"{where}: {problem.message}{skipped} ({problem.fix})")

    def text(self, message: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            self.ctx.warn(message)

    def finish(self, reader: RecordReader, produced: int, reason: str, *, skipped: bool = False) -> None:
        """Summarise suppressed warnings; fail the file when it produced nothing (why: the reader's
        whole-file problem if any, else `reason`)."""
        if self.count > MAX_WARNINGS:
            self.ctx.warn(f"{self.ctx.path}: {self.count - MAX_WARNINGS} more problems not shown")
        if produced:
            return
        failure = reader.failure
        if failure is not None:
            raise self.ctx.fail(f"{failure.message}; {failure.fix}", skipped=failure.message == EMPTY)
        raise self.ctx.fail(reason, skipped=skipped)


def _reader(ctx: FileContext) -> tuple[RecordReader, _Warnings]:
    """Ingest's reading policy: guess legacy encodings (document folders hold Windows exports), sniff
    CSV delimiters, keep ragged rows with a warning (their text is still worth searching)."""
    warnings = _Warnings(ctx)
    reader = RecordReader(ctx.path, guess_encoding=True, sniff_delimiter=True, ragged="keep", on_problem=warnings)
    return reader, warnings


def _record_document(ctx: FileContext, key: str, text: str, title: str | None, metadata: dict, record_id):
    body = clean_text(text)
    title = clean_text(title) if title else None
    full = f"{title}\n\n{body}" if title and body else (title or body)
    doc_id = str(record_id) if record_id is not None else f"{ctx.doc_id}:{key}"
    return LoadedDocument(
        source=f"{ctx.path}#{key if record_id is None else record_id}",
        doc_id=doc_id,
        content_hash=sha256_text(full),
        segments=[Segment(full + "\n\n")] if full else [],
        title=title,
        metadata=metadata,
    )


def _metadata(record: dict, fields, exclude: set[str]) -> dict:
    if fields is not None:
        return {f: record[f] for f in fields if f in record}
    return {k: v for k, v in record.items() if k not in exclude and _is_plain_json(v)}


def _is_plain_json(value) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (list, dict)):
        return len(json.dumps(value, default=str)) <= 2000
    return False


def _from_object(ctx: FileContext, warn, record, line: int, source_key: str, key: str | None = None):
    """One JSON object -> document, or None with a warning (through `warn`) naming its line."""
    fields, where = ctx.options.fields, f"line {line}"
    if not isinstance(record, dict):
        warn(f"{ctx.path}:{where}: expected a JSON object, got {type(record).__name__}; record skipped")
        return None
    text = record.get(fields.text_field)
    if not isinstance(text, str):
        what = "missing" if text is None else f"not a string ({type(text).__name__})"
        warn(
            f"{ctx.path}:{where}: field {fields.text_field!r} {what}; record skipped "
            f"(choose the text field with --text-field)"
        )
        return None
    title = record.get(fields.title_field) if fields.title_field else None
    record_id = record.get(fields.id_field) if fields.id_field else key
    if fields.id_field and record_id is None:
        warn(f"{ctx.path}:{where}: id field {fields.id_field!r} missing; using the line as id")
    if not text.strip() and not (isinstance(title, str) and title.strip()):
        warn(f"{ctx.path}:{where}: empty text; record skipped")
        return None
    exclude = {fields.text_field, fields.title_field, fields.id_field}
    metadata = _metadata(record, fields.metadata_fields, exclude)
    return _record_document(ctx, source_key, text, title if isinstance(title, str) else None, metadata, record_id)


def load_jsonl(ctx: FileContext) -> Iterator[LoadedDocument]:
    """One JSON object per line (e.g. a BEIR corpus.jsonl with --id-field _id --title-field title); streamed."""
    reader, warnings = _reader(ctx)
    produced = 0
    for record in reader:
        document = _from_object(ctx, warnings.text, record.value, record.line, f"L{record.line}")
        if document is not None:
            produced += 1
            yield document
    warnings.finish(reader, produced, f"no usable records (each needs a string field {ctx.options.fields.text_field!r})")


def _document_items(ctx: FileContext, data, line: int) -> list[tuple[str, str | None, object]]:
    """(source key, record key, record) for the single value of a .json file."""
    text_field = ctx.options.fields.text_field
    if isinstance(data, dict) and text_field in data:
        return [("i0", None, data)]
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return [(f"key {k}", str(k), r) for k, r in data.items()]
    raise ctx.fail(f"line {line}: expected an array of objects, an object of objects, or one object with a text field")


def load_json(ctx: FileContext) -> Iterator[LoadedDocument]:
    """A JSON array of objects, an object of objects keyed by id, or one object (JSON Lines too)."""
    reader, warnings = _reader(ctx)
    produced = 0
    for record in reader:
        if record.index is None:
            items = _document_items(ctx, record.value, record.line)
        else:
            items = [(f"i{record.index}", None, record.value)]
        for source_key, key, value in items:
            document = _from_object(ctx, warnings.text, value, record.line, source_key, key)
            if document is not None:
                produced += 1
                yield document
    warnings.finish(reader, produced, f"no usable records (each needs a string field {ctx.options.fields.text_field!r})")


def load_csv(ctx: FileContext) -> Iterator[LoadedDocument]:
    """One document per row; the text is 'column: value' lines so the header stays as context."""
    reader, warnings = _reader(ctx)
    fields = ctx.options.fields
    produced = 0
    for record in reader:
        row = record.value
        body = "\n".join(f"{k}: {v.strip()}" for k, v in row.items() if v.strip())
        record_id = row.get(fields.id_field) if fields.id_field else None
        title = row.get(fields.title_field) if fields.title_field else None
        metadata = _metadata(row, fields.metadata_fields, set(reader.header)) if fields.metadata_fields else {}
        produced += 1
        yield _record_document(ctx, f"row{record.line}", body, title, metadata, record_id or None)
    if reader.header is None:
        warnings.finish(reader, produced, "CSV has no readable header row; add one naming the columns")
    else:
        warnings.finish(reader, produced, "CSV has a header but no readable data rows", skipped=not reader.errors)
