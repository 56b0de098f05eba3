"""What loaders produce: documents made of cleaned text segments, streamed lazily."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LoaderError

BINARY_SAMPLE_BYTES = 64 * 1024
READ_BLOCK_BYTES = 1 << 20


@dataclass
class Segment:
    """A piece of cleaned document text; `new_section` stops chunks from crossing into it."""

    text: str
    page: int | None = None
    metadata: dict | None = None
    new_section: bool = False


@dataclass
class LoadedDocument:
    source: str  # unique key: the file path, or path#record for records
    doc_id: str  # the user's id (record id field) or one derived from the source
    content_hash: str  # identical content => duplicate, stored once
    segments: Iterable[Segment]
    title: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class FileContext:
    """What every loader gets: the file, its identity, and where to put warnings."""

    path: Path
    file_hash: str
    doc_id: str
    options: object  # IngestOptions
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def fail(self, reason: str, *, skipped: bool = False) -> LoaderError:
        return LoaderError(str(self.path), reason, skipped=skipped)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class NotText(ValueError):
    """The start of a file is not text in any encoding ragtune reads; `kind` is "binary" or "encoding"."""

    def __init__(self, kind: str, reason: str, fix: str):
        super().__init__(reason)
        self.kind, self.reason, self.fix = kind, reason, fix


def looks_binary(sample: bytes) -> bool:
    """NUL bytes, or more than 10% control bytes: an executable, image or archive, not text."""
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return len(sample) > 0 and controls / len(sample) > 0.10


def sniff_encoding(sample: bytes, *, guess_legacy: bool = True) -> tuple[str, str | None]:
    """(codec, note) for a file that starts with `sample`; the note says what was guessed.

    UTF-8 (a BOM is dropped) when the sample decodes as UTF-8, UTF-16 when it has a UTF-16 BOM.
    Otherwise, with `guess_legacy`, charset-normalizer's guess (Windows-1252 exports are common in
    document folders); without it, still UTF-8, so the caller reports each undecodable line instead
    of silently turning the whole file into mojibake (what fine-tuning data needs).
    Raises NotText for binary content, or for non-UTF-8 that no encoding fits.
    """
    if looks_binary(sample[:BINARY_SAMPLE_BYTES]):
        raise NotText("binary", "binary content (NUL or control bytes), not text",
                      "convert it to UTF-8 text, or exclude the file")
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", None
    if sample.startswith(codecs.BOM_UTF8):  # declared UTF-8: bad bytes further on are errors, not a hint
        return "utf-8-sig", None
    try:
        codecs.getincrementaldecoder("utf-8-sig")().decode(sample, final=False)
        return "utf-8-sig", None
    except UnicodeDecodeError as exc:
        if not guess_legacy:
            return "utf-8-sig", None
        start = exc.start
    from charset_normalizer import from_bytes

    try:
        best = from_bytes(sample).best()
    except Exception:  # a guesser failing on odd bytes must not fail the file differently
        best = None
    if best is None:
        raise NotText("encoding", f"not valid UTF-8 (byte {start}) and no other text encoding fits",
                      "convert it to UTF-8")
    return best.encoding, f"not valid UTF-8; decoded as {best.encoding}"


def detect_encoding(ctx: FileContext) -> str:
    """The file's codec (see sniff_encoding); binary or undecodable files fail with a LoaderError."""
    with open(ctx.path, "rb") as handle:
        sample = handle.read(READ_BLOCK_BYTES)
    try:
        encoding, note = sniff_encoding(sample)
    except NotText as exc:
        if exc.kind == "binary":
            raise ctx.fail(f"binary content in a {ctx.path.suffix or 'extensionless'} file; exclude it with --exclude") from None
        raise ctx.fail(f"{exc.reason}; {exc.fix}") from None
    if note:
        ctx.warn(f"{ctx.path}: {note}")
    return encoding


def read_text(ctx: FileContext) -> str:
    """The whole file as text, with encoding detection (for formats parsed in one piece)."""
    encoding = detect_encoding(ctx)
    with open(ctx.path, encoding=encoding, errors="replace", newline="") as handle:
        return handle.read()


def stream_text_blocks(ctx: FileContext) -> Iterator[str]:
    """The file as text blocks of about 1 MB, cut after a paragraph or line break when possible."""
    encoding = detect_encoding(ctx)
    with open(ctx.path, encoding=encoding, errors="replace", newline="") as handle:
        carry = ""
        while True:
            block = handle.read(READ_BLOCK_BYTES)
            if not block:
                break
            block = carry + block
            cut = block.rfind("\n\n")
            if cut < len(block) // 2:
                cut = block.rfind("\n")
            if cut <= 0:
                cut = len(block)
            yield block[:cut]
            carry = block[cut:]
        if carry:
            yield carry
