"""Importers: public benchmarks and plain CSV into ragtune's evaluation-set format (dataset.py).

Each importer is a function `(src, **options) -> list[EvalExample]`, registered by name in
IMPORTERS and reached through `import_eval_set(kind, src, ...)` (`ragtune eval import KIND SRC`).
Importers are strict: input that is not what they expect raises ConfigError naming the file, the
line where there is one, and what was expected. A benchmark file with a malformed record is a
wrong file, not noise to skip, and a silently shortened test set would bias every comparison.

Gold document ids follow the knowledge bases the benches build from the same files, so retrieval
and citation metrics line up: HotpotQA paragraphs are keyed by title (bench/rag_qa.py), PubMedQA
abstracts by PMID, Gorilla API docs by their `api_call` (unique among the 94 Torch Hub records),
see `gorilla_doc_id`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from ..errors import ConfigError, LoaderError
from ..ingest.record_reader import RecordReader
from .dataset import EvalExample

log = logging.getLogger(__name__)


# -- shared helpers ------------------------------------------------------------------------------
def _source(src, kind: str, names: tuple[str, ...]) -> Path:
    """`src` itself, or the first of `names` inside it when it is a directory (the shared layout)."""
    path = Path(src)
    if path.is_dir():
        if not names:
            raise ConfigError(f"{kind} {path}: is a directory; give the data file")
        for name in names:
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"{kind} {path}: no {' or '.join(names)} in this directory; give the data file")
    if not path.is_file():
        raise ConfigError(f"{kind} {path}: no such file; check the path")
    return path


def _records(path: Path, kind: str, expected: str) -> Iterator[tuple[int, object]]:
    """(line, value) for each record of a JSON/JSONL/CSV file; the first bad record raises."""
    reader = RecordReader(path, sniff_delimiter=True)
    try:
        for record in reader:
            if reader.errors:
                break
            yield record.line, record.value
    except LoaderError as exc:
        raise ConfigError(f"{kind}: {exc}") from None
    errors = [p for p in reader.problems if p.severity == "error"]
    if errors:
        raise ConfigError(f"{kind}: {errors[0]}; expected {expected}")


def _example(path: Path, line: int, kind: str, **fields) -> EvalExample:
    try:
        return EvalExample(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"])) or "record"
        raise ConfigError(f"{kind} {path}:{line}: {field}: {first['msg']}") from None


def _require(value, types, path: Path, line, kind: str, what: str):
    if not isinstance(value, types):
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{kind} {where}: expected {what}, got {type(value).__name__}")
    return value


def _unique(examples: list[EvalExample], path: Path, kind: str) -> list[EvalExample]:
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise ConfigError(f"{kind} {path}: id {example.id!r} occurs twice; ids must be unique")
        seen.add(example.id)
    log.info("%s %s: %d examples", kind, path, len(examples))
    return examples


def _dedup(texts) -> list[str]:
    """Strings in first-seen order without repeats (SQuAD lists the same span once per annotator)."""
    return list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))


def _load_json(path: Path, kind: str, expected: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{kind} {path}: not JSON ({exc}); expected {expected}") from None


# -- importers -----------------------------------------------------------------------------------
def import_beir(src, split: str = "test") -> list[EvalExample]:
    """BEIR folder (queries.jsonl + qrels/<split>.tsv): retrieval-only, so answers are empty and the
    judged documents (score > 0, best first) are the gold ids."""
    from .beir import load_beir

    directory = Path(src)
    if not directory.is_dir():
        raise ConfigError(f"beir {directory}: expected a BEIR folder with queries.jsonl and qrels/{split}.tsv")
    _, queries, qrels = load_beir(directory, split)
    examples = []
    for query_id, text in queries.items():
        judged = sorted((d for d, s in qrels[query_id].items() if s > 0), key=lambda d: -qrels[query_id][d])
        if judged:
            examples.append(_example(directory, 0, "beir", id=query_id, question=text, answers=[],
                                     gold_doc_ids=judged, split=split))
    return _unique(examples, directory, "beir")


def import_squad(src) -> list[EvalExample]:
    """SQuAD v1.1/v2.0 JSON (data -> paragraphs -> qas); v2's unanswerable questions get no answers
    and metadata.is_impossible. The paragraph is kept as context, the article title in metadata."""
    path = _source(src, "squad", ())
    expected = 'SQuAD JSON: {"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}'
    data = _load_json(path, "squad", expected)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ConfigError(f"squad {path}: expected {expected}")
    examples = []
    for article in data["data"]:
        _require(article, dict, path, 0, "squad", "each data[] entry to be an object with paragraphs")
        for paragraph in _require(article.get("paragraphs"), list, path, 0, "squad", "data[].paragraphs to be a list"):
            _require(paragraph, dict, path, 0, "squad", "each paragraph to be an object with context and qas")
            for qa in _require(paragraph.get("qas"), list, path, 0, "squad", "paragraphs[].qas to be a list"):
                _require(qa, dict, path, 0, "squad", "each qas[] entry to be an object")
                impossible = bool(qa.get("is_impossible", False))
                answers = [] if impossible else _dedup(a.get("text") for a in qa.get("answers") or [] if isinstance(a, dict))
                metadata = {"title": article["title"]} if isinstance(article.get("title"), str) else {}
                if impossible:
                    metadata["is_impossible"] = True
                examples.append(_example(path, 0, "squad", id=str(qa.get("id", "")), question=qa.get("question", ""),
                                         answers=answers, context=paragraph.get("context"), metadata=metadata))
    return _unique(examples, path, "squad")


def import_hotpotqa(src) -> list[EvalExample]:
    """HotpotQA in the IRCoT release (shared dev500.jsonl: question_text, answers_objects[].spans,
    contexts[] with is_supporting) or the original JSON (question, answer, type, supporting_facts).

    Gold ids are the supporting paragraphs' titles, the doc ids bench/rag_qa.py gives them. The IRCoT
    release drops the question type, so `category` (bridge/comparison) is set only when present.
    """
    path = _source(src, "hotpotqa", ("dev500.jsonl", "hotpot_dev_distractor_v1.json"))
    expected = "HotpotQA records with question_text/answers_objects/contexts (IRCoT) or question/answer (original)"
    examples = []
    for line, record in _records(path, "hotpotqa", expected):
        _require(record, dict, path, line, "hotpotqa", "a JSON object")
        if "question_text" in record:
            answers = _dedup(span for obj in record.get("answers_objects") or [] if isinstance(obj, dict)
                             for span in obj.get("spans") or [])
            gold = _dedup(c.get("title") for c in record.get("contexts") or [] if isinstance(c, dict) and c.get("is_supporting"))
            fields = dict(id=str(record.get("question_id", "")), question=record["question_text"])
        elif "question" in record and "answer" in record:
            answers = _dedup([record["answer"]])
            gold = _dedup(fact[0] for fact in record.get("supporting_facts") or [] if isinstance(fact, list) and fact)
            fields = dict(id=str(record.get("_id", "")), question=record["question"])
        else:
            raise ConfigError(f"hotpotqa {path}:{line}: expected {expected}")
        metadata = {"level": record["level"]} if isinstance(record.get("level"), str) else {}
        category = record.get("type") if isinstance(record.get("type"), str) else None
        examples.append(_example(path, line, "hotpotqa", answers=answers, gold_doc_ids=gold, category=category,
                                 metadata=metadata, **fields))
    return _unique(examples, path, "hotpotqa")


def import_pubmedqa(src) -> list[EvalExample]:
    """PubMedQA PQA-L JSON keyed by PMID: label = final_decision (yes/no/maybe), answers = [label],
    gold id = the PMID (the abstracts form the bench's KB), context = the abstract's sections."""
    path = _source(src, "pubmedqa", ("pqal_train.json", "ori_pqal.json", "test_set.json"))
    expected = 'PubMedQA JSON: {"<PMID>": {"QUESTION", "CONTEXTS", "final_decision", "LONG_ANSWER"}}'
    data = _load_json(path, "pubmedqa", expected)
    if not isinstance(data, dict):
        raise ConfigError(f"pubmedqa {path}: expected {expected}")
    examples = []
    for pmid, record in data.items():
        if not isinstance(record, dict) or "QUESTION" not in record or "final_decision" not in record:
            raise ConfigError(f"pubmedqa {path}: entry {pmid!r}: expected {expected}")
        contexts = record.get("CONTEXTS") or []
        metadata = {k: record[k] for k in ("LONG_ANSWER", "YEAR") if isinstance(record.get(k), str)}
        metadata = {k.lower(): v for k, v in metadata.items()}
        examples.append(_example(path, 0, "pubmedqa", id=str(pmid), question=record["QUESTION"],
                                 answers=[record["final_decision"]], label=record["final_decision"],
                                 gold_doc_ids=[str(pmid)], context=" ".join(c for c in contexts if isinstance(c, str)) or None,
                                 metadata=metadata))
    return _unique(examples, path, "pubmedqa")


_DICT_FORM = re.compile(r"^\s*\{\s*'Instruction'\s*:\s*(?P<q>.*?),\s*(?:'Input'\s*:\s*(?P<i>.*?),\s*)?"
                        r"'Output'\s*:\s*(?P<a>.*?)\s*\}?\s*$", re.S)  # one train record is cut short
_HASH_FORM = re.compile(r"^\s*###\s*Instruction\s*:\s*(?P<q>.*?)\s*(?:###\s*Input\s*:\s*(?P<i>.*?)\s*)?"
                        r"###\s*Output\s*:\s*(?P<a>.*?)\s*$", re.S)


def gorilla_doc_id(api_record: dict) -> str:
    """The doc id of a Gorilla API documentation record: its `api_call`, whitespace collapsed.

    Stable (it is the record's own key in APIBench), unique among the 94 Torch Hub docs, and what the
    AST scorer matches, so a KB built from torchhub_api.jsonl must use the same rule for its ids.
    """
    return " ".join(str(api_record.get("api_call", "")).split())


def parse_gorilla_code(code: str) -> tuple[str, str | None, str] | None:
    """(instruction, input or None, output) from a `code` field in either of APIBench's forms, else
    None. A few records carry an Input and a plain-string Output (e.g. 'contradiction'); its quotes
    are removed, a dict-like Output is kept exactly as written."""
    match = _DICT_FORM.match(code) or _HASH_FORM.match(code)
    if not match:
        return None
    output = match["a"].strip()
    if len(output) >= 2 and output[0] == output[-1] and output[0] in "'\"":
        output = output[1:-1]
    given = match["i"].strip().strip("'\"") if match["i"] else None
    return match["q"].strip(), given, output


def import_gorilla_torchhub(src) -> list[EvalExample]:
    """Gorilla APIBench Torch Hub (train or eval JSONL): question = the instruction, answers = [the
    reference output as Gorilla writes it], gold id = gorilla_doc_id(api_data); the api_call to match
    is kept in metadata. Ids are `torchhub-<line>` (the files carry none)."""
    path = _source(src, "gorilla-torchhub", ("torchhub_eval.jsonl", "torchhub_train.jsonl"))
    expected = "Gorilla APIBench records with code ('Instruction'/'Output' or ###Instruction/###Output) and api_data"
    examples = []
    for line, record in _records(path, "gorilla-torchhub", expected):
        _require(record, dict, path, line, "gorilla-torchhub", "a JSON object")
        parsed = parse_gorilla_code(record["code"]) if isinstance(record.get("code"), str) else None
        api = record.get("api_data")
        if parsed is None or not isinstance(api, dict) or not api.get("api_call"):
            raise ConfigError(f"gorilla-torchhub {path}:{line}: expected {expected}")
        question, given, answer = parsed
        if given:  # the instruction alone would not say what to classify
            question = f"{question}\nInput: {given}"
        metadata = {"api_call": record.get("api_call") or api["api_call"], "api_name": api.get("api_name"),
                    "provider": record.get("provider") or api.get("framework")}
        examples.append(_example(path, line, "gorilla-torchhub", id=f"torchhub-{line}", question=question,
                                 answers=[answer], gold_doc_ids=[gorilla_doc_id(api)], category=api.get("domain"),
                                 metadata={k: v for k, v in metadata.items() if v is not None}))
    return _unique(examples, path, "gorilla-torchhub")


def import_csv(src, question_col: str = "question", answer_col: str | None = "answer", id_col: str | None = None,
               label_col: str | None = None, category_col: str | None = None) -> list[EvalExample]:
    """A CSV/TSV with a header: one question a row; several answers in one cell are split on `|`.
    Without --id-col the ids are `row-<line>`. Without an answer column, a label column is needed."""
    path = _source(src, "csv", ())
    examples = []
    for line, row in _records(path, "csv", "a CSV file with a header row"):
        if line and not examples:
            wanted = [c for c in (question_col, answer_col, id_col, label_col, category_col) if c]
            missing = [c for c in wanted if c not in row]
            if missing:
                raise ConfigError(f"csv {path}: column(s) {', '.join(missing)} not in the header "
                                  f"({', '.join(list(row)[:12])}); name them with --question-col/--answer-col/...")

        def cell(name):
            value = (row.get(name) or "").strip() if name else ""
            return value or None

        answers = [a.strip() for a in (cell(answer_col) or "").split("|") if a.strip()]
        examples.append(_example(path, line, "csv", id=cell(id_col) or f"row-{line}", question=cell(question_col) or "",
                                 answers=answers, label=cell(label_col), category=cell(category_col)))
    return _unique(examples, path, "csv")


IMPORTERS: dict[str, Callable[..., list[EvalExample]]] = {
    "beir": import_beir,
    "squad": import_squad,
    "hotpotqa": import_hotpotqa,
    "pubmedqa": import_pubmedqa,
    "gorilla-torchhub": import_gorilla_torchhub,
    "csv": import_csv,
}


def import_eval_set(kind: str, src, **options) -> list[EvalExample]:
    """Run the importer named `kind`; options a kind does not take are an error, not ignored."""
    importer = IMPORTERS.get(kind)
    if importer is None:
        raise ConfigError(f"unknown importer {kind!r}; choose one of {', '.join(IMPORTERS)}")
    import inspect

    accepted = set(inspect.signature(importer).parameters) - {"src"}
    extra = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise ConfigError(f"{flags} do(es) not apply to the {kind} importer")
    return importer(src, **{k: v for k, v in options.items() if v is not None and k in accepted})
