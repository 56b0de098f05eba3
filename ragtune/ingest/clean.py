"""Text cleaning as pure str -> str functions, composed per format by the loaders."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline; also zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_TRAILING = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# "exam-\nple" -> "example": a hyphen at a line end between two lowercase letters.
_HYPHEN_BREAK = re.compile(r"(?<=[a-z])-\n[ \t]*(?=[a-z])")


def normalize_unicode(text: str, form: str = "NFC") -> str:
    """Canonical composition; PDFs use NFKC to undo ligatures such as 'ﬁ'."""
    return unicodedata.normalize(form, text)


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def remove_control_characters(text: str) -> str:
    return _CONTROL.sub("", text)


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces, strip line ends, keep at most one blank line between paragraphs."""
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    return _MANY_NEWLINES.sub("\n\n", text)


def join_hyphenation(text: str) -> str:
    """Join words that a PDF line break split with a hyphen."""
    return _HYPHEN_BREAK.sub("", text)


def clean_text(text: str) -> str:
    """The default cleaning for text, markdown, HTML, DOCX and records."""
    text = normalize_newlines(text)
    text = remove_control_characters(normalize_unicode(text))
    return normalize_whitespace(text).strip()


def clean_pdf_text(text: str) -> str:
    """PDF pages: compatibility normalisation (ligatures) and hyphenation joins first."""
    text = normalize_newlines(text)
    text = remove_control_characters(normalize_unicode(text, "NFKC"))
    return normalize_whitespace(join_hyphenation(text)).strip()
