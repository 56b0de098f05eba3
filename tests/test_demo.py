"""`ragtune demo` (the README's main job) runs end to end on the project's own docs/."""

from __future__ import annotations

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.integration


def test_demo_ingests_docs_and_answers_three_searches(tmp_path):
    result = run_cli("demo", "--workdir", tmp_path, "--threads", 2)
    out = result.stdout
    assert out.count("search: ") == 3
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert f"{len(docs)} documents" in out
    # the install question finds the install guide
    first_table = out.split("search: ")[1]
    assert "install.md" in first_table.split("search: ")[0]
