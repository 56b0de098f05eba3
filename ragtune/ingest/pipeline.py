"""The ingest pipeline: discover -> load -> clean -> chunk -> embed -> store, file by file.

A file is the unit of atomicity: its documents, chunks, vectors and file row commit in one
transaction or not at all, so a file that fails half way (a hostile record, a crash, kill -9) leaves
the previous version of that file exactly as it was. Small files wait in a queue so the embedder
sees full batches across files; a file too big to hold in memory streams into one long transaction.
Any exception while loading or writing a file fails that file only; the run goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat as stat_module
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, count, islice
from pathlib import Path

from contextlib import ExitStack

from ..errors import LoaderError
from ..store import ChunkRecord
from .chunking import document_chunks
from .discover import Listing, discover
from .documents import FileContext
from .loaders import loader_for

BIG_FILE_CHUNKS = 2048  # files with more chunks stream into the database inside their transaction
FLUSH_CHUNKS = 1024  # queued chunks (across small files) that trigger an embedding batch
log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    ingested: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    removed_files: int = 0
    documents_added: int = 0
    documents_updated: int = 0
    documents_unchanged: int = 0
    documents_duplicate: int = 0
    documents_removed: int = 0
    ignored: int = 0  # files of unsupported types met while walking directories
    chunks_added: int = 0
    vectors_embedded: int = 0
    failures: list[dict] = field(default_factory=list)
    # sync: paths that could not be read, so nothing stored under them was removed
    unverified: list[dict] = field(default_factory=list)
    skipped_files: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=lambda: {"parse": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0})

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return data


@dataclass
class _Tally:
    """What writing one file changed; added to the report only once its transaction committed."""

    added: int = 0
    updated: int = 0
    duplicate: int = 0
    removed: int = 0
    chunks: int = 0


@dataclass
class _Doc:
    """A loaded document on its way to the store."""

    doc_id: str
    source: str
    file_path: str
    content_hash: str
    title: str | None
    mtime: float
    metadata: dict
    chunks: list[ChunkRecord] = field(default_factory=list)


@dataclass
class _FileJob:
    """One file on its way to the store: the documents to write and the state to record after."""

    path: Path
    file_hash: str
    size: int
    mtime: float
    ctx: FileContext
    docs: list[_Doc] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    unchanged: int = 0
    streaming: bool = False  # too big to queue: written in one long transaction while loading
    tally: _Tally = field(default_factory=_Tally)

    @property
    def chunk_count(self) -> int:
        return sum(len(d.chunks) for d in self.docs)


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class _Timed:
    """Wrap an iterator and add the time spent producing its items to a report bucket."""

    def __init__(self, iterable, timings: dict, key: str):
        self._it, self._timings, self._key = iter(iterable), timings, key

    def __iter__(self):
        return self

    def __next__(self):
        started = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self._timings[self._key] += time.perf_counter() - started


class Ingestor:
    """Runs one ingest or sync over a store with an embedder; holds the state of one run."""

    def __init__(self, store, embedder, config, options, progress=None):
        self.store, self.embedder, self.config, self.options = store, embedder, config, options
        self.report = IngestReport()
        self.progress = progress or (lambda _path: None)
        self._pending: list[_FileJob] = []
        self._current_file: Path | None = None

    # -- folders --------------------------------------------------------------------------
    def run(self, roots: list[Path], *, remove_missing: bool = False, prune_missing: bool = False,
            skip: list[Path] | None = None) -> IngestReport:
        """Ingest every root; with remove_missing, drop stored files positively seen to be gone.

        prune_missing also drops files under a root or folder that could not be read at all
        (a user who really means it; the count is logged before anything is removed).
        """
        for root in roots:
            root = Path(root).absolute()
            listing, seen = Listing(root), set()
            for found in discover(root, self.options.include, self.options.exclude, skip, listing):
                seen.add(str(found.path))
                if found.problem:
                    self._fail(found.path, found.problem)
                else:
                    self.ingest_file(found.path, explicit=found.explicit)
                self.progress(found.path)
            self._flush()
            if remove_missing or prune_missing:
                self._remove_vanished(root, seen, listing, prune_missing)
        return self.report

    def _remove_vanished(self, root: Path, seen: set[str], listing: Listing, prune: bool) -> None:
        missing = [p for p in self.store.files_under(str(root)) if p not in seen]
        gone = [p for p in missing if listing.positively_gone(p)]
        gone_set = set(gone)
        unverified = [p for p in missing if p not in gone_set]
        for path, reason in sorted(listing.unreadable.items()):
            kept = [p for p in unverified if p == path or p.startswith(path.rstrip(os.sep) + os.sep)]
            documents = sum(self.store.documents_under(p) for p in kept)
            self.report.unverified.append({"path": path, "reason": reason, "files": len(kept), "documents": documents,
                                           "removed": prune})
        if prune and unverified:
            documents = sum(self.store.documents_under(p) for p in unverified)
            log.warning("--prune-missing: removing %d documents of %d files under %s that could not be read",
                        documents, len(unverified), root)
            gone += unverified
        elif unverified:
            log.info("kept %d stored files under %s: their folder could not be read (--prune-missing removes them)",
                        len(unverified), root)
        for path in gone:
            self.report.documents_removed += self.store.forget_file(path)
            self.report.removed_files += 1

    def _fail(self, path, reason: str) -> None:
        # INFO, not WARNING: the report carries failures to the user; -v shows them as they happen
        log.info("failed %s: %s", path, reason)
        self.report.failed += 1
        self.report.failures.append({"file": str(path), "reason": reason})

    def _skip(self, path, reason: str) -> None:
        log.info("skipped %s: %s", path, reason)
        self.report.skipped += 1
        self.report.skipped_files.append({"file": str(path), "reason": reason})

    # -- files ----------------------------------------------------------------------------
    def candidate(self, path: Path, explicit: bool = True) -> "_FileJob | None":
        """The file as a job to (re)ingest, or None when it is skipped, failed or unchanged (reported)."""
        try:
            info = os.stat(path)
        except OSError as exc:
            return self._fail(path, f"cannot stat ({exc.strerror})")
        if not stat_module.S_ISREG(info.st_mode):
            return self._skip(path, "not a regular file (device, FIFO or socket)")
        loader = loader_for(path)
        if loader is None and not explicit:
            self.report.ignored += 1
            return None
        if loader is None:
            return self._skip(path, f"unsupported file type {path.suffix or '(no extension)'}")
        if info.st_size == 0:
            return self._skip(path, "empty file")
        if info.st_size > self.config.max_file_mb * 1e6:
            return self._skip(path, f"{info.st_size / 1e6:.0f} MB is over max_file_mb={self.config.max_file_mb:g}; raise --max-file-mb")
        previous = self.store.file_state(str(path))
        if previous and previous["size"] == info.st_size and previous["mtime"] == info.st_mtime:
            self.report.unchanged += 1
            return None
        try:
            file_hash = hash_file(path)
        except OSError as exc:
            return self._fail(path, f"cannot read ({exc.strerror}); check permissions or --exclude it")
        if previous and previous["content_hash"] == file_hash:
            self.store.set_file_state(str(path), file_hash, info.st_size, info.st_mtime, previous["documents"])
            self.report.unchanged += 1
            return None
        ctx = FileContext(path, file_hash, hashlib.sha256(str(path).encode()).hexdigest()[:16], self.options)
        return _FileJob(path, file_hash, info.st_size, info.st_mtime, ctx)

    def ingest_file(self, path: Path, explicit: bool = True) -> None:
        job = self.candidate(path, explicit)
        if job is None:
            return None
        path, ctx, loader = job.path, job.ctx, loader_for(job.path)
        self._current_file = path
        try:
            with ExitStack() as transaction:  # entered only for files too big to queue
                self._load(job, loader, transaction)
                if job.streaming:
                    self._finish(job)
                    transaction.close()  # commits
                    self._done(job)
                    return None
        except LoaderError as exc:
            self.report.warnings.extend(ctx.warnings)
            return self._skip(path, exc.reason) if exc.skipped else self._fail(path, exc.reason)
        except Exception as exc:  # noqa: BLE001 - the per-file boundary: nothing escapes, the run goes on
            log.debug("ingest of %s failed", path, exc_info=True)
            self.report.warnings.extend(ctx.warnings)
            return self._fail(path, f"{type(exc).__name__}: {exc}; nothing of this file was changed")
        finally:
            self._current_file = None
        self._pending.append(job)
        if sum(j.chunk_count for j in self._pending) >= FLUSH_CHUNKS:
            self._flush()
        return None

    def _load(self, job: _FileJob, loader, transaction: ExitStack) -> None:
        """Read the file's documents into `job`; past BIG_FILE_CHUNKS, switch to streaming writes."""
        ctx = job.ctx
        for loaded in _Timed(loader(ctx), self.report.timings, "parse"):
            job.sources.add(loaded.source)
            existing = self.store.document(loaded.source)
            if existing is not None and existing["content_hash"] == loaded.content_hash:
                job.unchanged += 1
                continue
            doc = _Doc(loaded.doc_id, loaded.source, str(ctx.path), loaded.content_hash, loaded.title,
                       job.mtime, loaded.metadata)
            chunks = self._chunk_records(loaded.segments)
            room = BIG_FILE_CHUNKS - job.chunk_count
            head = [] if job.streaming else list(islice(chunks, max(room, 0) + 1))
            if not job.streaming and len(head) <= room:
                if not head:
                    job.sources.discard(loaded.source)
                    ctx.warn(f"{loaded.source}: no text to index")
                    continue
                doc.chunks = head
                job.docs.append(doc)
                continue
            if not job.streaming:  # too big to queue: write it all in one long transaction
                self._flush()
                transaction.enter_context(self.store.transaction())
                job.streaming = True
                vectors = self._vectors([c for d in job.docs for c in d.chunks])
                for queued in job.docs:
                    self._store(job, queued, [(queued.chunks, vectors)])
                job.docs = []
            if self._store(job, doc, self._embedded_batches(chain(head, chunks))) == 0:
                job.sources.discard(loaded.source)
                ctx.warn(f"{loaded.source}: no text to index")
        if not job.sources:
            raise ctx.fail("no extractable text (a scanned PDF needs OCR first)", skipped=True)

    def _finish(self, job: _FileJob) -> None:
        """Inside the file's transaction: drop its documents that vanished, record the file."""
        for stale in sorted(set(self.store.sources_of_file(str(job.path))) - job.sources):
            job.tally.removed += self.store.delete_document(stale)
        self.store.set_file_state(str(job.path), job.file_hash, job.size, job.mtime, len(job.sources))

    def _done(self, job: _FileJob) -> None:
        """After the commit: the file's counts join the report."""
        report, tally = self.report, job.tally
        report.warnings.extend(job.ctx.warnings)
        report.ingested += 1
        report.documents_unchanged += job.unchanged
        report.documents_added += tally.added
        report.documents_updated += tally.updated
        report.documents_duplicate += tally.duplicate
        report.documents_removed += tally.removed
        report.chunks_added += tally.chunks

    # -- documents ------------------------------------------------------------------------
    def _chunk_records(self, segments) -> Iterator[ChunkRecord]:
        return chunk_records(segments, self.embedder.tokenizer, self.config, self.report.timings)

    def _vectors(self, chunks: list[ChunkRecord]) -> dict:
        """A vector for every chunk: stored ones read back, new texts embedded (each text once).

        Every write carries all its vectors, so it never depends on a stored content row still
        existing when the write happens (another document of the same run may have released it).
        """
        wanted: dict[str, str] = {}
        for chunk in chunks:
            wanted.setdefault(chunk.content_hash, chunk.text)
        vectors = self.store.stored_vectors(list(wanted))
        todo = [(h, t) for h, t in wanted.items() if h not in vectors]
        if todo:
            started = time.perf_counter()
            embedded = self.embedder.encode([t for _, t in todo], batch_size=self.config.batch_size)
            self.report.timings["embed"] += time.perf_counter() - started
            self.report.vectors_embedded += len(todo)
            vectors.update({h: embedded[i] for i, (h, _) in enumerate(todo)})
        return vectors

    def _embedded_batches(self, chunks):
        while batch := list(islice(chunks, self.config.batch_size * 8)):
            yield batch, self._vectors(batch)

    def _flush(self) -> None:
        """Embed the queued files' chunks in shared batches, then write each file in its own transaction."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            vectors = self._vectors([c for job in pending for d in job.docs for c in d.chunks])
        except Exception as exc:  # noqa: BLE001 - fail these files, keep the run going
            log.debug("embedding failed", exc_info=True)
            for job in pending:
                self._fail(job.path, f"embedding failed ({type(exc).__name__}: {exc}); nothing of this file was changed")
            return
        for job in pending:
            self.write(job, vectors)

    def write(self, job: _FileJob, vectors: dict) -> None:
        """Write one file's documents (vectors by content hash) in one transaction, or fail it whole."""
        try:
            with self.store.transaction():
                for doc in job.docs:
                    self._store(job, doc, [(doc.chunks, vectors)])
                self._finish(job)
        except Exception as exc:  # noqa: BLE001 - the per-file boundary
            log.debug("writing %s failed", job.path, exc_info=True)
            job.tally = _Tally()
            self._fail(job.path, f"{type(exc).__name__}: {exc}; nothing of this file was changed")
            return
        self._done(job)

    def _store(self, job: _FileJob, doc: _Doc, batches) -> int:
        """Write one document (inside the file's transaction); returns its chunk count."""
        started = time.perf_counter()
        embed_before = self.report.timings["embed"]
        outcome = self.store.write_document(doc, batches)
        # streamed documents embed inside the transaction: keep that time in the embed bucket
        self.report.timings["store"] += time.perf_counter() - started - (self.report.timings["embed"] - embed_before)
        if outcome == "duplicate":
            job.tally.duplicate += 1
            return 1
        chunks = self.store.document(doc.source)["chunk_count"]
        if chunks == 0:  # a streamed document that turned out empty
            self.store.delete_document(doc.source)
            return 0
        job.tally.chunks += chunks
        if outcome == "updated":
            job.tally.updated += 1
        else:
            job.tally.added += 1
        return chunks


def chunk_records(segments, tokenizer, config, timings: dict) -> Iterator[ChunkRecord]:
    """A document's chunks as records to store (hash, text, tokens, offsets, page); the time spent
    pulling segments goes to timings["parse"], cutting them to timings["chunk"]. Shared by the local
    pipeline and Ray workers (ingest/ray_ingest.py), so both cut the same chunks."""
    raw = document_chunks(_Timed(segments, timings, "parse"), tokenizer, config.chunk_size, config.chunk_overlap)
    for ordinal in count():
        started, parse_before = time.perf_counter(), timings["parse"]
        chunk = next(raw, None)
        # pulling a chunk also pulls segments lazily: keep that time in the parse bucket
        timings["chunk"] += time.perf_counter() - started - (timings["parse"] - parse_before)
        if chunk is None:
            return
        yield ChunkRecord(ordinal, hashlib.sha256(chunk.text.encode()).hexdigest(), chunk.text,
                          chunk.token_count, chunk.start, chunk.end, chunk.page, chunk.metadata)
