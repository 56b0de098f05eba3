"""Task-specific scorers, plugged in by name (`--scorer NAME`, options as `--scorer-option KEY=VALUE`).

Why a registry: generic QA metrics (EM, F1, ROUGE) say little about outputs such as an API call,
where a benchmark defines its own notion of "right". A scorer turns one example and one prediction
into per-example scores, `{"accuracy": 1.0, ...}`; the names become metric columns and the runner
averages them like any other per-example metric.

A registered entry is a *factory*: `factory(**options) -> scorer`, where the scorer is a callable
`(example, prediction) -> dict[str, float]`. A class whose `__init__` takes the options and whose
`__call__` scores fits directly. Scorers with heavy dependencies live in their own modules and are
imported on first lookup (see `_LAZY`), so importing this module stays light: `gorilla-ast` needs
tree-sitter, which only users of that scorer install.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .dataset import EvalExample

log = logging.getLogger(__name__)

Scorer = Callable[["EvalExample", str], "dict[str, float]"]
ScorerFactory = Callable[..., Scorer]

_REGISTRY: dict[str, ScorerFactory] = {}
# name -> module that registers it when imported; kept out of the import path until asked for.
_LAZY: dict[str, str] = {"gorilla-ast": "ragtune.evaluate.gorilla_ast"}


def register_scorer(name: str) -> Callable[[ScorerFactory], ScorerFactory]:
    """Decorator: register `factory` under `name`. A second, different factory under the same name is
    a programming error (two plug-ins would silently shadow each other), so it raises ValueError."""

    def decorate(factory: ScorerFactory) -> ScorerFactory:
        known = _REGISTRY.get(name)
        if known is not None and _qualname(known) != _qualname(factory):
            raise ValueError(f"scorer {name!r} is already registered by {_qualname(known)}")
        _REGISTRY[name] = factory
        return factory

    return decorate


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def scorer_names() -> list[str]:
    """Every name `get_scorer` accepts, registered or still to be imported, sorted."""
    return sorted(set(_REGISTRY) | set(_LAZY))


def _factory(name: str) -> ScorerFactory:
    factory = _REGISTRY.get(name)
    if factory is None and name in _LAZY:
        importlib.import_module(_LAZY[name])  # its @register_scorer fills the registry
        factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown --scorer {name!r}; choose one of {', '.join(scorer_names())}")
    return factory


def scorer_options(name: str) -> list[str]:
    """The option names the scorer `name` takes (for help text and error messages)."""
    parameters = inspect.signature(_factory(name)).parameters.values()
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def get_scorer(name: str, **options) -> Scorer:
    """The scorer registered as `name`, built with `options`.

    Unknown names and options a scorer does not take are ConfigErrors naming the flag, not ignored:
    a misspelt option would otherwise score against a default the user did not choose.
    """
    factory = _factory(name)
    parameters = inspect.signature(factory).parameters.values()
    if not any(p.kind == p.VAR_KEYWORD for p in parameters):
        accepted = scorer_options(name)
        extra = sorted(set(options) - set(accepted))
        if extra:
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
            raise ConfigError(f"--scorer-option {', '.join(extra)} does not apply to the {name} scorer; {takes}")
    log.debug("scorer %s with options %s", name, sorted(options))
    return factory(**options)


def parse_scorer_options(pairs: Iterable[str]) -> dict[str, str]:
    """`["api_file=PATH", ...]` (repeated `--scorer-option KEY=VALUE` flags) as a dict. Values stay
    strings (a path may contain "="; only the first one splits); a key given twice is an error."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--scorer-option {pair!r}: expected KEY=VALUE, e.g. api_file=torchhub_api.jsonl")
        if key in options:
            raise ConfigError(f"--scorer-option {key} is given twice")
        options[key] = value
    return options


def mean_scores(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """Per-metric means of per-example score dicts, keys in first-seen order; a metric missing from
    some rows is averaged over the rows that have it. Empty input gives {}."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for name, value in row.items():
            sums[name] = sums.get(name, 0.0) + float(value)
            counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in sums}
