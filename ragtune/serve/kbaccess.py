"""One knowledge base shared by many request threads: searches run concurrently, writes alone.

A KnowledgeBase holds one SQLite connection, in-memory FAISS and BM25 indexes and an embedder, none
of which is built for concurrent writers: an index catching up while another thread searches it, or
a read on the connection while an upload's transaction is open, would fail or see half a change.
So every access goes through a readers-writer lock: searches, retrieval for answers and listings
take the read side together; uploads, deletes and index catch-up take the write side. Embedding is
serialised by its own small lock (tokenizers are not safe to share between threads), held only
for the encode call itself.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path

from ..kb import KnowledgeBase
from ..retrieve.search import Retriever
from .limits import ReadWriteLock

log = logging.getLogger(__name__)


class LockedEmbedder:
    """The KB's embedder, every encode call run in one dedicated thread; everything else passes through.

    One thread rather than a lock: calls come from the search, generation and write pools, and torch
    run from many threads keeps per-thread state (allocator arenas, OpenMP pools) that grew the
    server's memory by hundreds of MB under mixed load; confined to one thread it stays flat, and
    calls are serialised as a shared tokenizer needs.
    """

    def __init__(self, embedder):
        from concurrent.futures import ThreadPoolExecutor

        self._inner = embedder
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-embed")
        self._ident: int | None = None

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _call(self, fn, *args):
        if threading.get_ident() == self._ident:  # already in the embedding thread
            return fn(*args)
        return self._thread.submit(self._run, fn, *args).result()

    def _run(self, fn, *args):
        self._ident = threading.get_ident()
        return fn(*args)

    def load(self):
        self._call(self._inner.load)
        return self

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def encode(self, texts, batch_size: int = 64):
        return self._call(self._inner.encode, texts, batch_size)

    def encode_query(self, text):
        return self._call(self._inner.encode_query, text)

    def encode_queries(self, texts, batch_size: int = 64):
        return self._call(self._inner.encode_queries, texts, batch_size)

    def count_tokens(self, texts) -> int:
        """Tokens the embedder reads for `texts` (before truncation), for usage reports."""
        tokenizer = self._inner.tokenizer
        return self._call(lambda: sum(len(tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)["input_ids"])
                                      for t in texts))


class ServingRetriever(Retriever):
    """A Retriever whose indexes change only under the write lock: a search that finds them behind
    the store does not catch up in place (other threads are reading them); `catch_up` does it."""

    def __init__(self, store, *, rw_lock: ReadWriteLock, **parts):
        super().__init__(store, **parts)
        self._rw = rw_lock

    def refresh(self, *, writable: bool) -> None:
        if self._rw.writing:
            super().refresh(writable=writable)

    def stale(self) -> bool:
        return not self._current()

    def catch_up(self) -> None:
        """Bring the indexes up to the store (another process may have ingested) before reading."""
        if not self.stale():
            return
        with self._rw.write():
            if self.stale():
                log.info("%s: catching the indexes up with the store", self.store.path)
                super().refresh(writable=False)


class KBAccess:
    """A served knowledge base: its name in model ids, the shared KnowledgeBase, and its lock."""

    def __init__(self, name: str, path: Path, *, threads: int | None = None, uploads_dir: str = "uploads",
                 embedder=None):
        self.name = name
        self.path = Path(path).absolute()
        # a KB the server may not write is still served (search and answers), without uploads
        readonly = (self.path / "ragtune.db").exists() and not os.access(self.path, os.W_OK)
        self.lock = ReadWriteLock()
        config = self.read_config(self.path)
        if embedder is None or (embedder.name, embedder.precision) != (config.embedder, config.precision):
            from ..models.embedder import Embedder

            embedder = Embedder(config.embedder, precision=config.precision,
                                threads=threads if threads is not None else config.threads)
        if not isinstance(embedder, LockedEmbedder):
            embedder = LockedEmbedder(embedder)
        # the embedder, already loaded, may be shared with other KBs (one thread for one model); the
        # KB's own writes (ingest, delete) refresh the indexes through the serving retriever
        self.kb = KnowledgeBase.open(self.path, threads=threads, readonly=readonly, embedder=embedder,
                                     retriever=functools.partial(ServingRetriever, rw_lock=self.lock))
        self.uploads = Path(os.path.realpath(self.path)) / uploads_dir
        self.retriever = self.kb.retriever

    @staticmethod
    def read_config(path: Path):
        """The KB's config (which embedder it needs), read without opening the KB."""
        from .. import config as config_module
        from ..config import KBConfig
        from ..kb import CONFIG_FILE

        if not (Path(path) / CONFIG_FILE).exists():
            return KnowledgeBase.open(path).config  # raises the KB's own clear error
        return config_module.load_yaml(KBConfig, Path(path) / CONFIG_FILE)

    def warm_up(self) -> None:
        """Load the embedder and the indexes now, so the first request does not pay for it."""
        self.kb.embedder.load()
        self.kb.embedder.encode_query("warm up")
        with self.lock.write():
            self.retriever.refresh(writable=not self.kb.store.readonly)

    @property
    def embedder(self):
        return self.kb.embedder

    def close(self) -> None:
        with self.lock.write():
            self.kb.close()

    # -- reading ----------------------------------------------------------------------------
    def read(self):
        """The read side, after catching the indexes up: `with access.read(): access.kb.search(...)`."""
        self.retriever.catch_up()
        return self.lock.read()

    def search(self, query: str, k: int, *, mode: str = "hybrid", filters=None, **options):
        with self.read():
            return self.kb.search(query, k, mode=mode, filters=filters, **options)

    def stats(self) -> dict:
        with self.read():
            return self.kb.stats()

    def documents(self, *, limit: int = 100, offset: int = 0, prefix: str | None = None) -> tuple[list[dict], int]:
        """Stored documents, by source, with how many there are in all."""
        with self.read():
            rows, total = self.kb.store.documents(limit=limit, offset=offset, prefix=prefix)
        uploads = str(self.uploads) + "/"
        return [{"id": r["doc_id"], "source": r["source"], "title": r["title"], "file": r["file_path"],
                 "chunks": r["chunk_count"], "ingested_at": r["ingested_at"], "duplicate": r["duplicate_of"] is not None,
                 "uploaded": str(r["file_path"]).startswith(uploads)} for r in rows], total

    def documents_by_id(self, doc_id: str) -> list[dict]:
        with self.read():
            return self.kb.store.documents_named(doc_id)

    def passage(self, chunk_id: int, *, context: int = 1) -> dict | None:
        """A chunk with its neighbours (the text around it), and where the chunk sits in that text."""
        with self.read():
            found = self.kb.store.passage(chunk_id, context=context)
        if found is None:
            return None
        row, around = found
        text, highlight, end = "", [0, 0], None
        for part in around:
            piece, start = part["text"], part["start_char"]
            overlap = 0
            if end is not None and start < end:  # overlapping chunks: the shared text is there already
                overlap = min(end - start, len(piece))
                piece = piece[overlap:]
            elif end is not None:
                text += " … "
            if part["chunk_id"] == chunk_id:
                at = len(text) - overlap
                highlight = [at, at + len(row["text"])]
            text += piece
            end = max(end or 0, part["end_char"])
        return {"chunk_id": row["chunk_id"], "doc_id": row["doc_id"], "source": row["source"], "title": row["title"],
                "page": row["page"], "start": row["start_char"], "end": row["end_char"], "chunk_text": row["text"],
                "text": text, "highlight": highlight}

    # -- writing ----------------------------------------------------------------------------
    def ingest_file(self, path: Path, *, wait: float = 5.0):
        with self.lock.write():
            return self.kb.ingest([path], wait=wait)

    def delete(self, source: str, *, wait: float = 5.0) -> int:
        with self.lock.write():
            return self.kb.delete(source, wait=wait)


