"""The ingest pipeline: discover -> load -> clean -> chunk -> embed -> store, file by file.

Small documents are batched so the embedder sees full batches; each document is still committed
in its own transaction. A file is marked ingested only after all its documents are stored, so
a run killed half-way resumes where it stopped: finished documents are recognised by hash.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import stat as stat_module
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, count, groupby, islice
from pathlib import Path

from ..errors import LoaderError
from ..store import ChunkRecord
from .chunking import chunk_segments
from .discover import discover
from .documents import FileContext
from .loaders import loader_for

BIG_DOCUMENT_CHUNKS = 2048  # documents with more chunks stream straight into the database
FLUSH_CHUNKS = 1024  # pending small-document chunks that trigger an embedding batch


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
    skipped_files: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=lambda: {"parse": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0})

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return data


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


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def document_chunks(segments, tokenizer, size: int, overlap: int) -> Iterator:
    """Chunks of one document; sections (new_section) never share a chunk; pages are tracked."""
    state = {"section": 0, "offset": 0}
    page_offsets: list[int] = []
    page_numbers: list[int] = []

    def keyed():
        for segment in segments:
            if segment.new_section:
                state["section"] += 1
            yield state["section"], segment

    def page_at(offset: int):
        index = bisect.bisect_right(page_offsets, offset) - 1
        return page_numbers[index] if index >= 0 else None

    for _, group in groupby(keyed(), key=lambda item: item[0]):
        group = iter(group)
        _, first = next(group)

        def pieces(first=first, group=group):
            for segment in chain([first], (s for _, s in group)):
                if segment.page is not None:
                    page_offsets.append(state["offset"])
                    page_numbers.append(segment.page)
                state["offset"] += len(segment.text)
                yield segment.text

        yield from chunk_segments(
            pieces(), tokenizer, size, overlap, base_offset=state["offset"], page_at=page_at,
            metadata=first.metadata or {},
        )


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
        self._pending: list[_Doc] = []

    # -- files ----------------------------------------------------------------------------
    def run(self, roots: list[Path], *, remove_missing: bool = False, skip: list[Path] | None = None) -> IngestReport:
        for root in roots:
            root = Path(root).absolute()
            seen: set[str] = set()
            for found in discover(root, self.options.include, self.options.exclude, skip):
                seen.add(str(found.path))
                if found.problem:
                    self._fail(found.path, found.problem)
                else:
                    self.ingest_file(found.path, explicit=found.explicit)
                self.progress(found.path)
            self._flush()
            if remove_missing:
                for path in self.store.known_files(str(root)):
                    if path not in seen:
                        self.report.documents_removed += self.store.forget_file(path)
                        self.report.removed_files += 1
        return self.report

    def _fail(self, path, reason: str) -> None:
        self.report.failed += 1
        self.report.failures.append({"file": str(path), "reason": reason})

    def _skip(self, path, reason: str) -> None:
        self.report.skipped += 1
        self.report.skipped_files.append({"file": str(path), "reason": reason})

    def ingest_file(self, path: Path, explicit: bool = True) -> None:
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
        try:
            sources = self._ingest_documents(ctx, loader, info.st_mtime)
        except LoaderError as exc:
            self.report.warnings.extend(ctx.warnings)
            return self._skip(path, exc.reason) if exc.skipped else self._fail(path, exc.reason)
        except (OSError, UnicodeError, ValueError, RuntimeError, MemoryError, RecursionError) as exc:
            self.report.warnings.extend(ctx.warnings)
            return self._fail(path, f"{type(exc).__name__}: {exc}")
        self.report.warnings.extend(ctx.warnings)
        self._flush()
        for stale in set(self.store.sources_of_file(str(path))) - sources:
            self.report.documents_removed += self.store.delete_document(stale)
        self.store.set_file_state(str(path), file_hash, info.st_size, info.st_mtime, len(sources))
        self.report.ingested += 1
        return None

    # -- documents ------------------------------------------------------------------------
    def _ingest_documents(self, ctx: FileContext, loader, mtime: float) -> set[str]:
        sources: set[str] = set()
        for loaded in _Timed(loader(ctx), self.report.timings, "parse"):
            sources.add(loaded.source)
            existing = self.store.document(loaded.source)
            if existing is not None and existing["content_hash"] == loaded.content_hash:
                self.report.documents_unchanged += 1
                continue
            doc = _Doc(loaded.doc_id, loaded.source, str(ctx.path), loaded.content_hash, loaded.title,
                       mtime, loaded.metadata)
            if self.store.duplicate_of(doc.content_hash, doc.source) is not None:
                self._store(doc, [])
                continue
            chunks = self._chunk_records(loaded.segments)
            head = list(islice(chunks, BIG_DOCUMENT_CHUNKS))
            if not head:
                sources.discard(loaded.source)
                ctx.warn(f"{loaded.source}: no text to index")
                continue
            if len(head) < BIG_DOCUMENT_CHUNKS:
                doc.chunks = head
                self._pending.append(doc)
                if sum(len(d.chunks) for d in self._pending) >= FLUSH_CHUNKS:
                    self._flush()
            else:
                self._flush()
                self._store(doc, self._embedded_batches(chain(head, chunks)))
        if not sources:
            raise ctx.fail("no extractable text (a scanned PDF needs OCR first)", skipped=True)
        return sources

    def _chunk_records(self, segments) -> Iterator[ChunkRecord]:
        timings = self.report.timings
        raw = document_chunks(_Timed(segments, timings, "parse"), self.embedder.tokenizer,
                              self.config.chunk_size, self.config.chunk_overlap)
        for ordinal in count():
            started, parse_before = time.perf_counter(), timings["parse"]
            chunk = next(raw, None)
            # pulling a chunk also pulls segments lazily: keep that time in the parse bucket
            timings["chunk"] += time.perf_counter() - started - (timings["parse"] - parse_before)
            if chunk is None:
                return
            yield ChunkRecord(ordinal, hashlib.sha256(chunk.text.encode()).hexdigest(), chunk.text,
                              chunk.token_count, chunk.start, chunk.end, chunk.page, chunk.metadata)

    def _embed(self, chunks: list[ChunkRecord]) -> dict:
        """Vectors for chunk texts not already stored (exact duplicates are embedded once)."""
        wanted: dict[str, str] = {}
        for chunk in chunks:
            wanted.setdefault(chunk.content_hash, chunk.text)
        known = self.store.known_contents(list(wanted))
        todo = [(h, t) for h, t in wanted.items() if h not in known]
        if not todo:
            return {}
        started = time.perf_counter()
        vectors = self.embedder.encode([t for _, t in todo], batch_size=self.config.batch_size)
        self.report.timings["embed"] += time.perf_counter() - started
        self.report.vectors_embedded += len(todo)
        return {h: vectors[i] for i, (h, _) in enumerate(todo)}

    def _embedded_batches(self, chunks):
        while batch := list(islice(chunks, self.config.batch_size * 8)):
            yield batch, self._embed(batch)

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        vectors = self._embed([c for d in pending for c in d.chunks])
        for doc in pending:
            self._store(doc, [(doc.chunks, vectors)])

    def _store(self, doc: _Doc, batches) -> None:
        started = time.perf_counter()
        embed_before = self.report.timings["embed"]
        outcome = self.store.write_document(doc, batches)
        # streamed documents embed inside the transaction: keep that time in the embed bucket
        self.report.timings["store"] += time.perf_counter() - started - (self.report.timings["embed"] - embed_before)
        if outcome == "duplicate":
            self.report.documents_duplicate += 1
        elif outcome == "updated":
            self.report.documents_updated += 1
        else:
            self.report.documents_added += 1
        if outcome != "duplicate":
            self.report.chunks_added += self.store.document(doc.source)["chunk_count"]
