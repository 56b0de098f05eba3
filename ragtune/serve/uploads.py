"""Uploaded files land in `<kb>/uploads/` and nowhere else.

Hostile uploads are the expected case: a filename is a plain name (no separators, no `..`, no
hidden or control characters), of a type ragtune ingests, whose bytes match that type; the folder
and the target are checked not to be symbolic links, and the file is written through a fresh
temporary file opened with O_NOFOLLOW | O_EXCL, then renamed into place, so a link planted in the
folder is never written through. The final path is verified, resolved, to sit inside the KB.
"""

from __future__ import annotations

import contextlib
import os
import stat
import unicodedata
import uuid
from pathlib import Path

from ..ingest.loaders import LOADERS
from .errors import APIError

MAX_NAME_BYTES = 200
FORBIDDEN = set('/\\:*?"<>|') | {"\x00"}
BINARY_SIGNATURES = {".pdf": (b"%PDF-",), ".docx": (b"PK\x03\x04",)}
SNIFF_BYTES = 8192


def safe_name(filename: str | None) -> str:
    """The upload's name if it is a plain, allowed file name; otherwise a 400 that says why."""
    if not filename:
        raise APIError(400, "file: the upload has no file name; send it as multipart field `file` with a filename",
                       param="file")
    name = unicodedata.normalize("NFC", filename)
    if any(ch in FORBIDDEN or unicodedata.category(ch).startswith("C") for ch in name):
        raise APIError(400, f"file: {filename!r} is not a plain file name (no folders, separators or control "
                            "characters); send only the name", param="file", code="invalid_filename")
    if name in (".", "..") or name.startswith(".") or name != name.strip() or ".." in name:
        raise APIError(400, f"file: {filename!r} is not allowed (hidden names and '..' are refused)", param="file",
                       code="invalid_filename")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise APIError(400, f"file: the name is over {MAX_NAME_BYTES} bytes; shorten it", param="file",
                       code="invalid_filename")
    suffix = Path(name).suffix.lower()
    if suffix not in LOADERS:
        raise APIError(415, f"file: {suffix or 'no extension'} is not a type ragtune ingests; send one of "
                            f"{', '.join(sorted(LOADERS))}", param="file", code="unsupported_type")
    return name


def check_content(name: str, head: bytes) -> None:
    """The first bytes agree with the extension: binary formats by signature, text formats have no NULs."""
    suffix = Path(name).suffix.lower()
    signatures = BINARY_SIGNATURES.get(suffix)
    if signatures is not None:
        if not head.startswith(signatures):
            raise APIError(415, f"file: {name} does not look like a {suffix} file (its first bytes do not match)",
                           param="file", code="type_mismatch")
        return
    if b"\x00" in head:
        raise APIError(415, f"file: {name} has binary content (NUL bytes) but a text extension; UTF-16 text must be "
                            "saved as UTF-8 first", param="file", code="type_mismatch")


def uploads_folder(kb_root: Path, folder: Path) -> Path:
    """The uploads folder, created if needed, refused if it is a link or resolves outside the KB."""
    root = Path(os.path.realpath(kb_root))
    if os.path.islink(folder):
        raise APIError(500, f"{folder.name}/ in the knowledge base is a symbolic link; uploads are refused until it is "
                            "a plain folder", code="unsafe_uploads_folder")
    folder.mkdir(mode=0o750, exist_ok=True)
    real = Path(os.path.realpath(folder))
    if real.parent != root and root not in real.parents:
        raise APIError(500, "the uploads folder resolves outside the knowledge base; uploads are refused",
                       code="unsafe_uploads_folder")
    return real


def save(kb_root: Path, folder: Path, name: str, source, limit: int) -> Path:
    """Copy the readable `source` into the uploads folder as `name`; returns the final path."""
    real = uploads_folder(kb_root, folder)
    target = real / name
    if os.path.islink(target):
        raise APIError(400, f"file: {name} exists in the uploads folder as a symbolic link; refusing to replace it",
                       param="file", code="invalid_filename")
    if os.path.lexists(target) and not stat.S_ISREG(os.lstat(target).st_mode):
        raise APIError(400, f"file: {name} exists in the uploads folder and is not a regular file", param="file",
                       code="invalid_filename")
    tmp = real / f".upload-{uuid.uuid4().hex}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o640)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            head = source.read(SNIFF_BYTES)
            check_content(name, head)
            while head:
                written += len(head)
                if written > limit:
                    raise APIError(413, f"file: the upload is over the limit of {limit} bytes", param="file",
                                   code="request_too_large")
                out.write(head)
                head = source.read(1 << 20)
            out.flush()
            os.fsync(out.fileno())
        if written == 0:
            raise APIError(400, f"file: {name} is empty; nothing to ingest", param="file", code="empty_file")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if Path(os.path.realpath(target)).parent != real:
        os.unlink(target)
        raise APIError(400, "file: the stored file resolved outside the uploads folder", param="file")
    return target


def remove(folder: Path, path: str) -> bool:
    """Delete an uploaded file, only if it is a regular file (not a link) directly inside the uploads folder."""
    candidate = Path(path)
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    if os.path.islink(candidate) or not os.path.isfile(candidate):
        return False
    if Path(os.path.realpath(candidate)).parent != Path(os.path.realpath(folder)):
        return False
    os.unlink(candidate)
    return True
