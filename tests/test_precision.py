"""`training.precision: auto` is a measurement on this machine and workload, cached per CPU, never a flag lookup."""

from __future__ import annotations

import json

import pytest

from conftest import two_block_smollm2

from ragtune.errors import ConfigError


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    from ragtune.finetune.encode import encode_chats
    from ragtune.finetune.formats import ChatExample
    from ragtune.finetune.modeling import build_causal_lm, load_tokenizer
    from ragtune.finetune.recipe import validate_recipe

    model_dir = two_block_smollm2(tmp_path_factory.mktemp("precision") / "smollm2-2-blocks")
    recipe = validate_recipe({"method": "lora", "model": str(model_dir), "data": {"train": "unused.jsonl"},
                              "training": {"batch_size": 2, "packing": True}})
    tokenizer = load_tokenizer(model_dir)
    examples = [ChatExample([{"role": "user", "content": f"What is item {i}?"},
                             {"role": "assistant", "content": f"Item {i} is a small red box on shelf {i}."}], line=i)
                for i in range(6)]
    return recipe, build_causal_lm(recipe, model_dir), tokenizer, encode_chats(examples, tokenizer, 128).features


def test_auto_precision_is_measured_once_per_cpu_and_workload(workload, tmp_path, monkeypatch):
    from ragtune import runtime
    from ragtune.finetune import precision as module
    from ragtune.finetune.run import collator_for

    recipe, model, tokenizer, features = workload
    probes = []
    real_probe = module.probe
    monkeypatch.setattr(module, "probe", lambda *a, **k: probes.append(1) or real_probe(*a, **k))
    collator = collator_for(recipe, tokenizer)

    chosen = module.training_precision(recipe, model, collator, features, cache_dir=tmp_path)
    records = json.loads((tmp_path / "precision.json").read_text())
    assert len(probes) == 1 and len(records) == 1
    (key, record), = records.items()
    assert chosen == record["precision"] in ("fp32", "bf16") and record["gemm_bf16_over_fp32"] > 0
    if record["gemm_bf16_over_fp32"] > module.GEMM_SLOWER:  # bf16 emulated: decided without timing steps
        assert chosen == "fp32" and "fp32_s" not in record
    else:
        assert record["fp32_s"] > 0 and record["bf16_s"] > 0
        assert (chosen == "bf16") == (record["bf16_s"] < module.BF16_GAIN * record["fp32_s"]
                                      and record["loss_gap"] <= module.LOSS_TOLERANCE)
    assert key.startswith(runtime.cpu_key() + "|") and "|smollm2-2-blocks|lora|" in key

    assert module.training_precision(recipe, model, collator, features, cache_dir=tmp_path) == chosen
    assert len(probes) == 1  # cached: the same CPU and workload is not measured again

    monkeypatch.setattr(runtime, "cpu_key", lambda: "another-cpu")
    module.training_precision(recipe, model, collator, features, cache_dir=tmp_path)
    assert len(probes) == 2 and len(json.loads((tmp_path / "precision.json").read_text())) == 2

    pinned = recipe.model_copy(update={"training": recipe.training.model_copy(update={"precision": "fp32"})})
    assert module.training_precision(pinned, model, collator, features, cache_dir=tmp_path) == "fp32"
    assert len(probes) == 2  # a pinned precision is not measured


def test_the_step_probe_times_both_precisions_and_leaves_no_trace(workload, monkeypatch):
    """Where bf16 products are not clearly slower, real training steps decide; the model, its gradients and
    the random stream are left as they were (a cached or a measured choice must train the same)."""
    import torch

    from ragtune.finetune import precision as module
    from ragtune.finetune.run import collator_for

    recipe, model, tokenizer, features = workload
    monkeypatch.setattr(module, "GEMM_SLOWER", float("inf"))  # time the steps even where bf16 is emulated
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    rng = torch.get_rng_state()
    record = module.probe(model, collator_for(recipe, tokenizer)([features[0]]))
    assert record["fp32_s"] > 0 and record["bf16_s"] > 0 and record["loss_gap"] < 0.05
    assert (record["precision"] == "bf16") == (record["bf16_s"] < module.BF16_GAIN * record["fp32_s"])
    assert all(torch.equal(a, p) for a, p in zip(before, [p for p in model.parameters() if p.requires_grad]))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_a_pinned_bf16_the_cpu_cannot_run_is_refused_naming_the_field(monkeypatch):
    import torch

    from ragtune.finetune.precision import check_cpu_bf16

    check_cpu_bf16()  # this CPU runs bf16 (natively or emulated)

    def broken(*args, **kwargs):
        raise RuntimeError("bf16 is not supported on this device")

    monkeypatch.setattr(torch, "autocast", broken)
    with pytest.raises(ConfigError, match="training.precision is bf16 but this CPU cannot compute in bf16 .*"
                                          "set training.precision: fp32"):
        check_cpu_bf16()
