"""`ragtune train`: one recipe in, one run directory out.

Run directory layout (what export, ask --model and resume rely on):
  recipe.yaml       the resolved recipe (absolute paths, every default filled in)
  checkpoints/      periodic Trainer checkpoints (the newest few plus the best); --resume reads them
  model/            the final model: the best checkpoint's adapter (lora) or weights, with the
                    tokenizer and chat template
  metrics.json      final and best metrics, the data counts and the full log history
  loss.png          training and validation loss curves
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..runtime import set_torch_threads

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    best_checkpoint: str | None
    resumed_from: str | None
    data: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "metrics": self.metrics, "best_checkpoint": self.best_checkpoint,
                "resumed_from": self.resumed_from, "data": self.data, "seconds": round(self.seconds, 1)}


def _read(path: Path, fmt: str, want_classify: bool, warn) -> list:
    from .formats import read_examples

    if not Path(path).exists():
        raise ConfigError(f"data file {path} does not exist; fix data.train / data.validation in the recipe")
    result = read_examples(path, fmt)
    for problem in result.problems[:5]:
        warn(f"skipped {problem}")
    if len(result.problems) > 5:
        warn(f"... and {len(result.problems) - 5} more bad lines skipped (run `ragtune data check {path}`)")
    if not result.examples:
        raise ConfigError(f"{path}: no valid examples; run `ragtune data check {path}` for the reasons")
    if want_classify != (result.format == "classify"):
        raise ConfigError(f"{path} holds {result.format} data but the recipe's method needs "
                          f"{'classification' if want_classify else 'chat / instruction'} data")
    return result.examples


def load_data(recipe, warn) -> tuple[list, list]:
    train = _read(recipe.data.train, recipe.data.format, recipe.is_classifier, warn)
    if recipe.data.validation:
        return train, _read(recipe.data.validation, recipe.data.format, recipe.is_classifier, warn)
    held = int(round(len(train) * recipe.data.validation_share))
    if held == 0:
        return train, []
    shuffled = train[:]
    random.Random(recipe.seed).shuffle(shuffled)
    return shuffled[held:], shuffled[:held]


def _encode(recipe, tokenizer, train, validation, warn):
    from .encode import encode_chats, encode_classification

    if recipe.is_classifier:
        labels = recipe.classify.labels or sorted({e.label for e in train})
        if len(labels) < 2:
            raise ConfigError(f"{recipe.data.train}: classification needs at least two labels, found {labels}")
        label2id = {label: i for i, label in enumerate(labels)}
        return (encode_classification(train, tokenizer, recipe.data.max_length, label2id),
                encode_classification(validation, tokenizer, recipe.data.max_length, label2id), labels)
    encoded = [encode_chats(part, tokenizer, recipe.data.max_length) for part in (train, validation)]
    for name, part in zip(("train", "validation"), encoded):
        if part.dropped_long:
            warn(f"{name}: {len(part.dropped_long)} examples longer than data.max_length={recipe.data.max_length} "
                 f"tokens were left out (lines {part.dropped_long[:10]}); raise data.max_length to keep them")
        if part.dropped_empty:
            warn(f"{name}: {len(part.dropped_empty)} examples without a trainable assistant turn left out")
    if not encoded[0].features:
        raise ConfigError(f"{recipe.data.train}: no example fits data.max_length={recipe.data.max_length}")
    return encoded[0], encoded[1], None


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint whose trainer state was written: Trainer writes trainer_state.json
    last, so a process killed while saving leaves a folder without it, which must be passed over."""
    if not checkpoints.is_dir():
        return None
    found = [(int(p.name.split("-")[1]), p) for p in checkpoints.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()]
    return str(max(found)[1]) if found else None


def _prepare_run_dir(recipe, resume: bool) -> tuple[Path, str | None]:
    run_dir = recipe.run_dir()
    last = last_complete_checkpoint(run_dir / "checkpoints")
    if last and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints of a run; pass --resume to continue it, "
                          "or set output_dir (or name) to start a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, last if resume else None


def collator_for(recipe, tokenizer, features: list | None = None):
    """Packed rows (training.packing) or padded ones. Packed rows are at most training.packing_length
    tokens, by default the longest example's: a row never costs more attention than a padded one
    (one row of a whole batch ran at 0.66x the padded speed on RAFT examples, see packing.py)."""
    from .encode import PadCollator
    from .packing import PackedCollator

    if recipe.training.packing and not recipe.is_classifier:
        length = recipe.training.packing_length or max((len(f["input_ids"]) for f in features or []), default=None)
        return PackedCollator(tokenizer, length)
    return PadCollator(tokenizer, classification=recipe.is_classifier)


def build_trainer(recipe, model, tokenizer, train_features: list, validation_features: list, labels,
                  checkpoints: Path, *, progress: bool = True, callbacks=(), precision: str | None = None):
    """The configured Trainer for `recipe`: its arguments, collator, metrics and loss weights.
    `precision`: as measured by `precision.training_precision` (default: the recipe's, probed if auto)."""
    from .precision import training_precision
    from .trainer import (balanced_class_weights, classification_metrics, early_stopping_callbacks, make_trainer_class,
                          time_budget_callbacks, training_arguments)

    has_validation = bool(validation_features)
    collator = collator_for(recipe, tokenizer, [*train_features, *validation_features])
    precision = precision or training_precision(recipe, model, collator, train_features)
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(recipe, checkpoints, has_validation=has_validation, progress=progress,
                                precision=precision),
        train_dataset=train_features,
        eval_dataset=validation_features if has_validation else None,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=classification_metrics if recipe.is_classifier else None,
        callbacks=[*early_stopping_callbacks(recipe, has_validation), *time_budget_callbacks(recipe), *callbacks],
    )
    trainer.is_classifier = recipe.is_classifier
    if recipe.is_classifier and recipe.classify.class_weights == "balanced":
        trainer.class_weights = balanced_class_weights([f["labels"] for f in train_features], len(labels))
    if not progress:  # without a progress bar transformers prints every log dict to stdout
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def _fitted_to_memory(recipe, model, collator, features, precision, last, console):
    """The recipe with the micro-batch that fits memory (finetune/memory.py); a resumed run keeps its checkpoint's."""
    from .memory import fit_micro_batch

    t = recipe.training
    if last is not None:
        state = json.loads((Path(last) / "trainer_state.json").read_text())
        size = int(state.get("train_batch_size") or t.batch_size)
        if size == t.batch_size or (t.batch_size * t.gradient_accumulation) % size:
            return recipe, None
        accumulation = t.batch_size * t.gradient_accumulation // size
        record = {"micro_batch": size, "gradient_accumulation": accumulation, "from": "the checkpoint"}
    else:
        size, accumulation, record = fit_micro_batch(
            recipe, model, collator, features, precision=precision,
            announce=lambda message: console.print(message, highlight=False))
        if size == t.batch_size:
            return recipe, record
    training = t.model_copy(update={"batch_size": size, "gradient_accumulation": accumulation})
    return recipe.model_copy(update={"training": training}), record


def train(recipe, *, resume: bool = False, progress: bool = True, console=None, callbacks=()) -> TrainResult:
    """Train `recipe` (a validated Recipe) and write its run directory."""
    from rich.console import Console

    from ..models.cache import resolve_model_dir
    from ..runtime import quiet_transformers
    from .modeling import build_causal_lm, build_classifier, count_parameters, load_tokenizer
    from .packing import check_packing_length
    from .precision import training_precision
    from .report import plot_losses, print_summary

    console = console or Console(stderr=True)
    warn = lambda message: console.print(f"[yellow]warning:[/] {message}", highlight=False)  # noqa: E731
    started = time.perf_counter()
    set_torch_threads(recipe.training.threads)
    quiet_transformers()
    run_dir, last = _prepare_run_dir(recipe, resume)
    if resume and last is None:
        warn(f"no checkpoint in {run_dir / 'checkpoints'}; starting from the beginning")
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")

    model_dir = resolve_model_dir(recipe.model, progress=lambda m: console.print(m))
    tokenizer = load_tokenizer(model_dir)
    train_examples, validation_examples = load_data(recipe, warn)
    train_set, validation_set, labels = _encode(recipe, tokenizer, train_examples, validation_examples, warn)
    check_packing_length(recipe, train_set.features + validation_set.features)
    if recipe.is_classifier:
        model, _ = build_classifier(recipe, model_dir, labels)
    else:
        model = build_causal_lm(recipe, model_dir)
    trainable, total = count_parameters(model)
    has_validation = bool(validation_set.features)
    data = {"train_examples": len(train_set.features), "validation_examples": len(validation_set.features),
            "trainable_parameters": trainable, "total_parameters": total, "labels": labels}

    probe_collator = collator_for(recipe, tokenizer, train_set.features + validation_set.features)
    precision = training_precision(recipe, model, probe_collator, train_set.features,
                                   announce=lambda message: console.print(message, highlight=False))
    data["precision"] = precision
    recipe, data["memory"] = _fitted_to_memory(recipe, model, probe_collator, train_set.features, precision, last, console)
    trainer = build_trainer(recipe, model, tokenizer, train_set.features, validation_set.features, labels,
                            run_dir / "checkpoints", progress=progress, callbacks=callbacks, precision=precision)
    console.print(f"training {recipe.name}: {recipe.method} on {recipe.model} in {precision}, {trainable:,} of {total:,} "
                  f"parameters trainable, {data['train_examples']} train / {data['validation_examples']} validation examples"
                  + (f", resuming from {Path(last).name}" if last else ""), highlight=False)
    logger.info("training %s (%s on %s) in %s: %d train / %d validation examples, %s%s", recipe.name, recipe.method,
                model_dir, run_dir, data["train_examples"], data["validation_examples"],
                f"batch {recipe.training.batch_size} x accumulation {recipe.training.gradient_accumulation}",
                f", resuming from {last}" if last else "")
    output = trainer.train(resume_from_checkpoint=last)
    logger.info("training %s finished after %d steps in %.0f s", recipe.name, trainer.state.global_step,
                time.perf_counter() - started)

    final_dir = run_dir / "model"
    if not recipe.is_classifier:
        trainer.model.config.use_cache = True  # the saved model generates with a KV cache
    trainer.save_model(str(final_dir))
    tokenizer.save_pretrained(str(final_dir))
    metrics = dict(output.metrics)
    if has_validation:
        metrics.update(trainer.evaluate())
    history = trainer.state.log_history
    best = trainer.state.best_model_checkpoint
    result = TrainResult(run_dir, metrics, best, last, data, time.perf_counter() - started)
    (run_dir / "metrics.json").write_text(json.dumps({**result.as_dict(), "method": recipe.method, "model": recipe.model,
                                                      "best_metric": trainer.state.best_metric,
                                                      "train_tokens": getattr(trainer.state, "num_input_tokens_seen", None),
                                                      "history": history},
                                                     indent=2, default=str), encoding="utf-8")
    plot_losses(history, run_dir / "loss.png", title=f"{recipe.name} ({recipe.method}, {recipe.model})")
    if progress:
        print_summary(console, recipe, result)
    return result
