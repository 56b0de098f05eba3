"""`ragtune eval retrieval --beir`: a BEIR-format folder in, the five metrics out."""

from __future__ import annotations

import json

from conftest import run_cli
from test_retrieval import TOPICS, write_records


def make_beir(folder):
    rows = write_records(folder / "corpus.jsonl")
    queries, qrels = [], ["query-id\tcorpus-id\tscore"]
    for number, row in enumerate(rows[::4]):
        code = row["text"].split("code ")[1].rstrip(".")
        queries.append({"_id": f"q{number}", "text": f"reference {code}"})
        qrels.append(f"q{number}\t{row['_id']}\t1")
    queries.append({"_id": "unjudged", "text": "not scored"})
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return len(rows[::4])


def test_eval_retrieval_prints_the_metrics(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    judged = make_beir(beir)
    kb = tmp_path / "kb"
    result = run_cli("eval", "retrieval", "--beir", beir, "--mode", "lexical", "--kb", kb, "--json", "--threads", 2)
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100", "queries"}
    assert metrics["queries"] == judged
    # each query names its document's unique code word: BM25 must rank it first
    assert metrics["ndcg@10"] == 1.0 and metrics["mrr@10"] == 1.0
    hybrid = json.loads(run_cli("eval", "retrieval", "--beir", beir, "--kb", kb, "--json").stdout)
    assert hybrid["recall@100"] == 1.0 and hybrid["ndcg@10"] > 0.5
    assert len(TOPICS) * 8 == json.loads(run_cli("stats", kb, "--json").stdout)["documents"]  # reused, not re-ingested


def test_eval_retrieval_names_a_missing_split(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    make_beir(beir)
    result = run_cli("eval", "retrieval", "--beir", beir, "--split", "dev", check=False)
    assert result.returncode == 2
    assert "dev.tsv is missing" in result.stderr and "splits here: test" in result.stderr
