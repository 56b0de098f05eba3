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
                  checkpoints: Path, *, progress: bool = True, callbacks=(), precision: str | None = None,
                  save_on_each_node: bool = False):
    """The configured Trainer for `recipe`: its arguments, collator, metrics and loss weights.
    `precision`: as measured by `precision.training_precision` (default: the recipe's, probed if auto).
    `save_on_each_node`: every node writes whole checkpoints (data-parallel nodes without a shared disk)."""
    from .precision import training_precision
    from .trainer import (balanced_class_weights, classification_metrics, early_stopping_callbacks, make_trainer_class,
                          time_budget_callbacks, training_arguments)

    has_validation = bool(validation_features)
    collator = collator_for(recipe, tokenizer, [*train_features, *validation_features])
    precision = precision or training_precision(recipe, model, collator, train_features)
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(recipe, checkpoints, has_validation=has_validation, progress=progress,
                                precision=precision, save_on_each_node=save_on_each_node),
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


@dataclass
class Prepared:
    """What a training process builds before its Trainer: tokenizer, encoded data, model, the facts of the run."""
    tokenizer: object
    train_set: object
    validation_set: object
    labels: list | None
    model: object
    data: dict

    @property
    def has_validation(self) -> bool:
        return bool(self.validation_set.features)


def prepare(recipe, warn, console) -> Prepared:
    """Tokenizer, the recipe's data read and encoded, and the model to train (the same in every process)."""
    from transformers import set_seed

    from ..models.cache import resolve_model_dir
    from .modeling import build_causal_lm, build_classifier, count_parameters, load_tokenizer
    from .packing import check_packing_length

    model_dir = resolve_model_dir(recipe.model, progress=lambda m: console.print(m))
    tokenizer = load_tokenizer(model_dir)
    train_examples, validation_examples = load_data(recipe, warn)
    train_set, validation_set, labels = _encode(recipe, tokenizer, train_examples, validation_examples, warn)
    check_packing_length(recipe, train_set.features + validation_set.features)
    set_seed(recipe.seed)  # new weights (LoRA's A, a classifier's head) start the same in every run and process
    model = build_classifier(recipe, model_dir, labels)[0] if recipe.is_classifier else build_causal_lm(recipe, model_dir)
    trainable, total = count_parameters(model)
    data = {"train_examples": len(train_set.features), "validation_examples": len(validation_set.features),
            "trainable_parameters": trainable, "total_parameters": total, "labels": labels}
    return Prepared(tokenizer, train_set, validation_set, labels, model, data)


def decide_precision_and_batch(recipe, prepared: Prepared, last, console):
    """(recipe with the micro-batch that fits memory, precision): both measured on this machine."""
    from .precision import training_precision

    features = prepared.train_set.features
    probe_collator = collator_for(recipe, prepared.tokenizer, features + prepared.validation_set.features)
    precision = training_precision(recipe, prepared.model, probe_collator, features,
                                   announce=lambda message: console.print(message, highlight=False))
    prepared.data["precision"] = precision
    recipe, prepared.data["memory"] = _fitted_to_memory(recipe, prepared.model, probe_collator, features, precision,
                                                        last, console)
    return recipe, precision


def announce_start(console, recipe, prepared: Prepared, precision: str, where: str, last) -> None:
    data = prepared.data
    console.print(f"training {recipe.name}: {recipe.method} on {recipe.model} in {precision}, "
                  f"{data['trainable_parameters']:,} of {data['total_parameters']:,} parameters trainable, "
                  f"{data['train_examples']} train / {data['validation_examples']} validation examples"
                  + (f", resuming from {Path(last).name}" if last else ""), highlight=False)
    logger.info("training %s (%s on %s) in %s: %d train / %d validation examples, %s%s", recipe.name, recipe.method,
                recipe.model, where, data["train_examples"], data["validation_examples"],
                f"batch {recipe.training.batch_size} x accumulation {recipe.training.gradient_accumulation}",
                f", resuming from {last}" if last else "")


def finish(recipe, trainer, tokenizer, output, final_dir: Path, has_validation: bool) -> dict:
    """Save the final model (the best checkpoint's, when validated) with its tokenizer; return the run's
    record. Every process of a distributed run calls it (the last validation is collective)."""
    if not recipe.is_classifier:
        trainer.model.config.use_cache = True  # the saved model generates with a KV cache
    trainer.save_model(str(final_dir))
    tokenizer.save_pretrained(str(final_dir))
    metrics = dict(output.metrics)
    if has_validation:
        metrics.update(trainer.evaluate())
    return {"metrics": metrics, "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_metric": trainer.state.best_metric,
            "train_tokens": getattr(trainer.state, "num_input_tokens_seen", None),
            "history": trainer.state.log_history}


def write_record(recipe, run_dir: Path, record: dict, data: dict, resumed_from, started: float, *, console,
                 progress: bool) -> TrainResult:
    """metrics.json, loss.png and the summary table of a finished run (local or on Ray)."""
    from .report import plot_losses, print_summary

    result = TrainResult(run_dir, record["metrics"], record["best_checkpoint"], resumed_from, data,
                         time.perf_counter() - started)
    (run_dir / "metrics.json").write_text(json.dumps({**result.as_dict(), "method": recipe.method, "model": recipe.model,
                                                      "best_metric": record["best_metric"],
                                                      "train_tokens": record["train_tokens"],
                                                      "history": record["history"]},
                                                     indent=2, default=str), encoding="utf-8")
    plot_losses(record["history"], run_dir / "loss.png", title=f"{recipe.name} ({recipe.method}, {recipe.model})")
    if progress:
        print_summary(console, recipe, result)
    return result


def train(recipe, *, resume: bool = False, progress: bool = True, console=None, callbacks=()) -> TrainResult:
    """Train `recipe` (a validated Recipe) and write its run directory."""
    from rich.console import Console

    from ..runtime import quiet_transformers

    console = console or Console(stderr=True)
    warn = lambda message: console.print(f"[yellow]warning:[/] {message}", highlight=False)  # noqa: E731
    started = time.perf_counter()
    set_torch_threads(recipe.training.threads)
    quiet_transformers()
    run_dir, last = _prepare_run_dir(recipe, resume)
    if resume and last is None:
        warn(f"no checkpoint in {run_dir / 'checkpoints'}; starting from the beginning")
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")

    prepared = prepare(recipe, warn, console)
    recipe, precision = decide_precision_and_batch(recipe, prepared, last, console)
    trainer = build_trainer(recipe, prepared.model, prepared.tokenizer, prepared.train_set.features,
                            prepared.validation_set.features, prepared.labels, run_dir / "checkpoints",
                            progress=progress, callbacks=callbacks, precision=precision)
    announce_start(console, recipe, prepared, precision, str(run_dir), last)
    output = trainer.train(resume_from_checkpoint=last)
    logger.info("training %s finished after %d steps in %.0f s", recipe.name, trainer.state.global_step,
                time.perf_counter() - started)
    record = finish(recipe, trainer, prepared.tokenizer, output, run_dir / "model", prepared.has_validation)
    return write_record(recipe, run_dir, record, prepared.data, last, started, console=console, progress=progress)
