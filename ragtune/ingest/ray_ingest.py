"""`ragtune ingest KB PATH --ray`: the same ingest, its parsing, chunking and embedding spread over a Ray
cluster with Ray Data.

The pipeline: the driver discovers files and decides which changed (the store is on its disk) ->
`flat_map` tasks read, clean and chunk each file (the same loaders and `chunk_records` as a local
ingest) -> `map_batches` over an actor pool embeds the chunk texts (each actor loads the KB's embedder
once) -> the driver writes each file's documents in one transaction through the local pipeline's own
writer (`Ingestor.write`). So a Ray ingest stores what a local ingest stores: the same documents and
chunks, vectors equal within float rounding, the same search results (tests/test_ray.py).

Where the cluster runs on other machines, every node needs ragtune and the KB's embedder installed
(the same image) and the files at the same path (shared storage): workers read the files themselves.
Ray retries a task or actor that dies (a killed worker), so its files are still processed once.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..store import ChunkRecord
from .discover import Listing, discover
from .pipeline import IngestReport, Ingestor, _Doc, _FileJob

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _embedder(name: str, precision: str, threads: int | None):
    """One embedder per Ray worker process (tasks reuse their worker), loaded on first use."""
    from ..models.embedder import Embedder

    return Embedder(name, precision=precision, threads=threads)


def load_file(item: dict, *, config: dict, options: dict, threads: int | None) -> list[dict]:
    """Read, clean and chunk one file (on a worker): one row per chunk, or one row with the error."""
    from ..config import IngestOptions, KBConfig
    from ..errors import LoaderError
    from .documents import FileContext
    from .loaders import loader_for
    from .pipeline import chunk_records

    kb_config, ingest_options = KBConfig(**config), IngestOptions(**options)
    path = Path(item["path"])
    ctx = FileContext(path, item["file_hash"], item["doc_key"], ingest_options)
    tokenizer = _embedder(kb_config.embedder, kb_config.precision, threads).tokenizer
    timings = {"parse": 0.0, "chunk": 0.0}
    rows = []
    try:
        for loaded in loader_for(path)(ctx):
            # no nulls in a column: Ray Data's numpy batches turn them into NaN
            base = {"file": item["file"], "source": loaded.source, "doc_id": loaded.doc_id,
                    "title": json.dumps(loaded.title),
                    "content_hash": loaded.content_hash, "metadata": json.dumps(loaded.metadata, default=str),
                    "error": ""}
            chunks = list(chunk_records(loaded.segments, tokenizer, kb_config, timings))
            if not chunks:
                ctx.warn(f"{loaded.source}: no text to index")
                rows.append({**base, **_NO_CHUNK})
            for c in chunks:
                rows.append({**base, "ordinal": c.ordinal, "chunk_hash": c.content_hash, "text": c.text,
                             "tokens": c.token_count, "start": c.start, "end": c.end,
                             "page": -1 if c.page is None else c.page,
                             "chunk_metadata": json.dumps(c.metadata)})
    except LoaderError as exc:
        rows = [{**_ERROR, "file": item["file"], "error": json.dumps([exc.reason, exc.skipped])}]
    except Exception as exc:  # noqa: BLE001 - the per-file boundary, as in the local pipeline
        rows = [{**_ERROR, "file": item["file"], "error": json.dumps([f"{type(exc).__name__}: {exc}", False])}]
    for row in rows:
        row["warnings"] = json.dumps(ctx.warnings)
    return rows


_NO_CHUNK = {"ordinal": -1, "chunk_hash": "", "text": "", "tokens": 0, "start": 0, "end": 0, "page": -1,
             "chunk_metadata": "null"}
_ERROR = {"source": "", "doc_id": "", "title": "null", "content_hash": "", "metadata": "{}", **_NO_CHUNK}


class EmbedChunks:
    """A Ray Data actor: the KB's embedder, loaded once, embedding batches of chunk texts."""

    def __init__(self, name: str, precision: str, threads: int | None, batch_size: int):
        self.embedder, self.batch_size = _embedder(name, precision, threads), batch_size

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        wanted = [i for i, o in enumerate(batch["ordinal"]) if o >= 0]
        vectors = np.zeros((len(texts), self.embedder.dimension), dtype=np.float32)
        if wanted:
            vectors[wanted] = self.embedder.encode([texts[i] for i in wanted], batch_size=self.batch_size)
        return {**batch, "vector": vectors}


def ray_ingest(kb, paths: list[Path], options, *, workers: int = 2, address: str | None = None,
               progress=None, remove_missing: bool = False) -> IngestReport:
    """Ingest `paths` into `kb` (an open KnowledgeBase holding the writer lock) on Ray."""
    import ray

    from .. import distributed

    distributed.connect(address, workers)
    ingestor = Ingestor(kb.store, None, kb.config, options, progress)
    jobs: list[_FileJob] = []
    for root in [Path(p).expanduser().absolute() for p in paths]:
        listing, seen = Listing(root), set()
        for found in discover(root, options.include, options.exclude, [kb.path], listing):
            seen.add(str(found.path))
            job = ingestor._fail(found.path, found.problem) if found.problem else ingestor.candidate(found.path,
                                                                                                  found.explicit)
            if job is not None:
                jobs.append(job)
            ingestor.progress(found.path)
        if remove_missing:
            ingestor._remove_vanished(root, seen, listing, False)
    if not jobs:
        return ingestor.report
    items = [{"file": i, "path": str(j.path), "file_hash": j.file_hash, "doc_key": j.ctx.doc_id}
             for i, j in enumerate(jobs)]
    config = kb.config.model_dump()
    # logical CPUs per embedding actor and per read task: the actors must leave room, on every node, for
    # the tasks that feed them, or a cluster of 1-CPU nodes deadlocks (each CPU held by a waiting actor)
    actor_cpus = min(1.0, float(ray.cluster_resources().get("CPU", workers)) / workers) / 2
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI shows its own progress; Ray's would interleave with it
    context.execution_options.preserve_order = True  # a file's rows arrive together, in order
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 8 * workers)).flat_map(
        load_file, fn_kwargs={"config": config, "options": options.model_dump(), "threads": 1}, num_cpus=actor_cpus / 2)
    dataset = dataset.map_batches(
        EmbedChunks, fn_constructor_kwargs={"name": kb.config.embedder, "precision": kb.config.precision,
                                            "threads": 1, "batch_size": kb.config.batch_size},
        batch_size=kb.config.batch_size * 4, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=actor_cpus,
        batch_format="numpy")
    current, rows = None, []
    started = time.perf_counter()
    for row in dataset.iter_rows():
        if current is not None and row["file"] != current:
            _write(ingestor, jobs[current], rows)
            rows = []
        current = row["file"]
        rows.append(row)
    if rows:
        _write(ingestor, jobs[current], rows)
    # the cluster's read, chunk and embed stages overlap: their wall time is reported as one
    ingestor.report.timings["embed"] += time.perf_counter() - started - ingestor.report.timings["store"]
    return ingestor.report


def _write(ingestor: Ingestor, job: _FileJob, rows: list[dict]) -> None:
    """One file's embedded rows -> its documents, written like a local ingest's (documents whose
    content is already stored count as unchanged)."""
    job.ctx.warnings.extend(json.loads(rows[0]["warnings"]))
    if rows[0]["error"]:
        reason, skipped = json.loads(rows[0]["error"])
        ingestor.report.warnings.extend(job.ctx.warnings)
        (ingestor._skip if skipped else ingestor._fail)(job.path, reason)
        return
    vectors, docs = {}, {}
    for row in rows:
        source = str(row["source"])
        job.sources.add(source)
        if source not in docs:
            docs[source] = _Doc(str(row["doc_id"]), source, str(job.path), str(row["content_hash"]),
                                json.loads(row["title"]), job.mtime, json.loads(row["metadata"]))
        if row["ordinal"] >= 0:
            docs[source].chunks.append(ChunkRecord(int(row["ordinal"]), str(row["chunk_hash"]), str(row["text"]),
                                                   int(row["tokens"]), int(row["start"]), int(row["end"]),
                                                   None if row["page"] < 0 else int(row["page"]),
                                                   json.loads(row["chunk_metadata"])))
            vectors.setdefault(str(row["chunk_hash"]), np.asarray(row["vector"], dtype=np.float32))
            ingestor.report.vectors_embedded += 1
    for source, doc in docs.items():
        existing = ingestor.store.document(source)
        if not doc.chunks:
            job.sources.discard(source)
        elif existing is not None and existing["content_hash"] == doc.content_hash:
            job.unchanged += 1
        else:
            job.docs.append(doc)
    if not job.sources:
        ingestor.report.warnings.extend(job.ctx.warnings)
        ingestor._skip(job.path, "no extractable text (a scanned PDF needs OCR first)")
        return
    ingestor.write(job, vectors)
