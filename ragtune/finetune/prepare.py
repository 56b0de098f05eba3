"""`ragtune data prepare`: clean, deduplicate, split and balance a data set, then write the format a
recipe trains on, with a manifest that says exactly what was done.

Order matters: cleaning first (so duplicates are found on clean text), deduplication before the
split (so no copy of a test example is trained on), balancing last and on the training split only
(so validation and test keep the real label distribution and oversampled copies never leak).
"""

from __future__ import annotations

import html
import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError, LoaderError
from ..models.cache import hash_files
from ..ingest.clean import normalize_newlines, normalize_unicode, remove_control_characters
from .check import find_duplicates
from .formats import OUTPUTS, ClassifyExample, Problem, read_examples, unfit_reason, write_jsonl

SPLITS = ("train", "validation", "test")
# HTML left in scraped text, matched by tag name and attribute syntax with regexes rather than an
# HTML parser: selectolax would read `List<String>` or `a <b and c> d` in code and maths as markup
# and delete it. Markdown code (``` blocks and `spans`) is never touched.
_TAG_ATTRS = r"""(?:\s+[\w:-]+\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>]+))*\s*/?>"""
_BLOCK = re.compile(rf"(?i)</?(?:p|div|br|hr|li|ul|ol|h[1-6]|tr|table|thead|tbody|blockquote|pre|section|"
                    rf"article|header|footer|dl|dt|dd){_TAG_ATTRS}")
_INLINE = re.compile(rf"(?i)</?(?:span|a|b|i|u|em|strong|font|small|big|sub|sup|code|img|abbr|mark|strike|del|"
                     rf"ins|td|th|html|body|head|title|meta|link|center|label|tt|nobr|wbr){_TAG_ATTRS}")
_DROP = re.compile(r"(?is)<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->")
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)
_ODD_SPACES = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")  # runs between words; indentation is kept
_TRAILING = re.compile(r"[ \t]+(?=\n|\Z)")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _clean_prose(text: str) -> str:
    text = _INLINE.sub("", _BLOCK.sub("\n", _DROP.sub("", text)))
    text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return _MANY_NEWLINES.sub("\n\n", _INNER_SPACES.sub(" ", _ODD_SPACES.sub(" ", text)))


def clean_text(text: str) -> str:
    """Control characters and HTML remnants out, whitespace runs collapsed; paragraph breaks,
    indentation and Markdown code kept as they are."""
    text = normalize_unicode(normalize_newlines(text))
    pieces, last = [], 0
    for code in _CODE.finditer(text):
        pieces += [_clean_prose(text[last:code.start()]), code.group()]
        last = code.end()
    pieces.append(_clean_prose(text[last:]))
    return _TRAILING.sub("", remove_control_characters("".join(pieces))).strip()


def clean_example(example):
    """The example with every text cleaned (labels: whitespace only)."""
    if isinstance(example, ClassifyExample):
        pair = clean_text(example.text_pair) if example.text_pair else None
        return replace(example, text=clean_text(example.text), text_pair=pair or None, label=" ".join(example.label.split()))
    return replace(example, messages=[{**m, "content": clean_text(m["content"])} for m in example.messages])


def _emptied(example) -> str | None:
    """The field cleaning left empty, if any."""
    if isinstance(example, ClassifyExample):
        return None if example.text and example.label else ("text" if not example.text else "label")
    return next((f"messages[{i}].content" for i, m in enumerate(example.messages) if not m["content"]), None)


def parse_split(value) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' (or three numbers) -> train, validation, test shares."""
    text = value if isinstance(value, str) else ",".join(map(str, value))
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or not all(0 <= s <= 1 for s in shares) or abs(sum(shares) - 1) > 1e-6 or shares[0] == 0:
        raise ConfigError(f"--split {text!r}: give three shares train,validation,test, each >= 0, train > 0, "
                          "summing to 1, e.g. --split 0.8,0.1,0.1 (or 0.9,0.1,0 for no test set)")
    return shares


def _two_way(items: list[int], share: float, labels: list[str] | None, seed: int, warnings: list[str], side: str):
    """(kept, held out): `share` of `items` held out, stratified by label where labels are given;
    labels too rare to stratify stay on the kept `side`."""
    from sklearn.model_selection import train_test_split

    if share <= 0 or not items:
        return items, []
    if labels is not None:
        counts = Counter(labels[i] for i in items)
        rare = [i for i in items if counts[labels[i]] < 2]
        if rare:
            names = sorted({labels[i] for i in rare})
            warnings.append(f"label(s) {', '.join(map(repr, names))} have a single example left: kept in "
                            f"{side}, not split (a stratified split needs 2 or more per label)")
        common = [i for i in items if counts[labels[i]] >= 2]
        try:
            kept, held = train_test_split(common, test_size=share, random_state=seed,
                                          stratify=[labels[i] for i in common])
            return rare + kept, held
        except ValueError as exc:
            warnings.append(f"stratified split not possible ({exc}); split at random instead")
    try:
        return tuple(train_test_split(items, test_size=share, random_state=seed))
    except ValueError as exc:
        warnings.append(f"{len(items)} example(s) are too few to split ({exc}); all kept in {side}")
        return items, []


def split_examples(examples: list, shares, seed: int = 0, *, stratify: bool = False) -> tuple[dict, list[str]]:
    """Train/validation/test lists (stratified by label when asked) and warnings about small classes."""
    train_share, validation_share, test_share = shares
    labels = [e.label for e in examples] if stratify else None
    warnings: list[str] = []
    train, held = _two_way(list(range(len(examples))), validation_share + test_share, labels, seed, warnings, "train")
    validation, test = held, []
    if validation_share and test_share:
        validation, test = _two_way(held, test_share / (validation_share + test_share), labels, seed, warnings,
                                    "validation")
    elif test_share:
        validation, test = [], held
    parts = {"train": train, "validation": validation, "test": test}
    return {name: [examples[i] for i in indices] for name, indices in parts.items()}, warnings


def balance_examples(examples: list[ClassifyExample], mode: str, seed: int = 0) -> list[ClassifyExample]:
    """Equal counts per label: 'over' adds random copies of the rarer labels, 'under' drops random
    examples of the commoner ones (scikit-learn's resample)."""
    from sklearn.utils import resample

    groups = defaultdict(list)
    for example in examples:
        groups[example.label].append(example)
    target = (max if mode == "over" else min)(len(g) for g in groups.values())
    balanced = []
    for group in groups.values():
        if mode == "over":
            extra = target - len(group)
            balanced += group + (resample(group, replace=True, n_samples=extra, random_state=seed) if extra else [])
        else:
            balanced += resample(group, replace=False, n_samples=target, random_state=seed)
    random.Random(seed).shuffle(balanced)
    return balanced


def _labels(examples) -> dict[str, int] | None:
    if not examples or not isinstance(examples[0], ClassifyExample):
        return None
    return dict(Counter(e.label for e in examples).most_common())


@dataclass
class PrepareResult:
    out_dir: Path
    files: dict[str, Path]
    manifest: dict
    problems: list[Problem]

    def as_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "files": {k: str(v) for k, v in self.files.items()}, **self.manifest}


def prepare(path, *, to: str, split=(0.8, 0.1, 0.1), dedup: bool = False, balance: str | None = None,
            seed: int = 0, out_dir=None, near_threshold: float = 0.9) -> PrepareResult:
    """Clean, optionally deduplicate, split (stratified for labelled data), optionally balance the
    training split, and write train/validation/test JSONL in format `to` plus manifest.json."""
    if to not in OUTPUTS:
        raise ConfigError(f"--to {to!r} is not one of {', '.join(OUTPUTS)}")
    if balance not in (None, "over", "under"):
        raise ConfigError(f"--balance {balance!r} is not one of over, under")
    shares = parse_split(split)
    path = Path(path).expanduser()
    read = read_examples(path)
    if not read.examples:
        raise LoaderError(str(path), f"no valid examples ({len(read.problems)} problem(s)); "
                          f"`ragtune data check {path}` lists them")
    labelled = read.format == "classify"
    if to == "classify" and not labelled:
        raise ConfigError(f"--to classify needs classification input (text, label); {path} is {read.format}")
    if balance and not labelled:
        raise ConfigError(f"--balance needs labelled data (text, label); {path} is {read.format}")
    problems = list(read.problems)

    examples, counts = [], Counter()
    for original in read.examples:
        example = clean_example(original)
        counts["cleaned"] += example != original
        field, unfit = _emptied(example), unfit_reason(example, to)
        if field:
            counts["empty_after_cleaning"] += 1
            problems.append(Problem(str(path), example.line, field, "empty after cleaning (only markup or whitespace)",
                                    "write the text, or remove the line", "warning"))
        elif unfit:
            counts[f"not_{to}"] += 1
            problems.append(Problem(str(path), example.line, "example", *unfit, severity="warning"))
        else:
            examples.append(example)
    labels_before = _labels(examples)
    duplicates = find_duplicates(examples, near_threshold) if dedup else []
    removed = {d.index for d in duplicates}
    examples = [e for i, e in enumerate(examples) if i not in removed]
    if not examples:
        raise LoaderError(str(path), "no examples left after cleaning; `ragtune data check` shows why")

    parts, warnings = split_examples(examples, shares, seed, stratify=labelled)
    train_before = _labels(parts["train"])
    if balance and parts["train"]:
        parts["train"] = balance_examples(parts["train"], balance, seed)
        target = len(parts["train"]) // len(train_before)
        warnings += [f"label {label!r}: {count} training example(s) {'copied' if balance == 'over' else 'cut'} to "
                     f"{target}; the model may {'memorise them' if balance == 'over' else 'see too little data'}"
                     for label, count in train_before.items() if max(count, target) / min(count, target) > 10]

    out_dir = Path(out_dir).expanduser() if out_dir else path.with_name(f"{path.stem}-prepared")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, share in zip(SPLITS, shares):
        target = out_dir / f"{name}.jsonl"
        if share:
            write_jsonl(target, parts[name], to, source=str(path))
            files[name] = target
        elif target.exists():  # a stale split from an earlier run with other shares
            target.unlink()
    from .. import __version__

    manifest = {
        "ragtune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(path.resolve()), "sha256": hash_files([path])},
        "format_in": read.format, "format_out": to,
        "seed": seed, "split": dict(zip(SPLITS, shares)),
        "counts": {"valid": len(read.examples), "invalid": len(read.problems), "cleaned": counts["cleaned"],
                   "empty_after_cleaning": counts["empty_after_cleaning"], f"not_{to}": counts[f"not_{to}"],
                   "exact_duplicates_removed": sum(d.kind == "exact" for d in duplicates),
                   "near_duplicates_removed": sum(d.kind == "near" for d in duplicates),
                   **{name: len(parts[name]) for name in files}},
        "dedup": {"enabled": dedup, "near_threshold": near_threshold if dedup else None},
        "labels": None if not labelled else {
            "before": labels_before, "after": {name: _labels(parts[name]) or {} for name in files}},
        "balance": {"mode": balance, "train_before": train_before, "train_after": _labels(parts["train"])}
        if balance else None,
        "files": {name: target.name for name, target in files.items()},
        "warnings": warnings,
        "problems": [p.as_dict() for p in problems[:200]],
    }
    temporary = out_dir / "manifest.json.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, out_dir / "manifest.json")
    return PrepareResult(out_dir, files, manifest, problems)
