"""The transformers Trainer, configured from a recipe: per-example loss weights, perplexity with
every validation, classification metrics, early stopping and the best checkpoint kept.

Gradient accumulation is exact: a loss is a sum over trained items (tokens, or examples weighted by
their class) divided by a normaliser taken over the whole accumulated batch, which the Trainer
computes once per optimizer step (`num_items_in_batch`) before any micro-batch runs. Summing the
micro-batch losses then gives the loss of one big batch, so batch 2 x accumulation 2 trains like
batch 4 x accumulation 1 (tests/test_grad_accumulation.py), where a mean per micro-batch would
average means of different sizes and count every micro-batch's mean as a whole batch's loss.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)


def balanced_class_weights(labels: list[int], classes: int):
    import torch

    counts = torch.bincount(torch.tensor(labels), minlength=classes).float()
    return len(labels) / (classes * counts.clamp(min=1))


def trained_tokens(labels):
    """How many tokens a causal-LM batch trains on: label positions 1.. that are not -100 (position 0
    is never predicted). The denominator of the token loss."""
    return (labels[..., 1:] != -100).sum()


def trained_positions(labels):
    """The positions whose logits any example of the batch is trained on (position p predicts token
    p + 1), as a 1-D tensor for transformers' `logits_to_keep`. On a RAFT or reader example the
    answer is ~5% of the tokens, and projecting the other 95% onto a 150k-word vocabulary (then
    back-propagating through it) was a fifth of a training step for nothing."""
    import torch

    return torch.nonzero((labels[:, 1:] != -100).any(dim=0)).flatten()


def weighted_token_loss(logits, labels, weight=None, num_items=None, positions=None):
    """Next-token cross-entropy where each example's tokens count `weight[i]` times, summed and
    divided by `num_items` trained tokens: those of the whole accumulated batch when training (so
    micro-batch losses add up to the big batch's loss), else this batch's own, so weights of 1 give
    exactly the model's own loss. `weight` is per example (rows,) or per token (rows, length, aligned
    with `labels`, as packed rows carry it). `positions`: the logits are only those positions' (see
    `trained_positions`), else every position's."""
    import torch.nn.functional as F

    if positions is None:
        shifted, target = logits[:, :-1, :].float(), labels[:, 1:]
    else:
        shifted, target = logits.float(), labels[:, positions + 1]
    per_token = F.cross_entropy(shifted.transpose(1, 2), target, ignore_index=-100, reduction="none")
    mask = (target != -100).float()
    if weight is not None:
        weight = weight.to(per_token.device, per_token.dtype)
        if weight.dim() == 1:
            mask = mask * weight[:, None]
        else:
            mask = mask * (weight[:, 1:] if positions is None else weight[:, positions + 1])
    if num_items is None:
        num_items = trained_tokens(labels).clamp(min=1)
    return (per_token * mask).sum() / num_items


def causal_lm_loss(model, inputs: dict, labels, weight=None, num_items=None, *, keep_logits: bool = True):
    """(loss, outputs) of one causal-LM training forward: logits only at trained positions where the
    model takes `logits_to_keep`, and without a KV cache for packed rows (transformers tells packed
    examples apart from their restarting positions only then)."""
    positions = trained_positions(labels) if keep_logits else None
    extra = {} if positions is None else {"logits_to_keep": positions}
    if "position_ids" in inputs:
        extra["use_cache"] = False
    outputs = model(**inputs, **extra)
    return weighted_token_loss(outputs.logits, labels, weight, num_items, positions), outputs


def takes_logits_to_keep(model) -> bool:
    """Whether the causal LM's forward takes `logits_to_keep` (Llama and Qwen2 in transformers 5 do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def class_weight_total(labels, class_weights=None):
    """The denominator of the classification loss: the summed class weights of the batch's labels
    (PyTorch's weighted mean), or the number of examples without class weights."""
    import torch

    if class_weights is None:
        return torch.tensor(float(labels.numel()), device=labels.device)
    return class_weights.to(labels.device)[labels].sum()


def weighted_classification_loss(logits, labels, class_weights=None, num_items=None):
    """Cross-entropy with optional per-class weights, summed and divided by `num_items` (the class
    weight total of the whole accumulated batch when training), else this batch's own total: then it
    equals `F.cross_entropy(logits, labels, weight=class_weights)`."""
    import torch.nn.functional as F

    per_example = F.cross_entropy(logits.float(), labels, reduction="none")
    if class_weights is not None:
        per_example = per_example * class_weights.to(labels.device)[labels]
    if num_items is None:
        num_items = class_weight_total(labels, class_weights)
    return per_example.sum() / num_items


def probe_step(model, batch: dict, *, precision: str = "fp32", classifier: bool = False) -> float:
    """One forward (the loss as training computes it) and backward on `batch`, the gradients dropped
    after; returns the loss. What the precision and memory probes measure."""
    import torch

    inputs = {k: v for k, v in batch.items() if k not in ("labels", "weight")}
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if classifier:
                loss = weighted_classification_loss(model(**inputs).logits, batch["labels"])
            else:
                loss, _ = causal_lm_loss(model, dict(inputs), batch["labels"], batch.get("weight"),
                                         keep_logits=takes_logits_to_keep(model))
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
    return float(loss.detach())


def classification_metrics(eval_prediction) -> dict:
    import numpy as np
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predicted = np.argmax(logits, axis=-1)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    return {"accuracy": float(accuracy_score(labels, predicted)), "precision": float(precision),
            "recall": float(recall), "macro_f1": float(f1)}


def make_trainer_class():
    from transformers import Trainer

    class RecipeTrainer(Trainer):
        """Adds example weights and class weights to the loss, exact under gradient accumulation,
        and perplexity to every validation."""

        is_classifier = False  # perplexity is reported for language models only
        class_weights = None  # a tensor of per-label loss weights for classification, or None
        # compute_loss divides by the normaliser of the whole accumulated batch (see the module docstring)
        loss_is_scaled_for_ga = True

        def _get_num_items_in_batch(self, batch_samples, device):
            # Where the Trainer counts `num_items_in_batch`, for training (over all micro-batches of an
            # optimizer step) and evaluation (one batch). Its own count (labels != -100) is right for the
            # token loss but not with class weights, and it counts only when the model's forward takes
            # **kwargs; ours always counts. A private hook of the pinned transformers: should it stop being
            # called, tests/test_grad_accumulation.py fails.
            import torch

            if not batch_samples or "labels" not in batch_samples[0]:
                return None
            if self.is_classifier:
                total = sum(class_weight_total(b["labels"], self.class_weights) for b in batch_samples)
            else:
                total = sum(trained_tokens(b["labels"]) for b in batch_samples)
            total = torch.as_tensor(total, dtype=torch.float32).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                total = self.accelerator.gather(total).sum()  # every process divides by the global total
            return total.clamp(min=1e-12)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight", None)
            labels = inputs.pop("labels")
            if self.is_classifier:
                outputs = model(**inputs)
                loss = weighted_classification_loss(outputs.logits, labels, self.class_weights, num_items_in_batch)
            else:
                loss, outputs = causal_lm_loss(model, inputs, labels, weight, num_items_in_batch,
                                               keep_logits=self._keeps_logits(model))
            if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            return (loss, outputs) if return_outputs else loss

        def _keeps_logits(self, model) -> bool:
            if not hasattr(self, "_logits_to_keep"):
                self._logits_to_keep = takes_logits_to_keep(model)
            return self._logits_to_keep

        def evaluate(self, *args, **kwargs):
            # returned metrics feed best-checkpoint selection and early stopping, so perplexity can be chosen
            metrics = super().evaluate(*args, **kwargs)
            if "eval_loss" in metrics and not self.is_classifier:
                metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
            return metrics

        def log(self, logs, *args, **kwargs):
            if "eval_loss" in logs and "eval_perplexity" not in logs and not self.is_classifier:
                logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
            super().log(logs, *args, **kwargs)

    return RecipeTrainer


def training_arguments(recipe, checkpoints: Path, *, has_validation: bool, progress: bool, precision: str,
                       save_on_each_node: bool = False):
    """`precision`: fp32 or bf16 as decided by `precision.training_precision`."""
    import torch
    from transformers import TrainingArguments

    t = recipe.training
    every = t.checkpoint_every
    strategy = "epoch" if every == "epoch" else "steps"
    steps = {} if every == "epoch" else {"save_steps": every, "eval_steps": every}
    metric = (t.early_stopping.metric if t.early_stopping else ("eval_macro_f1" if recipe.is_classifier else "eval_loss"))
    greater = t.early_stopping.greater_is_better if t.early_stopping else recipe.is_classifier
    return TrainingArguments(
        output_dir=str(checkpoints),
        learning_rate=t.learning_rate,
        lr_scheduler_type="constant_with_warmup" if t.scheduler == "constant" else t.scheduler,
        warmup_steps=t.warmup,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        seed=recipe.seed,
        data_seed=recipe.seed,
        eval_strategy=strategy if has_validation else "no",
        save_strategy=strategy,
        **steps,
        save_total_limit=t.keep_checkpoints,
        save_on_each_node=save_on_each_node,
        load_best_model_at_end=has_validation,
        metric_for_best_model=metric if has_validation else None,
        greater_is_better=greater if has_validation else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # the training cost `ragtune compare` reports beside quality: tokens trained on, padding excluded
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
    )


def time_budget_callbacks(recipe) -> list:
    """training.max_minutes: stop at the first optimizer step past the budget, saving the model as
    at a normal end (a budget, not a crash: the run is complete, just shorter).

    A schedule planned for all epochs and cut off by the clock would end at a high learning rate, the
    model left where the optimizer was still moving fastest. So once a few steps have been timed, a
    decaying schedule (linear, cosine) is re-planned to end where the budget does, and the run stops
    at the re-planned end."""
    if not recipe.training.max_minutes:
        return []
    import time

    from transformers import TrainerCallback

    limit = recipe.training.max_minutes * 60.0

    class TimeBudget(TrainerCallback):
        started = None
        planned: int | None = None  # the step the schedule now ends at, once fitted
        checked = 0.0  # the share of the budget at the last re-plan

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step  # a resumed run counts from where it starts

        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            if self.started is None:
                return control
            elapsed = time.monotonic() - self.started
            done = state.global_step - self.first_step
            refit = None
            # re-planned after 3 steps, then at each further tenth of the budget as the estimate firms up
            if done >= 3 and (self.planned is None or elapsed / limit >= self.checked + 0.1):
                self.checked = elapsed / limit
                fits = min(state.max_steps, state.global_step + int((limit - elapsed) / (elapsed / done)))
                current = self.planned or state.max_steps
                refit = fits if abs(fits - current) > 0.05 * current else None
            refit, over = same_on_every_process(refit, elapsed > limit)
            if refit is not None and fit_schedule_to(lr_scheduler, refit, state.max_steps):
                self.planned = refit
            if done >= 3:
                self.planned = self.planned or state.max_steps
            if over or (self.planned is not None and state.global_step >= self.planned):
                logger.info("training.max_minutes (%.1f) reached at step %d; stopping", recipe.training.max_minutes,
                            state.global_step)
                control.should_training_stop = True
                control.should_save = True
            return control

    return [TimeBudget()]


def same_on_every_process(refit: int | None, over: bool) -> tuple[int | None, bool]:
    """Process 0's time-budget decision on every process of a data-parallel run (each process times its
    own steps, and one that stopped or re-planned alone would leave the others waiting for it)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return refit, over
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    decision = torch.tensor([-1 if refit is None else refit, int(over)], dtype=torch.int64, device=device)
    dist.broadcast(decision, src=0)
    return (None if decision[0] < 0 else int(decision[0])), bool(decision[1])


def fit_schedule_to(scheduler, steps: int, planned: int) -> int | None:
    """Make a transformers warmup-then-decay schedule end at `steps` instead of `planned`; returns
    `steps`, or None when the schedule is not one whose length can be changed (constant, custom)."""
    from functools import partial

    lambdas = getattr(scheduler, "lr_lambdas", None) or []  # LambdaLR, as transformers.get_scheduler builds
    changed = False
    for index, function in enumerate(lambdas):
        keywords = getattr(function, "keywords", None)
        if isinstance(function, partial) and keywords and "num_training_steps" in keywords:
            warmup, current = keywords.get("num_warmup_steps", 0), keywords["num_training_steps"]
            lambdas[index] = partial(function.func, *function.args, **{
                **keywords, "num_training_steps": steps,
                "num_warmup_steps": min(warmup, max(0, round(warmup * steps / max(current, 1))))})
            changed = True
    if changed:
        logger.info("time budget: the learning-rate schedule now ends at step %d of %d planned", steps, planned)
    return steps if changed else None


def early_stopping_callbacks(recipe, has_validation: bool) -> list:
    if not (recipe.training.early_stopping and has_validation):
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=recipe.training.early_stopping.patience)]
