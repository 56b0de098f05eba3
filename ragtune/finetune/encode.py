"""Turn examples into token ids and labels: the loss falls only on the assistant's tokens.

Hand-written rather than TRL's `assistant_only_loss`, which needs `{% generation %}` markers that the
packaged models' chat templates (SmolLM2, Qwen2.5) do not have. Instead each assistant turn's span
is found by rendering the chat up to that turn with the model's own template: the tokens between
"prompt with the assistant turn opened" and "prompt with the turn closed" are the answer plus the
end-of-turn token, so the model also learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

IGNORE = -100


@dataclass
class Encoded:
    features: list[dict]
    dropped_long: list[int] = field(default_factory=list)  # source lines longer than max_length
    dropped_empty: list[int] = field(default_factory=list)  # source lines with nothing to learn


def _ids(tokenizer, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                        tokenize=True, add_generation_prompt=generation_prompt)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def encode_chat(example, tokenizer, max_length: int) -> dict | None:
    """input_ids / attention_mask / labels for one ChatExample, or None if nothing is trained on."""
    messages = example.messages
    full = _ids(tokenizer, messages, generation_prompt=False)
    labels = [IGNORE] * len(full)
    for i, message in enumerate(messages):
        if i == 0 or message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue  # an OpenAI-format weight of 0 means "context, not to be learned"
        opened = _ids(tokenizer, messages[:i], generation_prompt=True)
        closed = _ids(tokenizer, messages[: i + 1], generation_prompt=False)
        start, end = len(opened), len(closed)
        if full[:start] != opened or full[:end] != closed:
            raise ConfigError(f"{tokenizer.name_or_path}: its chat template renders a conversation differently from "
                              "its prefix, so assistant turns cannot be located; use a model with a ChatML-style template")
        labels[start:end] = full[start:end]
    if all(label == IGNORE for label in labels):
        return None
    if len(full) > max_length:
        return {"too_long": True}
    return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels, "weight": float(example.weight)}


def encode_chats(examples, tokenizer, max_length: int) -> Encoded:
    encoded = Encoded([])
    for example in examples:
        features = encode_chat(example, tokenizer, max_length)
        if features is None:
            encoded.dropped_empty.append(example.line)
        elif features.get("too_long"):
            encoded.dropped_long.append(example.line)
        else:
            encoded.features.append(features)
    return encoded


def encode_classification(examples, tokenizer, max_length: int, label2id: dict[str, int]) -> Encoded:
    """Pairs are encoded as the model's own sentence-pair input; long texts are truncated (the
    start of a passage usually carries its label, unlike a chat answer cut before its end)."""
    encoded = Encoded([])
    for example in examples:
        if example.label not in label2id:
            raise ConfigError(f"line {example.line}: label {example.label!r} is not one of classify.labels "
                              f"{sorted(label2id)}; add it to the recipe or fix the data")
        args = (example.text, example.text_pair) if example.text_pair else (example.text,)
        features = dict(tokenizer(*args, truncation=True, max_length=max_length))
        features["labels"] = label2id[example.label]
        encoded.features.append(features)
    return encoded


class PadCollator:
    """Pads a batch: input ids with the pad token, labels with -100, and carries example weights
    (transformers' DataCollatorForSeq2Seq would try to pad the per-example weight as a sequence)."""

    def __init__(self, tokenizer, classification: bool = False):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.classification = classification

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in batch)
        out: dict[str, list] = {}
        for key in batch[0]:
            if key == "weight":
                continue
            if key == "labels" and self.classification:
                out[key] = [f[key] for f in batch]
                continue
            pad = {"input_ids": self.pad_id, "labels": IGNORE}.get(key, 0)
            out[key] = [list(f[key]) + [pad] * (width - len(f[key])) for f in batch]
        tensors = {key: torch.tensor(value) for key, value in out.items()}
        if "weight" in batch[0] and any(f["weight"] != 1.0 for f in batch):
            tensors["weight"] = torch.tensor([f["weight"] for f in batch], dtype=torch.float32)
        return tensors
