"""Process-wide state belongs to the entry points: library code leaves os.environ and logging alone.

The library runs in a child process that starts without the offline variables the CLI (and this
suite's conftest) set, as in a user's own program; `ragtune`'s CLI is where they and the log
handler are installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import run_cli

from ragtune.runtime import LOG_LEVEL_VARIABLE, OFFLINE_VARIABLES

USER_PROGRAM = r"""
import importlib.util, json, logging, os, sys, traceback
from pathlib import Path

# Record who writes os.environ: the first frame outside os / collections.abc is the writer.
# Third-party libraries set a few variables themselves (scikit-learn and joblib KMP_* at import,
# torch's inductor its cache dir); ragtune must set none.
RAGTUNE = str(Path(importlib.util.find_spec("ragtune").origin).parent)
writes = []
Environ = type(os.environ)
original_set, original_del = Environ.__setitem__, Environ.__delitem__

def writer():
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.endswith(("os.py", "_collections_abc.py")):
            return f"{frame.filename}:{frame.lineno}"
    return "?"

def recorded_set(self, key, value):
    writes.append((key, writer()))
    original_set(self, key, value)

def recorded_del(self, key):
    writes.append((key, writer()))
    original_del(self, key)

Environ.__setitem__, Environ.__delitem__ = recorded_set, recorded_del
before = dict(os.environ)
root = Path(sys.argv[1])
docs = root / "docs"
docs.mkdir()
(docs / "falcon.md").write_text("# Falcons\n\nThe peregrine falcon is the fastest bird; it dives at 300 km/h.\n")
(docs / "river.md").write_text("# Rivers\n\nThe Danube flows through ten countries into the Black Sea.\n")

from ragtune.config import KBConfig
from ragtune.finetune.modeling import load_tokenizer
from ragtune.kb import KnowledgeBase
from ragtune.models.cache import resolve_model_dir

with KnowledgeBase.init(root / "kb", KBConfig(precision="fp32", threads=1)) as kb:
    kb.ingest([docs])
    hits = kb.search("which bird is the fastest?", k=1)
with KnowledgeBase.open(root / "kb") as kb:  # a second open: indexes loaded, not built
    again = kb.search("Danube", k=1, mode="lexical")
load_tokenizer(resolve_model_dir("all-MiniLM-L6-v2"))

after = dict(os.environ)
by_others = {key for key, where in writes if not where.startswith(RAGTUNE)}
print(json.dumps({
    "hits": [hits[0].source, again[0].source],
    "ragtune_writes": [[key, where] for key, where in writes if where.startswith(RAGTUNE)],
    "unexplained": sorted(k for k in before.keys() ^ after.keys() | {k for k in before.keys() & after.keys()
                                                                      if before[k] != after[k]} if k not in by_others),
    "handlers": {"root": len(logging.getLogger().handlers), "ragtune": len(logging.getLogger("ragtune").handlers)},
}))
"""


def test_library_leaves_os_environ_and_logging_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARIABLES and k != LOG_LEVEL_VARIABLE}
    result = subprocess.run([sys.executable, "-c", USER_PROGRAM, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # the whole of stdout: the library printed nothing
    assert report["hits"][0].endswith("falcon.md") and report["hits"][1].endswith("river.md")
    assert report["ragtune_writes"] == [], f"ragtune's library code wrote os.environ: {report['ragtune_writes']}"
    assert report["unexplained"] == [], f"os.environ changed, not by a third-party library: {report['unexplained']}"
    assert report["handlers"] == {"root": 0, "ragtune": 0}, "library code installed logging handlers"


def test_cli_shows_warnings_and_verbose_shows_info(tmp_path):
    unset = {LOG_LEVEL_VARIABLE: ""}
    quiet = run_cli("init", tmp_path / "quiet", env=unset)
    assert "created the schema" not in quiet.stderr  # INFO is hidden by default
    verbose = run_cli("-v", "init", tmp_path / "verbose", env=unset)
    assert "created the schema (version" in verbose.stderr and "INFO" in verbose.stderr
    assert "created the schema" not in verbose.stdout  # logs go to stderr, results to stdout
    by_env = run_cli("init", tmp_path / "env", env={LOG_LEVEL_VARIABLE: "info"})
    assert "created the schema (version" in by_env.stderr
    bogus = run_cli("init", tmp_path / "bogus", env={LOG_LEVEL_VARIABLE: "loud"})
    assert "RAGTUNE_LOG_LEVEL=loud is not a logging level" in bogus.stderr  # a WARNING shows without -v


def test_log_level_resolution(monkeypatch):
    import logging

    from ragtune.runtime import log_level

    monkeypatch.delenv(LOG_LEVEL_VARIABLE, raising=False)
    assert (log_level(), log_level(verbose=True)) == (logging.WARNING, logging.INFO)
    monkeypatch.setenv(LOG_LEVEL_VARIABLE, "debug")
    assert log_level() == log_level(verbose=True) == logging.DEBUG
    monkeypatch.setenv(LOG_LEVEL_VARIABLE, "40")
    assert log_level(verbose=True) == logging.ERROR
