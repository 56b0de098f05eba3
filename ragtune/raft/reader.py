"""`ragtune raft reader KB`: a reader adapter for the answering model, trained the RAFT way.

A 0.1-0.5B model asked to read numbered sources loses answers retrieval found. RAFT's remedy is to
train it on questions with the passage that answers among distractors (and sometimes without it).
Here the reader is trained on exactly the prompt and reply shape of the answer pipeline's grounded
protocol (raft/reader_data.py builds each example through `answer.pipeline.prepare`), so at
inference everything else stays as it is: the grammar that makes quotes verbatim, the support
checks, the retry and "not found". It is a LoRA over the packaged model, exported as a GGUF adapter
(a few MB) that llama.cpp applies over the shipped weights.

Layout, inside the knowledge base (a reader is specific to a model, and usually to the KB's topic):
    readers/<model>/adapter.gguf   the adapter `ask`, `chat` and `serve` load when present
    readers/<model>/reader.json    what it was trained on, how long, and its held-out score
    readers/<model>.work/          data, run and checkpoints (a killed build resumes from them)
A new reader replaces the old one only after it has trained and exported; the old one is kept
as readers/<model>.previous.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError
from .reader_data import Counts, ReaderItem, TokenCounter, mix_items, reader_example
from .reader_score import held_out_questions, score_reader

logger = logging.getLogger(__name__)
READERS = "readers"
MAX_LENGTH = 2048  # tokens of one example; longer ones (a huge chunk) are left out
DEFAULT_QUESTIONS = 80
# LoRA on every linear module of the top third of the blocks: backward stops there (about 2.7x faster
# than adapting all 24 blocks of Qwen2.5-0.5B on 2 cores, with logits only at the answer's positions).
RECIPES = {"Qwen2.5-Coder-0.5B-Instruct": {"learning_rate": 2e-4, "layers": 8},
           "SmolLM2-135M-Instruct": {"learning_rate": 5e-4, "layers": 10}}
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]


@dataclass
class ReaderOptions:
    kb: Path
    model: str | None = None  # default: the best installed chat model (models/profiles.py)
    mix: Path | None = None  # a public QA set with passages (HotpotQA) instead of, or beside, synthesis
    synthesize: int | None = None  # questions the teacher writes over the KB (default 80 without --mix)
    teacher: str | None = None  # default: the model being trained
    minutes: float = 20.0
    # measured on docs/ (bench/grounded_qa.py): P 0.8 taught the reader to say "not found" for a third of
    # answerable questions (0.42 right and cited); P 1.0, 0.68, as the grounded prompt (see docs/raft.md)
    p: float = 1.0
    limit: int | None = None
    eval_share: float = 0.1
    seed: int = 0
    threads: int | None = None
    layers: int | None = None  # default per model (RECIPES)
    score: bool = True  # compare reader and grounded prompt on the held-out KB questions (reader_score.py)

    def check(self) -> None:
        if not 0 < self.p <= 1:
            raise ConfigError(f"--p must be in (0, 1], got {self.p}: the share of examples that show the answering passage")
        if self.minutes <= 0:
            raise ConfigError(f"--minutes must be positive, got {self.minutes}")
        if not 0 <= self.eval_share < 0.5:
            raise ConfigError(f"--eval-share must be in [0, 0.5), got {self.eval_share}")
        if self.synthesize is not None and self.synthesize < 0:
            raise ConfigError(f"--synthesize must be 0 or more, got {self.synthesize}")


def reader_path(kb: Path, model: str) -> Path:
    return Path(kb).expanduser() / READERS / model


def find_reader(kb: Path | str | None, model: str) -> dict | None:
    """The reader trained for `model` in the knowledge base `kb` (its reader.json, with `adapter` set
    to the adapter's path), or None."""
    if kb is None:
        return None
    folder = reader_path(Path(kb), model)
    try:
        meta = json.loads((folder / "reader.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    adapter = folder / "adapter.gguf"
    if meta.get("model") != model or not adapter.is_file():
        return None
    return {**meta, "adapter": str(adapter)}


def reader_choice(kb, model: str, prompt: str, lora: str | None) -> tuple[str | None, str, str | None]:
    """(lora, prompt, note) for answering with `model` over `kb`: the KB's reader when `prompt` is
    auto or reader and no other adapter is given, with a one-line note saying so; else unchanged.
    `--prompt reader` without a reader (or --lora) is an error that says how to train one."""
    if lora or prompt not in ("auto", "reader"):
        return lora, prompt, None
    reader = find_reader(kb, model)
    if reader is None:
        if prompt == "reader":
            raise ConfigError(f"--prompt reader: there is no reader for {model} in {kb}; train one with "
                              f"`ragtune raft reader {kb}`, or give a reader adapter with --lora")
        return None, prompt, None
    from ..generate.llamacpp import unavailable_reason

    why_not = unavailable_reason()
    if why_not is not None:
        if prompt == "reader":
            raise ConfigError(f"--prompt reader: the reader is a llama.cpp adapter, and llama.cpp cannot run here ({why_not})")
        return None, prompt, f"the reader for {model} in {kb} needs llama.cpp ({why_not}); answering without it"
    trained = ", ".join(f"{k}: {v.get('questions', '')} questions" if isinstance(v, dict) else k
                        for k, v in reader.get("trained_on", {}).items())
    held = reader.get("held_out") or {}
    if prompt == "auto" and not held.get("reader_better"):
        why = (f"it scored {held['reader']['right_and_cited']:.2f} right and cited on {held['n']} held-out questions "
               f"against {held['grounded']['right_and_cited']:.2f} for the grounded prompt") if held else \
            "it was not measured on this knowledge base's questions"
        return None, prompt, f"not using the reader for {model} in {kb}: {why}; --prompt reader uses it"
    measured = (f", {held['reader']['right_and_cited']:.2f} vs {held['grounded']['right_and_cited']:.2f} right and "
                f"cited on {held['n']} held-out questions") if held else ""
    return reader["adapter"], "reader", (f"reading with the reader adapter trained {reader.get('created', '')} "
                                          f"({trained}{measured}); --prompt grounded answers without it")


def train_reader(options: ReaderOptions, *, stage) -> dict:
    """Build the data, train, export and install the reader; returns its reader.json."""
    from ..models.profiles import answer_model
    from ..models.registry import find_model

    options.check()
    model, _note = answer_model(options.model)
    spec = find_model(model)
    if spec is None or spec.kind != "chat":
        raise ConfigError(f"--model {model!r}: a reader is an adapter over a packaged chat model (`ragtune models`)")
    kb = Path(options.kb).expanduser()
    from ..kb import CONFIG_FILE

    if not (kb / CONFIG_FILE).is_file():
        raise ConfigError(f"{kb} is not a knowledge base; create one with `ragtune init` and `ragtune ingest`")
    work = kb / READERS / f"{model}.work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    data = _prepared_data(options, model, work, stage)
    run_dir = work / "run"
    recipe = _recipe(model, data, run_dir, options)
    if not (run_dir / "metrics.json").is_file():
        from ..finetune.run import train

        with stage(f"training the {model} reader on {data['counts']['train_examples']} examples "
                   f"(at most {options.minutes:g} min)"):
            result = train(recipe, resume=(run_dir / "checkpoints").is_dir(), progress=False)
        trained = result.as_dict()
    else:
        trained = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    from ..finetune.gguf_export import export_gguf_adapter

    staging = work / "adapter.gguf"
    with stage("exporting the adapter for llama.cpp"):
        export_gguf_adapter(run_dir, staging, overwrite=True)
    meta = {"model": model, "protocol": "reader", "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "trained_on": data["sources"], "counts": data["counts"], "max_length": data["max_length"],
            "recipe": {"lora_layers": recipe.lora.layers, "r": recipe.lora.r, "learning_rate": recipe.training.learning_rate,
                       "minutes": options.minutes, "p": options.p, "seed": options.seed},
            "train": _train_summary(trained), "seconds": round(time.perf_counter() - started, 1),
            "eval_file": str(work / "eval.jsonl")}
    held = held_out_questions(work / "eval.jsonl") if options.score else []
    if held:
        with stage(f"comparing the reader with the grounded prompt on {len(held)} held-out questions"):
            meta["held_out"] = score_reader(kb, model, str(staging), held, threads=options.threads)
    install(kb, model, staging, meta)
    return {**meta, "adapter": str(reader_path(kb, model) / "adapter.gguf")}


def install(kb: Path, model: str, adapter: Path, meta: dict) -> None:
    """Put a trained adapter in place: the new folder is complete before it replaces the old one,
    which is kept as <model>.previous (nothing a user trained is deleted by a new build)."""
    final = reader_path(kb, model)
    staging = final.with_name(f"{model}.new")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    shutil.copy2(adapter, staging / "adapter.gguf")
    (staging / "reader.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if final.exists():
        previous = final.with_name(f"{model}.previous")
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(final, previous)
    os.replace(staging, final)


def _prepared_data(options: ReaderOptions, model: str, work: Path, stage) -> dict:
    """chat.jsonl and eval.jsonl in `work`, built once (a second run with the same settings reuses them)."""
    mix = str(Path(options.mix).expanduser().resolve()) if options.mix else None
    settings = {"model": model, "mix": mix, "synthesize": options.synthesize, "teacher": options.teacher,
                "p": options.p, "limit": options.limit, "eval_share": options.eval_share, "seed": options.seed}
    manifest_path = work / "data.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("settings") == settings and (work / "chat.jsonl").is_file():
            return manifest
        _clear_run(work)  # new data: an old run's checkpoints would resume on the wrong examples
    items, sources, problems = _items(options, model, stage)
    rng = random.Random(options.seed)
    rng.shuffle(items)
    held = int(round(len(items) * options.eval_share))
    held_out, train_items = items[:held], items[held:]
    counter, counts = TokenCounter(model), Counts()
    rows = []
    with stage(f"building examples from {len(train_items)} questions"):
        for item in train_items:
            row = reader_example(item, counter, rng, p=options.p, counts=counts)
            if row is None:
                continue
            tokens = sum(counter.count_tokens(m["content"]) + 8 for m in row["messages"])
            if tokens > MAX_LENGTH:
                counts.add("too_long")
                continue
            rows.append((tokens, row))
    if len(rows) < 8:
        raise ConfigError(f"only {len(rows)} usable training examples ({_why(counts.values, problems)}); "
                          "ingest more documents, raise --synthesize, or add --mix with a public QA set")
    _write_jsonl(work / "chat.jsonl", [{"messages": r["messages"]} for _, r in rows])
    _write_jsonl(work / "eval.jsonl", [{"id": i.id, "question": i.question, "answers": [i.answer],
                                        "gold_doc_ids": sorted({h.doc_id for h in i.oracles}),
                                        "context": "\n\n".join(h.text for h in i.oracles), "origin": i.origin}
                                       for i in held_out])
    manifest = {"settings": settings, "sources": sources, "max_length": max(t for t, _ in rows) + 16,
                "counts": {"items": len(items), "train_items": len(train_items), "held_out": len(held_out),
                           "train_examples": len(rows), **counts.values},
                "problems": [asdict(p) if hasattr(p, "__dataclass_fields__") else str(p) for p in problems[:50]]}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _items(options: ReaderOptions, model: str, stage) -> tuple[list[ReaderItem], dict, list]:
    items, sources, problems = [], {}, []
    if options.mix is not None:
        with stage(f"reading {options.mix}"):
            mixed, bad = mix_items(options.mix, limit=options.limit)
        items += mixed
        problems += bad
        sources["mix"] = {"path": str(options.mix), "questions": len(mixed), "skipped": len(bad)}
    wanted = options.synthesize if options.synthesize is not None else (0 if options.mix else DEFAULT_QUESTIONS)
    if wanted:
        synthesized, report = _synthesized(options, model, wanted, stage)
        items += synthesized
        sources["kb"] = report
    return items, sources, problems


def _synthesized(options: ReaderOptions, model: str, wanted: int, stage) -> tuple[list[ReaderItem], dict]:
    """The teacher's questions over the KB, kept in the work folder (questions.jsonl) so that a new
    --p, --minutes or --eval-share reuses them instead of asking the teacher again (minutes of work)."""
    from ..retrieve.hits import Hit
    from .reader_teacher import kb_items

    teacher = options.teacher or model
    path = Path(options.kb).expanduser() / READERS / f"{model}.work" / "questions.jsonl"
    key = {"teacher": teacher, "wanted": wanted, "seed": options.seed}
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0]) if lines else {}
        if head.get("key") == key:
            items = []
            for line in lines[1:]:
                row = json.loads(line)
                items.append(ReaderItem(row["id"], row["question"], row["answer"], [Hit(**h) for h in row["oracles"]],
                                        [Hit(**h) for h in row["distractors"]], row["origin"]))
            return items, head["report"]
    items, report = kb_items(options.kb, teacher, wanted, seed=options.seed, threads=options.threads, stage=stage)
    rows = [{"key": key, "report": report}] + [
        {"id": i.id, "question": i.question, "answer": i.answer, "origin": i.origin,
         "oracles": [asdict(h) for h in i.oracles], "distractors": [asdict(h) for h in i.distractors]} for i in items]
    _write_jsonl(path, rows)
    return items, report


def _recipe(model: str, data: dict, run_dir: Path, options: ReaderOptions):
    from ..finetune.recipe import validate_recipe

    settings = RECIPES.get(model, RECIPES["SmolLM2-135M-Instruct"])
    return validate_recipe({
        "name": f"reader-{model}", "method": "lora", "model": model, "output_dir": str(run_dir), "seed": options.seed,
        "data": {"train": str(run_dir.parent / "chat.jsonl"), "max_length": data["max_length"], "validation_share": 0.0},
        # one example a step (a reader example is ~700 tokens: no padding, no wasted compute), 4 accumulated
        "training": {"learning_rate": settings["learning_rate"], "batch_size": 1, "gradient_accumulation": 4,
                     "epochs": 2, "max_minutes": options.minutes, "threads": options.threads, "warmup": 0.05,
                     "checkpoint_every": 25, "keep_checkpoints": 1, "logging_steps": 5},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": MODULES,
                 "layers": options.layers or settings["layers"]},
    }, source="ragtune raft reader")


def _train_summary(trained: dict) -> dict:
    metrics = trained.get("metrics", {})
    keep = ("train_loss", "train_runtime", "epoch", "train_tokens_per_second", "num_input_tokens_seen")
    return {k: metrics[k] for k in keep if k in metrics} | {"seconds": trained.get("seconds")}


def _clear_run(work: Path) -> None:
    """New examples: the old run's checkpoints would resume on the wrong ones (the teacher's
    questions.jsonl stays: it is keyed by what made it)."""
    for name in ("run", "chat.jsonl", "eval.jsonl", "data.json"):
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _why(counts: dict, problems: list) -> str:
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if k not in ("oracle_present", "oracle_absent")]
    if problems:
        parts.append(f"{len(problems)} bad records")
    return ", ".join(parts) or "no questions"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
