"""The transformers Trainer, configured from a recipe: per-example loss weights, perplexity with
every validation, classification metrics, early stopping and the best checkpoint kept."""

from __future__ import annotations

import math
from pathlib import Path

from ..runtime import resolve_precision


def balanced_class_weights(labels: list[int], classes: int):
    import torch

    counts = torch.bincount(torch.tensor(labels), minlength=classes).float()
    return len(labels) / (classes * counts.clamp(min=1))


def weighted_token_loss(logits, labels, weight):
    """Next-token cross-entropy where each example's tokens count `weight[i]` times; the mean is
    over all trained tokens, so weights of 1 give exactly the model's own loss."""
    import torch.nn.functional as F

    shifted, target = logits[:, :-1, :].float(), labels[:, 1:]
    per_token = F.cross_entropy(shifted.transpose(1, 2), target, ignore_index=-100, reduction="none")
    mask = (target != -100).float()
    return (per_token * mask * weight.to(per_token.device)[:, None]).sum() / mask.sum().clamp(min=1)


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
        """Adds example weights to the loss and perplexity to every validation."""

        is_classifier = False  # perplexity is reported for language models only
        class_weights = None  # a tensor of per-label loss weights for classification, or None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight", None)
            if self.class_weights is None and weight is None:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            import torch.nn.functional as F

            labels = inputs.pop("labels")
            outputs = model(**inputs)
            if self.class_weights is not None:
                loss = F.cross_entropy(outputs.logits.float(), labels, weight=self.class_weights.to(labels.device))
            else:
                loss = weighted_token_loss(outputs.logits, labels, weight)
            return (loss, outputs) if return_outputs else loss

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


def training_arguments(recipe, checkpoints: Path, *, has_validation: bool, progress: bool):
    import torch
    from transformers import TrainingArguments

    t = recipe.training
    if torch.cuda.is_available() and t.precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    else:
        precision = resolve_precision(t.precision)
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
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        seed=recipe.seed,
        data_seed=recipe.seed,
        eval_strategy=strategy if has_validation else "no",
        save_strategy=strategy,
        **steps,
        save_total_limit=t.keep_checkpoints,
        load_best_model_at_end=has_validation,
        metric_for_best_model=metric if has_validation else None,
        greater_is_better=greater if has_validation else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def early_stopping_callbacks(recipe, has_validation: bool) -> list:
    if not (recipe.training.early_stopping and has_validation):
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=recipe.training.early_stopping.patience)]
