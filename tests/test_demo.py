"""`ragtune demo` (the README's main job) runs end to end on the project's own docs/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from ragtune.demo import latency_line

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One demo folder for the module: the second demo finds the docs already ingested, as a user's does."""
    return tmp_path_factory.mktemp("demo")


def test_demo_answers_three_questions_with_sources(workdir):
    result = run_cli("demo", "--workdir", workdir, "--threads", 2, "--json")
    data = json.loads(result.stdout)
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert data["stats"]["documents"] == len(docs)
    assert len(data["answers"]) == 3
    first = data["answers"][0]
    assert "install" in first["question"]
    # retrieval gave the install guide to the model first
    assert first["prompt"].rsplit("Sources:", 1)[1].lstrip().startswith("[1] Installing ragtune")  # after the worked example
    for answer in data["answers"]:
        assert answer["found"] and answer["answer"].strip()
        # right and cited: the fact asked for (ragtune/demo.py DEMO_QUESTIONS) and the document holding it
        assert answer["check"]["fact"], (answer["question"], answer["answer"])
        assert answer["check"]["cited"], (answer["question"], answer["answer"], answer["check"]["cited_sources"])
        assert answer["timings"]["completion_tokens"] > 0
        for citation in answer["citations"]:
            assert Path(citation["source"]).name in docs and citation["end"] > citation["start"]
    assert data["timings"]["total_s"] < 180


def test_demo_prints_answers_in_a_narrow_terminal(workdir):
    # layout only: the small model renders the same table in a third of the time
    result = run_cli("demo", "--workdir", workdir, "--threads", 2, "--model", "SmolLM2-135M-Instruct",
                     env={"COLUMNS": "60"})
    assert result.stdout.count("question ") >= 3
    assert "documents" in result.stdout
    assert len(re.findall(r"answered in \d+\.\d s", result.stdout)) == 3, result.stdout  # one per answer


def test_latency_line_counts_from_the_question():
    """Retrieval and the prompt come before the model's first token; a 'not found' answer has no tokens."""
    timings = {"retrieve_s": 0.4, "generate_s": 2.5, "first_token_s": 0.6, "total_s": 3.2}
    assert latency_line(timings) == "answered in 3.2 s (first token 1.3 s)"
    assert latency_line({"retrieve_s": 0.05, "total_s": 0.05}) == "answered in 0.1 s"
