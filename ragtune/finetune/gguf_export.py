"""`ragtune export RUN --gguf OUT.gguf | --gguf-adapter OUT.gguf`: fine-tunes that llama.cpp runs.

Two forms, because they answer different needs:

* a **LoRA adapter GGUF** (`export_gguf_adapter`): only the low-rank A/B matrices. llama.cpp applies
  it over the packaged base GGUF, which stays quantised exactly as shipped, so the export is a few MB.
  Training started from the dequantised base GGUF (models/cache.py), so the adapter was learned on
  top of the very weights llama.cpp holds (up to llama.cpp's own activation rounding).
* a **full model GGUF** (`export_gguf`): every weight of a merged LoRA, full or layer-frozen run.

Nothing about the tokenizer changes when fine-tuning, so rather than rebuilding the GGUF metadata
from the Hugging Face config (what llama.cpp's convert_hf_to_gguf.py does for arbitrary models), the
metadata (hyper-parameters, vocabulary, merges, chat template) is copied from the packaged base GGUF
and only the tensors are replaced. The base GGUF is also the reference for tensor names and shapes:
every tensor it has must be written with the same shape, which catches a wrong name mapping here
rather than as a load error (or silent garbage) in llama.cpp.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import ConfigError
from ..models.gguf import GGUFHeader

logger = logging.getLogger(__name__)

# GGUF architecture -> whether llama.cpp wants the rows of q/k weights interleaved. Hugging Face stores
# Llama q/k in "rotate-half" order (the two halves of each head rotate together); llama.cpp's llama
# graph applies rope to adjacent pairs, so convert_hf_to_gguf permutes those rows. Qwen2 runs with
# NeoX-style rope in llama.cpp, which is the Hugging Face order, so it is written as is.
ARCHITECTURES = {"llama": True, "qwen2": False}
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
CAUSAL_METHODS = ("lora", "qlora", "full", "freeze")


def export_gguf(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run's full model (LoRA merged into the base first) as one GGUF file.

    Tensors are F32: they are the trained weights exactly as transformers computes with them.
    F16 would halve the size, but an update smaller than half an F16 step (about 5e-4 of a weight's
    magnitude, typical of a few steps at a small learning rate) rounds back to the base value, so a
    fine-tune could silently vanish. To get a smaller file, quantise this one with llama.cpp's
    llama-quantize, which also picks better per-tensor types than a blanket F16 would.
    """
    import gguf
    import torch

    from .export import load_run_recipe, trained_causal_lm

    run_dir, out = Path(run_dir).expanduser(), _output_path(out, overwrite)
    recipe = load_run_recipe(run_dir)
    _require_causal(recipe, "--gguf")
    base = GGUFHeader(_base_gguf(recipe))
    arch, permute = _architecture(base, recipe.model)
    model = trained_causal_lm(recipe, run_dir)
    config = model.config
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    tensors = {}
    with torch.no_grad():
        for name, weight in model.state_dict().items():
            if name == "lm_head.weight" and tied and not any(t[0] == "output.weight" for t in base.tensors):
                continue  # tied to the embeddings: llama.cpp uses token_embd when output.weight is absent
            target = mapping.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ConfigError(f"cannot map tensor {name!r} of {recipe.model} to a llama.cpp name; "
                                  f"GGUF export supports {', '.join(ARCHITECTURES)} models")
            array = weight.detach().to(torch.float32).contiguous().numpy()
            if permute and target.endswith(("attn_q.weight", "attn_k.weight")):
                heads = config.num_attention_heads if "attn_q" in target else config.num_key_value_heads
                array = interleave_rope_rows(array, heads)
            tensors[target] = array
    _check_against_base(base, tensors, allow_extra={"output.weight"})

    writer = gguf.GGUFWriter(_staging(out), arch)
    _copy_metadata(base, writer, skip={"general.file_type", "general.quantization_version", "general.name"})
    writer.add_name(recipe.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, _shape, _kind in base.tensors:  # the base file's order; a separate output layer (if any) goes last
        if name in tensors:
            writer.add_tensor(name, tensors.pop(name))
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    _finish(writer, out)
    logger.info("wrote %s (%s, %s, F32) from %s", out, arch, recipe.method, run_dir)
    return out


def export_gguf_adapter(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a LoRA run's adapter as a GGUF LoRA adapter for the packaged base GGUF.

    llama.cpp scales each adapter product by `adapter.lora.alpha / rank` (rank read from the tensor),
    PEFT by `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA), so alpha is written as PEFT's scaling
    times r: both compute W x + scaling * B A x.
    """
    import gguf
    import torch
    from safetensors.torch import load_file

    from .export import load_run_recipe

    run_dir, out = Path(run_dir).expanduser(), _output_path(out, overwrite)
    recipe = load_run_recipe(run_dir)
    _require_causal(recipe, "--gguf-adapter")
    if recipe.method not in ("lora", "qlora"):
        raise ConfigError(f"--gguf-adapter needs a LoRA run, but {run_dir} is a {recipe.method} run (it has no adapter); "
                          "use --gguf OUT.gguf for a full model")
    adapter_dir = run_dir / "model"
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.exists():
        raise ConfigError(f"{run_dir} has no finished adapter ({weights_path} is missing); finish it with `ragtune train --resume`")
    config = _read_json(adapter_dir / "adapter_config.json")
    scaling, rank = _peft_scaling(config)
    base = GGUFHeader(_base_gguf(recipe))
    arch, permute = _architecture(base, recipe.model)
    heads = {key: int(base.get(f"{arch}.attention.{key}")) for key in ("head_count", "head_count_kv")}
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], int(base.get(f"{arch}.block_count")))
    shapes = {name: tuple(int(n) for n in shape) for name, shape, _kind in base.tensors}  # ggml order: (in, out)

    pairs: dict[str, dict[str, "torch.Tensor"]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        match = LORA_KEY.match(key)
        if match is None:
            raise ConfigError(f"the adapter in {adapter_dir} has a tensor llama.cpp cannot apply ({key}); "
                              "only LoRA A/B matrices of linear layers convert (no DoRA, biases or modules_to_save)")
        target = mapping.get_name(match["module"] + ".weight", try_suffixes=(".weight",))
        if target is None or target not in shapes:
            raise ConfigError(f"LoRA on {match['module']} has no counterpart in the base GGUF of {recipe.model}; "
                              "train with lora.target_modules limited to the transformer blocks' linear layers")
        pairs.setdefault(target, {})[match["part"]] = tensor.detach().to(torch.float32)

    writer = gguf.GGUFWriter(_staging(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(scaling * rank))
    writer.add_name(f"{recipe.name} (LoRA for {recipe.model})")
    for target in sorted(pairs, key=_block_order):
        parts = pairs[target]
        if set(parts) != {"A", "B"}:
            raise ConfigError(f"the adapter in {adapter_dir} lacks lora_{'B' if 'A' in parts else 'A'} for {target}")
        a, b = parts["A"], parts["B"]  # PEFT: A is (r, in), B is (out, r); llama.cpp reads them in this layout
        n_in, n_out = shapes[target]
        if a.shape != (rank, n_in) or b.shape != (n_out, rank):
            raise ConfigError(f"LoRA shapes for {target} ({tuple(a.shape)}, {tuple(b.shape)}) do not fit the base "
                              f"weight ({n_out} x {n_in}) at rank {rank}")
        b = b.contiguous().numpy()
        if permute and target.endswith(("attn_q.weight", "attn_k.weight")):
            # B A x lands on the weight's output rows, so only B's rows follow the q/k permutation.
            b = interleave_rope_rows(b, heads["head_count" if "attn_q" in target else "head_count_kv"])
        writer.add_tensor(f"{target}.lora_a", a.contiguous().numpy())
        writer.add_tensor(f"{target}.lora_b", b)
    _finish(writer, out)
    logger.info("wrote %s: LoRA adapter over %s, %d matrices, rank %d, scaling %g", out, recipe.model, len(pairs), rank, scaling)
    return out


def interleave_rope_rows(weight, heads: int):
    """Reorder a q/k projection's output rows from Hugging Face's rotate-half layout (per head: all
    first halves, then all second halves) to llama.cpp's adjacent pairs (x0, x_half, x1, x_half+1...)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape).copy())


def _require_causal(recipe, flag: str) -> None:
    if recipe.method not in CAUSAL_METHODS:
        raise ConfigError(f"{flag}: a {recipe.method} run has a classification head, which llama.cpp cannot run; "
                          "export it with --merge OUT (a transformers folder) instead")


def _base_gguf(recipe) -> Path:
    """The packaged GGUF the run was trained from: its metadata and tensor layout are reused."""
    from ..models.gguf import gguf_file

    try:
        return gguf_file(recipe.model)
    except ConfigError as exc:
        raise ConfigError(f"GGUF export needs a run on a packaged GGUF model (its tokenizer and settings are copied "
                          f"from that file); {recipe.model!r} is not one: {exc}") from None


def _architecture(reader, model_name: str) -> tuple[str, bool]:
    arch = str(reader.get("general.architecture"))
    if arch not in ARCHITECTURES:
        raise ConfigError(f"GGUF export of {model_name} ({arch} architecture) is not supported; "
                          f"supported: {', '.join(ARCHITECTURES)}")
    return arch, ARCHITECTURES[arch]


def _peft_scaling(config: dict) -> tuple[float, int]:
    """PEFT's scaling and rank, refusing settings llama.cpp's single alpha cannot express."""
    if config.get("use_dora"):
        raise ConfigError("--gguf-adapter: DoRA adapters have no llama.cpp form; export with --gguf (merged) instead")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError("--gguf-adapter: per-module ranks or alphas (rank_pattern/alpha_pattern) cannot be written "
                          "as one adapter.lora.alpha; export with --gguf (merged) instead")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    return (alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank), rank


def _check_against_base(reader, tensors: dict, *, allow_extra: set[str]) -> None:
    expected = {name: tuple(int(n) for n in reversed(shape)) for name, shape, _kind in reader.tensors}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected) - allow_extra)
    wrong = [f"{name} {tensors[name].shape} vs {shape}" for name, shape in expected.items()
             if name in tensors and tuple(tensors[name].shape) != shape]
    if missing or extra or wrong:
        raise ConfigError("the trained model does not match its base GGUF: "
                          + "; ".join(filter(None, [missing and f"missing {missing[:5]}", extra and f"unexpected {extra[:5]}",
                                                    wrong and f"shape {wrong[:5]}"])))


def _copy_metadata(reader, writer, *, skip: set[str]) -> None:
    for key, (kind, sub, value) in reader.fields.items():
        if key == "general.architecture" or key in skip:
            continue  # the writer sets the architecture itself
        writer.add_key_value(key, value, kind, sub_type=sub)


def _block_order(name: str):
    parts = name.split(".")
    return (int(parts[1]), name) if parts[0] == "blk" else (-1, name)


def _output_path(out, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.suffix.lower() != ".gguf":
        raise ConfigError(f"{out}: a GGUF export is one file; name it *.gguf")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; choose another name or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _finish(writer, out: Path) -> None:
    """Write, then rename: an interrupted export never leaves a truncated .gguf behind."""
    staging = _staging(out)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
