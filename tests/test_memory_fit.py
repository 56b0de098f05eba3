"""training.fit_memory: the micro-batch is chosen by a measured step of the longest examples, and the
effective batch is kept by accumulation (finetune/memory.py)."""

from __future__ import annotations

import json

import pytest

from conftest import two_block_smollm2

from ragtune.errors import ConfigError

pytestmark = pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"),
                                reason="peak memory is read from Linux /proc")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ragtune.finetune.recipe import validate_recipe

    folder = tmp_path_factory.mktemp("memory")
    model = two_block_smollm2(folder / "smollm2-2-blocks")
    text = "The harbour master logs every ship that enters the bay, its cargo and its crew. " * 12
    rows = [{"messages": [{"role": "user", "content": f"{text} Question {i}: who logs the ships?"},
                          {"role": "assistant", "content": "The harbour master."}]} for i in range(8)]
    (folder / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = validate_recipe({"name": "fit", "method": "lora", "model": str(model), "output_dir": str(folder / "run"),
                              "data": {"train": str(folder / "long.jsonl"), "max_length": 1024, "validation_share": 0},
                              "training": {"batch_size": 4, "max_steps": 2, "threads": 2, "precision": "fp32"}})
    return recipe, model


def _parts(recipe, model):
    from ragtune.finetune.modeling import build_causal_lm, load_tokenizer
    from ragtune.finetune.run import _encode, collator_for, load_data

    tokenizer = load_tokenizer(model)
    train, validation = load_data(recipe, lambda _m: None)
    train_set, _, _ = _encode(recipe, tokenizer, train, validation, lambda _m: None)
    return build_causal_lm(recipe, model), collator_for(recipe, tokenizer, train_set.features), train_set.features


def test_the_measurement_grows_with_the_batch_and_leaves_nothing_behind(setup):
    import torch

    from ragtune.finetune.memory import step_peak_bytes

    recipe, model_dir = setup
    model, collator, features = _parts(recipe, model_dir)
    rng = torch.get_rng_state()
    step_peak_bytes(model, collator(features[:1]), precision="fp32")  # the first step's one-time allocations
    one = step_peak_bytes(model, collator(features[:1]), precision="fp32")
    four = step_peak_bytes(model, collator(features[:4]), precision="fp32")
    assert four > one > 0  # the measurement grows with what goes through at once
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)


PER_TOKEN = 64 * 1024  # about what a token costs in 2 blocks of 576


def _fixed_cost_per_token(monkeypatch):
    """A deterministic stand-in for the measured peak (in a long pytest process the allocator's reuse
    makes real peaks of small models too noisy to place a budget between them)."""
    from ragtune.finetune import memory

    monkeypatch.setattr(memory, "step_peak_bytes", lambda model, batch, **_: int(batch["input_ids"].numel()) * PER_TOKEN)
    return memory


def _needs(memory, model, collator, features, sizes) -> dict:
    """Bytes the stand-in measurement plus AdamW's state give for the `sizes` longest examples at once."""
    longest = sorted(features, key=lambda f: -len(f["input_ids"]))
    optimizer = memory.ADAM_BYTES * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {n: optimizer + int(collator(longest[:n])["input_ids"].numel()) * PER_TOKEN for n in sizes}


def test_fewer_examples_at_once_where_the_batch_does_not_fit(setup, monkeypatch):
    recipe, model_dir = setup
    model, collator, features = _parts(recipe, model_dir)
    memory = _fixed_cost_per_token(monkeypatch)
    need = _needs(memory, model, collator, features, (1, 2, 4))

    plenty = memory.fit_micro_batch(recipe, model, collator, features, precision="fp32", available=2**40)
    assert plenty[:2] == (4, 1) and not plenty[2]["measured"]  # a bound far below the memory: no probe
    tight = int((need[2] + need[4]) / 2 / memory.HEADROOM)  # room for two at a time, not for four
    size, accumulation, record = memory.fit_micro_batch(recipe, model, collator, features, precision="fp32",
                                                        available=tight)
    assert (size, accumulation) == (2, 2) and record["measured"] and set(record["tried_mb"]) == {4, 2}
    with pytest.raises(ConfigError, match="data.max_length.*training.fit_memory: false"):
        memory.fit_micro_batch(recipe, model, collator, features, precision="fp32", available=need[1] // 2)
    off = recipe.model_copy(update={"training": recipe.training.model_copy(update={"fit_memory": False})})
    assert memory.fit_micro_batch(off, model, collator, features, precision="fp32", available=1)[:2] == (4, 1)


def test_training_runs_with_the_fitted_micro_batch(setup, monkeypatch):
    from ragtune.finetune.run import train

    recipe, model_dir = setup
    model, collator, features = _parts(recipe, model_dir)
    memory = _fixed_cost_per_token(monkeypatch)
    need = _needs(memory, model, collator, features, (1, 4))
    monkeypatch.setattr(memory, "available_bytes", lambda: int((need[1] + need[4]) / 2 / memory.HEADROOM))
    result = train(recipe, progress=False)
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["data"]["memory"]["micro_batch"] < 4
    assert saved["data"]["memory"]["micro_batch"] * saved["data"]["memory"]["gradient_accumulation"] == 4
    assert (result.run_dir / "model" / "adapter_model.safetensors").exists()
