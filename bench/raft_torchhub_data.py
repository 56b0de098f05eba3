"""The Torch Hub data for bench/raft_torchhub.py: records, the stratified split, the compact API docs
of the knowledge base, the one-line Gorilla target answers and the files each strategy trains on.

Why compact docs: the 94 API records carry example code, environment lists and benchmark tables that
add tokens to every RAG and RAFT prompt (and to every training step) without telling the model which
call to write; the doc keeps what identifies an API (name, domain, call, what it does, the start of
its description). Training cost grows with tokens: a RAFT example of 3 full docs is ~1,400 SmolLM2
tokens, about 1.1 TFLOP forward and backward, so 400 of them would take over an hour on 2 cores.
Why one line: the RAFT answer is the line after `<ANSWER>:`, and the AST scorer reads the api_call
field wherever it is, so one line serves every strategy the same way.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "gorilla-torchhub"
FIELDS = ("domain", "api_call", "api_provider", "explanation", "code")
INSTRUCTION = ("Answer in Gorilla's format on one line: <<<domain>>>: ..., <<<api_call>>>: ..., "
               "<<<api_provider>>>: ..., <<<explanation>>>: ..., <<<code>>>: ...")
_FIELD = re.compile(r"""['"](domain|api_call|api_provider|explanation|code)['"]\s*:\s*(?P<q>['"])(?P<v>.*?)(?P=q)\s*[,}]""", re.S)


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def parse_output(output: str) -> dict:
    """The Output dict of a record (a Python literal; a regex per field when the literal is cut short)."""
    try:  # the files hold raw newlines inside the code string: escape them back
        value = ast.literal_eval(output.replace("\n", "\\n"))
        if isinstance(value, dict):
            return {k: str(v) for k, v in value.items()}
    except (ValueError, SyntaxError):
        pass
    return {m[1]: m["v"] for m in _FIELD.finditer(output)}


def target(output: dict, api: dict) -> str:
    """`<<<domain>>>: ..., <<<api_call>>>: ..., ...` on one line, missing fields from the API doc."""
    values = {"domain": output.get("domain") or api.get("domain", ""),
              "api_call": output.get("api_call") or api.get("api_call", ""),
              "api_provider": output.get("api_provider") or api.get("framework", "PyTorch"),
              "explanation": output.get("explanation", ""), "code": output.get("code", "")}
    return ", ".join(f"<<<{name}>>>: {_one_line(values[name])}" for name in FIELDS)


def load_records(path: Path) -> list[dict]:
    """Records of a torchhub_train.jsonl-shaped file: id, question, domain, doc id, target answer."""
    from ragtune.evaluate.importers import gorilla_doc_id, parse_gorilla_code

    records = []
    for line, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        record = json.loads(text)
        parsed = parse_gorilla_code(record["code"])
        if parsed is None:
            raise ValueError(f"{path}:{line}: `code` is in neither of APIBench's forms")
        question, given, output = parsed
        api = record["api_data"]
        fields = parse_output(output)
        call = fields.get("api_call", "")
        if call.count("(") != call.count(")") or not call:
            # a single-quoted call holding single quotes is no Python literal and the regex cuts it short;
            # the record's own api_call field is the same call, written cleanly
            fields["api_call"] = record.get("api_call") or api.get("api_call", "")
        records.append({"id": f"torchhub-{line}", "question": f"{question}\nInput: {given}" if given else question,
                        "domain": api.get("domain"), "doc_id": gorilla_doc_id(api), "answer": target(fields, api)})
    return records


def held_out_split(records: list[dict], share: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(training pool in a domain-stratified order, held-out share stratified by domain), fixed by seed.
    The pool's order interleaves domains round-robin, so its first N are balanced."""
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["domain"] or "", []).append(record)
    pool_groups, held = {}, []
    for domain in sorted(groups):
        members = groups[domain][:]
        rng.shuffle(members)
        cut = round(len(members) * share)
        held.extend(members[:cut])
        pool_groups[domain] = members[cut:]
    pool = []
    while any(pool_groups.values()):
        for domain in sorted(pool_groups):
            if pool_groups[domain]:
                pool.append(pool_groups[domain].pop(0))
    held.sort(key=lambda r: int(r["id"].split("-")[1]))
    return pool, held


def compact_doc(api: dict) -> dict:
    from ragtune.evaluate.importers import gorilla_doc_id

    description = " ".join(str(api.get("description", "")).split()[:12])
    lines = [f"api_name: {api.get('api_name')}", f"domain: {api.get('domain')}",
             f"api_call: {api.get('api_call')}", f"api_provider: {api.get('framework', 'PyTorch')}",
             f"functionality: {api.get('functionality')}", f"description: {description}"]
    return {"id": gorilla_doc_id(api), "title": str(api.get("api_name")), "text": "\n".join(lines)}


def write_kb_docs(path: Path) -> Path:
    docs = [compact_doc(json.loads(line)) for line in (DATA / "torchhub_api.jsonl").read_text().splitlines() if line.strip()]
    text = "".join(json.dumps(doc) + "\n" for doc in docs)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def gorilla_style(example: dict):
    """The prompt style of every strategy: the format instruction, one worked example (a fixed
    training record, with its doc under RAG), the whole answer scored."""
    from ragtune.evaluate.strategies import PromptStyle

    api = next(json.loads(line) for line in (DATA / "torchhub_api.jsonl").read_text().splitlines()
               if line.strip() and compact_doc(json.loads(line))["id"] == example["doc_id"])
    doc = compact_doc(api)
    closed = ({"role": "user", "content": f"{example['question']}\n{INSTRUCTION}"},
              {"role": "assistant", "content": example["answer"]})
    rag = ({"role": "user", "content": f"Sources:\n\n[1] {doc['title']}\n{doc['text']}\n\nQuestion: {example['question']}\n"
                                       f"{INSTRUCTION} Then cite the source as [n]."},
           {"role": "assistant", "content": f"{example['answer']} [1]"})
    return PromptStyle(instruction=INSTRUCTION, closed_example=closed, rag_example=rag, whole_answer=True)


def _jsonl(rows, path: Path) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_eval_set(records: list[dict], path: Path) -> Path:
    return _jsonl(({"id": r["id"], "question": r["question"], "answers": [r["answer"]], "gold_doc_ids": [r["doc_id"]],
                    "category": r["domain"]} for r in records), path)


def write_questions(records: list[dict], path: Path) -> Path:
    """The RAFT builder's questions file (the eval-set shape: gold doc id and gold answer)."""
    return write_eval_set(records, path)


def write_ft_data(records: list[dict], style, path: Path) -> Path:
    """Chat examples in the closed-book prompt the ft strategy answers in (strategies.PromptStyle)."""
    return _jsonl((style.training_example(r["question"], r["answer"]) for r in records), path)
