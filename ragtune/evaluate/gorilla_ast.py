"""Gorilla's AST scorer for Torch Hub API calls (`--scorer gorilla-ast`).

A re-implementation of the semantics of gorilla's eval/eval-scripts/ast_eval_th.py (Apache-2.0),
because published APIBench numbers come from that script and ours only compare if we keep its
quirks:

* the call is cut from the output by position, not parsed: split on "api_call" (no split: an
  error, not a hallucination), keep the text before "api_provider", then take
  `part[start + 2 : end + 1]` with start = first ":" (0 if none) and end = last ")" (-2 if none).
  So `<<<api_call>>>:torch...` (no space) loses the "t" and usually becomes a hallucination;
* the call is parsed with tree-sitter, which never fails on broken code, and candidate sub-trees are
  listed in the script's depth-first order (children pushed on a stack, so visited right to left);
* API docs are tried in file order and the first match wins. A doc matches when the sub-tree whose
  first child's text equals the doc's function (else the last sub-tree listed) contains every value
  of the doc's arguments whose text mentions "repo_or_dir" or "model", single quotes stripped, as a
  plain substring (so `model_type=model_type` asks for the text "model_type");
* the matched doc's domain equal to the gold domain is "correct", else "error"; no doc matching is
  a "hallucination".

`exact_api` is stricter than gorilla: the matched doc must be the gold doc itself (substring
matching lets e.g. a `resnet50` call match an earlier doc whose model name it contains).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError
from .dataset import EvalExample
from .importers import gorilla_doc_id
from .scorers import register_scorer

log = logging.getLogger(__name__)

API_FILE_NAME = "torchhub_api.jsonl"
# What bench uses: ROOT.parent / BENCH_API_FILE, beside the repo like the other shared data sets.
BENCH_API_FILE = Path("shared", "datasets", "gorilla-torchhub", API_FILE_NAME)
OUTCOMES = ("correct", "error", "hallucination", "parse_error")
_ARG_KEYS = ("repo_or_dir", "model")


@lru_cache(maxsize=1)
def _language():
    try:
        import tree_sitter
        import tree_sitter_python
    except ImportError:
        raise ConfigError("--scorer gorilla-ast needs tree-sitter and tree-sitter-python; "
                          "install them with: pip install 'ragtune[raft]'") from None
    return tree_sitter.Language(tree_sitter_python.language())


def parse(code: str):
    """The tree-sitter root node of `code` (always a tree: syntax errors become ERROR nodes).

    A fresh Parser per call: parsers are cheap and not safe to share across threads."""
    import tree_sitter

    source = code.encode("utf-8", errors="replace")
    return tree_sitter.Parser(_language()).parse(source).root_node


def _text(node) -> str:
    return node.text.decode("utf-8", errors="replace")


def _child(node, *path):
    """node.children[i][j]..., or None where the script would have raised IndexError."""
    for index in path:
        if node is None or index >= node.child_count:
            return None
        node = node.children[index]
    return node


@dataclass(frozen=True)
class ApiDoc:
    """One API documentation record as the matcher sees it."""

    index: int  # position in the API file; earlier docs win when several match
    doc_id: str  # gorilla_doc_id(record), the gold id the importer writes
    domain: str
    call_name: bytes | None  # text of the call's function; None: the script skips the doc
    args: tuple[str, ...]  # repo_or_dir/model values, single quotes stripped; empty: skipped

    @property
    def usable(self) -> bool:
        return self.call_name is not None and bool(self.args)


def doc_signature(api_call: str) -> tuple[bytes | None, tuple[str, ...]]:
    """(function text, argument values) of a doc's `api_call`, read off its tree as the script does:
    module -> first statement -> its first node (the call) -> function and argument list."""
    call = _child(parse(api_call), 0, 0)
    if call is None or call.child_count == 0:
        return None, ()
    values = []
    arguments = _child(call, 1)
    for argument in arguments.children if arguments is not None else ():
        if not any(key in _text(argument) for key in _ARG_KEYS):
            continue
        value = _child(argument, 2)
        if value is None or argument.type == "string":
            # The script would crash here (a bare string has no third child in its grammar);
            # skipping keeps an odd doc from matching everything through an empty value.
            log.warning("gorilla-ast: ignoring argument %r of %r (not NAME=VALUE)", _text(argument), api_call)
            continue
        values.append(_text(value).strip("'"))
    return call.children[0].text, tuple(values)


def load_api_docs(path) -> list[ApiDoc]:
    """The API docs of a Gorilla API file (JSONL, one record a line), in file order.

    `path` may be the file or a directory holding torchhub_api.jsonl. Records need `api_call` and
    `domain`; anything else is a wrong file and raises ConfigError naming the line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / API_FILE_NAME
    if not path.is_file():
        raise ConfigError(f"gorilla-ast: no API file {path}; pass --scorer-option api_file=PATH to {API_FILE_NAME}")
    docs: list[ApiDoc] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"gorilla-ast {path}:{line_no}: not JSON ({exc})") from None
            if not (isinstance(record, dict) and isinstance(record.get("api_call"), str)
                    and isinstance(record.get("domain"), str)):
                raise ConfigError(f"gorilla-ast {path}:{line_no}: expected an API doc with api_call and domain strings")
            name, args = doc_signature(record["api_call"])
            docs.append(ApiDoc(len(docs), gorilla_doc_id(record), record["domain"], name, args))
    unusable = sum(not doc.usable for doc in docs)
    log.info("gorilla-ast: %d API docs from %s (%d never match: no call or no repo/model argument)",
             len(docs), path, unusable)
    if not docs:
        raise ConfigError(f"gorilla-ast {path}: no API docs in this file")
    return docs


def extract_api_call(output: str) -> str | None:
    """The api_call text cut out of a model output as the script cuts it; None when the output has
    no "api_call" at all. Keeps the script's off-by-one behaviour on purpose (see module doc)."""
    parts = output.split("api_call")
    if len(parts) == 1:
        return None
    part = parts[1].split("api_provider")[0]
    start = part.index(":") if ":" in part else 0
    end = part.rindex(")") if ")" in part else -2
    return part[start + 2:end + 1]


def candidate_subtrees(root) -> list[tuple[object, bytes | None]]:
    """(node, text of its first child or None) for the node and every descendant with children,
    in the script's order: a stack, so siblings come out last-first."""
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        found.append((node, node.children[0].text if node.child_count else None))
        stack.extend(child for child in node.children if child.child_count)
    return found


def match_api(api_call: str, docs: list[ApiDoc]) -> ApiDoc | None:
    """The first doc (file order) whose argument values all occur in the candidate sub-tree for its
    function name, else None (a hallucination)."""
    subtrees = candidate_subtrees(parse(api_call))
    by_head: dict[bytes, object] = {}
    for node, head in subtrees:
        if head is not None:
            by_head.setdefault(head, node)
    last = subtrees[-1][0]
    texts: dict[int, str] = {}
    for doc in docs:
        if not doc.usable:
            continue
        node = by_head.get(doc.call_name, last)
        text = texts.get(node.id)
        if text is None:
            text = texts[node.id] = _text(node)
        if all(value in text for value in doc.args):
            return doc
    return None


@dataclass(frozen=True)
class AstResult:
    """One scored output: the outcome, the call cut from it and the doc it matched."""

    outcome: str  # one of OUTCOMES
    api_call: str | None
    matched: ApiDoc | None = None
    exact: bool = False  # the matched doc is the gold doc

    def scores(self) -> dict[str, float]:
        return {"accuracy": float(self.outcome == "correct"),
                "hallucination": float(self.outcome == "hallucination"),
                "parse_error": float(self.outcome == "parse_error"),
                "exact_api": float(self.exact)}


def score_output(output: str, docs: list[ApiDoc], gold_domain: str, gold_doc_id: str | None = None) -> AstResult:
    """Score one model output against the API docs; `gold_domain` decides correct vs error."""
    api_call = extract_api_call(output)
    if api_call is None:
        return AstResult("parse_error", None)
    doc = match_api(api_call, docs)
    if doc is None:
        return AstResult("hallucination", api_call)
    outcome = "correct" if doc.domain == gold_domain else "error"
    return AstResult(outcome, api_call, doc, exact=gold_doc_id is not None and doc.doc_id == gold_doc_id)


@register_scorer("gorilla-ast")
class GorillaAstScorer:
    """`--scorer gorilla-ast --scorer-option api_file=PATH`: per-example accuracy, hallucination,
    parse_error and exact_api (0/1 each). The gold domain is the example's `category` and the gold
    doc its first gold_doc_id, as `ragtune eval import gorilla-torchhub` writes them; a set without a
    category falls back to the gold doc's domain."""

    def __init__(self, api_file=None):
        if api_file is None:
            raise ConfigError(f"--scorer gorilla-ast needs the API docs: --scorer-option api_file=PATH "
                              f"(Gorilla's {API_FILE_NAME})")
        self.docs = load_api_docs(api_file)
        self._domains = {doc.doc_id: doc.domain for doc in self.docs}

    def gold(self, example: EvalExample) -> tuple[str, str | None]:
        """(gold domain, gold doc id) of an example; ConfigError when neither gives a domain."""
        gold_id = example.gold_doc_ids[0] if example.gold_doc_ids else None
        domain = example.category if example.category is not None else self._domains.get(gold_id)
        if domain is None:
            raise ConfigError(f"gorilla-ast: example {example.id!r} has no category (the API domain) and no gold doc "
                              f"in the API file; import the set with `ragtune eval import gorilla-torchhub`")
        return domain, gold_id

    def result(self, example: EvalExample, prediction: str) -> AstResult:
        if not isinstance(prediction, str):
            raise TypeError(f"prediction must be a string, got {type(prediction).__name__}")
        return score_output(prediction, self.docs, *self.gold(example))

    def __call__(self, example: EvalExample, prediction: str) -> dict[str, float]:
        return self.result(example, prediction).scores()
