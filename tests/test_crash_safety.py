"""kill -9 an ingest of 2,000 documents at random moments, resume, and compare with a clean run."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]
WORDS = "cell protein gene enzyme membrane signal pathway receptor tissue virus immune drug dose trial".split()


def make_corpus(folder, n=2000):
    rng = random.Random(42)
    for i in range(n):
        sub = folder / f"part{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
        (sub / f"doc{i:04d}.txt").write_text(f"Document {i}. {words}.\n")


def snapshot(db_path):
    conn = sqlite3.connect(db_path)
    try:
        documents = sorted(conn.execute("SELECT source, content_hash, chunk_count, duplicate_of IS NULL FROM documents"))
        chunks = sorted(conn.execute(
            "SELECT d.source, c.ordinal, c.content_hash, c.start_char, c.end_char FROM chunks c "
            "JOIN documents d ON d.id = c.document_id"))
        contents = sorted(r[0] for r in conn.execute("SELECT hash FROM contents"))
        files = sorted(conn.execute("SELECT path, content_hash FROM files"))
        orphans = conn.execute(
            "SELECT (SELECT COUNT(*) FROM chunks WHERE document_id NOT IN (SELECT id FROM documents))"
            " + (SELECT COUNT(*) FROM contents WHERE hash NOT IN (SELECT content_hash FROM chunks))"
            " + (SELECT COUNT(*) FROM chunks WHERE content_hash NOT IN (SELECT hash FROM contents))"
            # every vector whole: as long as the longest (the embedder's dimension) and not empty
            " + (SELECT COUNT(*) FROM contents WHERE length(vector) != (SELECT MAX(length(vector)) FROM contents)"
            "    OR length(vector) = 0)").fetchone()[0]
        declared = conn.execute(
            "SELECT COUNT(*) FROM documents d WHERE d.chunk_count != (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id)"
        ).fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return {"documents": documents, "chunks": chunks, "contents": contents, "files": files,
            "orphans": orphans, "miscounted": declared, "integrity": integrity}


def documents_in(db_path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def test_sigkill_during_ingest_then_resume_equals_clean_ingest(tmp_path):
    corpus = tmp_path / "corpus"
    make_corpus(corpus)
    clean_kb, crash_kb = tmp_path / "clean", tmp_path / "crash"
    for kb in (clean_kb, crash_kb):
        run_cli("init", kb, "--chunk-size", 64, "--chunk-overlap", 8, "--embedder", "WordLlama")  # crash safety, not the model

    rng = random.Random(7)
    kills = 0
    progress = []
    for attempt in range(6):
        process = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "ingest", str(crash_kb), str(corpus), "--json"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = documents_in(crash_kb / "ragtune.db")
        deadline = time.monotonic() + 120
        # wait until this run has stored something, then kill it at a random moment
        while process.poll() is None and documents_in(crash_kb / "ragtune.db") <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
            progress.append(documents_in(crash_kb / "ragtune.db"))
        if kills >= 3:
            break
    assert kills >= 3, "ingest finished before it could be killed three times"
    # files are embedded in batches across files, so documents arrive in bursts: at least one kill
    # must have landed between bursts, with part of the corpus stored
    assert any(0 < p < 2000 for p in progress), progress

    resumed = run_cli("ingest", crash_kb, corpus, "--json")
    run_cli("ingest", clean_kb, corpus, "--json")
    crashed, clean = snapshot(crash_kb / "ragtune.db"), snapshot(clean_kb / "ragtune.db")
    assert clean["integrity"] == crashed["integrity"] == "ok"
    assert len(clean["documents"]) == 2000 and clean["orphans"] == 0
    assert crashed["orphans"] == 0 and crashed["miscounted"] == 0
    for key in ("documents", "chunks", "contents", "files"):
        assert crashed[key] == clean[key], key
    assert '"failed": 0' in resumed.stdout
