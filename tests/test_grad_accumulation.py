"""Gradient accumulation is exact: batch 2 x accumulation 2 trains like batch 4 x accumulation 1.

Both runs go through ragtune's own Trainer set-up (`build_trainer`: recipe -> TrainingArguments,
PadCollator or, packed, PackedCollator, RecipeTrainer.compute_loss with the Trainer's `num_items_in_batch`), on the packaged
models loaded the way `ragtune train` loads them: SmolLM2-135M cut to its first two blocks (method
freeze, top block trained) for the weighted token loss over examples of different lengths and
weights; MiniLM with a new output layer for the class-weighted cross-entropy over unbalanced classes.
fp32, fixed seed, dropout off, no gradient clipping (clipping would hide a scale error in gradients).

What is compared, for each of 3 optimizer steps:
  * the examples that went into the step (the premise: same data per step in both runs);
  * the first logged loss against the same loss computed one example at a time (REFERENCE_RTOL):
    token loss = sum of weight x token loss / trained tokens of the batch; classification =
    sum of w[y] x loss / sum of w[y] (PyTorch's weighted mean);
  * the logged training loss: relative difference <= LOSS_RTOL;
  * the accumulated gradient of every trainable tensor just before the optimizer step:
    ||g_accumulated - g_full|| <= GRAD_RTOL * ||g_full|| + GRAD_ATOL * ||whole gradient|| (L2 norms).
    Elementwise relative checks would trip on near-zero entries; float32 sums taken in a different
    order differ by ~1e-7 relative; a key bias's exact gradient is 0 (softmax ignores a shift shared by
    all keys), so only rounding noise is left there, hence the absolute term.
"""

from __future__ import annotations

import pytest

from conftest import two_block_smollm2

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
REFERENCE_RTOL = 1e-4  # batched vs one example at a time: padding changes the float32 summation order
GRAD_ATOL = 1e-6  # of the norm of the whole gradient: for tensors whose exact gradient is 0 (attention key biases)
STEPS = 3

ANSWERS = ["Yes.", "The codeword for river is falcon.",
           "Paris is the capital of France, and it sits on the Seine, which flows into the English Channel.",
           "No.", "Blue.", "It depends on the season: in winter the lake freezes over, in summer people swim in it.",
           "42.", "Three apples, two pears and one very large watermelon from the market on Saturday morning.",
           "Falcon.", "Seven.", "The train leaves at noon from platform four.", "Zebra."]
WEIGHTS = [1.0, 3.0, 0.5, 1.0, 1.0, 1.0, 2.0, 0.25, 1.0, 1.0, 4.0, 1.0]  # some batches all ones, some not
TEXTS = [("I bought apples and pears", "fruit"), ("We saw trucks and buses", "vehicle"), ("She likes plums", "fruit"),
         ("The river is wide today", "place"), ("Mangoes and cherries", "fruit"), ("He counted the taxis", "vehicle"),
         ("They painted grapes", "fruit"), ("Look at the mountain", "place"), ("Bananas are yellow", "fruit"),
         ("Peaches in a bowl", "fruit"), ("Lorries on the motorway", "vehicle"), ("I like cherries", "fruit")]
# 7 fruit / 3 vehicle / 2 place: "balanced" class weights 0.57 / 1.33 / 2.0


def _recipe(tmp_path, method: str, model: str, batch: int, accumulation: int, packing: bool = False, **sections):
    from ragtune.finetune.recipe import validate_recipe

    return validate_recipe({
        "name": f"{method}-{batch}x{accumulation}", "method": method, "model": model, "seed": 0,
        "output_dir": str(tmp_path / f"{method}-{batch}x{accumulation}"), "data": {"train": "unused.jsonl"},
        "training": {"learning_rate": 1e-4, "scheduler": "constant", "warmup": 0, "max_steps": STEPS,
                     "batch_size": batch, "gradient_accumulation": accumulation, "max_grad_norm": 1e9,
                     "precision": "fp32", "logging_steps": 1, "checkpoint_every": 1000, "weight_decay": 0.0,
                     "packing": packing},
        **sections})


class _Recorder:
    """Records the gradients the optimizer is about to apply and the examples of each step."""

    def __init__(self, features):
        from transformers import TrainerCallback

        self.index = {tuple(f["input_ids"]): i for i, f in enumerate(features)}
        self.grads: list[dict] = []
        self.batches: list[list[int]] = []  # example indices of each micro-batch, in order
        recorder = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                recorder.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()
                                       if p.requires_grad})

            def on_step_end(self, args, state, control, **kwargs):
                control.should_save = False  # nothing to compare in checkpoints

        self.callback = Callback()

    def wrap(self, collator):
        def collate(batch):
            ids = sorted(self.index[tuple(f["input_ids"])] for f in batch)
            self.batches.append(ids)
            return collator(batch)

        return collate


def _no_dropout(model):
    """Dropout off: both runs, and the reference, must compute the same function."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _train(recipe, model, tokenizer, features, labels):
    from ragtune.finetune.run import build_trainer

    _no_dropout(model)
    recorder = _Recorder(features)
    trainer = build_trainer(recipe, model, tokenizer, features, [], labels, recipe.run_dir() / "checkpoints",
                            progress=False, callbacks=[recorder.callback])
    trainer.data_collator = recorder.wrap(trainer.data_collator)
    trainer.train()
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == STEPS and len(recorder.grads) == STEPS
    return losses, recorder


def _compare(full, accumulated, what: str, reference):
    """`reference(example indices)`: the loss of one batch of those examples, computed one example at a
    time with the initial model; the first logged loss must be it (the loss is what it claims to be)."""
    import torch

    (full_losses, full_rec), (acc_losses, acc_rec) = full, accumulated
    assert [len(b) for b in full_rec.batches] == [4] * STEPS and [len(b) for b in acc_rec.batches] == [2] * 2 * STEPS
    accumulated_steps = [sorted(acc_rec.batches[2 * i] + acc_rec.batches[2 * i + 1]) for i in range(STEPS)]
    assert full_rec.batches == accumulated_steps, "the two runs did not see the same examples in each optimizer step"
    problems = []
    expected = reference(full_rec.batches[0])
    if abs(full_losses[0] - expected) > REFERENCE_RTOL * expected:
        problems.append(f"step 1: loss {full_losses[0]:.6f} with batch 4 but {expected:.6f} computed one example "
                        "at a time")
    for step, (a, b) in enumerate(zip(acc_losses, full_losses)):
        if abs(a - b) > LOSS_RTOL * abs(b):
            problems.append(f"step {step + 1}: loss {a:.6f} with batch 2 x accumulation 2 vs {b:.6f} with batch 4 "
                            f"({100 * (a - b) / b:+.2f}%)")
    for step, (ga, gf) in enumerate(zip(acc_rec.grads, full_rec.grads)):
        assert ga.keys() == gf.keys() and ga
        whole = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in gf.values()])))
        for name in gf:
            error = float(torch.linalg.vector_norm(ga[name] - gf[name]))
            norm = float(torch.linalg.vector_norm(gf[name]))
            if error > GRAD_RTOL * norm + GRAD_ATOL * whole:
                ratio = float(torch.linalg.vector_norm(ga[name])) / max(norm, 1e-30)
                problems.append(f"step {step + 1}: gradient of {name} differs by {error / norm:.2e} of its norm "
                                f"(accumulated / full norm {ratio:.3f})")
    assert not problems, f"{what}: gradient accumulation is not exact:\n" + "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_weighted_token_loss_accumulates_exactly(tmp_path, packing):
    import torch

    from ragtune.finetune.encode import encode_chats
    from ragtune.finetune.formats import ChatExample
    from ragtune.finetune.modeling import build_causal_lm, load_tokenizer

    model_dir = two_block_smollm2(tmp_path / "smollm2-2-blocks")
    tokenizer = load_tokenizer(model_dir)
    examples = [ChatExample([{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": answer}],
                            weight=weight, line=i + 1)
                for i, (answer, weight) in enumerate(zip(ANSWERS, WEIGHTS))]
    features = encode_chats(examples, tokenizer, 128).features
    assert len(features) == len(ANSWERS) and len({len(f["input_ids"]) for f in features}) > 6

    runs, sums = [], []
    for batch, accumulation in ((4, 1), (2, 2)):
        recipe = _recipe(tmp_path, "freeze", str(model_dir), batch, accumulation, packing,
                         freeze={"train_top_blocks": 1, "train_head": False})
        model = _no_dropout(build_causal_lm(recipe, model_dir))
        if not sums:  # per example: the weighted sum of its token losses, and its trained-token count
            with torch.no_grad():
                for f in features:
                    logits = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1]
                    target = torch.tensor(f["labels"][1:])
                    losses = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
                    sums.append((f["weight"] * float(losses), int((target != -100).sum())))
        runs.append(_train(recipe, model, tokenizer, features, None))
    # sum over the batch's tokens of weight x token loss, over the batch's trained tokens
    _compare(*runs, "weighted token loss",
             lambda batch: sum(sums[i][0] for i in batch) / sum(sums[i][1] for i in batch))


@pytest.mark.slow
def test_class_weighted_loss_accumulates_exactly(tmp_path):
    import torch

    from ragtune.finetune.encode import encode_classification
    from ragtune.finetune.formats import ClassifyExample
    from ragtune.finetune.modeling import build_classifier, load_tokenizer
    from ragtune.models.cache import resolve_model_dir

    model_dir = resolve_model_dir("all-MiniLM-L6-v2")
    tokenizer = load_tokenizer(model_dir)
    labels = ["fruit", "place", "vehicle"]
    examples = [ClassifyExample(text, label, line=i + 1) for i, (text, label) in enumerate(TEXTS)]
    features = encode_classification(examples, tokenizer, 32, {label: i for i, label in enumerate(labels)}).features

    from ragtune.finetune.trainer import balanced_class_weights

    targets = [f["labels"] for f in features]
    weights = balanced_class_weights(targets, len(labels))
    assert weights.max() / weights.min() > 2  # unbalanced: a rare class weighs more than twice a common one
    runs, heads, terms = [], [], []
    for batch, accumulation in ((4, 1), (2, 2)):
        recipe = _recipe(tmp_path, "classify", str(model_dir), batch, accumulation,
                         classify={"labels": labels, "class_weights": "balanced", "freeze_layers": 4})
        torch.manual_seed(0)  # the new output layer starts the same in both runs
        model, _ = build_classifier(recipe, model_dir, labels)
        heads.append(model.classifier.weight.detach().clone())
        if not terms:  # per example: its class weight x its cross-entropy, and its class weight
            _no_dropout(model)
            with torch.no_grad():
                for f, y in zip(features, targets):
                    logits = model(**{k: torch.tensor([v]) for k, v in f.items() if k != "labels"}).logits
                    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y]))
                    terms.append((float(weights[y] * loss), float(weights[y])))
        runs.append(_train(recipe, model, tokenizer, features, labels))
    assert torch.equal(*heads)
    # PyTorch's weighted mean over the batch: sum of w[y] x loss over sum of w[y]
    _compare(*runs, "class-weighted cross-entropy",
             lambda batch: sum(terms[i][0] for i in batch) / sum(terms[i][1] for i in batch))
