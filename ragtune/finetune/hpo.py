"""`ragtune tune`: Optuna over the ranges a recipe declares under `search:`.

grid uses every combination of the declared choices (ranges need a `step`), random samples
uniformly, bayes is Optuna's TPE. Each trial is a real training run whose validation metric is
reported to Optuna at every validation; the median pruner stops trials that fall behind.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

SEARCHES = ("grid", "random", "bayes")


@dataclass
class TuneResult:
    study_dir: Path
    metric: str
    direction: str
    trials: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_recipe: Path | None = None

    def as_dict(self) -> dict:
        return {"study_dir": str(self.study_dir), "metric": self.metric, "direction": self.direction,
                "trials": self.trials, "best": self.best, "best_recipe": str(self.best_recipe) if self.best_recipe else None}


def selection_metric(recipe) -> tuple[str, bool]:
    if recipe.training.early_stopping:
        return recipe.training.early_stopping.metric, recipe.training.early_stopping.greater_is_better
    return ("eval_macro_f1", True) if recipe.is_classifier else ("eval_loss", False)


def _grid_values(key: str, spec) -> list:
    if isinstance(spec, list):
        return spec
    if spec.step is None:
        raise ConfigError(f"search.{key}: grid search needs a list of values or a range with `step`")
    values, value = [], spec.low
    while value <= spec.high + 1e-12:
        values.append(round(value, 12))
        value += spec.step
    return values


def _sampler(search: str, recipe, seed: int):
    import optuna

    if search == "grid":
        return optuna.samplers.GridSampler({k: _grid_values(k, v) for k, v in recipe.search.items()}, seed=seed)
    if search == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _suggest(trial, key: str, spec):
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if spec.step is not None and not spec.log and all(float(x).is_integer() for x in (spec.low, spec.high, spec.step)):
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step))
    return trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=None if spec.log else spec.step)


def _pruning_callback(trial, metric: str):
    import optuna
    from transformers import TrainerCallback

    class ReportToOptuna(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and metric in metrics:
                trial.report(float(metrics[metric]), step=state.global_step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{metric}={metrics[metric]:.4f} at step {state.global_step}")

    return ReportToOptuna()


def tune(recipe, *, search: str = "bayes", trials: int = 10, seed: int | None = None, console=None,
         progress: bool = False) -> TuneResult:
    """Run `trials` trainings of `recipe` with values drawn from its search space."""
    from rich.console import Console

    from .run import train

    try:
        import optuna
    except ImportError:
        raise ConfigError("optuna is not installed; install the fine-tuning extra: pip install 'ragtune[train]'") from None
    if search not in SEARCHES:
        raise ConfigError(f"--search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if not recipe.search:
        raise ConfigError("the recipe has no `search:` section; declare ranges, e.g. "
                          "search: {training.learning_rate: {low: 1e-5, high: 1e-3, log: true}, lora.r: [4, 8, 16]}")
    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    console = console or Console(stderr=True)
    metric, greater = selection_metric(recipe)
    direction = "maximize" if greater else "minimize"
    study_dir = recipe.run_dir()
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=_sampler(search, recipe, recipe.seed if seed is None else seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))

    def objective(trial):
        values = {key: _suggest(trial, key, spec) for key, spec in recipe.search.items()}
        trial_dir = study_dir / "trials" / f"trial-{trial.number:03d}"
        if trial_dir.exists():
            shutil.rmtree(trial_dir)
        candidate = recipe.with_values(values).model_copy(update={"output_dir": trial_dir, "name": f"{recipe.name}-trial-{trial.number}"})
        console.print(f"trial {trial.number}: {values}", highlight=False)
        try:
            result = train(candidate, progress=progress, console=console, callbacks=[_pruning_callback(trial, metric)])
        except optuna.TrialPruned:
            shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
            raise
        if metric not in result.metrics:
            raise ConfigError(f"the runs report no {metric}; choose early_stopping.metric among {sorted(result.metrics)}")
        value = float(result.metrics[metric])
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)  # each trial keeps its final model only
        return value

    study.optimize(objective, n_trials=trials, catch=())
    result = TuneResult(study_dir, metric, direction)
    for trial in study.trials:
        result.trials.append({"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
                              "params": trial.params, "run_dir": str(study_dir / "trials" / f"trial-{trial.number:03d}")})
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        result.best = {"number": best.number, "value": best.value, "params": best.params}
        best_recipe = recipe.with_values(best.params).model_copy(update={"output_dir": None, "search": {}})
        result.best_recipe = study_dir / "best-recipe.yaml"
        result.best_recipe.write_text(best_recipe.to_yaml(), encoding="utf-8")
    (study_dir / "trials.json").write_text(json.dumps(result.as_dict(), indent=2, default=str), encoding="utf-8")
    return result


def print_trials(console, result: TuneResult) -> None:
    from rich.table import Table

    keys = sorted({k for t in result.trials for k in t["params"]})
    table = Table(title=f"trials ({result.direction} {result.metric})")
    for column in ("trial", "state", result.metric, *keys):
        table.add_column(column, justify="right")
    for t in result.trials:
        best = result.best and t["number"] == result.best["number"]
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        table.add_row(f"{t['number']}{' *' if best else ''}", t["state"], value, *(str(t["params"].get(k, "")) for k in keys))
    console.print(table)
    if result.best_recipe:
        console.print(f"best recipe: {result.best_recipe}")
