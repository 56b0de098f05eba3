"""What a RAFT build writes: crash-safe progress, then the final files.

Progress: an append-only part file of finished items and a state record.

Each batch of items is appended to `<out>/.raft-build/items.jsonl` and fsync'ed; only then is
`state.json` (items done, bytes of the part file that hold them, the build's fingerprint) replaced
atomically. After a SIGKILL anywhere, the part file is cut back to the bytes the state vouches for
and the build goes on from the next item. Every random choice is seeded per item, so the resumed
build writes byte-identical files to an uninterrupted one.

Final files, written from its finished items (each file atomically):

- `chat.jsonl`: `{"messages": [system, user, assistant]}` per training example, what `ragtune train`
  reads; the trainer puts the loss on the assistant turn (the chain of thought) only.
- `completion.jsonl`: `{"system", "prompt", "completion"}`, the same examples for completion trainers
  (ragtune reads it too, as prompt/completion).
- `eval.jsonl`: the held-out questions in the `eval qa` format (answers, gold document, oracle text).
- `examples.jsonl`: per example, what went into it (oracle, documents in order, oracle present or not).
- `manifest.json`: settings, counts, and what was dropped and why.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

from ..errors import ConfigError

BUILD_DIR = ".raft-build"
FILES = {"chat": "chat.jsonl", "completion": "completion.jsonl", "eval": "eval.jsonl", "examples": "examples.jsonl"}
DROPPED_SAMPLES = 5  # questions shown per drop reason in the manifest


def write_atomic(path: Path, text: str) -> None:
    """Write a file so a reader (or a crash) sees the old content or the new, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class BuildState:
    """The part file and state of one output directory; `records` are the finished items, in order."""

    def __init__(self, out: Path, fingerprint: dict):
        self.dir = Path(out) / BUILD_DIR
        self.part = self.dir / "items.jsonl"
        self.state = self.dir / "state.json"
        self.fingerprint = fingerprint
        self.records: list[dict] = []
        self.bytes = 0

    @classmethod
    def open(cls, out: Path, fingerprint: dict) -> "BuildState":
        """Resume what `out` holds for the same fingerprint; refuse one made with other settings."""
        state = cls(out, fingerprint)
        state.dir.mkdir(parents=True, exist_ok=True)
        if state.state.exists():
            try:
                saved = json.loads(state.state.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{state.state} is unreadable ({exc}); delete {state.dir} to start the build over") from None
            changed = sorted(k for k in set(saved["fingerprint"]) | set(fingerprint)
                             if saved["fingerprint"].get(k) != fingerprint.get(k))
            if changed:
                raise ConfigError(f"--out {out} holds a build made with other settings or another state of the knowledge "
                                  f"base (differs in: {', '.join(changed)}); pass a new --out, or delete {out} to start over")
            state.bytes = int(saved["bytes"])
        state._load()
        return state

    def _load(self) -> None:
        """Read the vouched-for part of the part file; cut off anything a kill left after it."""
        if not self.part.exists():
            if self.bytes:
                raise ConfigError(f"{self.part} is missing but {self.state} says {self.bytes} bytes were written; "
                                  f"delete {self.dir} to start the build over")
            return
        size = self.part.stat().st_size
        if size < self.bytes:
            raise ConfigError(f"{self.part} is shorter than {self.state} records; delete {self.dir} to start over")
        if size > self.bytes:
            with open(self.part, "r+b") as handle:
                handle.truncate(self.bytes)
                handle.flush()
                os.fsync(handle.fileno())
        with open(self.part, "rb") as handle:
            self.records = [json.loads(line) for line in handle.read(self.bytes).splitlines() if line.strip()]

    @property
    def done(self) -> int:
        return len(self.records)

    def append(self, records: list[dict]) -> None:
        """Add finished items durably: data first (fsync), then the state that points at it."""
        if not records:
            return
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        with open(self.part, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.bytes += len(data)
        self.records.extend(json.loads(line) for line in lines)  # exactly what a resumed build reads back
        write_atomic(self.state, json.dumps({"items": self.done, "bytes": self.bytes, "fingerprint": self.fingerprint},
                                            indent=1, sort_keys=True))
        _fsync_dir(self.dir)


def _lines(rows) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_outputs(out: Path, records: list[dict], settings: dict, counts: dict, problems: list) -> dict:
    """Write every output file from `records` (finished items, in item order); returns the manifest."""
    from ..evaluate.dataset import EvalExample

    train, evals, details = [], [], []
    dropped: Counter = Counter()
    samples: dict[str, list[str]] = {}
    tally: Counter = Counter()
    tokens: list[int] = []
    for record in records:
        tally.update(record["counts"])
        for drop in record["dropped"]:
            dropped[drop["reason"]] += 1
            shown = samples.setdefault(drop["reason"], [])
            if len(shown) < DROPPED_SAMPLES:
                shown.append(drop["question"])
        for example in record["examples"]:
            details.append({**{key: example[key] for key in ("id", "split", "question", "answer", "oracle", "documents",
                                                             "oracle_present", "hard_distractors", "random_distractors")},
                            "oracles": example.get("oracles", [example["oracle"]])})
            if record["split"] == "eval":
                evals.append(EvalExample(id=example["id"], question=example["question"], answers=example["answers"],
                                         gold_doc_ids=example["gold_doc_ids"], context=example["oracle_text"],
                                         split="test", metadata={"oracle": example["oracle"]["key"], "raft": True}))
                continue
            train.append(example)
            tokens.append(example["tokens"])
    chat = [{"messages": e["messages"]} for e in train]
    completion = [{"system": e["messages"][0]["content"], "prompt": e["messages"][1]["content"],
                   "completion": e["messages"][2]["content"]} for e in train]
    write_atomic(out / FILES["chat"], _lines(chat))
    write_atomic(out / FILES["completion"], _lines(completion))
    write_atomic(out / FILES["eval"], _lines(e.model_dump(exclude_defaults=True) for e in evals))
    write_atomic(out / FILES["examples"], _lines(details))
    present = sum(1 for d in details if d["oracle_present"])
    longest = max(tokens, default=0)
    manifest = {
        **settings,
        "counts": {**counts, **dict(sorted(tally.items())), "examples": len(details), "train_examples": len(train),
                   "eval_examples": len(evals), "oracle_present": present, "oracle_absent": len(details) - present,
                   "oracle_present_share": round(present / len(details), 4) if details else None,
                   "hard_distractors": sum(d["hard_distractors"] for d in details),
                   "random_distractors": sum(d["random_distractors"] for d in details)},
        "dropped": dict(sorted(dropped.items())),
        "dropped_total": sum(dropped.values()),
        "dropped_samples": dict(sorted(samples.items())),
        "problems": [p.as_dict() if hasattr(p, "as_dict") else p for p in problems],
        "tokens": {"max_example": longest, "mean_example": round(sum(tokens) / len(tokens), 1) if tokens else 0,
                   # per example: its messages' tokens plus 8 a message for the chat template (an upper bound
                   # for ChatML); a recipe's data.max_length of at least this keeps every example
                   "suggested_max_length": 64 * math.ceil(longest / 64) if longest else None},
        "files": FILES,
    }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
