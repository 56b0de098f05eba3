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


def _looks_binary(sample: bytes) -> bool:
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return len(sample) > 0 and controls / len(sample) > 0.10


def detect_encoding(ctx: FileContext) -> str:
    """UTF-8 when the start of the file decodes as UTF-8; otherwise charset-normalizer's guess."""
    with open(ctx.path, "rb") as handle:
        sample = handle.read(READ_BLOCK_BYTES)
    if _looks_binary(sample[:BINARY_SAMPLE_BYTES]):
        raise ctx.fail(f"binary content in a {ctx.path.suffix or 'extensionless'} file; exclude it with --exclude")
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError as exc:
        from charset_normalizer import from_bytes

        best = from_bytes(sample).best()
        if best is None:
            raise ctx.fail(
                f"not valid UTF-8 (byte {exc.start}) and no other text encoding fits; convert it to UTF-8"
            ) from None
        ctx.warn(f"{ctx.path}: not valid UTF-8; decoded as {best.encoding}")
        return best.encoding


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
