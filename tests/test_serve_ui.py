"""The web UI as a person uses it, in headless Chromium (Debian's `chromium` through Playwright's
`executable_path`, no browser download) against a real server: a question gets a streamed, cited
answer and clicking the citation shows the passage with its span highlighted; search with explain
ranks; upload and delete; the runs page opens a comparison report. Screenshots go to
$RAGTUNE_SCREENSHOTS (default: the test's tmp dir) to look at by hand."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ragtune.generate.llamacpp import unavailable_reason
from test_serve_api import DOCS, write_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it with apt-get)"),
              pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]
KEY = "ui-test-key-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    from ragtune.config import KBConfig
    from ragtune.kb import KnowledgeBase
    from ragtune.serve.app import create_app
    from ragtune.serve.server import BackgroundServer
    from ragtune.serve.settings import ModelSettings, ServeSettings
    from ragtune.serve.state import ServeState

    root = tmp_path_factory.mktemp("serve-ui")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    with KnowledgeBase.init(root / "kb", KBConfig(chunk_size=64, chunk_overlap=8)) as kb:
        kb._embedder = embedder
        kb.ingest([docs])
    write_runs(root / "kb" / "runs.db", root / "eval.jsonl")
    settings = ServeSettings(api_keys=[KEY], threads=1, slots=2, queue=4, max_tokens=48, k=3,
                             models=[ModelSettings(model="SmolLM2-135M-Instruct")])  # pinned for speed
    state = ServeState.open([root / "kb"], settings, embedder=embedder)
    with BackgroundServer(create_app(state)) as running:
        yield running
    state.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("RAGTUNE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("dialog", lambda dialog: dialog.accept())
        page.shots = shots
        page.goto(server.url + "/ui/")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        yield page
        browser.close()


def test_question_gets_a_cited_answer_and_the_citation_opens_the_passage(page):
    page.fill("#question", "What colour is the Halvard bridge?")
    page.click("#ask")
    answer = page.locator(".message.assistant[data-done=true]")
    answer.wait_for(timeout=60_000)
    assert "green" in answer.locator(".text").inner_text().lower()
    cite = answer.locator("button.cite").first
    assert cite.is_visible()
    cite.click()
    passage = page.locator("#passage")
    passage.wait_for(state="visible")
    marked = page.locator("#passage-text mark").inner_text()
    assert "green" in marked  # the span cited: the sentence that says it
    assert page.locator("#passage-title").inner_text() == "bridge.txt"
    page.screenshot(path=str(page.shots / "serve_chat.png"))
    assert not page.errors
    page.click("#passage-close")


def test_search_shows_explain_ranks_and_opens_passages(page):
    page.click("#tabs button[data-tab=search]")
    page.fill("#search-query", "ferry passengers north pier")
    page.click("#search-form button[type=submit]")
    rows = page.locator("#search-results tr.clickable")
    rows.first.wait_for()
    assert rows.count() == 10
    header = page.locator("#search-results th").all_inner_texts()
    assert "dense rank (cosine)" in header and "lexical rank (BM25)" in header
    rows.nth(1).click()
    page.locator("#passage").wait_for(state="visible")
    assert "Ferry number" in page.locator("#passage-text mark").inner_text()
    assert len(page.locator("#passage-text").inner_text()) > len(page.locator("#passage-text mark").inner_text())
    page.screenshot(path=str(page.shots / "serve_search.png"))
    page.click("#passage-close")


def test_documents_upload_and_delete(page, tmp_path):
    page.click("#tabs button[data-tab=documents]")
    page.locator("#document-list tr td").first.wait_for()
    note = tmp_path / "lighthouse.md"
    note.write_text("The Quarnell lighthouse keeper feeds seventeen cats every Tuesday.")
    page.set_input_files("#upload-file", str(note))
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("document.querySelector('#upload-status').textContent.includes('1 document')")
    row = page.locator("#document-list tr", has_text="lighthouse.md")
    row.wait_for()
    page.screenshot(path=str(page.shots / "serve_documents.png"))
    row.locator("button.delete").click()
    row.wait_for(state="detached")
    assert f"{len(DOCS)} documents" in page.locator("#document-list caption").inner_text()


def test_runs_page_opens_a_comparison_report(page):
    page.click("#tabs button[data-tab=runs]")
    boxes = page.locator("#run-list input[type=checkbox]")
    boxes.first.wait_for()
    assert boxes.count() == 2 and page.locator("#compare").is_disabled()
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.click("#compare")
    page.locator("#report").wait_for(state="visible")
    frame = page.frame_locator("#report")
    assert "Recommendation" in frame.locator("#recommendation").inner_text()
    page.screenshot(path=str(page.shots / "serve_runs.png"), full_page=True)
    assert not page.errors


def test_inline_markers_become_citation_buttons(page):
    """The answer's own [n] markers (SmolLM2 rarely writes them, larger models do) turn into buttons for
    the sources that exist; an unknown number stays plain text; markup in the answer is never run."""
    result = page.evaluate("""() => {
        const node = document.createElement("div");
        const refs = [{n: 1, chunk_id: 1, source: "/a.txt"}, {n: 2, chunk_id: 2, source: "/b.txt"}];
        renderAnswer(node, "Green [1]. Built in 1921 [1, 2] and [7]. <img src=x onerror=alert(1)>", refs);
        return {buttons: [...node.querySelectorAll("button.cite")].map((b) => b.textContent),
                text: node.textContent, images: node.querySelectorAll("img").length};
    }""")
    assert result["buttons"] == ["[1]", "[1]", "[2]"]
    assert "[7]" in result["text"] and "<img" in result["text"] and result["images"] == 0
