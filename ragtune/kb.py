"""KnowledgeBase: the Python API that the CLI mirrors (init, open, ingest, sync, delete, stats)."""

from __future__ import annotations

import os
from pathlib import Path

from . import config as config_module
from .config import IngestOptions, KBConfig
from .errors import ConfigError, KnowledgeBaseError, WriterBusyError
from .store import Store, WriterLock

CONFIG_FILE = "ragtune.yaml"
DATABASE_FILE = "ragtune.db"
LOCK_FILE = ".writer.lock"


class KnowledgeBase:
    """A directory with `ragtune.yaml` (how to chunk and embed) and `ragtune.db` (the data)."""

    def __init__(self, path: Path, config: KBConfig, store: Store, *, threads: int | None = None, embedder=None,
                 retriever=None):
        self.path = path
        self.config = config
        self.store = store
        self.threads = threads if threads is not None else config.threads
        self._embedder = None
        self._embedder_given = embedder
        self._retriever = None
        self._retriever_factory = retriever

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | Path, config: KBConfig | None = None, *, exist_ok: bool = False) -> "KnowledgeBase":
        """Create a knowledge base directory; refuses to overwrite one unless exist_ok."""
        path = Path(path)
        if (path / CONFIG_FILE).exists():
            if not exist_ok:
                raise KnowledgeBaseError(f"{path} is already a knowledge base; use it, or pick a new directory")
            return cls.open(path)
        if path.exists() and not path.is_dir():
            raise KnowledgeBaseError(f"{path} exists and is not a directory")
        config = config or KBConfig()
        if config.vector_store == "milvus" and config.milvus_uri and not config.milvus_uri.endswith(".db"):
            from .retrieve.vector_index import open_vector_index

            open_vector_index(config, path).check()  # unreachable: a clear error, and no KB half made
        path.mkdir(parents=True, exist_ok=True)
        if config.precision == "auto":
            from .runtime import resolve_precision

            config = config.model_copy(update={"precision": resolve_precision(config.precision)})
        config_module.save_yaml(config, path / CONFIG_FILE)
        store = Store(path / DATABASE_FILE)
        store.set_meta("embedder", config.embedder)
        store.set_meta("precision", config.precision)
        return cls(path, config, store)

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False, threads: int | None = None, embedder=None,
             retriever=None) -> "KnowledgeBase":
        """Open a knowledge base. `embedder`: an already loaded embedder to use (it must be the KB's
        embedder and precision: vectors from another model would not match); `retriever`: a factory
        called with the Retriever's arguments (store, vectors=, lexical=, embed_query=, try_writer=),
        for a subclass such as the server's (serve/kbaccess.py)."""
        path = Path(path)
        if not (path / CONFIG_FILE).exists():
            raise KnowledgeBaseError(f"{path} is not a knowledge base (no {CONFIG_FILE}); create it with `ragtune init {path}`")
        config = config_module.load_yaml(KBConfig, path / CONFIG_FILE)
        store = Store(path / DATABASE_FILE, readonly=readonly)
        recorded = (store.get_meta("embedder"), store.get_meta("precision"))
        if recorded != (config.embedder, config.precision) and recorded[0] is not None:
            raise KnowledgeBaseError(
                f"{path}/{CONFIG_FILE} says embedder={config.embedder} precision={config.precision} but the "
                f"stored vectors were made with {recorded[0]} {recorded[1]}; restore the config or re-ingest into a new KB"
            )
        if embedder is not None and (embedder.name, embedder.precision) != (config.embedder, config.precision):
            store.close()
            raise ConfigError(f"{path} embeds with {config.embedder} ({config.precision}), not with the given "
                              f"{embedder.name} ({embedder.precision}); pass that embedder, or none")
        return cls(path, config, store, threads=threads, embedder=embedder, retriever=retriever)

    def close(self) -> None:
        if self._retriever is not None:
            self._retriever.close()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    # -- models ---------------------------------------------------------------------------
    @property
    def embedder(self):
        """The KB's embedder, created once per KnowledgeBase and loaded on first use."""
        if self._embedder is None:
            from .models.embedder import Embedder

            self._embedder = self._embedder_given or Embedder(self.config.embedder, precision=self.config.precision,
                                                              threads=self.threads)
            if self.config.chunk_size > self._embedder.max_tokens:
                raise ConfigError(
                    f"chunk_size ({self.config.chunk_size}) exceeds what {self.config.embedder} reads "
                    f"({self._embedder.max_tokens} tokens); use --chunk-size {self._embedder.max_tokens} or less"
                )
        return self._embedder

    # -- writing --------------------------------------------------------------------------
    def _writer(self, wait: float) -> WriterLock:
        if self.store.readonly:
            raise KnowledgeBaseError(f"{self.path} was opened read-only")
        lock = WriterLock(self.path / LOCK_FILE, wait)
        lock.acquire()
        return lock

    def try_writer(self) -> WriterLock | None:
        """The writer lock if nobody holds it, else None (readers use it to persist index repairs)."""
        try:
            return self._writer(0.0)
        except WriterBusyError:
            return None

    @property
    def retriever(self):
        if self._retriever is None:
            from .retrieve.lexical import LexicalIndex
            from .retrieve.search import INDEX_DIR, Retriever
            from .retrieve.vector_index import open_vector_index

            directory = self.path / INDEX_DIR
            self._retriever = (self._retriever_factory or Retriever)(
                self.store, vectors=open_vector_index(self.config, directory, threads=self.threads),
                lexical=LexicalIndex(directory), embed_query=lambda text: self.embedder.encode_query(text),
                try_writer=self.try_writer)
        return self._retriever

    def _update_indexes(self) -> None:
        """Called by writers, under the lock, so indexes match the store when the lock is released."""
        self.retriever.refresh(writable=True)

    def ingest(self, paths, options: IngestOptions | None = None, *, progress=None, wait: float = 0.0,
               remove_missing: bool = False, prune_missing: bool = False, ray: bool = False,
               ray_address: str | None = None, workers: int = 2):
        """Ingest files and directories; unchanged files are skipped by content hash.

        remove_missing: also remove stored files positively seen to be gone (what sync does).
        prune_missing: also remove stored files under a root or folder that could not be read.
        ray: parse, chunk and embed on a Ray cluster (ray_address, else RAY_ADDRESS, else a local Ray
        with `workers` CPUs); the result is what a local ingest stores (ingest/ray_ingest.py).
        """
        from .ingest.pipeline import Ingestor

        options = options or IngestOptions()
        roots = [Path(p).expanduser() for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        if ray:
            from . import distributed

            distributed.connect(ray_address, workers)  # an unreachable cluster fails here, before any change
        self._check_vector_store()
        lock = self._writer(wait)
        try:
            try:
                if ray:
                    from .ingest.ray_ingest import ray_ingest

                    if prune_missing:
                        raise ConfigError("--prune-missing is not supported with --ray; sync without --ray")
                    return ray_ingest(self, roots, options, workers=workers, address=ray_address, progress=progress,
                                      remove_missing=remove_missing)
                ingestor = Ingestor(self.store, self.embedder, self.config, options, progress)
                return ingestor.run(roots, remove_missing=remove_missing, prune_missing=prune_missing, skip=[self.path])
            finally:
                self._update_indexes()  # also after a failure: what was stored must be searchable
        finally:
            lock.release()

    def sync(self, path, options: IngestOptions | None = None, *, progress=None, wait: float = 0.0,
             prune_missing: bool = False):
        """Make the KB match `path`: re-ingest changed files, remove files seen to be gone.

        A file is removed only when its folder was listed and the file was not in it. A missing
        root or an unreadable folder removes nothing: it is listed in `report.unverified`. With
        prune_missing=True the files under such paths are removed too.
        """
        return self.ingest([path], options, progress=progress, wait=wait, remove_missing=True,
                           prune_missing=prune_missing)

    def _check_vector_store(self) -> None:
        """A vector store that cannot be reached (a Milvus server) fails a write before anything changes."""
        check = getattr(self.retriever.vectors, "check", None)
        if check is not None:
            check()

    def delete(self, source: str, *, wait: float = 0.0) -> int:
        """Remove a file's documents (by path) or one document (by source); returns documents removed."""
        self._check_vector_store()
        lock = self._writer(wait)
        try:
            try:
                absolute = str(Path(source).absolute())
                if self.store.file_state(absolute) is not None or self.store.sources_of_file(absolute):
                    return self.store.forget_file(absolute)
                return int(self.store.delete_document(source))
            finally:
                self._update_indexes()
        finally:
            lock.release()

    # -- reading --------------------------------------------------------------------------
    def stats(self) -> dict:
        stats = self.store.stats()
        stats.update(
            embedder=self.config.embedder, precision=self.config.precision,
            chunk_size=self.config.chunk_size, chunk_overlap=self.config.chunk_overlap, path=str(self.path),
        )
        return stats

    def search(self, query: str, k: int = 5, *, mode: str = "hybrid", filters=None, **options):
        """Search the KB: mode hybrid (RRF of dense + BM25), dense or lexical.

        filters: {"lang": "en", "year": {"gte": 2020}, "source": {"prefix": "docs/"}} or shorthand
        strings ["lang=en", "year>=2020"]. Other options: dense_weight, lexical_weight, rrf_k, depth.
        Each hit's `ranks` holds every retriever's rank and score, and the fused score.
        """
        from .retrieve.search import SearchOptions

        return self.retriever.search(query, SearchOptions(k=k, mode=mode, filters=filters, **options))

    def refresh_indexes(self) -> dict:
        """Bring the dense and lexical indexes up to date now; returns their sizes."""
        self.retriever.refresh(writable=not self.store.readonly)
        dense = self.retriever.dense()
        return {"dense": {"backend": dense.name, "kind": dense.kind, "size": dense.count()} if dense else None,
                "lexical": {"size": self.retriever.lexical().size}}
