"""The compare report as a person sees it: opened in headless Chromium (Debian's `chromium`, driven by
Playwright with `executable_path`, no browser download), the plots and the recommendation render."""

from __future__ import annotations

import shutil

import pytest

from ragtune.evaluate.compare import compare_runs
from ragtune.evaluate.report import write_reports
from test_compare import N_BOOT, three  # noqa: F401  (the synthetic three-run fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it with apt-get)")


def test_report_renders_plots_and_recommendation(three, tmp_path):  # noqa: F811
    playwright = pytest.importorskip("playwright.sync_api")
    db, ids = three
    result = compare_runs(db, ids, knowledge_changes="daily", n_boot=N_BOOT)
    write_reports(result, tmp_path / "out")
    page_path = tmp_path / "out" / "report.html"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_path.as_uri())
            svgs = page.locator("svg")
            assert svgs.count() == 3
            for i in range(3):  # each plot is laid out with a real size, not collapsed or hidden
                box = svgs.nth(i).bounding_box()
                assert box is not None and box["width"] > 200 and box["height"] > 100, box
            # the bars are drawn: matplotlib's patches become paths inside the first plot
            assert svgs.nth(0).locator("path").count() >= 3
            body = page.inner_text("body")
            assert "Recommendation" in body and "cannot separate" in body
            assert "<script>alert(1)</script>" in body  # shown as text, never run
            assert not errors
            page.screenshot(path=str(tmp_path / "compare_report.png"), full_page=True)  # to look at by hand
        finally:
            browser.close()
