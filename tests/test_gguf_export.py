"""GGUF export: what ragtune fine-tunes runs on llama.cpp with the logits transformers computes.

Parity is measured on next-token logits at every position of a few prompts, same token ids on both
sides, transformers in fp32. Where the compared weights are identical (F32 GGUF, F32 KV cache) the
bound is tight; over the packaged quantised base llama.cpp also rounds activations to 8 bits for its
quantised matmuls (transformers runs the dequantised weights in fp32), so that comparison gets its
own, looser bound and a near-tie rule instead of exact top-1 equality.

The LoRA adapters here are random and strong (rank 4, alpha 32: scaling 8, all linear layers) rather
than trained for a few steps: a wrong name map, q/k permutation or scale shows up as tens of logits,
while a real short run changes so little that most bugs would pass unseen. A real trained run goes
through the CLI in test_a_trained_lora_run_answers_on_llamacpp (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import run_cli

from ragtune.generate.llamacpp import unavailable_reason

llama_cpp = pytest.importorskip("llama_cpp")
if unavailable_reason():
    pytest.skip(unavailable_reason(), allow_module_level=True)

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ("The capital of France is Paris, and the capital of Germany is",
           "def fibonacci(n):\n    if n < 2:\n        return n\n",
           "<|im_start|>user\nWhat is the codeword for river?<|im_end|>\n<|im_start|>assistant\n")
# Identical weights, F32 everywhere: only summation order differs. Measured (2-core x86 CPU):
# adapter over an F32 base 1.9e-4 to 2.1e-4, merged LoRA 1.7e-4 to 3.4e-4, freeze run 9.0e-5
# (the base alone 8.7e-5).
EXACT_BOUND = 2e-3
# The packaged Q4_1 base as shipped, llama.cpp's default F16 KV cache: the base alone differs from
# transformers by up to 1.36 (top-1 equal everywhere); with the strong adapter below the measured max
# was 4.8-5.3 and top-1 agreed on 0.85-0.875 of the positions (two runs of near-identical set-ups),
# every disagreement a near tie (transformers ranked llama.cpp's pick at most 0.42 below its own).
# A mis-scaled or dropped adapter is off by tens: the adapter itself moves logits by more than 30.
QUANTISED_BOUND = 7.0
QUANTISED_AGREEMENT = 0.8
NEAR_TIE = 1.0


def write_run(folder, method: str, model: str = MODEL):
    """A run directory as `ragtune train` leaves it (recipe.yaml; the caller fills model/)."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"name": f"gguf-{method}", "method": method, "model": model, "data": {"train": "unused.jsonl"}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def hf_logits(model, prompts_ids):
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in prompts_ids]


def cpp_logits(path, prompts_ids, lora=None, exact=True):
    """llama.cpp's logits for every position; exact=True keeps the KV cache in F32 (default F16)."""
    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if exact else {}
    llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=512,
                          n_threads=2, verbose=False, **kv)
    try:
        out = []
        for ids in prompts_ids:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


def parity(reference, candidate):
    """(share of positions with the same top-1 token, largest |logit difference|)."""
    same = np.concatenate([r.argmax(-1) == c.argmax(-1) for r, c in zip(reference, candidate)])
    return float(same.mean()), max(float(np.abs(r - c).max()) for r, c in zip(reference, candidate))


@pytest.fixture(scope="module")
def base():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.models.cache import resolve_model_dir

    torch.set_num_threads(2)
    folder = resolve_model_dir(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    return {"folder": folder, "ids": ids, "logits": hf_logits(model, ids)}


def write_lora_run(folder, model_dir, strength: float):
    """A LoRA run with a random adapter (seeded) on every linear layer: rank 4, alpha 32 (PEFT scale
    8), lora_B multiplied by `strength`. Returns the run and the PEFT model (eval mode)."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    run = write_run(folder, "lora")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(strength)
    model.save_pretrained(run / "model")
    return run, model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base):
    """A LoRA run whose adapter has a large effect, and transformers' logits with it applied."""
    run, model = write_lora_run(tmp_path_factory.mktemp("lora") / "run", base["folder"], strength=0.3)
    logits = hf_logits(model, base["ids"])
    changed, moved = parity(base["logits"], logits)
    assert changed < 0.6 and moved > 10  # the adapter changes most predictions: a dropped one would show
    return {"run": run, "logits": logits}


def test_gguf_adapter_matches_peft(tmp_path, base, lora_run):
    from gguf import GGUFReader

    from ragtune.finetune.gguf_export import export_gguf, export_gguf_adapter
    from ragtune.models.gguf import gguf_file

    adapter = export_gguf_adapter(lora_run["run"], tmp_path / "adapter.gguf")
    from gguf import GGUFReader

    reader = GGUFReader(str(adapter))
    assert reader.fields["general.type"].contents() == "adapter" and reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 32.0
    assert len(reader.tensors) == 30 * 7 * 2  # every linear layer of every block, A and B

    # 1. Over an F32 GGUF of the very weights PEFT saw: the conversion itself (names, q/k order, scale).
    (unchanged := write_run(tmp_path / "base-run", "full") / "model").symlink_to(base["folder"])
    f32_base = export_gguf(unchanged.parent, tmp_path / "base-f32.gguf")
    agree, worst = parity(lora_run["logits"], cpp_logits(f32_base, base["ids"], lora=adapter))
    print(f"adapter over an F32 base: top-1 {agree:.3f}, max |dlogit| {worst:.2e}")
    assert agree == 1.0 and worst < EXACT_BOUND, (agree, worst)

    # 2. Over the packaged quantised base, as ragtune runs it.
    shipped = cpp_logits(gguf_file(MODEL), base["ids"], lora=adapter, exact=False)
    agree, worst = parity(lora_run["logits"], shipped)
    print(f"adapter over the shipped base: top-1 {agree:.3f}, max |dlogit| {worst:.3f}")
    assert worst < QUANTISED_BOUND and agree >= QUANTISED_AGREEMENT, (agree, worst)
    for reference, candidate in zip(lora_run["logits"], shipped):
        picked = reference[np.arange(len(reference)), candidate.argmax(-1)]
        assert (picked >= reference.max(-1) - NEAR_TIE).all()  # where top-1 differs it was a near tie


def test_merged_lora_gguf_matches_transformers(tmp_path, base, lora_run):
    from gguf import GGUFReader

    from ragtune.finetune.gguf_export import export_gguf

    out = export_gguf(lora_run["run"], tmp_path / "merged.gguf")
    reader = GGUFReader(str(out))
    assert reader.fields["general.file_type"].contents() == 0  # ALL_F32
    assert "output.weight" not in {t.name for t in reader.tensors}  # SmolLM2 ties it to token_embd, as the base
    assert reader.fields["tokenizer.chat_template"].contents().startswith("{% for message in messages %}")
    agree, worst = parity(lora_run["logits"], cpp_logits(out, base["ids"]))
    print(f"merged LoRA: top-1 {agree:.3f}, max |dlogit| {worst:.2e}")
    assert agree == 1.0 and worst < EXACT_BOUND, (agree, worst)


def test_full_run_gguf_matches_transformers(tmp_path, base):
    """A freeze-style run (top blocks, final norm and the tied embeddings changed). full and freeze
    runs take the same path (model/ is a complete transformers model), so one covers both."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.finetune.gguf_export import export_gguf

    run = write_run(tmp_path / "run", "freeze")
    model = AutoModelForCausalLM.from_pretrained(base["folder"], dtype=torch.float32, local_files_only=True).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("model.layers.28.", "model.layers.29.", "model.norm", "model.embed_tokens")):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std() * 0.5)
    model.save_pretrained(run / "model")
    logits = hf_logits(model, base["ids"])
    assert parity(base["logits"], logits)[0] < 0.9  # the changes matter
    out = export_gguf(run, tmp_path / "full.gguf")
    agree, worst = parity(logits, cpp_logits(out, base["ids"]))
    print(f"freeze run: top-1 {agree:.3f}, max |dlogit| {worst:.2e}")
    assert agree == 1.0 and worst < EXACT_BOUND, (agree, worst)


def test_cli_exports_gguf_that_ragtune_generates_with(tmp_path, base):
    from ragtune.generate.llamacpp import LlamaCppGenerator

    run, _ = write_lora_run(tmp_path / "run", base["folder"], strength=0.02)  # mild: the model still chats
    result = run_cli("export", run, "--gguf-adapter", tmp_path / "adapter.gguf")
    assert "adapter.gguf" in result.stdout
    run_cli("export", run, "--gguf", tmp_path / "model.gguf")
    again = run_cli("export", run, "--gguf", tmp_path / "model.gguf", check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf", "model.gguf", "run"]  # no partial files

    question = [{"role": "user", "content": "Hi"}]
    full = LlamaCppGenerator(str(tmp_path / "model.gguf"), threads=2, weight_format="source")
    adapted = LlamaCppGenerator(MODEL, threads=2, lora=str(tmp_path / "adapter.gguf"), weight_format="source")
    for generator in (full, adapted):
        generation = generator.generate(question, max_new_tokens=8)
        assert generation.text.strip() and generation.completion_tokens >= 1


@pytest.mark.slow
def test_a_trained_lora_run_answers_on_llamacpp(tmp_path, codeword_run):
    """End to end: the codeword run (conftest.py), exported both ways, recalls on llama.cpp what
    it learned, over the quantised base (adapter) and as a full F32 model."""
    from ragtune.generate.llamacpp import LlamaCppGenerator

    run, _ = codeword_run
    run_cli("export", run, "--gguf-adapter", tmp_path / "adapter.gguf")
    run_cli("export", run, "--gguf", tmp_path / "model.gguf")
    question = [{"role": "user", "content": "What is the codeword for river?"}]
    before = LlamaCppGenerator(MODEL, threads=2, weight_format="source").generate(question, max_new_tokens=24)
    assert "falcon" not in before.text.lower()
    for generator in (LlamaCppGenerator(MODEL, threads=2, lora=str(tmp_path / "adapter.gguf"), weight_format="source"),
                      LlamaCppGenerator(str(tmp_path / "model.gguf"), threads=2, weight_format="source")):
        answer = generator.generate(question, max_new_tokens=24)
        assert "falcon" in answer.text.lower(), answer.text


@pytest.mark.parametrize("method, flag, message", [
    ("classify", "--gguf", "classification head"),
    ("classify", "--gguf-adapter", "classification head"),
    ("freeze", "--gguf-adapter", "needs a LoRA run"),
])
def test_gguf_export_errors_name_the_flag(tmp_path, method, flag, message):
    run = write_run(tmp_path / "run", method)
    (run / "model").mkdir()
    result = run_cli("export", run, flag, tmp_path / "out.gguf", check=False)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and message in result.stderr
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.slow
def test_qwen2_merged_gguf_matches_transformers(tmp_path):
    """qwen2 keeps Hugging Face's q/k order (NeoX rope) and has an untied output layer and q/k/v
    biases: the other branch of every architecture-dependent choice (~50 s, a 2.5 GB F32 file)."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.finetune.gguf_export import export_gguf
    from ragtune.models.cache import resolve_model_dir

    name = "Qwen2.5-Coder-0.5B-Instruct"
    folder = resolve_model_dir(name)
    ids = [AutoTokenizer.from_pretrained(folder, local_files_only=True)(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    run = write_run(tmp_path / "run", "lora", model=name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    torch.manual_seed(0)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                                                       init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    model.save_pretrained(run / "model")
    logits = hf_logits(model, ids)
    del model
    out = export_gguf(run, tmp_path / "merged.gguf")
    agree, worst = parity(logits, cpp_logits(out, ids))
    print(f"qwen2 merged LoRA: top-1 {agree:.3f}, max |dlogit| {worst:.2e}")
    assert agree == 1.0 and worst < 0.2, (agree, worst)  # measured 3.8e-2 (logits up to ~25)
