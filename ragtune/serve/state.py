"""Everything one server holds: knowledge bases, loaded generators, keys, metrics, worker pools.

Built once by `ServeState.open` (models load here, never per request) and handed to `create_app`;
nothing is global, so tests and embedders can run several servers in one process.
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .auth import KeyRing
from .errors import APIError
from .kbaccess import KBAccess
from .metrics import Metrics
from .models import ServedGenerator, load_generators
from .settings import ServeSettings, check_bind

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One entry of /v1/models: a knowledge base answered by a generator."""

    id: str
    access: KBAccess
    served: ServedGenerator


class ServeState:
    def __init__(self, settings: ServeSettings, kbs: list[KBAccess], generators: list[ServedGenerator], keys: KeyRing):
        self.settings, self.keys = settings, keys
        self.kbs = {access.name: access for access in kbs}
        self.generators = generators
        self.models: dict[str, ServedModel] = {}
        for access in kbs:
            for served in generators:
                model_id = f"{access.name}/{served.label}"
                self.models[model_id] = ServedModel(model_id, access, served)
        self.metrics = Metrics()
        for served in generators:
            self.metrics.observe_gate(served.label, served.gate)
        workers = sum(s.gate.slots for s in generators)
        self.generation_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ragtune-generate")
        self.search_pool = ThreadPoolExecutor(max_workers=settings.search_threads, thread_name_prefix="ragtune-search")
        self.write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-write")
        self.started = time.time()
        self._reports = Path(settings.reports_dir) if settings.reports_dir else Path(tempfile.mkdtemp(prefix="ragtune-reports-"))

    @classmethod
    def open(cls, kb_paths: list[str | Path], settings: ServeSettings, *, warm_up: bool = True,
             embedder=None) -> "ServeState":
        """Open the knowledge bases and load every model once; refuses an unsafe bind before loading.
        `embedder`: an already loaded embedder to share with the KBs whose config names it."""
        keys = KeyRing(settings.api_keys)
        check_bind(settings, len(keys))
        if not kb_paths:
            raise ConfigError("serve needs at least one knowledge base directory; create one with `ragtune init KB`")
        kbs = []
        shared = {} if embedder is None else {(embedder.name, embedder.precision): embedder}
        try:
            for path in kb_paths:
                name = _unique(Path(path).absolute().name or "kb", {a.name for a in kbs})
                config = KBAccess.read_config(Path(path))
                access = KBAccess(name, Path(path), threads=settings.threads, uploads_dir=settings.uploads_dir,
                                  embedder=shared.get((config.embedder, config.precision)))
                shared[(config.embedder, config.precision)] = access.embedder
                kbs.append(access)
                if warm_up:
                    access.warm_up()
            generators = load_generators(settings)
        except BaseException:
            for access in kbs:
                access.close()
            raise
        return cls(settings, kbs, generators, keys)

    @property
    def reports_dir(self) -> Path:
        return self._reports

    @property
    def runs_db_path(self) -> Path:
        if self.settings.runs_db:
            return Path(self.settings.runs_db)
        return next(iter(self.kbs.values())).path / "runs.db"

    def resolve(self, model_id: str | None) -> ServedModel:
        """The served model named by a request; a bare generator name is accepted when one KB is served."""
        if model_id in self.models:
            return self.models[model_id]
        if model_id and len(self.kbs) == 1:
            for served in self.models.values():
                if served.served.label == model_id:
                    return served
        listed = ", ".join(self.models)
        raise APIError(404, f"the model {model_id!r} does not exist; this server has {listed} (see /v1/models)",
                       param="model", code="model_not_found")

    def kb(self, name: str | None) -> KBAccess:
        """A knowledge base by name, or by served model id; the first one when none is named."""
        if not name:
            return next(iter(self.kbs.values()))
        if name in self.kbs:
            return self.kbs[name]
        if name in self.models:
            return self.models[name].access
        raise APIError(404, f"no knowledge base {name!r}; this server has {', '.join(self.kbs)}", param="kb",
                       code="kb_not_found")

    def close(self) -> None:
        self.generation_pool.shutdown(wait=False, cancel_futures=True)
        self.search_pool.shutdown(wait=False, cancel_futures=True)
        self.write_pool.shutdown(wait=True)
        for access in self.kbs.values():
            access.close()
        for embedder in {id(a.embedder): a.embedder for a in self.kbs.values()}.values():
            embedder.close()


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate
