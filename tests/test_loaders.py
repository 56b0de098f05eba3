"""Each loader on a real file of its format, through the real pipeline context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.config import IngestOptions, RecordFields
from ragtune.errors import LoaderError
from ragtune.ingest.documents import FileContext
from ragtune.ingest.loaders import LOADERS, markdown_sections


def load(path: Path, **fields):
    ctx = FileContext(path, "filehash", "docid", IngestOptions(fields=RecordFields(**fields)))
    docs = list(LOADERS[path.suffix](ctx))
    for doc in docs:
        doc.segments = list(doc.segments)
    return docs, ctx


def text_of(doc) -> str:
    return "".join(s.text for s in doc.segments)


def test_markdown_sections_follow_heading_paths_and_skip_code_fences():
    md = "# Guide\nintro\n## Install\nrun make\n```\n# not a heading\n```\n### Linux\napt\n## Use\nsearch"
    sections = markdown_sections(md)
    assert [h for h, _ in sections] == [["Guide"], ["Guide", "Install"], ["Guide", "Install", "Linux"], ["Guide", "Use"]]
    assert "# not a heading" in sections[1][1]


def test_html_keeps_main_text_and_drops_boilerplate(tmp_path):
    page = tmp_path / "p.html"
    page.write_text(
        "<html><head><title>Refunds</title><script>track()</script><style>p{}</style></head><body>"
        "<nav>Home | About</nav><header>Site header</header><main><h1>Refund policy</h1>"
        "<p>Refunds take <b>14 days</b>.</p><ul><li>Keep receipts</li></ul></main>"
        "<footer>Copyright</footer></body></html>"
    )
    (doc,), _ = load(page)
    text = text_of(doc)
    assert doc.title == "Refunds"
    assert "Refunds take 14 days." in text and "Keep receipts" in text
    for junk in ("track()", "Home | About", "Site header", "Copyright", "p{}"):
        assert junk not in text


def test_deeply_nested_html_falls_back_to_tag_stripping(tmp_path):
    page = tmp_path / "deep.html"
    page.write_text("<html><body>" + "<div>" * 30000 + "buried text" + "</div>" * 30000 + "</body></html>")
    (doc,), ctx = load(page)
    assert "buried text" in text_of(doc)
    assert any("nested" in w for w in ctx.warnings)


def test_pdf_text_keeps_page_numbers(tmp_path):
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.set_font("helvetica", size=12)
    for words in ("first page about photosynthesis", "second page about mitochondria"):
        pdf.add_page()
        pdf.multi_cell(0, 10, words)
    path = tmp_path / "doc.pdf"
    pdf.output(str(path))
    (doc,), _ = load(path)
    assert [s.page for s in doc.segments] == [1, 2]
    assert "mitochondria" in doc.segments[1].text


def test_corrupt_pdf_is_a_loader_error(tmp_path):
    path = tmp_path / "bad.pdf"
    path.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    with pytest.raises(LoaderError, match="PDF"):
        load(path)


def test_docx_paragraphs_tables_and_headings(tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_heading("Leave policy", level=1)
    document.add_paragraph("Employees get 25 days of leave.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Sick leave"
    table.rows[0].cells[1].text = "10 days"
    path = tmp_path / "policy.docx"
    document.save(str(path))
    (doc,), _ = load(path)
    text = text_of(doc)
    assert "Employees get 25 days of leave." in text and "Sick leave | 10 days" in text
    assert doc.segments[0].new_section and doc.segments[1].metadata == {"headings": ["Leave policy"]}


def test_csv_rows_keep_header_context_and_report_ragged_rows(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("name,price,notes\nlamp,10,bright\nchair,20\ndesk,30,oak,extra\n")
    docs, ctx = load(path)
    assert len(docs) == 3
    assert text_of(docs[0]).strip() == "name: lamp\nprice: 10\nnotes: bright"
    assert any(":3:" in w and "2 fields" in w for w in ctx.warnings)
    assert any(":4:" in w and "4 fields" in w for w in ctx.warnings)


def test_jsonl_bad_lines_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        json.dumps({"_id": "d1", "title": "Aspirin", "text": "Aspirin thins blood."}) + "\n"
        + "{not json\n"
        + json.dumps({"_id": "d3", "body": "no text field"}) + "\n"
        + json.dumps({"_id": "d4", "title": "", "text": "Statins lower LDL.", "metadata": {"year": 2020}}) + "\n"
    )
    docs, ctx = load(path, text_field="text", id_field="_id", title_field="title")
    assert [d.doc_id for d in docs] == ["d1", "d4"]
    assert text_of(docs[0]).startswith("Aspirin\n\nAspirin thins blood.")
    assert docs[1].metadata == {"metadata": {"year": 2020}}
    assert any(w.startswith(f"{path}:2: invalid JSON") for w in ctx.warnings)
    assert any(w.startswith(f"{path}:line 3: field 'text' missing") for w in ctx.warnings)


def test_json_object_of_objects_uses_keys_as_ids(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"123": {"text": "yes it does"}, "456": {"text": "no"}}))
    docs, _ = load(path)
    assert [d.doc_id for d in docs] == ["123", "456"]


def test_latin1_text_is_detected_and_decoded(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Le café est très chaud, déjà servi à la française. ".encode("latin-1") * 20)
    (doc,), ctx = load(path)
    assert "café" in text_of(doc)
    assert any("not valid UTF-8" in w for w in ctx.warnings)


def test_binary_content_with_txt_name_is_rejected(tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 10)
    with pytest.raises(LoaderError, match="binary content"):
        load(path)
