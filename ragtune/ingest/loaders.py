"""One loader function per format: file -> iterator of LoadedDocument with cleaned segments.

Single-document formats (txt, md, html, pdf, docx) use the raw file's hash as content hash;
record formats (csv, json, jsonl) yield one document per record, hashed by its cleaned text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .clean import clean_pdf_text, clean_text
from .documents import FileContext, LoadedDocument, Segment, read_text, stream_text_blocks
from .records import load_csv, load_json, load_jsonl

_ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(```|~~~)")
MAX_HTML_DEPTH = 2000  # lexbor's tree building turns quadratic on deeper (hostile) nesting
_HTML_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)[^>]*?(/?)>")
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"}
_BOILERPLATE = "script,style,noscript,nav,header,footer,aside,form,iframe,svg,template,button"
_BLOCKS = "p,div,li,h1,h2,h3,h4,h5,h6,tr,pre,blockquote,section,article,table,ul,ol,dd,dt,br,hr"


def _single(ctx: FileContext, segments, title=None, metadata=None) -> LoadedDocument:
    return LoadedDocument(str(ctx.path), ctx.doc_id, ctx.file_hash, segments, title, metadata or {})


def load_txt(ctx: FileContext) -> Iterator[LoadedDocument]:
    """Plain text, streamed in blocks so a 50 MB file never sits in memory whole."""

    def segments():
        for block in stream_text_blocks(ctx):
            cleaned = clean_text(block)
            if cleaned:
                yield Segment(cleaned + "\n\n")

    yield _single(ctx, segments())


def markdown_sections(text: str) -> list[tuple[list[str], str]]:
    """Split markdown at ATX headings (outside code fences): [(heading path, section text)]."""
    sections: list[tuple[list[str], str]] = []
    path: list[tuple[int, str]] = []
    current: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        match = None if in_fence else _ATX_HEADING.match(line)
        if match:
            if any(part.strip() for part in current):
                sections.append(([title for _, title in path], "\n".join(current)))
            level = len(match.group(1))
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, match.group(2).strip())]
            current = [line]
        else:
            current.append(line)
    if any(part.strip() for part in current):
        sections.append(([title for _, title in path], "\n".join(current)))
    return sections


def load_markdown(ctx: FileContext) -> Iterator[LoadedDocument]:
    """Markdown split at headings; each chunk carries its heading path in metadata."""
    text = clean_text(read_text(ctx))
    sections = markdown_sections(text)
    title = next((path[0] for path, _ in sections if path), None)
    segments = [
        Segment(body.strip() + "\n\n", metadata={"headings": headings}, new_section=True)
        for headings, body in sections
        if body.strip()
    ]
    yield _single(ctx, segments, title=title)


def _html_depth(html: str) -> int:
    depth = deepest = 0
    for closing, tag, self_closing in _HTML_TAG.findall(html):
        if tag.lower() in _VOID or self_closing:
            continue
        depth = max(0, depth - 1) if closing else depth + 1
        deepest = max(deepest, depth)
    return deepest


def html_to_text(html: str, ctx: FileContext | None = None) -> tuple[str | None, str]:
    """(title, main text): boilerplate (scripts, nav, header/footer, forms) removed."""
    depth = _html_depth(html)
    if depth > MAX_HTML_DEPTH:
        if ctx:
            ctx.warn(f"{ctx.path}: HTML nested {depth} levels deep; text extracted by stripping tags")
        stripped = re.sub(r"(?is)<(script|style|noscript)\b.*?</\1\s*>", " ", html)
        return None, clean_text(re.sub(r"<[^>]+>", " ", stripped))
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = clean_text(title_node.text()) if title_node else None
    for node in tree.css(_BOILERPLATE):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.css_first("[role=main]") or tree.body
    if root is None:
        return title, ""
    for node in root.css(_BLOCKS):  # keep block structure as line breaks
        node.insert_after("\n")
    return title or None, clean_text(root.text(separator=""))


def load_html(ctx: FileContext) -> Iterator[LoadedDocument]:
    title, text = html_to_text(read_text(ctx), ctx)
    yield _single(ctx, [Segment(text + "\n\n")] if text else [], title=title)


def load_pdf(ctx: FileContext) -> Iterator[LoadedDocument]:
    """PDF text per page; every chunk keeps the page it starts on."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise ctx.fail("PDF support is not installed; pip install 'ragtune[pdf]'") from None
    try:
        reader = PdfReader(str(ctx.path), strict=False)
        if reader.is_encrypted:
            raise ctx.fail("encrypted PDF; decrypt it first (e.g. qpdf --decrypt)")
        count = len(reader.pages)
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ctx.fail(f"corrupt PDF ({type(exc).__name__}: {exc}); re-export or repair the file") from None
    if count == 0:
        raise ctx.fail("PDF has no pages")
    title = None
    try:
        title = (reader.metadata or {}).get("/Title") or None
    except Exception:  # metadata of damaged PDFs is optional, never fatal
        title = None

    def segments():
        for number, page in enumerate(reader.pages, start=1):
            try:
                text = clean_pdf_text(page.extract_text() or "")
            except Exception as exc:  # one bad page must not lose the rest of the document
                ctx.warn(f"{ctx.path}: page {number}: text not extractable ({type(exc).__name__})")
                continue
            if text:
                yield Segment(text + "\n\n", page=number)

    yield _single(ctx, segments(), title=str(title) if title else None, metadata={"pages": count})


def load_docx(ctx: FileContext) -> Iterator[LoadedDocument]:
    """DOCX paragraphs and tables in order; Heading styles start sections with a heading path."""
    try:
        import docx
    except ImportError:
        raise ctx.fail("DOCX support is not installed; pip install 'ragtune[docx]'") from None
    try:
        document = docx.Document(str(ctx.path))
    except Exception as exc:  # python-docx raises zipfile/KeyError/lxml errors for broken files
        raise ctx.fail(f"corrupt DOCX ({type(exc).__name__}); re-save it from a word processor") from None
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    segments: list[Segment] = []
    path: list[tuple[int, str]] = []
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text = clean_text(block.text)
            style = (block.style.name if block.style is not None else "") or ""
            if not text:
                continue
            if style.lower().startswith("heading") and style[-1:].isdigit():
                level = int(style[-1])
                path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, text)]
                segments.append(Segment(text + "\n\n", metadata={"headings": [t for _, t in path]}, new_section=True))
                continue
        elif isinstance(block, Table):
            rows = [" | ".join(clean_text(cell.text) for cell in row.cells) for row in block.rows]
            text = "\n".join(r for r in rows if r.strip(" |"))
            if not text:
                continue
        else:
            continue
        headings = [t for _, t in path]
        segments.append(Segment(text + "\n\n", metadata={"headings": headings} if headings else None))
    title = document.core_properties.title or (path[0][1] if path else None)
    yield _single(ctx, segments, title=title or None)


LOADERS = {
    ".txt": load_txt,
    ".text": load_txt,
    ".rst": load_txt,
    ".log": load_txt,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".xhtml": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".csv": load_csv,
    ".tsv": load_csv,
    ".json": load_json,
    ".jsonl": load_jsonl,
    ".ndjson": load_jsonl,
}


def loader_for(path) -> object | None:
    return LOADERS.get(path.suffix.lower())

