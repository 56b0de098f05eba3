"""`ragtune eval retrieval --beir DIR`: score a KB's retrieval on a BEIR-format data set.

BEIR layout: corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id", "text"}) and
qrels/<split>.tsv (query-id, corpus-id, score, with a header line). Doc ids in results are the
corpus `_id`; a document's rank is that of its best chunk.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from ..errors import ConfigError
from .metrics import evaluate

RECORD_FIELDS = {"text_field": "text", "id_field": "_id", "title_field": "title"}


def load_queries(path: Path) -> dict[str, str]:
    queries = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                queries[str(record["_id"])] = record["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: expected a JSON object with _id and text ({exc}); fix or drop the line") from None
    return queries


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts or (number == 1 and not parts[-1].lstrip("-").isdigit()):
                continue  # blank line or the header
            if len(parts) < 3 or not parts[-1].lstrip("-").isdigit():
                raise ConfigError(f"{path}:{number}: expected 'query-id corpus-id score', got {line.strip()!r}")
            qrels.setdefault(parts[0], {})[parts[-2]] = int(parts[-1])
    return qrels


def load_beir(directory: Path, split: str) -> tuple[Path, dict[str, str], dict[str, dict[str, int]]]:
    directory = Path(directory)
    corpus, queries_path, qrels_path = directory / "corpus.jsonl", directory / "queries.jsonl", directory / "qrels" / f"{split}.tsv"
    for path, what in ((corpus, "the corpus"), (queries_path, "the queries"), (qrels_path, f"the {split} judgements")):
        if not path.exists():
            available = sorted(p.stem for p in (directory / "qrels").glob("*.tsv")) if (directory / "qrels").is_dir() else []
            hint = f"; splits here: {', '.join(available)} (--split)" if available and path == qrels_path else ""
            raise ConfigError(f"--beir {directory}: {what} file {path.name} is missing{hint}")
    queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise ConfigError(f"{qrels_path}: {len(missing)} judged queries are not in queries.jsonl (first: {missing[0]})")
    return corpus, {q: queries[q] for q in qrels}, qrels


def document_run(hits, depth: int = 100) -> dict[str, float]:
    """Chunk hits -> documents ranked by their best chunk; scores encode the rank, so no ties."""
    run: dict[str, float] = {}
    for hit in hits:
        if hit.doc_id not in run:
            run[hit.doc_id] = float(depth * 10 - len(run))
        if len(run) >= depth:
            break
    return run


def evaluate_retrieval(beir_dir, *, split: str = "test", kb_path=None, mode: str = "hybrid",
                       threads: int | None = None, config=None, progress=None, limit: int | None = None) -> dict:
    """Ingest the corpus into `kb_path` (or a temporary KB), run every judged query, return metrics."""
    from ..config import IngestOptions, RecordFields
    from ..kb import KnowledgeBase

    corpus, queries, qrels = load_beir(Path(beir_dir), split)
    if limit:
        queries = dict(list(queries.items())[:limit])
        qrels = {q: qrels[q] for q in queries}
    timings = {}
    with ExitStack() as stack:
        if kb_path is None:
            kb_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ragtune-beir-"))) / "kb"
        kb = stack.enter_context(KnowledgeBase.init(kb_path, config, exist_ok=True))
        kb.threads = threads if threads is not None else kb.threads
        started = time.perf_counter()
        report = kb.ingest([corpus], IngestOptions(fields=RecordFields(**RECORD_FIELDS)))
        if report.failed:
            raise ConfigError(f"{corpus}: ingest failed: {report.failures[:3]}")
        timings["ingest_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        run = {}
        for number, (query_id, text) in enumerate(queries.items(), start=1):
            run[query_id] = document_run(kb.search(text, 200, mode=mode))
            if progress:
                progress(number, len(queries))
        timings["search_s"] = round(time.perf_counter() - started, 2)
    metrics = evaluate(qrels, run)
    return {"metrics": metrics, "timings": timings, "mode": mode, "split": split}
