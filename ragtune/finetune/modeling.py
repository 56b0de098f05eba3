"""Load the base model for a recipe and decide which weights train: LoRA adapters, everything,
only the top blocks and the head, or a new classification layer over a pre-trained encoder."""

from __future__ import annotations

import logging
import warnings

from ..errors import ConfigError

logger = logging.getLogger(__name__)
# Every load is from a local folder (models.cache.resolve_model_dir): never a download, whatever the
# environment says (HF_HUB_OFFLINE is the CLI's business, not the library's).
LOCAL_ONLY = {"local_files_only": True}


def _require(module: str, extra: str = "train"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed; install the fine-tuning extra: pip install 'ragtune[{extra}]'") from None


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, **LOCAL_ONLY)
    if tokenizer.pad_token is None:
        logger.info("%s has no padding token; padding with its end-of-sequence token", model_dir)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def transformer_blocks(model):
    """The model's stack of transformer blocks (Llama/Qwen `model.layers`, BERT `encoder.layer`, ...):
    the ModuleList whose length is the configured number of hidden layers."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for _name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(f"cannot find the {count} transformer blocks of {type(model).__name__}; "
                      "use method lora or full for this model")


def build_causal_lm(recipe, model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    options = {"dtype": torch.float32, **LOCAL_ONLY}
    if recipe.method == "qlora":
        if not torch.cuda.is_available():
            raise ConfigError("method qlora needs a CUDA GPU: its 4-bit weights run only on bitsandbytes' CUDA kernels. "
                              "On this machine use method: lora (same adapters on full-precision weights; the 135M and "
                              "0.5B packaged models fit in memory without 4-bit)")
        _require("bitsandbytes", "qlora")
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=torch.bfloat16,
                                                            bnb_4bit_use_double_quant=True)
    logger.info("loading %s for %s training", model_dir, recipe.method)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **options)
    model.config.use_cache = False  # a KV cache is for generation; in training it only holds memory (run.py restores it)
    if recipe.method in ("lora", "qlora"):
        peft = _require("peft")
        if recipe.method == "qlora":
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.training.gradient_checkpointing)
        spec = recipe.lora
        depth = model.config.num_hidden_layers
        if spec.layers is not None and spec.layers > depth:
            raise ConfigError(f"lora.layers is {spec.layers} but {recipe.model} has {depth} transformer blocks; "
                              f"set lora.layers to at most {depth}, or remove it to adapt every block")
        top = {} if spec.layers is None else {"layers_to_transform": list(range(depth - spec.layers, depth))}
        config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, task_type="CAUSAL_LM",
                                 target_modules=spec.target_modules, **top)
        try:
            with warnings.catch_warnings():  # peft reads transformers' deprecated alias: nothing a user can act on
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = peft.get_peft_model(model, config)
        except ValueError as exc:
            raise ConfigError(f"lora.target_modules: {exc}") from None
        if recipe.training.gradient_checkpointing:
            model.enable_input_require_grads()
    elif recipe.method == "freeze":
        freeze_below_top(model, recipe.freeze.train_top_blocks, train_head=recipe.freeze.train_head)
    return model


def freeze_below_top(model, top: int, *, train_head: bool = True) -> None:
    """Train only the top `top` blocks, the final norm and (optionally) the output layer."""
    blocks = transformer_blocks(model)
    if top > len(blocks):
        raise ConfigError(f"freeze.train_top_blocks is {top} but the model has {len(blocks)} blocks")
    for parameter in model.parameters():
        parameter.requires_grad = False
    trainable = list(blocks[len(blocks) - top:])
    norm = getattr(getattr(model, "model", model), "norm", None)
    if norm is not None:
        trainable.append(norm)
    if train_head and model.get_output_embeddings() is not None:
        trainable.append(model.get_output_embeddings())
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True


def build_classifier(recipe, model_dir, labels: list[str]):
    """A new, randomly initialised output layer over the pre-trained body (an encoder such as
    MiniLM, or a causal LM, which transformers classifies from the last non-pad token)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    label2id = {label: i for i, label in enumerate(labels)}
    logger.info("loading %s with a new %d-label output layer", model_dir, len(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id, dtype=torch.float32,
        **LOCAL_ONLY)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", 0)
    if recipe.classify.freeze_layers:
        blocks = transformer_blocks(model)
        if recipe.classify.freeze_layers > len(blocks):
            raise ConfigError(f"classify.freeze_layers is {recipe.classify.freeze_layers} but the model has {len(blocks)} blocks")
        embeddings = model.get_input_embeddings()
        frozen = [embeddings, *blocks[: recipe.classify.freeze_layers]]
        body = getattr(model, model.base_model_prefix, None)
        if body is not None and hasattr(body, "embeddings"):
            frozen.append(body.embeddings)  # BERT-style position/type embeddings and their norm
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad = False
    return model, label2id


def count_parameters(model) -> tuple[int, int]:
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total
