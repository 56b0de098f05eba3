"""Compare stored evaluation runs (`ragtune compare --runs A B ...`) and recommend a strategy.

Why from stored runs: generation is the slow part, so `ragtune eval qa` stores every prediction and
its per-example scores; comparing is then seconds of arithmetic and can be redone with another
primary metric or another `--knowledge-changes` answer without re-running anything.

Why aligned on shared examples: the significance tests are paired (see significance.py), so every
strategy must be scored on exactly the same questions. Examples missing from any run (an
interrupted run, a `--limit`) are dropped and counted, never silently imputed.

Why the recommendation can decline: when the data cannot separate the top strategies on the
primary metric, it says so and lists them; it then prefers among them only for stated, checkable
reasons (how often the knowledge changes, latency), each reason a sentence with its numbers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .runner import _percentile
from .significance import compare_to, compare_to_best, paired_bootstrap

log = logging.getLogger(__name__)

KNOWLEDGE_CHANGES = ("daily", "monthly", "never")
BINARY_METRICS = {"em", "correct"}
EXAMPLES_SHOWN = 5


def load_runs(db, run_ids: list[str]) -> list[dict]:
    """The runs with their predictions; errors name the --runs flag, as the user typed the ids there."""
    if len(run_ids) < 2:
        raise ConfigError(f"--runs needs at least two run ids to compare, got {len(run_ids)}")
    runs = []
    for run_id in run_ids:
        run = db.run(run_id)
        if run is None:
            known = ", ".join(f"{r['id']} ({r['strategy']})" for r in db.runs()) or "none"
            raise ConfigError(f"--runs: no run {run_id!r} in {db.path}; the runs there are: {known}")
        run["predictions"] = {row["example_id"]: row for row in db.predictions(run_id)}
        runs.append(run)
    hashes = {run["dataset_sha256"] for run in runs}
    if len(hashes) > 1:
        listing = "; ".join(f"{r['id']}: {r['dataset_path']}" for r in runs)
        raise ConfigError(f"--runs: the runs were made on different datasets ({listing}); compare runs of one "
                          "evaluation set")
    return runs


def _names(runs: list[dict]) -> list[str]:
    """Strategy names as display keys; two runs of one strategy are told apart by run id."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["strategy"]] = counts.get(run["strategy"], 0) + 1
    return [run["strategy"] if counts[run["strategy"]] == 1 else f"{run['strategy']}@{run['id']}" for run in runs]


def _dataset(path: str) -> dict:
    """Examples by id from the dataset file the runs recorded (the runs DB stores no categories)."""
    from .dataset import read_eval_set

    if not path or not Path(path).is_file():
        log.warning("dataset %s is not readable; no categories or questions in the report", path)
        return {}
    examples, _ = read_eval_set(path)
    return {example.id: example for example in examples}


SMALL_SAMPLE = 30  # below this many shared examples, the report says its intervals are wide


LATENCY_TIE = 0.10  # median latencies closer than this share of the faster are noise, not a reason


def _recommend(primary: str, stats: dict, comparison: dict, strategies: dict, knowledge_changes: str,
               trained: dict | None = None) -> dict:
    """`strategies`: name -> whether it retrieves; `trained`: name -> whether its model was fine-tuned."""
    trained = trained or {}
    best, rows = comparison["best"], comparison["comparisons"]
    means = comparison["means"]
    reasons: list[str] = []

    def latency(name: str) -> float:
        value = stats[name]["latency_p50_s"]
        return math.inf if value is None else value

    def lat_text(name: str) -> str:
        p50, p95 = stats[name]["latency_p50_s"], stats[name]["latency_p95_s"]
        return "unknown latency" if p50 is None else f"median latency {p50:.3f} s (p95 {p95:.3f} s)"

    tied = [best] + [name for name, row in rows.items() if not row.separable]
    if len(tied) == 1:
        for name, row in rows.items():
            reasons.append(f"{best} has the highest {primary} ({means[best]:.3f}); {name} scores {means[name]:.3f}, "
                           f"a difference of {row.difference:+.3f} (95% interval [{row.low:+.3f}, {row.high:+.3f}], "
                           f"p = {row.p_value:.3g}, {row.test}), which the data separates from zero.")
        reasons.append(f"{best} has {lat_text(best)}.")
        return {"strategy": best, "reasons": reasons, "tied": [best]}
    for name in tied[1:]:
        row = rows[name]
        reasons.append(f"The data cannot separate {best} ({primary} {means[best]:.3f}) from {name} "
                       f"({means[name]:.3f}): difference {row.difference:+.3f}, 95% interval "
                       f"[{row.low:+.3f}, {row.high:+.3f}]"
                       + (" includes zero" if row.low <= 0 <= row.high else "") + f", p = {row.p_value:.3g}"
                       + (" is not below 0.05." if row.p_value >= 0.05 else "."))
    reasons.append(f"The top strategies on {primary} are therefore {', '.join(tied)}; the choice among them "
                   "rests on the reasons below, not on quality.")
    candidates = tied
    if knowledge_changes in ("daily", "monthly"):
        retrieval = [name for name in tied if strategies[name]]
        if retrieval:
            candidates = retrieval
            if len(retrieval) < len(tied):
                verb = "retrieves" if len(retrieval) == 1 else "retrieve"
                reasons.append(f"The knowledge changes {knowledge_changes}: {', '.join(retrieval)} {verb} from the "
                               "knowledge base, so new facts need only a re-ingest, not retraining.")
            else:
                reasons.append(f"The knowledge changes {knowledge_changes}, and all of {', '.join(tied)} retrieve, so "
                               "any of them takes new facts with a re-ingest; that does not decide between them.")
        else:
            reasons.append(f"The knowledge changes {knowledge_changes}, but none of {', '.join(tied)} retrieves; "
                           "each update would need retraining.")
    elif knowledge_changes == "never":
        reasons.append("The knowledge never changes, so retrieval brings no update advantage; the cheaper, faster "
                       "strategy is preferred.")
    if len(candidates) > 1:
        ordered = sorted(candidates, key=lambda n: (latency(n), stats[n]["completion_tokens_per_answer"] or 0.0))
        fastest = latency(ordered[0])
        close = [n for n in ordered if latency(n) - fastest <= LATENCY_TIE * fastest] if not math.isinf(fastest) else ordered
        untrained = [n for n in close if not trained.get(n)]
        if len(close) > 1 and len(untrained) == 1:
            needs = [n for n in close if n not in untrained]
            reasons.append(f"{', '.join(close)} are as fast as each other (median latencies within {LATENCY_TIE:.0%}); "
                           f"{untrained[0]} needs no training, while {', '.join(needs)} "
                           f"{'was' if len(needs) == 1 else 'were'} fine-tuned, so {untrained[0]} is preferred: "
                           "no model to train and keep up to date.")
            return {"strategy": untrained[0], "reasons": reasons, "tied": tied}
        if len(close) > 1:
            reasons.append(f"Nothing else separates {', '.join(close)} (median latencies within {LATENCY_TIE:.0%} of "
                           "each other, and training does not tell them apart); no strategy is recommended.")
            return {"strategy": None, "reasons": reasons, "tied": tied}
        chosen = ordered[0]
        others = "; ".join(f"{n}: {lat_text(n)}" for n in ordered[1:])
        reasons.append(f"{chosen} is the fastest of them with {lat_text(chosen)} ({others}).")
    else:
        chosen = candidates[0]
        reasons.append(f"{chosen} has {lat_text(chosen)}.")
    return {"strategy": chosen, "reasons": reasons, "tied": tied}


def _fine_tuned(run: dict) -> bool:
    """Whether a run's model was fine-tuned: its strategy says so (ft, raft...), or it recorded a
    training cost."""
    from .strategies import STRATEGIES

    return bool(STRATEGIES.get(run["strategy"], (False,))[0] or (run.get("config") or {}).get("training"))


def _cost_reasons(chosen: str | None, strategies: dict) -> list[str]:
    """What training cost, stated for every strategy that trained (the chosen one first)."""
    from .report import training_text

    trained = {name: s["training"] for name, s in strategies.items() if s.get("training")
               and s["training"].get("train_seconds") is not None}
    if not trained:
        return []
    order = sorted(trained, key=lambda name: name != chosen)
    parts = [f"{name} took {training_text(trained[name])} of training" for name in order]
    untrained = [name for name in strategies if name not in trained]
    tail = f"; {', '.join(untrained)} needed none" if untrained else ""
    return [f"Cost: {'; '.join(parts)}{tail}."]


def _examples(ids: list[str], names: list[str], runs: list[dict], primary: str, dataset: dict) -> list[dict]:
    """A few examples where the strategies disagree most on the primary metric, for the side-by-side view."""
    def spread(example_id: str) -> float:
        values = [run["predictions"][example_id]["scores"].get(primary, 0.0) for run in runs]
        return max(values) - min(values)

    chosen = sorted(ids, key=lambda i: -spread(i))[:EXAMPLES_SHOWN]
    result = []
    for example_id in chosen:
        example = dataset.get(example_id)
        result.append({"id": example_id, "question": example.question if example else None,
                       "answers": list(example.answers) if example else [],
                       "by_strategy": {name: {"prediction": run["predictions"][example_id]["prediction"],
                                              "retrieved_ids": run["predictions"][example_id]["retrieved_ids"],
                                              "score": run["predictions"][example_id]["scores"].get(primary)}
                                       for name, run in zip(names, runs)}})
    return result


def compare_runs(db, run_ids: list[str], *, metric: str | None = None, knowledge_changes: str = "monthly",
                 n_boot: int = 10_000, seed: int = 0, baseline: str | None = None) -> dict:
    """Everything the reports show: means, differences to the best with intervals and p-values per
    metric, per-category means, latency, tokens, example answers and the recommendation; with
    `baseline` (a strategy's name, e.g. rag), every other one against it on the primary metric too."""
    if knowledge_changes not in KNOWLEDGE_CHANGES:
        raise ConfigError(f"--knowledge-changes must be one of {', '.join(KNOWLEDGE_CHANGES)}, got {knowledge_changes!r}")
    runs = load_runs(db, run_ids)
    names = _names(runs)
    all_ids = set().union(*(run["predictions"] for run in runs))
    ids = [i for i in runs[0]["predictions"] if all(i in run["predictions"] for run in runs[1:])]
    dropped = len(all_ids) - len(ids)
    if dropped:
        log.info("%d examples are missing from at least one run and are dropped", dropped)
    if not ids:
        raise ConfigError("--runs: the runs share no example ids, so nothing can be compared")
    rows = {name: [run["predictions"][i] for i in ids] for name, run in zip(names, runs)}
    metric_names = sorted({m for preds in rows.values() for row in preds for m in row["scores"]})
    if metric is None:
        complete = all("correct" in row["scores"] for preds in rows.values() for row in preds)
        metric = "correct" if complete else "f1"
    scores: dict[str, dict[str, np.ndarray]] = {}
    for m in metric_names:
        scores[m] = {name: np.array([row["scores"][m] for row in preds], dtype=float)
                     for name, preds in rows.items() if all(m in row["scores"] for row in preds)}
    if len(scores.get(metric, {})) < len(names):
        raise ConfigError(f"--metric {metric}: not every run scores every shared example on it; the metrics all "
                          f"runs have are {', '.join(m for m in metric_names if len(scores[m]) == len(names)) or 'none'}")
    stats = {}
    for name, preds in rows.items():
        latencies = [row["latency_s"] for row in preds if row["latency_s"] is not None]
        tokens = [row["completion_tokens"] or 0 for row in preds]
        stats[name] = {"latency_p50_s": _percentile(latencies, 0.5), "latency_p95_s": _percentile(latencies, 0.95),
                       "completion_tokens_per_answer": float(np.mean(tokens)) if tokens else None,
                       "latencies": latencies}
    comparisons, intervals = {}, {}
    for m, by_name in scores.items():
        binary = m in BINARY_METRICS and all(np.isin(v, (0, 1)).all() for v in by_name.values())
        if len(by_name) >= 2:
            comparisons[m] = compare_to_best(by_name, binary=binary, n=n_boot, seed=seed)
        for name, values in by_name.items():  # each strategy's own interval, for the error bars
            boot = paired_bootstrap(values, np.zeros_like(values), n=n_boot, seed=seed)
            intervals.setdefault(name, {})[m] = [boot.low, boot.high]
    strategies = {name: {**{m: float(scores[m][name].mean()) for m in metric_names if name in scores[m]},
                         **{k: v for k, v in stats[name].items() if k != "latencies"},
                         "run_id": run["id"], "strategy": run["strategy"],
                         "training": (run.get("config") or {}).get("training")}
                  for name, run in zip(names, runs)}
    dataset = _dataset(runs[0]["dataset_path"])
    categories: dict[str, dict[str, float]] = {}
    category_of = {i: dataset[i].category for i in ids if i in dataset and dataset[i].category}
    if category_of:
        for category in sorted(set(category_of.values())):
            index = [k for k, i in enumerate(ids) if category_of.get(i) == category]
            categories[category] = {name: float(scores[metric][name][index].mean()) for name in names}
            categories[category]["n"] = len(index)
    versus = None
    if baseline is not None:
        if baseline not in scores[metric]:
            raise ConfigError(f"--baseline {baseline}: no such strategy among the runs ({', '.join(names)})")
        binary = metric in BINARY_METRICS and all(np.isin(v, (0, 1)).all() for v in scores[metric].values())
        rows_vs = compare_to(scores[metric], baseline, binary=binary, n=n_boot, seed=seed)
        versus = {"baseline": baseline, "metric": metric, "rows": {n: r.as_dict() for n, r in rows_vs.items()}}
    recommendation = _recommend(metric, stats, comparisons[metric],
                                # a run retrieved when it recorded a knowledge base (rag, ft+rag, raft+rag, custom)
                                {name: bool(run.get("kb_path")) for name, run in zip(names, runs)}, knowledge_changes,
                                {name: _fine_tuned(run) for name, run in zip(names, runs)})
    recommendation["reasons"].extend(_cost_reasons(recommendation["strategy"], strategies))
    if len(ids) < SMALL_SAMPLE:
        recommendation["reasons"].append(
            f"Only {len(ids)} examples are shared by these runs: the intervals are wide, and a difference that "
            f"matters may not show; {SMALL_SAMPLE} or more examples make a firmer comparison.")
    return {"metric": metric, "knowledge_changes": knowledge_changes, "n_examples": len(ids),
            "dropped_examples": dropped, "strategies": strategies, "intervals": intervals,
            "differences": {m: {"best": c["best"], "rows": {n: r.as_dict() for n, r in c["comparisons"].items()}}
                            for m, c in comparisons.items()},
            "versus": versus, "latencies": {name: stats[name]["latencies"] for name in names}, "categories": categories,
            "examples": _examples(ids, names, runs, metric, dataset), "recommendation": recommendation}
