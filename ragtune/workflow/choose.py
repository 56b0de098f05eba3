"""`ragtune choose KB`: the one-command answer to "RAG, fine-tuning or RAFT for my documents?".

Stages, each resumable (a rerun of the same command skips what is done and continues the rest):
  1. questions: a file (the `eval qa` format, with gold documents and answers) split into a training
     and a held-out part, or questions a teacher writes over the knowledge base (synthesis.py: question
     and short answer only, checked against the chunk; whole chunks held out for the test);
  2. data: the fine-tuning set (closed-book, in the prompt `ft` is evaluated with) and the RAFT set
     (oracle + hard-negative distractors, quoted reasoning) from the training part only;
  3. training: LoRA for both within `--budget` minutes (a third for fine-tuning, two thirds for RAFT,
     whose examples carry documents), each saved as a run with its cost;
  4. comparison: base, rag, ft, ft+rag and raft+rag on the held-out part (`ragtune compare`'s
     machinery: paired intervals, a recommendation with reasons, HTML/Markdown/JSON reports).

Why a split and not all questions: the comparison must score questions no strategy trained on.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ["base", "rag", "ft", "ft+rag", "raft+rag"]
DEFAULT_RECIPES = {  # per packaged model: LoRA settings that fit a laptop's CPU
    "SmolLM2-135M-Instruct": {"learning_rate": 5e-4, "batch_size": 4, "epochs": 3},
    "Qwen2.5-Coder-0.5B-Instruct": {"learning_rate": 2e-4, "batch_size": 2, "epochs": 2},
}


@dataclass
class ChooseOptions:
    kb: Path
    out: Path
    questions: Path | None = None
    synthesize: int | None = None
    synthesis_minutes: float = 30.0  # the teacher writes questions until enough survive or this time is spent
    model: str = "SmolLM2-135M-Instruct"
    teacher: str | None = None
    teacher_base_url: str | None = None
    budget_minutes: float = 30.0
    test_share: float = 0.3
    k: int = 2  # distractors per RAFT example; retrieval shows k + 1 documents
    p: float = 0.8
    seed: int = 0
    threads: int | None = None
    concurrency: int = 4
    knowledge_changes: str = "monthly"
    weight_format: str = "auto"

    def check(self) -> None:
        if (self.questions is None) == (self.synthesize is None):
            raise ConfigError("pass --questions FILE (questions with gold documents and answers) or --synthesize N "
                              "(questions written by --teacher from the knowledge base), one of them")
        if self.synthesize is not None and not (self.teacher or self.teacher_base_url):
            raise ConfigError("--synthesize needs --teacher MODEL (or --teacher-base-url) to write the questions")
        if self.questions is not None and not Path(self.questions).is_file():
            raise ConfigError(f"--questions {self.questions}: no such file")
        if not 0.05 <= self.test_share <= 0.8:
            raise ConfigError(f"--test-share {self.test_share}: use a share between 0.05 and 0.8")
        if self.budget_minutes <= 0:
            raise ConfigError("--budget must be a positive number of minutes")


def split_questions(path: Path, test_share: float, seed: int) -> tuple[list, list]:
    """(train, test) examples: a seeded split stratified by gold document, so no document's questions
    all land on one side when it has several."""
    from ..evaluate.dataset import read_eval_set

    examples, problems = read_eval_set(path)
    for problem in problems:
        log.warning("%s", problem)
    usable = [e for e in examples if e.answers and e.gold_doc_ids]
    if len(usable) < 4:
        raise ConfigError(f"--questions {path}: {len(usable)} usable questions (with answers and gold_doc_ids); "
                          "at least 4 are needed to train on some and test on others")
    rng = random.Random(seed)
    groups: dict[str, list] = {}
    for example in usable:
        groups.setdefault(example.gold_doc_ids[0], []).append(example)
    train, test = [], []
    carry = 0.0
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        carry += len(members) * test_share
        cut = min(int(carry), len(members) - (1 if len(members) > 1 else 0))
        carry -= cut
        test.extend(members[:cut])
        train.extend(members[cut:])
    if not test:
        test, train = train[-1:], train[:-1]
    return train, test


def _write(path: Path, examples) -> Path:
    from ..evaluate.dataset import write_eval_set

    write_eval_set(examples, path)
    return path


def ft_data(train: list, path: Path) -> Path:
    """Closed-book chat examples in the prompt the `ft` strategy answers in."""
    from ..evaluate.strategies import QA_STYLE

    rows = [QA_STYLE.training_example(e.question, e.answers[0]) for e in train]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def recipe(name: str, model: str, train: Path, out: Path, *, max_length: int, minutes: float, threads: int | None):
    from ..finetune.recipe import validate_recipe

    settings = DEFAULT_RECIPES.get(model, DEFAULT_RECIPES["SmolLM2-135M-Instruct"])
    # long examples (RAFT's documents) go fewer at a time for the same effective batch: the logits of
    # a batch over a 49k-token vocabulary grow with its tokens and dominate memory
    per_step = max(1, min(settings["batch_size"], 2048 // max_length))
    return validate_recipe({
        "name": name, "method": "lora", "model": model, "output_dir": str(out),
        "data": {"train": str(train), "max_length": max_length, "validation_share": 0.0},
        "training": {"learning_rate": settings["learning_rate"], "batch_size": per_step,
                     "gradient_accumulation": max(1, settings["batch_size"] // per_step),
                     "epochs": settings["epochs"], "max_minutes": minutes, "threads": threads,
                     "group_by_length": True, "packing": True, "checkpoint_every": "epoch", "keep_checkpoints": 1,
                     "warmup": 0.05},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]},
    }, source=f"ragtune choose ({name})")


def trained_model(recipe_, stage) -> str:
    """Train (resuming a killed run, skipping a finished one); the model to evaluate: a merged GGUF
    for llama.cpp where it runs here, else the run directory (transformers)."""
    from ..finetune.run import train
    from ..generate.llamacpp import unavailable_reason

    run_dir = Path(recipe_.output_dir)
    if not (run_dir / "metrics.json").is_file():
        with stage(f"training {recipe_.name} (at most {recipe_.training.max_minutes:.1f} min)"):
            train(recipe_, resume=(run_dir / "checkpoints").is_dir(), progress=False)
    if unavailable_reason() is not None:
        return str(run_dir)
    gguf = run_dir / "model.gguf"
    if not gguf.is_file():
        from ..finetune.gguf_export import export_gguf

        with stage(f"exporting {recipe_.name} to GGUF"):
            export_gguf(run_dir, gguf)
    return str(gguf)


def choose(options: ChooseOptions, *, stage) -> dict:
    """Run every stage; `stage(text)` is a context manager that shows progress. Returns the
    comparison (compare_runs's result) with the report directory."""
    from ..raft.builder import BuildOptions, build_raft
    from ..store.runs import RunsDB
    from ..evaluate.compare import compare_runs
    from ..evaluate.plan import EvalPlan, run_plan
    from ..evaluate.report import write_reports

    options.check()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    raft_dir = out / "raft-data"
    synthesis = None
    if options.questions is not None:
        with stage("splitting the questions"):
            train, test = split_questions(options.questions, options.test_share, options.seed)
            train_file, test_file = _write(out / "train.jsonl", train), _write(out / "test.jsonl", test)
        with stage(f"building RAFT data from {len(train)} training questions"):
            manifest = build_raft(options.kb, BuildOptions(
                out=raft_dir, questions=train_file, teacher=options.teacher, teacher_base_url=options.teacher_base_url,
                k=options.k, p=options.p, target_model=options.model, seed=options.seed, eval_share=0.0,
                threads=options.threads))
    else:
        from .synthesis import synthesized_split

        train, test, synthesis = synthesized_split(options, out, stage)
        train_file, test_file = _write(out / "train.jsonl", train), _write(out / "test.jsonl", test)
        with stage(f"building RAFT data from {len(train)} synthesised training questions"):
            manifest = build_raft(options.kb, BuildOptions(
                out=raft_dir, questions=train_file, k=options.k, p=options.p, target_model=options.model,
                seed=options.seed, eval_share=0.0, threads=options.threads))
    if not train:
        raise ConfigError("no training questions are left after the filters; give more questions or --synthesize more")
    ft_file = ft_data(train, out / "ft.jsonl")
    minutes = options.budget_minutes
    ft_model = trained_model(recipe("choose-ft", options.model, ft_file, out / "runs" / "ft", max_length=512,
                                    minutes=minutes / 3, threads=options.threads), stage)
    raft_model = trained_model(recipe("choose-raft", options.model, raft_dir / "chat.jsonl", out / "runs" / "raft",
                                      max_length=int(manifest["tokens"]["suggested_max_length"]),
                                      minutes=minutes * 2 / 3, threads=options.threads), stage)
    plan = EvalPlan(dataset=test_file, strategies=STRATEGIES, model=options.model, ft_model=ft_model,
                    raft_model=raft_model, kb=options.kb, k=options.k + 1, threads=options.threads,
                    concurrency=options.concurrency, weight_format=options.weight_format)
    done_file = out / "runs.json"
    with RunsDB(out / "runs.db") as db:
        ids = json.loads(done_file.read_text()) if done_file.is_file() else None
        if not ids or any((db.run(i) or {}).get("status") != "finished" for i in ids):
            with stage(f"comparing {', '.join(STRATEGIES)} on the held-out questions"):
                ids = [summary["run_id"] for summary in run_plan(plan, db)]
            done_file.write_text(json.dumps(ids))  # a rerun reports these runs instead of answering again
        result = compare_runs(db, ids, knowledge_changes=options.knowledge_changes, baseline="rag")
    result["report_dir"] = str(out / "report")
    result["data"] = {"train_questions": len(train), "test_file": str(test_file),
                      "raft_examples": manifest["counts"]["train_examples"],
                      **({"synthesis": synthesis} if synthesis else {})}
    write_reports(result, out / "report")
    return result
