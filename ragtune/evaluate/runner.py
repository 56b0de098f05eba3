"""Run one answering strategy (strategies.py) over an evaluation set, score and store each prediction
as it is made, so a killed run resumes and `ragtune compare` never re-runs anything.

Scores are computed here once for every strategy: the QA metrics against the gold answers, the
retrieval and citation metrics against gold documents, faithfulness against the sources shown, and
any task scorer named with `--scorer` (scorers.py).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from ..qa_metrics import exact_match, f1, normalize_answer
from .strategies import CLOSED_EXAMPLE, RAG_EXAMPLE, RAG_QUESTION, SHORT, BaseStrategy, RagStrategy, first_line  # noqa: F401
from .text_metrics import citation_scores, rouge_l

log = logging.getLogger(__name__)

YES_NO_MAYBE = frozenset({"yes", "no", "maybe", "noanswer"})
# settings that change the answers: an unfinished run is resumed only when they match
RESUME_KEYS = ("max_new_tokens", "mode", "min_relevance", "scorers", "prompt", "judge")


def score(example, output: dict, *, uses_retrieval: bool, scorers=(), faithfulness=None) -> dict:
    """Per-example scores; a metric is present only where the example can be scored on it.
    `scorers`: task scorers, each `(example, prediction) -> {metric: value}`; `faithfulness`:
    `(answer_text, source_texts, question) -> {metric: value}` for strategies that showed sources."""
    prediction = output["prediction"]
    scores: dict[str, float] = {}
    if example.answers:
        yes_no = any(normalize_answer(a) in YES_NO_MAYBE for a in example.answers)
        scores["em"] = exact_match(prediction, example.answers)
        scores["f1"] = f1(prediction, example.answers, yes_no_rule=yes_no)
        scores["rouge_l"] = rouge_l(prediction, example.answers)
    if example.label is not None:
        scores["correct"] = float(normalize_answer(prediction).startswith(normalize_answer(example.label)))
    if uses_retrieval and example.gold_doc_ids:
        gold = set(example.gold_doc_ids)
        scores["recall_at_k"] = len(gold & set(output["retrieved_ids"])) / len(gold)
        precision, recall = citation_scores(output.get("cited_ids", []), example.gold_doc_ids)
        scores["citation_precision"], scores["citation_recall"] = precision, recall
    if faithfulness is not None and output.get("source_texts") is not None:
        scores.update(faithfulness(output.get("answer_text", prediction), output["source_texts"], example.question))
    for scorer in scorers:
        scores.update(scorer(example, prediction))
    return scores


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(predictions: list[dict]) -> dict:
    """Means per metric (over the examples that have it), latency p50/p95, tokens per answer, counts."""
    metrics: dict[str, list[float]] = {}
    for row in predictions:
        for name, value in row["scores"].items():
            metrics.setdefault(name, []).append(float(value))
    latencies = [row["latency_s"] for row in predictions if row["latency_s"] is not None]
    completion = [row["completion_tokens"] or 0 for row in predictions]
    prompt = [row["prompt_tokens"] or 0 for row in predictions]
    return {"metrics": {name: statistics.fmean(values) for name, values in metrics.items()},
            "counts": {name: len(values) for name, values in metrics.items()},
            "latency_p50_s": _percentile(latencies, 0.5), "latency_p95_s": _percentile(latencies, 0.95),
            "completion_tokens_per_answer": statistics.fmean(completion) if completion else None,
            "prompt_tokens_per_answer": statistics.fmean(prompt) if prompt else None,
            "n": len(predictions)}


def run_eval(dataset, strategy: Strategy, db, *, examples=None, model: str | None = None, kb_path: str | None = None,
             k: int | None = None, config: dict | None = None, limit: int | None = None, run_id: str | None = None,
             resume: bool = True, console=None, concurrency: int = 1, scorers=(), faithfulness=None) -> dict:
    """Answer, score and store every example of `dataset` (a JSONL path) with `strategy` in `db` (RunsDB).

    With `resume`, an unfinished run of the same dataset content, strategy, model (name and hash),
    KB and k is continued and its stored examples skipped; `run_id` continues that run explicitly.
    Returns the summary of all the run's stored predictions (see summarize) with run_id and strategy.
    `console` (a rich Console, usually stderr) shows a progress bar. `concurrency` > 1 answers that
    many examples at once (threads; a llama.cpp generator with as many slots decodes them in one
    batch) for strategies marked `concurrent_safe`; predictions are still stored one by one, here.
    """
    from ..errors import ConfigError
    from ..store.runs import file_sha256, model_hash
    from .dataset import read_eval_set

    if examples is None:
        examples, problems = read_eval_set(dataset)
        for problem in problems:
            log.warning("%s", problem)
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise ConfigError(f"{dataset} has no usable examples")
    identity = dict(strategy=strategy.name, dataset_sha256=file_sha256(dataset), model=model,
                    model_hash=model_hash(model),
                    kb_path=str(Path(kb_path).resolve()) if kb_path else None, k=k)
    config = {**(config or {}), "limit": limit}
    if run_id is None and resume:
        run_id = db.find_unfinished(**identity)
        if run_id is not None:
            stored = db.run(run_id)["config"]
            changed = [key for key in RESUME_KEYS if stored.get(key) != config.get(key)]
            if changed:
                log.info("not resuming run %s: %s changed", run_id, ", ".join(changed))
                run_id = None
    if run_id is None:
        run_id = db.create_run(dataset_path=str(Path(dataset).resolve()), config=config, **identity)
    elif db.run(run_id) is None:
        raise ConfigError(f"no run {run_id!r} in {db.path}")
    done = db.done_ids(run_id)
    todo = [ex for ex in examples if ex.id not in done]
    log.info("run %s: %d of %d examples already stored", run_id, len(examples) - len(todo), len(examples))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=console is None) as bar:
        task = bar.add_task(f"{strategy.name}", total=len(examples), completed=len(examples) - len(todo))
        for example, output in _answers(strategy, todo, concurrency):
            scores = score(example, output, uses_retrieval=strategy.uses_retrieval, scorers=scorers,
                           faithfulness=faithfulness)
            db.add_prediction(run_id, example.id, prediction=output["prediction"], scores=scores,
                              retrieved_ids=output["retrieved_ids"], prompt_tokens=output["prompt_tokens"],
                              completion_tokens=output["completion_tokens"], latency_s=output["latency_s"])
            bar.advance(task)
    db.finish(run_id)
    wanted = {ex.id for ex in examples}
    stored = [row for row in db.predictions(run_id) if row["example_id"] in wanted]
    return {"run_id": run_id, "strategy": strategy.name, **summarize(stored)}


def _answers(strategy, examples: list, concurrency: int):
    """(example, output) pairs in order; up to `concurrency` answered at once when the strategy allows."""
    if concurrency <= 1 or not getattr(strategy, "concurrent_safe", False):
        if concurrency > 1:
            log.info("%s answers one example at a time (it is not safe to run concurrently)", strategy.name)
        for example in examples:
            yield example, strategy.answer(example)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval") as pool:
        # a bounded window keeps memory flat and lets a kill lose at most `concurrency` answers
        window = []
        for example in examples:
            window.append((example, pool.submit(strategy.answer, example)))
            if len(window) >= 2 * concurrency:
                first, future = window.pop(0)
                yield first, future.result()
        for example, future in window:
            yield example, future.result()
