"""`ragtune data check`: everything wrong with a fine-tuning file, by line, before a training run
spends an hour finding it.

Errors (the file fails): unreadable or invalid records, and examples longer than the model's
maximum length after its chat template. Warnings (it passes): duplicates and label imbalance.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .formats import ChatExample, ClassifyExample, Problem, read_examples

NUM_PERM = 128  # MinHash permutations: ~0.03 standard error on a Jaccard estimate near 0.9
SHINGLE = 5  # characters per shingle; robust for the short texts of classification data too
_NON_WORD = re.compile(r"[\W_]+")
_DEDUP_FIX = "drop one: duplicates over-weight an example and leak between splits; `ragtune data prepare --dedup` does it"


@dataclass
class Duplicate:
    """Example `index` repeats the earlier example `original` (indices into the examples list)."""

    index: int
    original: int
    kind: str  # "exact" or "near"
    similarity: float
    conflict: bool = False  # classification: same text, different label


@dataclass
class CheckReport:
    path: str
    format: str
    examples: int
    problems: list[Problem]
    labels: dict[str, int] | None = None
    model: str | None = None
    max_length: int | None = None
    max_tokens: int | None = None  # the longest example after the chat template (with a model)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "passed": self.passed, "examples": self.examples,
                "errors": len(self.errors), "warnings": len(self.warnings), "labels": self.labels,
                "model": self.model, "max_length": self.max_length, "max_tokens": self.max_tokens,
                "problems": [p.as_dict() for p in self.problems]}


def exact_key(example) -> str:
    """Identity for exact duplicates: every text with its whitespace runs collapsed (labels excluded)."""
    if isinstance(example, ClassifyExample):
        parts = [example.text, example.text_pair or ""]
    else:
        parts = [f"{m['role']}: {m['content']}" for m in example.messages]
    return json.dumps([" ".join(part.split()) for part in parts], ensure_ascii=False)


def near_text(example) -> str:
    """Text compared for near duplicates: lowercase words. System prompts are left out because many
    data sets share one, which would make every pair look similar."""
    if isinstance(example, ClassifyExample):
        text = f"{example.text} {example.text_pair or ''}"
    else:
        text = " ".join(m["content"] for m in example.messages if m["role"] != "system")
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _shingles(text: str) -> set[bytes]:
    data = text.encode("utf-8")
    if len(data) <= SHINGLE:
        return {data} if data else set()
    return {data[i:i + SHINGLE] for i in range(len(data) - SHINGLE + 1)}


def find_duplicates(examples: list, near_threshold: float = 0.9, *, near: bool = True) -> list[Duplicate]:
    """Later copies of earlier examples, each matched to the first example it repeats.

    Near duplicates: MinHash LSH (datasketch) finds candidates among the kept examples; the
    character-shingle Jaccard similarity, computed exactly, must reach `near_threshold`.
    """
    check_threshold(near_threshold)
    found, first_seen, keep = [], {}, []
    for index, example in enumerate(examples):
        original = first_seen.setdefault(exact_key(example), index)
        if original != index:
            conflict = isinstance(example, ClassifyExample) and example.label != examples[original].label
            found.append(Duplicate(index, original, "exact", 1.0, conflict))
        else:
            keep.append(index)
    if not near or len(keep) < 2:
        return found
    from datasketch import MinHash, MinHashLSH

    shingles = {i: _shingles(near_text(examples[i])) for i in keep}
    keep = [i for i in keep if shingles[i]]
    hashes = dict(zip(keep, MinHash.bulk([list(shingles[i]) for i in keep], num_perm=NUM_PERM)))
    # The LSH only proposes candidates. At the threshold itself datasketch's banding finds ~30% of
    # the pairs (0.9: b=5, r=25), so it runs 0.2 lower (0.9 -> 0.7 finds 99.9%; above 0.9 the banding
    # degenerates) and the exact similarity then applies the real threshold.
    index_ = MinHashLSH(threshold=max(0.1, min(near_threshold, 0.9) - 0.2), num_perm=NUM_PERM)
    for i in keep:
        best = None
        for key in index_.query(hashes[i]):
            j = int(key)
            similarity = len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j])
            if similarity >= near_threshold and (best is None or j < best[0]):
                best = (j, similarity)
        if best:
            conflict = isinstance(examples[i], ClassifyExample) and examples[i].label != examples[best[0]].label
            found.append(Duplicate(i, best[0], "near", best[1], conflict))
        else:
            index_.insert(str(i), hashes[i])
    return sorted(found, key=lambda d: d.index)


def check_threshold(near_threshold: float) -> None:
    if not 0 < near_threshold <= 1:
        raise ConfigError(f"--near-threshold must be in (0, 1], got {near_threshold}; 0.9 finds light edits")


def _duplicate_problems(path: str, examples: list, duplicates: list[Duplicate]) -> list[Problem]:
    problems = []
    for dup in duplicates:
        this, first = examples[dup.index], examples[dup.original]
        if dup.kind == "exact":
            message = f"line {this.line} duplicates line {first.line}"
        else:
            message = f"line {this.line} is a near duplicate of line {first.line} ({dup.similarity:.0%} similar)"
        fix = _DEDUP_FIX
        if dup.conflict:
            message += f", but with label {this.label!r} instead of {first.label!r}"
            fix = "decide on one label and drop the other line"
        problems.append(Problem(path, this.line, "example", message, fix, "warning"))
    return problems


def label_problems(path: str, examples: list[ClassifyExample]) -> tuple[dict[str, int], list[Problem]]:
    """Counts per label (most common first) and warnings about labels a classifier cannot learn."""
    counts = dict(Counter(e.label for e in examples).most_common())
    problems = []
    if len(counts) == 1:
        problems.append(Problem(path, 0, "label", f"every example has the label {next(iter(counts))!r}",
                                "a classifier needs at least two labels", "warning"))
    for example in examples:
        if counts[example.label] == 1:
            problems.append(Problem(path, example.line, "label", f"label {example.label!r} has a single example",
                                    "add examples of it, or merge or drop it: a stratified split needs 2 or more",
                                    "warning"))
    if len(counts) > 1:
        (most, high), (least, low) = next(iter(counts.items())), list(counts.items())[-1]
        if high / low > 10:
            problems.append(Problem(path, 0, "label", f"labels are imbalanced {high / low:.0f}:1 ({most!r} {high}, "
                                    f"{least!r} {low})", "collect more of the rare labels, or use "
                                    "`ragtune data prepare --balance over|under`", "warning"))
    return counts, problems


def _token_count(tokenizer, example) -> int:
    if isinstance(example, ClassifyExample):
        return len(tokenizer(example.text, example.text_pair)["input_ids"])
    ids = tokenizer.apply_chat_template(example.messages, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding


def length_problems(path: str, examples: list, model: str, max_length: int) -> tuple[int, list[Problem]]:
    """The longest example in the model's tokens, and an error for each one over `max_length`."""
    from transformers import AutoTokenizer

    from ..models.cache import resolve_model_dir
    from ..runtime import quiet_transformers

    directory = resolve_model_dir(model)
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {model!r}: cannot load its tokenizer from {directory} ({exc})") from None
    if any(isinstance(e, ChatExample) for e in examples) and not tokenizer.chat_template:
        raise ConfigError(f"--model {model!r} has no chat template; name an instruct/chat model, or check without --model")
    longest, problems = 0, []
    for example in examples:
        field = "text" if isinstance(example, ClassifyExample) else "messages"
        try:
            count = _token_count(tokenizer, example)
        except Exception as exc:  # templates raise anything (jinja errors, raise_exception(...) in the template)
            problems.append(Problem(path, example.line, field, f"{model}'s chat template rejects it: {exc}",
                                    "use the roles and turn order this model's template accepts"))
            continue
        longest = max(longest, count)
        if count > max_length:
            problems.append(Problem(path, example.line, field, f"{count} tokens after {model}'s chat template, "
                                    f"over the maximum length {max_length}", "shorten or split it, or raise "
                                    "--max-length if the model's context allows; training would cut it off"))
    return longest, problems


def check_file(path, *, model: str | None = None, max_length: int = 2048, near_threshold: float = 0.9,
               format: str = "auto") -> CheckReport:
    """Validate a fine-tuning file: record errors, lengths (with a model), duplicates, labels."""
    if max_length < 1:
        raise ConfigError(f"--max-length must be at least 1, got {max_length}")
    check_threshold(near_threshold)
    read = read_examples(path, format)
    name = str(Path(path).expanduser())
    problems, longest = list(read.problems), None
    if model and read.examples:
        longest, found = length_problems(name, read.examples, model, max_length)
        problems += found
    problems += _duplicate_problems(name, read.examples, find_duplicates(read.examples, near_threshold))
    labels = None
    if read.format == "classify":
        labels, found = label_problems(name, read.examples)
        problems += found
    problems.sort(key=lambda p: p.line)
    return CheckReport(name, read.format, len(read.examples), problems, labels, model,
                       max_length if model else None, longest)
