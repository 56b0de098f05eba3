"""The runs database: every evaluation run and each of its predictions, so runs are compared later
without re-running them (`ragtune compare --runs ...`).

Why SQLite with one commit per prediction: evaluation is slow (minutes to hours of generation), and a
run killed by SIGKILL, a power cut or an out-of-memory kill must lose at most the prediction being
made. WAL mode lets a report read a run while it is still being written. A run is identified for
resuming by what determines its answers: dataset hash, strategy, model (name and hash), KB path and k;
re-running the same command finds the unfinished run and skips the examples already stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_NAME = "ragtune-runs.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    strategy TEXT NOT NULL,
    dataset_path TEXT NOT NULL,
    dataset_sha256 TEXT NOT NULL,
    model TEXT,
    model_hash TEXT,
    kb_path TEXT,
    k INTEGER,
    config TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished'))
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    example_id TEXT NOT NULL,
    prediction TEXT NOT NULL,
    scores TEXT NOT NULL,
    retrieved_ids TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_s REAL,
    created TEXT NOT NULL,
    PRIMARY KEY (run_id, example_id)
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_path(kb: str | Path | None) -> Path:
    """`<kb>/runs.db` when a knowledge base is used (runs travel with it), else `./ragtune-runs.db`."""
    return Path(kb) / "runs.db" if kb else Path.cwd() / DEFAULT_NAME


def file_sha256(path: str | Path) -> str:
    """Content hash of the dataset: a resumed run must score the same questions."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing_hash(paths: list[Path]) -> str:
    """A cheap fingerprint, not a content hash: sha256 over each file's name, size and mtime.
    Hashing gigabytes of weights on every run would cost more than many evaluations; a changed,
    re-trained or re-exported model changes sizes or mtimes, which is what this must catch."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            stat = path.stat()
        except OSError:
            continue
        digest.update(f"{path.name}\0{stat.st_size}\0{int(stat.st_mtime)}\n".encode())
    return "meta-sha256:" + digest.hexdigest()[:32]


def model_hash(model: str | None) -> str | None:
    """Fingerprint of a model: a file or directory (GGUF, run or export dir) by its files' names,
    sizes and mtimes; a registered name by its packaged files; otherwise (an endpoint's model)
    None, as nothing local identifies it."""
    from ..generate.base import DEFAULT_MODEL

    name = model or DEFAULT_MODEL
    path = Path(name).expanduser()
    if path.is_file():
        return _listing_hash([path])
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()][:5000]
        return _listing_hash(files)
    try:
        from ..models.registry import find_model

        spec = find_model(name)
        if spec is not None:
            return _listing_hash(list(spec.local_files()))
    except Exception as exc:  # a broken install must not stop the run; the name is still recorded
        log.warning("could not fingerprint model %s: %s", name, exc)
    return None


class RunsDB:
    """One connection to a runs database. Each write is its own transaction (committed at once)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30.0)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self.conn:
            self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RunsDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def find_unfinished(self, *, strategy: str, dataset_sha256: str, model: str | None, model_hash: str | None,
                        kb_path: str | None, k: int | None) -> str | None:
        """The newest running run with the same identity, to resume; None when there is none."""
        row = self.conn.execute(
            "SELECT id FROM runs WHERE status = 'running' AND strategy = ? AND dataset_sha256 = ? "
            "AND model IS ? AND model_hash IS ? AND kb_path IS ? AND k IS ? ORDER BY started DESC, rowid DESC LIMIT 1",
            (strategy, dataset_sha256, model, model_hash, kb_path, k)).fetchone()
        return row["id"] if row else None

    def create_run(self, *, strategy: str, dataset_path: str, dataset_sha256: str, model: str | None,
                   model_hash: str | None, kb_path: str | None, k: int | None, config: dict) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (id, strategy, dataset_path, dataset_sha256, model, model_hash, kb_path, k, config, "
                "started, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                (run_id, strategy, dataset_path, dataset_sha256, model, model_hash, kb_path, k,
                 json.dumps(config, sort_keys=True, default=str), _now()))
        log.info("created run %s (%s) in %s", run_id, strategy, self.path)
        return run_id

    def run(self, run_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["config"] = json.loads(data["config"])
        return data

    def runs(self) -> list[dict]:
        return [self.run(row["id"]) for row in self.conn.execute("SELECT id FROM runs ORDER BY started, rowid")]

    def prediction_counts(self) -> dict[str, int]:
        """Run id -> how many predictions it has stored."""
        return dict(self.conn.execute("SELECT run_id, COUNT(*) FROM predictions GROUP BY run_id").fetchall())

    def done_ids(self, run_id: str) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT example_id FROM predictions WHERE run_id = ?", (run_id,))}

    def add_prediction(self, run_id: str, example_id: str, *, prediction: str, scores: dict, retrieved_ids: list,
                       prompt_tokens: int | None, completion_tokens: int | None, latency_s: float | None) -> None:
        """Store one prediction and commit it at once, so a kill loses nothing already answered."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO predictions (run_id, example_id, prediction, scores, retrieved_ids, "
                "prompt_tokens, completion_tokens, latency_s, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, example_id, prediction, json.dumps(scores, sort_keys=True), json.dumps(list(retrieved_ids)),
                 prompt_tokens, completion_tokens, latency_s, _now()))

    def predictions(self, run_id: str) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM predictions WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
        result = []
        for row in rows:
            data = dict(row)
            data["scores"] = json.loads(data["scores"])
            data["retrieved_ids"] = json.loads(data["retrieved_ids"])
            result.append(data)
        return result

    def finish(self, run_id: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET status = 'finished', finished = ? WHERE id = ?", (_now(), run_id))


def open_runs_db(runs_db: str | Path | None, kb: str | Path | None) -> RunsDB:
    """Open `runs_db`, or the default for `kb` (see default_path)."""
    path = Path(runs_db) if runs_db else default_path(kb)
    log.debug("runs database %s (pid %d)", path, os.getpid())
    return RunsDB(path)
