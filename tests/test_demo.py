"""`ragtune demo` (the README's main job) runs end to end on the project's own docs/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.integration


def test_demo_ingests_docs_and_answers_three_searches(tmp_path):
    result = run_cli("demo", "--workdir", tmp_path, "--threads", 2, "--json")
    data = json.loads(result.stdout)
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert data["stats"]["documents"] == len(docs)
    assert len(data["searches"]) == 3
    # the install question finds the install guide first
    first = data["searches"][0]
    assert "install" in first["query"]
    assert Path(first["hits"][0]["source"]).name == "install.md"
    for search in data["searches"]:
        assert len(search["hits"]) == 3
        for hit in search["hits"]:
            assert hit["text"] and hit["end"] > hit["start"]


def test_demo_prints_tables_in_a_narrow_terminal(tmp_path):
    result = run_cli("demo", "--workdir", tmp_path, "--threads", 2, env={"COLUMNS": "60"})
    assert result.stdout.count("search: ") == 3
    assert "documents" in result.stdout
