"""Ingest, sync, delete and stats on real files with the real MiniLM embedder."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from ragtune.errors import ConfigError, KnowledgeBaseError, WriterBusyError
from ragtune.kb import KnowledgeBase
from ragtune.store import WriterLock


def write_docs(folder, n=3, prefix="note"):
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["photosynthesis in plants", "the french revolution", "rust ownership rules", "volcanic eruptions"]
    for i in range(n):
        (folder / f"{prefix}{i}.md").write_text(
            f"# Note {i}\n\nThis note is about {topics[i % len(topics)]}. " + f"Detail sentence {i}. " * 40
        )


def test_ingest_then_unchanged_then_sync_changes_and_deletions(tmp_path, make_kb):
    docs = tmp_path / "docs"
    write_docs(docs, 4)
    kb = make_kb()
    report = kb.ingest([docs])
    assert (report.ingested, report.failed, report.documents_added) == (4, 0, 4)
    stats = kb.stats()
    assert stats["documents"] == 4 and stats["chunks"] >= 4

    again = kb.sync(docs)
    assert (again.ingested, again.unchanged, again.vectors_embedded) == (0, 4, 0)

    (docs / "note1.md").write_text("# Note 1\n\nCompletely new content about glaciers and ice sheets.")
    (docs / "note2.md").unlink()
    synced = kb.sync(docs)
    assert (synced.ingested, synced.unchanged, synced.removed_files) == (1, 2, 1)
    assert synced.documents_updated == 1 and synced.documents_removed == 1
    assert kb.stats()["documents"] == 3
    hits = kb.search("glaciers and ice", k=1)
    assert hits[0].source.endswith("note1.md")
    # no orphaned chunks or contents after updates and removals
    conn = kb.store.conn
    assert conn.execute("SELECT COUNT(*) FROM chunks WHERE document_id NOT IN (SELECT id FROM documents)").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM contents WHERE hash NOT IN (SELECT content_hash FROM chunks)").fetchone()[0] == 0


def test_touch_without_change_is_unchanged_and_not_reembedded(tmp_path, make_kb):
    docs = tmp_path / "docs"
    write_docs(docs, 2)
    kb = make_kb()
    kb.ingest([docs])
    os.utime(docs / "note0.md", (time.time() + 100, time.time() + 100))
    report = kb.ingest([docs])
    assert report.unchanged == 2 and report.vectors_embedded == 0


def test_duplicate_documents_and_chunks_are_stored_once(tmp_path, make_kb):
    docs = tmp_path / "docs"
    write_docs(docs, 1)
    (docs / "copy.md").write_bytes((docs / "note0.md").read_bytes())
    kb = make_kb()
    report = kb.ingest([docs])
    assert report.documents_added == 1 and report.documents_duplicate == 1
    stats = kb.stats()
    assert stats["documents"] == 2 and stats["duplicate_documents"] == 1
    chunks_once = stats["chunks"]
    # deleting the canonical copy promotes the duplicate: its chunks stay searchable
    removed = kb.delete(str(docs / "note0.md"))
    assert removed == 1
    stats = kb.stats()
    assert stats["documents"] == 1 and stats["duplicate_documents"] == 0 and stats["chunks"] == chunks_once
    assert kb.search("Detail sentence", k=1)[0].source.endswith("copy.md")


def test_repeated_paragraphs_share_one_vector(tmp_path, make_kb):
    docs = tmp_path / "docs"
    docs.mkdir()
    block = "Shared boilerplate paragraph about the company privacy policy and cookies. " * 6
    (docs / "a.md").write_text(f"# A\n\n{block}\n\n## Unique A\n\nApples are red.")
    (docs / "b.md").write_text(f"# B\n\n{block}\n\n## Unique B\n\nBananas are yellow.")
    kb = make_kb(chunk_size=64, chunk_overlap=8)
    kb.ingest([docs])
    stats = kb.stats()
    assert stats["unique_chunks"] < stats["chunks"]


def test_chunks_point_at_exact_spans_and_heading_paths(tmp_path, make_kb):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nIntro text.\n\n## Install\n\nRun make demo to install everything.")
    kb = make_kb()
    kb.ingest([docs])
    rows = kb.store.conn.execute("SELECT text, start_char, end_char, metadata FROM chunk_view ORDER BY ordinal").fetchall()
    assert json.loads(rows[-1]["metadata"]) == {"headings": ["Guide", "Install"]}
    cleaned = "# Guide\n\nIntro text.\n\n## Install\n\nRun make demo to install everything.\n\n"
    for row in rows:
        assert cleaned[row["start_char"] : row["end_char"]] == row["text"]


def test_second_writer_gets_a_clear_error(tmp_path, make_kb):
    kb = make_kb()
    holder = WriterLock(kb.path / ".writer.lock")
    holder.acquire()
    try:
        with pytest.raises(WriterBusyError, match="--wait"):
            kb.ingest([tmp_path])
    finally:
        holder.release()


def test_second_writer_process_waits_or_fails(tmp_path, make_kb):
    kb = make_kb()
    script = (
        "import sys, time; from ragtune.store import WriterLock; from pathlib import Path;"
        f"l = WriterLock(Path({str(kb.path / '.writer.lock')!r})); l.acquire(); print('locked', flush=True); time.sleep(3)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    docs = tmp_path / "docs"
    write_docs(docs, 1)
    busy = run_cli("ingest", kb.path, docs, check=False)
    assert busy.returncode == WriterBusyError.exit_code and "being written by pid" in busy.stderr
    waited = run_cli("ingest", kb.path, docs, "--wait", 30, "--json")
    assert json.loads(waited.stdout)["ingested"] == 1
    holder.wait(timeout=30)


def test_readers_see_whole_documents_during_a_write(tmp_path, make_kb):
    kb = make_kb()
    docs = tmp_path / "docs"
    write_docs(docs, 40)
    reader = sqlite3.connect(f"file:{kb.path / 'ragtune.db'}?mode=ro", uri=True)
    writer = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "ingest", str(kb.path), str(docs), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_partial = 0
    while writer.poll() is None:
        rows = reader.execute(
            "SELECT d.chunk_count, (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id) FROM documents d"
        ).fetchall()
        seen_partial += sum(1 for declared, actual in rows if declared != actual)
        time.sleep(0.01)
    assert writer.returncode == 0, writer.stderr.read()
    assert seen_partial == 0
    assert reader.execute("SELECT COUNT(*) FROM documents").fetchone()[0] == 40


def test_cli_init_ingest_stats_delete_json(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 2)
    kb = tmp_path / "kb"
    run_cli("init", kb, "--chunk-size", 128, "--chunk-overlap", 16)
    report = json.loads(run_cli("ingest", kb, docs, "--json").stdout)
    assert (report["ingested"], report["unchanged"], report["skipped"], report["failed"]) == (2, 0, 0, 0)
    assert set(report["timings"]) == {"parse", "chunk", "embed", "store"}
    stats = json.loads(run_cli("stats", kb, "--json").stdout)
    assert stats["documents"] == 2 and stats["chunks"] >= 2
    removed = json.loads(run_cli("delete", kb, docs / "note0.md", "--json").stdout)
    assert removed == {"removed": 1}
    assert json.loads(run_cli("stats", kb, "--json").stdout)["documents"] == 1


def test_config_errors_name_the_flag(tmp_path):
    result = run_cli("init", tmp_path / "kb", "--chunk-size", 100, "--chunk-overlap", 60, check=False)
    assert result.returncode == ConfigError.exit_code
    assert "--chunk-overlap" in result.stderr and "Traceback" not in result.stderr
    too_big = run_cli("init", tmp_path / "kb2", "--chunk-size", 1000, check=False)
    assert too_big.returncode == 0  # the size is checked against the embedder at ingest
    docs = tmp_path / "docs"
    write_docs(docs, 1)
    result = run_cli("ingest", tmp_path / "kb2", docs, check=False)
    assert result.returncode == ConfigError.exit_code and "--chunk-size 254" in result.stderr


def test_opening_a_non_kb_is_a_clear_error(tmp_path):
    with pytest.raises(KnowledgeBaseError, match="ragtune init"):
        KnowledgeBase.open(tmp_path)


def test_beir_corpus_jsonl_keeps_its_ids(tmp_path, make_kb):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"doc{i}", "title": f"Title {i}", "text": f"Abstract number {i} about topic {i % 3}.", "metadata": {}}
            for i in range(12)]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from ragtune.config import IngestOptions, RecordFields

    kb = make_kb()
    options = IngestOptions(fields=RecordFields(text_field="text", id_field="_id", title_field="title"))
    report = kb.ingest([corpus], options)
    assert report.documents_added == 12
    ids = {r[0] for r in kb.store.conn.execute("SELECT doc_id FROM documents")}
    assert ids == {f"doc{i}" for i in range(12)}
    # one changed record in a big file re-embeds only that record
    rows[5]["text"] = "A rewritten abstract about quantum tunnelling."
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = kb.ingest([corpus], options)
    assert (report.documents_updated, report.documents_unchanged) == (1, 11)


def test_ingest_expands_a_home_relative_path(make_kb, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "a.txt").write_text("A note about tomatoes in the home folder.")
    monkeypatch.setenv("HOME", str(home))
    kb = make_kb()
    report = kb.ingest(["~/notes"])
    assert report.ingested == 1 and kb.stats()["documents"] == 1
