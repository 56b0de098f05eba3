"""Run one answering strategy over an evaluation set, score and store each prediction as it is made.

Why a tiny `Strategy` protocol: base (closed-book), RAG, fine-tuned and fine-tuned + RAG differ only
in how an answer is produced; scoring, storage, resuming and the summary are the same for all, so
they live here once. A fine-tuned model is simply a generator made from another `--model`.

Prompting follows bench/rag_qa.py, which measured it: one worked example given as an earlier chat
turn (a short phrase, then [n] under RAG), and the answer scored on its first non-empty line (small
models repeat themselves after the phrase; a stop-at-newline rule as in common QA harnesses).
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Protocol

from .qa import exact_match, f1, normalize_answer
from .text_metrics import citation_scores, cited_ids, rouge_l

log = logging.getLogger(__name__)

SHORT = "Answer with a short phrase only."
_EXAMPLE_SOURCES = ("[1] Eiffel Tower\nThe Eiffel Tower is a wrought-iron lattice tower in Paris, France, designed by the "
                    "company of Gustave Eiffel.\n\n[2] Big Ben\nBig Ben is the nickname for the Great Bell of the clock "
                    "at the Palace of Westminster in London.")
RAG_EXAMPLE = [{"role": "user", "content": f"Sources:\n\n{_EXAMPLE_SOURCES}\n\nQuestion: In which city is the tower "
                f"designed by Gustave Eiffel's company?\n{SHORT} Then cite the source as [n]."},
               {"role": "assistant", "content": "Paris [1]"}]
CLOSED_EXAMPLE = [{"role": "user", "content": f"In which country is the Eiffel Tower?\n{SHORT}"},
                  {"role": "assistant", "content": "France"}]
RAG_QUESTION = "Sources:\n\n{sources}\n\nQuestion: {question}\n" + SHORT + " Then cite the source as [n]."
YES_NO_MAYBE = frozenset({"yes", "no", "maybe", "noanswer"})


def first_line(text: str) -> str:
    """The first non-empty line of an answer: what is scored."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


class Strategy(Protocol):
    """How one answer is produced. `answer` returns a dict with prediction, retrieved_ids (document
    ids the model was shown, in rank order; [] closed-book), cited_ids, prompt_tokens,
    completion_tokens and latency_s."""

    name: str
    uses_retrieval: bool

    def answer(self, example) -> dict: ...


class BaseStrategy:
    """Closed-book: the model alone answers the question (with one worked example)."""

    uses_retrieval = False
    concurrent_safe = True  # only the generator is shared, and llama.cpp's batches concurrent calls

    def __init__(self, generator, *, name: str = "base", max_new_tokens: int = 32):
        self.generator, self.name, self.max_new_tokens = generator, name, max_new_tokens

    def answer(self, example) -> dict:
        started = time.perf_counter()
        messages = [*CLOSED_EXAMPLE, {"role": "user", "content": f"{example.question}\n{SHORT}"}]
        result = self.generator.generate(messages, max_new_tokens=self.max_new_tokens, temperature=0.0)
        return {"prediction": first_line(result.text), "retrieved_ids": [], "cited_ids": [],
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "latency_s": round(time.perf_counter() - started, 4)}


def _source_id(hit, golds: list[str]) -> str:
    """A shown source's id for scoring: the gold id it matches (by doc id, source path, file name,
    file stem or title, since eval sets name documents in any of these ways), else its doc id."""
    aliases = {hit.doc_id, hit.source, Path(hit.source).name, Path(hit.source).stem, getattr(hit, "title", None)}
    return next((gold for gold in golds if gold in aliases), hit.doc_id)


class RagStrategy:
    """Retrieve top-k from the knowledge base, answer from the sources, cite them as [n]."""

    uses_retrieval = True
    concurrent_safe = False  # the knowledge base's SQLite connection belongs to the thread that opened it

    def __init__(self, kb, generator, *, k: int = 5, name: str = "rag", max_new_tokens: int = 32,
                 min_relevance: float = 0.0, mode: str = "hybrid"):
        from ..answer.prompt import Templates

        self.kb, self.generator, self.k, self.name = kb, generator, k, name
        self.max_new_tokens, self.min_relevance, self.mode = max_new_tokens, min_relevance, mode
        # the worked example is given as history (RAG_EXAMPLE), so the template's own is off
        self.templates = Templates(question=RAG_QUESTION, example=False)

    def answer(self, example) -> dict:
        from ..answer.rag import ask

        started = time.perf_counter()
        result = ask(self.kb, example.question, self.generator, k=self.k, mode=self.mode, max_new_tokens=self.max_new_tokens,
                     templates=self.templates, min_relevance=self.min_relevance, history=RAG_EXAMPLE)
        sources = result.prompt.sources if result.prompt else []
        ids = [_source_id(hit, example.gold_doc_ids) for hit in sources]
        return {"prediction": first_line(result.answer), "retrieved_ids": ids, "cited_ids": cited_ids(result.answer, ids),
                "prompt_tokens": result.timings.get("prompt_tokens", 0),
                "completion_tokens": result.timings.get("completion_tokens", 0),
                "latency_s": round(time.perf_counter() - started, 4)}


def score(example, output: dict, *, uses_retrieval: bool) -> dict:
    """Per-example scores; a metric is present only where the example can be scored on it."""
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
             resume: bool = True, console=None, concurrency: int = 1) -> dict:
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
    if run_id is None and resume:
        run_id = db.find_unfinished(**identity)
    if run_id is None:
        run_id = db.create_run(dataset_path=str(Path(dataset).resolve()), config={**(config or {}), "limit": limit},
                               **identity)
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
            scores = score(example, output, uses_retrieval=strategy.uses_retrieval)
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
