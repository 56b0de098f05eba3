"""Record formats: CSV/TSV rows and JSON/JSONL objects, one document per record.

Bad records are reported with their line number and skipped; the rest of the file goes on.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from .clean import clean_text
from .documents import FileContext, LoadedDocument, Segment, read_text, sha256_text, stream_text_blocks

_SCALARS = (str, int, float, bool, type(None))


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


def _from_object(ctx: FileContext, record, where: str, key: str | None = None):
    """One JSON object -> document, or None with a warning naming `where`."""
    fields = ctx.options.fields
    if not isinstance(record, dict):
        ctx.warn(f"{ctx.path}:{where}: expected a JSON object, got {type(record).__name__}; record skipped")
        return None
    text = record.get(fields.text_field)
    if not isinstance(text, str):
        what = "missing" if text is None else f"not a string ({type(text).__name__})"
        ctx.warn(
            f"{ctx.path}:{where}: field {fields.text_field!r} {what}; record skipped "
            f"(choose the text field with --text-field)"
        )
        return None
    title = record.get(fields.title_field) if fields.title_field else None
    record_id = record.get(fields.id_field) if fields.id_field else key
    if fields.id_field and record_id is None:
        ctx.warn(f"{ctx.path}:{where}: id field {fields.id_field!r} missing; using the line as id")
    if not text.strip() and not (isinstance(title, str) and title.strip()):
        ctx.warn(f"{ctx.path}:{where}: empty text; record skipped")
        return None
    exclude = {fields.text_field, fields.title_field, fields.id_field}
    metadata = _metadata(record, fields.metadata_fields, exclude)
    line_key = where.replace("line ", "L").replace("item ", "i")
    return _record_document(ctx, line_key, text, title if isinstance(title, str) else None, metadata, record_id)


def _lines(ctx: FileContext) -> Iterator[tuple[int, str]]:
    pending = ""
    number = 0
    for block in stream_text_blocks(ctx):
        lines = (pending + block).split("\n")
        pending = lines.pop()
        for line in lines:
            number += 1
            yield number, line
    if pending:
        yield number + 1, pending


def load_jsonl(ctx: FileContext) -> Iterator[LoadedDocument]:
    """One JSON object per line (e.g. a BEIR corpus.jsonl with --id-field _id --title-field title)."""
    produced = 0
    for number, line in _lines(ctx):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            ctx.warn(f"{ctx.path}:{number}: invalid JSON ({exc.msg}, column {exc.colno}); line skipped")
            continue
        document = _from_object(ctx, record, f"line {number}")
        if document is not None:
            produced += 1
            yield document
    if produced == 0:
        raise ctx.fail(f"no usable records (each needs a string field {ctx.options.fields.text_field!r})")


def load_json(ctx: FileContext) -> Iterator[LoadedDocument]:
    """A JSON array of objects, an object of objects keyed by id, or one object."""
    try:
        data = json.loads(read_text(ctx))
    except json.JSONDecodeError as exc:
        raise ctx.fail(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, list):
        items = [(f"item {i}", None, r) for i, r in enumerate(data)]
    elif isinstance(data, dict) and ctx.options.fields.text_field in data:
        items = [("item 0", None, data)]
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        items = [(f"key {k}", str(k), r) for k, r in data.items()]
    else:
        raise ctx.fail("expected an array of objects, an object of objects, or one object with a text field")
    produced = 0
    for where, key, record in items:
        document = _from_object(ctx, record, where, key)
        if document is not None:
            produced += 1
            yield document
    if produced == 0:
        raise ctx.fail(f"no usable records (each needs a string field {ctx.options.fields.text_field!r})")


def load_csv(ctx: FileContext) -> Iterator[LoadedDocument]:
    """One document per row; the text is 'column: value' lines so the header stays as context."""
    text = read_text(ctx)
    delimiter = "\t" if ctx.path.suffix.lower() == ".tsv" else ","
    if delimiter == ",":
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ctx.fail("CSV has no header row; add one naming the columns")
    header = [h.strip() or f"column{i + 1}" for i, h in enumerate(header)]
    fields = ctx.options.fields
    produced = 0
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            ctx.warn(
                f"{ctx.path}:{number}: {len(row)} fields but the header has {len(header)}; "
                + ("missing ones left empty" if len(row) < len(header) else "extra ones kept as extra_N")
            )
        names = header + [f"extra_{i + 1}" for i in range(len(row) - len(header))]
        record = dict(zip(names, row))
        body = "\n".join(f"{k}: {v.strip()}" for k, v in record.items() if v.strip())
        record_id = record.get(fields.id_field) if fields.id_field else None
        title = record.get(fields.title_field) if fields.title_field else None
        metadata = _metadata(record, fields.metadata_fields, set(header)) if fields.metadata_fields else {}
        produced += 1
        yield _record_document(ctx, f"row{number}", body, title, metadata, record_id or None)
    if produced == 0:
        raise ctx.fail("CSV has a header but no data rows", skipped=True)
