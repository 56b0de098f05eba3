"""Run several strategies over one evaluation set (`ragtune compare --strategies ...`), or one
(`ragtune eval qa`), loading each model and the knowledge base once.

Why grouped by model: base and rag share the base generator, ft and ft+rag the fine-tuned one; a
model is loaded once for its strategies and released before the next, so a laptop holds one model
at a time. Every run lands in the runs database like `eval qa`'s, so an interrupted comparison
resumes per strategy, and `compare --runs` can redo the arithmetic later without generating.

`--quick` answers a fixed, category-stratified sample of the questions with a short answer budget:
a first comparison in minutes, whose intervals are wide (the report says so).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .strategies import QA_STYLE, RAFT_STRATEGIES, STRATEGIES, check_strategy, dataset_labels, label_style, make_strategy

log = logging.getLogger(__name__)

QUICK_SAMPLE = 40
QUICK_MAX_TOKENS = 24
QUICK_BOOTSTRAP = 2000


@dataclass
class EvalPlan:
    """What to run: the strategies, the models behind them, the KB and the budgets."""

    dataset: Path
    strategies: list[str]
    model: str | None = None  # the base model (base, rag); default: the best installed chat model
    ft_model: str | None = None  # the fine-tuned model (ft, ft+rag)
    raft_model: str | None = None  # the RAFT-trained model (raft, raft+rag); default: ft_model
    kb: Path | None = None
    k: int = 5
    max_new_tokens: int = 32
    limit: int | None = None
    quick: bool = False
    threads: int | None = None
    backend: str = "auto"
    weight_format: str = "auto"  # llama.cpp weights of local GGUF models (auto: measured fastest once)
    concurrency: int = 4
    base_url: str | None = None  # an OpenAI-compatible endpoint serving `model` (and `ft_model`)
    scorers: list[str] = field(default_factory=list)
    scorer_options: dict = field(default_factory=dict)
    faithfulness: bool = True
    judge: str | None = None  # a model judging faithfulness (any --model ragtune accepts)
    judge_base_url: str | None = None
    fresh: bool = False
    # how retrieval strategies ask: auto | grounded | rag | reader (the KB's reader adapter, loaded for the model)
    prompt: str = "auto"
    ray: bool = False  # answer on `workers` model replicas on a Ray cluster (evaluate/ray_replicas.py)
    ray_address: str | None = None
    workers: int = 2

    def check(self) -> None:
        if not self.strategies:
            raise ConfigError("--strategies needs at least one of " + ", ".join(STRATEGIES))
        for name in self.strategies:
            raft = name in RAFT_STRATEGIES
            check_strategy(name, model=(self.raft_model or self.ft_model) if raft else self.ft_model, kb=self.kb,
                           flag="--strategies", model_flag="--raft-model" if raft else "--ft-model")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"--strategies lists a strategy twice: {','.join(self.strategies)}")
        if not Path(self.dataset).is_file():
            raise ConfigError(f"--dataset {self.dataset}: no such file")

    def model_for(self, strategy: str) -> str:
        from ..models.profiles import answer_model

        fine_tuned, _ = STRATEGIES[strategy]
        if strategy in RAFT_STRATEGIES:
            return self.raft_model or self.ft_model
        return self.ft_model if fine_tuned else answer_model(self.model)[0]


def quick_sample(examples: list, n: int = QUICK_SAMPLE, seed: int = 0) -> list:
    """A fixed sample of `n` examples, stratified by category (round-robin over a seeded shuffle of
    each), in the file's order, so every strategy and every rerun sees the same questions."""
    if len(examples) <= n:
        return list(examples)
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.category or "", []).append(index)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[int] = []
    while len(chosen) < n:
        for key in sorted(groups):
            if groups[key] and len(chosen) < n:
                chosen.append(groups[key].pop())
    return [examples[i] for i in sorted(chosen)]


def training_cost(model: str | None) -> dict | None:
    """Time and tokens spent training `model` when it is a ragtune run (or its model/ or export
    directory beside the run's metrics.json); None for anything ragtune did not train."""
    if not model:
        return None
    path = Path(model).expanduser()
    for candidate in (path / "metrics.json", path.parent / "metrics.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("cannot read the training cost from %s: %s", candidate, exc)
                return None
            metrics = data.get("metrics", {})
            return {"train_seconds": data.get("seconds") or metrics.get("train_runtime"),
                    "train_tokens": data.get("train_tokens") or metrics.get("num_input_tokens_seen"),
                    "train_examples": (data.get("data") or {}).get("train_examples"),
                    "method": data.get("method"), "run_dir": data.get("run_dir")}
    return None


def _faithfulness_scorer(judge=None):
    """Faithfulness of an answer to the sources it was shown: the deterministic share of supported
    sentences, and with `judge` (a JudgeFaithfulness) the model's verdicts. A judge that never
    produced valid JSON leaves judge_faithfulness absent and judge_failed = 1, so failures are
    counted per example and reported, never dropped."""
    from .faithfulness import faithfulness

    def scorer(answer_text: str, source_texts: list[str], question: str | None = None) -> dict:
        scores = {}
        result = faithfulness(answer_text, source_texts)
        if result and result.get("faithfulness") is not None:
            scores["faithfulness"] = result["faithfulness"]
        if judge is not None:
            verdict = judge.score(question, answer_text, source_texts)
            if verdict.get("judge_sentences"):
                scores["judge_failed"] = float(bool(verdict.get("judge_failed")))
                scores["judge_parse_failures"] = float(verdict.get("judge_parse_failures") or 0)
                if verdict.get("judge_faithfulness") is not None:
                    scores["judge_faithfulness"] = verdict["judge_faithfulness"]
        return scores

    return scorer


def _generator(plan: EvalPlan, model: str):
    from ..generate import make_generator

    lora = None
    if plan.prompt == "reader" and not plan.base_url:  # the KB's reader adapter over the model (raft/reader.py)
        from ..raft.reader import reader_choice

        lora = reader_choice(plan.kb, model, "reader", None)[0]
    generator = make_generator(model, base_url=plan.base_url, threads=plan.threads, backend=plan.backend,
                               slots=plan.concurrency, weight_format=plan.weight_format, lora=lora)
    if hasattr(generator, "load"):
        generator.load()  # loaded before timing starts, so the first answer's latency is not the model load
    return generator


def run_plan(plan: EvalPlan, db, *, console=None, run_id: str | None = None) -> list[dict]:
    """Run every strategy of `plan`, storing each in `db`; returns their summaries (run_eval's), in
    the order of plan.strategies. `run_id` continues that stored run (one strategy only)."""
    from .dataset import read_eval_set
    from .runner import run_eval
    from .scorers import get_scorer

    plan.check()
    if run_id is not None and len(plan.strategies) != 1:
        raise ConfigError("--run-id continues one run: give one strategy")
    examples, problems = read_eval_set(plan.dataset)
    for problem in problems:
        log.warning("%s", problem)
    labels = dataset_labels(examples)  # from the whole set, so a sample asks the same question
    style = label_style(labels) if labels else QA_STYLE
    if plan.quick:
        examples = quick_sample(examples)
    elif plan.limit is not None:
        examples = examples[:plan.limit]
    if not examples:
        raise ConfigError(f"--dataset {plan.dataset} has no usable examples")
    max_tokens = min(plan.max_new_tokens, QUICK_MAX_TOKENS) if plan.quick else plan.max_new_tokens
    scorers = [get_scorer(name, **plan.scorer_options) for name in plan.scorers]
    judge = None
    if plan.judge and any(STRATEGIES[name][1] for name in plan.strategies):
        from ..generate import make_generator
        from .judge import JudgeFaithfulness

        judge = JudgeFaithfulness(make_generator(plan.judge, base_url=plan.judge_base_url, threads=plan.threads,
                                                 backend=plan.backend, slots=plan.concurrency))
    faithfulness = _faithfulness_scorer(judge) if plan.faithfulness else None
    if plan.ray:
        from .. import distributed

        distributed.connect(plan.ray_address, plan.workers)
    kb = None
    if any(STRATEGIES[name][1] for name in plan.strategies) and not plan.ray:
        from ..kb import KnowledgeBase

        kb = KnowledgeBase.open(plan.kb, threads=plan.threads)
        kb.embedder.encode_query("warm up")  # the embedder loads before the first timed answer
    summaries: dict[str, dict] = {}
    try:
        by_model: dict[str, list[str]] = {}
        for name in plan.strategies:
            by_model.setdefault(plan.model_for(name), []).append(name)
        for model, names in by_model.items():
            generator = None if plan.ray else _generator(plan, model)
            training = training_cost(model) if any(STRATEGIES[n][0] for n in names) else None
            for name in names:
                retrieves = STRATEGIES[name][1]
                if plan.ray:
                    from .ray_replicas import RemoteStrategy

                    strategy = RemoteStrategy(plan, name, model, max_tokens, style, workers=plan.workers)
                else:
                    strategy = make_strategy(name, generator, kb=kb, k=plan.k, max_new_tokens=max_tokens,
                                             style=style, prompt=plan.prompt)
                config = {"strategy": name, "model": model, "backend": plan.backend, "base_url": plan.base_url,
                          "kb": str(plan.kb) if retrieves else None, "k": plan.k if retrieves else None,
                          "max_new_tokens": max_tokens, "threads": plan.threads, "concurrency": plan.concurrency,
                          "mode": "hybrid" if retrieves else None, "min_relevance": 0.0 if retrieves else None,
                          "scorers": sorted(plan.scorers) or None, "quick": plan.quick,
                          "judge": plan.judge if retrieves else None, "prompt": {"labels": labels} if labels else None,
                          "protocol": plan.prompt if retrieves and name not in RAFT_STRATEGIES else None,
                          "training": training if STRATEGIES[name][0] else None}
                summaries[name] = run_eval(
                    plan.dataset, strategy, db, examples=examples, model=model,
                    kb_path=str(plan.kb) if retrieves else None, k=plan.k if retrieves else None, config=config,
                    limit=len(examples) if (plan.quick or plan.limit is not None) else None,
                    run_id=run_id, resume=not plan.fresh, console=console, scorers=scorers,
                    concurrency=plan.concurrency * (plan.workers if plan.ray else 1),
                    faithfulness=faithfulness if retrieves else None)
                if plan.ray:
                    strategy.close()
            del generator
    finally:
        if kb is not None:
            kb.close()
    return [summaries[name] for name in plan.strategies]
