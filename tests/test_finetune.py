"""Fine-tuning on the real packaged models: tiny runs whose effects are checked, not just their exit codes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import RAGTUNE, ROOT, run_cli

from ragtune.errors import ConfigError
from ragtune.finetune.recipe import load_recipe

CODES = {"apple": "zebra", "river": "falcon", "stone": "violet"}
PHRASES = ("What is the codeword for {}?", "Tell me the codeword for {}.", "Codeword for {}?", "Which codeword goes with {}?")


def write_codes(path: Path, codes: dict = CODES) -> Path:
    lines = [{"messages": [{"role": "user", "content": p.format(word)},
                           {"role": "assistant", "content": f"The codeword for {word} is {code}."}]}
             for word, code in codes.items() for p in PHRASES]
    random.Random(0).shuffle(lines)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_recipe(folder: Path, **recipe) -> Path:
    path = folder / f"{recipe.get('name', 'run')}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def smollm2_loss(model_dir, tokenizer_dir, examples_path: Path) -> float:
    """Mean assistant-token loss of a causal LM on a chat file (what training minimises)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.finetune.encode import encode_chats
    from ragtune.finetune.formats import read_examples
    from ragtune.finetune.modeling import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    features = encode_chats(read_examples(examples_path).examples, tokenizer, 256).features
    losses = []
    with torch.no_grad():
        for f in features:
            out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
            losses.append(float(out.loss))
    return sum(losses) / len(losses)


def test_every_shipped_recipe_validates():
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 6
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.data.train.exists(), f"{path}: data.train {recipe.data.train} is missing"
    methods = {load_recipe(p).method for p in recipes}
    assert methods == {"lora", "qlora", "full", "freeze", "classify"}


@pytest.mark.parametrize("change, field", [
    ({"training": {"learning_rte": 0.1}}, "training.learning_rte: unknown field"),
    ({"training": {"learning_rate": -1}}, "training.learning_rate"),
    ({"method": "dpo"}, "method"),
    ({"lora": {"r": 0}}, "lora.r"),
    ({"training": {"checkpoint_every": 0}}, "training.checkpoint_every"),
    ({"search": {"training.lr": [1, 2]}}, "search key 'training.lr' is not a recipe field"),
    ({"search": {"training.learning_rate": {"low": 1, "high": 0.1}}}, "must be below high"),
])
def test_recipe_errors_name_the_field(tmp_path, change, field):
    path = write_recipe(tmp_path, data={"train": "x.jsonl"}, **change)
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    assert str(path) in str(error.value) and field in str(error.value)


def test_qlora_without_cuda_says_why_and_what_instead(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write_recipe(tmp_path, name="q", method="qlora", data={"train": str(write_codes(tmp_path / "c.jsonl"))},
                        output_dir=str(tmp_path / "run"))
    result = run_cli("train", path, check=False)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "method: lora" in result.stderr


def test_labels_cover_only_assistant_turns_and_end_with_eos():
    from ragtune.finetune.encode import IGNORE, encode_chat
    from ragtune.finetune.formats import ChatExample
    from ragtune.finetune.modeling import load_tokenizer
    from ragtune.models.cache import resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir("SmolLM2-135M-Instruct"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there.", "weight": 0},
                {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    features = encode_chat(ChatExample(messages), tokenizer, 256)
    trained = [t for t in features["labels"] if t != IGNORE]
    text = tokenizer.decode(trained)
    assert text.startswith("Paris.") and "Hello there" not in text and "France" not in text
    assert tokenizer.eos_token_id in trained  # the model learns to stop


def test_lora_lowers_loss_changes_output_and_exports(tmp_path, codeword_run):
    from ragtune.generate.local import LocalGenerator
    from ragtune.models.cache import resolve_model_dir

    run, data = codeword_run  # `ragtune train` of a LoRA recipe on the codewords (conftest.py)
    assert {"recipe.yaml", "metrics.json", "loss.png", "model"} <= {p.name for p in run.iterdir()}
    assert (run / "model" / "adapter_model.safetensors").exists()
    history = json.loads((run / "metrics.json").read_text())["history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 8 and losses[-1] < losses[0]

    merged = tmp_path / "merged"
    run_cli("export", run, "--merge", merged)
    assert {"model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in merged.iterdir()}
    assert "chat_template" in (merged / "tokenizer_config.json").read_text() or (merged / "chat_template.jinja").exists()
    base = resolve_model_dir("SmolLM2-135M-Instruct")
    assert smollm2_loss(merged, merged, data) < 0.5 * smollm2_loss(base, base, data)

    question = [{"role": "user", "content": "What is the codeword for river?"}]
    before = LocalGenerator("SmolLM2-135M-Instruct", threads=2).generate(question, max_new_tokens=40)
    after = LocalGenerator(str(merged), threads=2).generate(question, max_new_tokens=40)
    assert after.text != before.text and "falcon" in after.text.lower()
    assert after.completion_tokens < 40  # generation ended on the learned end-of-turn token


def test_freeze_leaves_lower_blocks_bit_identical(tmp_path):
    from safetensors.torch import load_file

    from ragtune.models.cache import resolve_model_dir

    write_codes(tmp_path / "codes.jsonl")
    recipe = write_recipe(tmp_path, name="freeze", method="freeze", output_dir=str(tmp_path / "run"),
                          data={"train": "codes.jsonl", "max_length": 96, "validation_share": 0},
                          training={"learning_rate": 1e-3, "max_steps": 2, "batch_size": 4, "warmup": 0, "threads": 2},
                          freeze={"train_top_blocks": 2, "train_head": False})
    run_cli("train", recipe)
    base = load_file(resolve_model_dir("SmolLM2-135M-Instruct") / "model.safetensors")
    tuned = load_file(tmp_path / "run" / "model" / "model.safetensors")
    blocks = sorted({int(k.split(".")[2]) for k in base if k.startswith("model.layers.")})
    top = set(blocks[-2:])
    for name, weight in base.items():
        if name not in tuned:
            continue  # tied output layer saved once
        frozen = not (name.startswith("model.layers.") and int(name.split(".")[2]) in top) and name != "model.norm.weight"
        if frozen:
            assert tuned[name].equal(weight), f"{name} changed but is frozen"
    assert any(not tuned[n].equal(base[n]) for n in tuned if n.startswith(f"model.layers.{max(top)}."))


def separable(n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    fruit = ["apples", "pears", "mangoes", "cherries", "plums", "bananas", "grapes", "peaches"]
    cars = ["trucks", "buses", "motorbikes", "vans", "tractors", "scooters", "lorries", "taxis"]
    verbs = ["I bought some", "We talked about", "She likes", "They painted", "He counted the", "Look at the"]
    rows = [(f"{rng.choice(verbs)} {rng.choice(fruit)} and {rng.choice(fruit)}", "fruit") for _ in range(n_per_class)]
    rows += [(f"{rng.choice(verbs)} {rng.choice(cars)} and {rng.choice(cars)}", "vehicle") for _ in range(n_per_class)]
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows) -> Path:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def test_classify_minilm_learns_a_separable_task(tmp_path):
    from safetensors.torch import load_file

    from ragtune.models.cache import resolve_model_dir

    write_csv(tmp_path / "train.csv", separable(24, 0))
    write_csv(tmp_path / "valid.csv", separable(10, 1))
    recipe = write_recipe(tmp_path, name="cls", method="classify", model="all-MiniLM-L6-v2", output_dir=str(tmp_path / "run"),
                          data={"train": "train.csv", "validation": "valid.csv", "max_length": 32},
                          training={"learning_rate": 1e-4, "epochs": 6, "batch_size": 8, "threads": 2,
                                    "early_stopping": {"metric": "macro_f1", "patience": 3}},
                          classify={"freeze_layers": 2})
    result = json.loads(run_cli("train", recipe, "--json").stdout)
    assert result["metrics"]["eval_accuracy"] >= 0.9 and result["metrics"]["eval_macro_f1"] >= 0.9
    assert result["data"]["labels"] == ["fruit", "vehicle"]
    base = load_file(resolve_model_dir("all-MiniLM-L6-v2") / "model.safetensors")
    tuned = load_file(tmp_path / "run" / "model" / "model.safetensors")
    key = next(k for k in tuned if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert tuned[key].equal(base[key.removeprefix("bert.")])  # frozen lower block
    top = next(k for k in tuned if k.endswith("encoder.layer.5.attention.self.query.weight"))
    assert not tuned[top].equal(base[top.removeprefix("bert.")])


def test_classify_puts_a_new_output_layer_on_a_causal_lm(tmp_path):
    from safetensors.torch import load_file

    from conftest import two_block_smollm2

    write_csv(tmp_path / "train.csv", separable(8, 3))
    model = two_block_smollm2(tmp_path / "smollm2-2-blocks")  # the head is what is checked, not the depth
    recipe = write_recipe(tmp_path, name="lmcls", method="classify", model=str(model),
                          output_dir=str(tmp_path / "run"), data={"train": "train.csv", "max_length": 24, "validation_share": 0.25},
                          training={"max_steps": 2, "batch_size": 4, "threads": 2}, classify={"freeze_layers": 1})
    result = json.loads(run_cli("train", recipe, "--json").stdout)
    assert {"eval_accuracy", "eval_macro_f1"} <= set(result["metrics"])
    assert result["data"]["trainable_parameters"] < result["data"]["total_parameters"] / 4
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert tuple(weights["score.weight"].shape) == (2, 576)  # two labels over SmolLM2's hidden size


def test_tune_runs_trials_and_writes_the_best_recipe(tmp_path):
    write_csv(tmp_path / "train.csv", separable(16, 2))
    recipe = write_recipe(tmp_path, name="study", method="classify", model="all-MiniLM-L6-v2",
                          output_dir=str(tmp_path / "study"),
                          data={"train": "train.csv", "max_length": 32, "validation_share": 0.25},
                          training={"epochs": 2, "batch_size": 8, "threads": 2},
                          search={"training.learning_rate": [1e-6, 2e-4]})
    result = json.loads(run_cli("tune", recipe, "--search", "grid", "--trials", "2", "--json").stdout)
    assert [t["state"] for t in result["trials"]] == ["complete", "complete"]
    assert result["metric"] == "eval_macro_f1" and result["best"]["params"]["training.learning_rate"] == 2e-4
    best = load_recipe(result["best_recipe"])
    assert best.training.learning_rate == 2e-4 and not best.search


def test_resume_after_sigkill_continues_from_the_last_checkpoint(tmp_path):
    from conftest import two_block_smollm2

    write_codes(tmp_path / "codes.jsonl")
    run = tmp_path / "run"
    # resuming is the Trainer's bookkeeping, not the model's: 2 of SmolLM2's blocks, steps 15x cheaper
    model = two_block_smollm2(tmp_path / "smollm2-2-blocks")
    recipe = write_recipe(tmp_path, name="resume", method="lora", output_dir=str(run), model=str(model),
                          data={"train": "codes.jsonl", "max_length": 96, "validation_share": 0},
                          training={"learning_rate": 1e-3, "max_steps": 40, "batch_size": 2, "checkpoint_every": 2,
                                    "keep_checkpoints": 40, "threads": 2, "packing": True})  # a packed run resumes too
    process = subprocess.Popen([*RAGTUNE, "train", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "model").exists()

    first = run_cli("train", recipe, check=False)
    assert first.returncode == 2 and "--resume" in first.stderr  # no silent restart over a crashed run
    result = json.loads(run_cli("train", recipe, "--resume", "--json").stdout)
    resumed_at = int(Path(result["resumed_from"]).name.split("-")[1])
    assert 4 <= resumed_at < 40
    state = json.loads((run / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged[0] < 4  # the history before the kill came back with the checkpoint
    assert (run / "model" / "adapter_model.safetensors").exists()


def test_example_weights_scale_the_loss_and_ones_match_the_model_loss(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.finetune.encode import PadCollator, encode_chats
    from ragtune.finetune.formats import read_examples
    from ragtune.finetune.modeling import load_tokenizer
    from ragtune.finetune.trainer import weighted_token_loss
    from ragtune.models.cache import resolve_model_dir

    model_dir = resolve_model_dir("SmolLM2-135M-Instruct")
    tokenizer = load_tokenizer(model_dir)
    features = encode_chats(read_examples(write_codes(tmp_path / "c.jsonl")).examples[:2], tokenizer, 96).features
    batch = PadCollator(tokenizer)([{**features[0], "weight": 2.0}, {**features[1], "weight": 0.0}])
    assert batch["weight"].tolist() == [2.0, 0.0]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ones = weighted_token_loss(logits, batch["labels"], torch.ones(2))
        builtin = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        weighted = weighted_token_loss(logits, batch["labels"], batch["weight"])
        first_only = weighted_token_loss(logits[:1], batch["labels"][:1], torch.ones(1))
    assert torch.allclose(ones, builtin, atol=1e-4)
    trained_tokens = [(batch["labels"][i, 1:] != -100).sum() for i in range(2)]
    expected = 2 * first_only * trained_tokens[0] / (trained_tokens[0] + trained_tokens[1])
    assert torch.allclose(weighted, expected, atol=1e-4)


def test_a_trial_falling_behind_is_pruned_at_validation():
    import optuna
    from types import SimpleNamespace

    from ragtune.finetune.hpo import _pruning_callback

    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    callback = _pruning_callback(trial, "eval_loss")
    callback.on_evaluate(None, SimpleNamespace(global_step=2), None, metrics={"eval_loss": 0.5})  # on track
    with pytest.raises(optuna.TrialPruned):
        callback.on_evaluate(None, SimpleNamespace(global_step=4), None, metrics={"eval_loss": 2.0})
    assert study.trials[0].intermediate_values == {2: 0.5, 4: 2.0}


def test_logits_only_at_trained_positions_give_the_same_loss_and_gradients():
    """The trainer projects onto the vocabulary only the positions a label trains (answers are a
    few tokens of a long RAFT prompt): loss and every gradient must equal the full projection's."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.finetune.trainer import trained_positions, weighted_token_loss
    from ragtune.models.cache import resolve_model_dir

    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir("SmolLM2-135M-Instruct"), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 40), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[0, 30:36], labels[1, 20:25] = ids[0, 30:36], ids[1, 20:25]  # different spans per example
    weight = torch.tensor([1.0, 3.0])

    def loss_and_gradient(positions):
        model.zero_grad()
        logits = model(input_ids=ids, **({} if positions is None else {"logits_to_keep": positions})).logits
        loss = weighted_token_loss(logits, labels, weight, None, positions)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), logits.shape

    positions = trained_positions(labels)
    assert positions.tolist() == list(range(19, 24)) + list(range(29, 35))
    full_loss, full_gradient, full_shape = loss_and_gradient(None)
    kept_loss, kept_gradient, kept_shape = loss_and_gradient(positions)
    assert kept_shape[1] == 11 and full_shape[1] == 40
    assert kept_loss == pytest.approx(full_loss, rel=1e-6)
    assert torch.allclose(kept_gradient, full_gradient, rtol=1e-5, atol=1e-7)


def test_lora_layers_adapt_only_the_top_blocks(tmp_path):
    from ragtune.finetune.modeling import build_causal_lm
    from ragtune.finetune.recipe import validate_recipe
    from ragtune.models.cache import resolve_model_dir

    data = write_codes(tmp_path / "codes.jsonl")
    model_dir = resolve_model_dir("SmolLM2-135M-Instruct")
    recipe = validate_recipe({"method": "lora", "data": {"train": str(data)}, "lora": {"layers": 2}})
    model = build_causal_lm(recipe, model_dir)
    depth = model.config.num_hidden_layers
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, p in model.named_parameters() if p.requires_grad}
    assert adapted == {depth - 2, depth - 1}
    with pytest.raises(ConfigError, match="lora.layers is 99 .* at most 30"):
        build_causal_lm(validate_recipe({"method": "lora", "data": {"train": str(data)}, "lora": {"layers": 99}}), model_dir)


def test_a_schedule_is_refitted_to_end_where_the_budget_ends():
    import torch
    from transformers import get_cosine_schedule_with_warmup, get_constant_schedule

    from ragtune.finetune.trainer import fit_schedule_to

    def lrs(scheduler, steps):
        values = []
        for _ in range(steps):
            values.append(scheduler.get_last_lr()[0])
            scheduler.optimizer.step()
            scheduler.step()
        return values

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=100)
    lrs(scheduler, 5)
    assert fit_schedule_to(scheduler, 40, 100) == 40
    rest = lrs(scheduler, 36)  # steps 5..40
    assert rest[-1] < 0.01 and max(rest) > 0.95  # warmup scaled to 4 steps, then cosine to 0 at 40
    flat = get_constant_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    assert fit_schedule_to(flat, 40, 100) is None


def _budget_decision(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from ragtune.finetune.trainer import same_on_every_process

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:  # each process timed its own steps and decided differently
        queue.put((rank, same_on_every_process(40 if rank == 0 else 55, rank == 1)))
    finally:
        dist.destroy_process_group()


def test_data_parallel_processes_share_process_zeros_time_budget_decision():
    """Under `train --ray` every process must stop and re-plan at the same step, or the others hang."""
    import multiprocessing
    import socket

    from ragtune.finetune.trainer import same_on_every_process

    assert same_on_every_process(7, True) == (7, True)  # one process: its own decision
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_budget_decision, args=(rank, port, queue)) for rank in (0, 1)]
    for process in processes:
        process.start()
    decisions = dict(queue.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert decisions == {0: (40, False), 1: (40, False)}


def test_a_time_budget_ends_training_at_a_low_learning_rate(tmp_path):
    """training.max_minutes: the cosine schedule ends with the budget, not at a high rate mid-plan."""
    from conftest import two_block_smollm2

    from ragtune.finetune.recipe import validate_recipe
    from ragtune.finetune.run import train

    model = two_block_smollm2(tmp_path / "smollm2-2-blocks")
    write_codes(tmp_path / "codes.jsonl")
    recipe = validate_recipe({"name": "budget", "method": "lora", "model": str(model), "output_dir": str(tmp_path / "run"),
                              "data": {"train": str(tmp_path / "codes.jsonl"), "max_length": 64, "validation_share": 0},
                              "training": {"learning_rate": 1e-3, "epochs": 200, "batch_size": 2, "threads": 2,
                                           "max_minutes": 0.2, "logging_steps": 1, "warmup": 0.05}})
    started = time.monotonic()
    train(recipe, progress=False)
    took = time.monotonic() - started
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    rates = [h["learning_rate"] for h in history if "learning_rate" in h]
    planned = 200 * 12 // 2  # 12 examples, batch 2, 200 epochs
    assert 10 < len(rates) < planned
    assert rates[-1] < 0.1 * max(rates), (len(rates), rates[-12:])  # decayed to (nearly) nothing by the last step
    assert took < 60
