"""Padding-free batches: a micro-batch's examples laid end to end in as few rows as fit.

A padded batch computes every layer on its pad tokens: with RAFT or reader examples of 500-900
tokens, a batch of 4 padded to its longest wastes a quarter of the step. Packed, the examples sit
side by side in one row (or more, each at most `training.packing_length` tokens), `position_ids`
restart at 0 for each example and no attention mask is passed: transformers then reads the restarts
as sequence boundaries and attends only within each example (`masking_utils.find_packed_sequence_indices`),
so every example sees exactly what it would alone and the loss and gradients equal the padded
batch's (tests/test_packing.py). The micro-batch keeps its examples, so gradient accumulation,
example weights and the learning dynamics are unchanged; only the layout differs.

Rows are capped (by default at the longest example's length, run.collator_for): attention with a
packed mask runs on transformers' general path, quadratic in the row's length, so one row of a
whole batch was slower than padding. Measured on 12 RAFT examples of ~850 tokens (SmolLM2-135M,
LoRA, batch 4, 2 cores, fp32): padded 117 tok/s, one packed row 77, rows capped at 1,024 121.
Packing pays where lengths differ (short examples share a row), not where they are all alike.

Written by hand because transformers' `DataCollatorWithFlattening` makes a single row of the whole
batch (no length cap, so a batch can outgrow memory) and drops per-example loss weights, and TRL's
packing splits examples across rows, which changes what each example attends to.
"""

from __future__ import annotations

from ..errors import ConfigError
from .encode import IGNORE


def pack_rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Indices of examples per row, longest first into the first row with room (first-fit
    decreasing); with no capacity, every example in one row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if capacity is None:
        return [order]
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        if lengths[index] > capacity:
            raise ConfigError(f"an example of {lengths[index]} tokens is longer than training.packing_length "
                              f"({capacity}); raise training.packing_length to at least {lengths[index]}")
        for r, free in enumerate(room):
            if lengths[index] <= free:
                rows[r].append(index)
                room[r] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


class PackedCollator:
    """input_ids / labels / position_ids for packed rows (no attention_mask: see the module docstring).

    Rows shorter than the longest are filled with pad tokens that form a sequence of their own
    (positions from 0, labels ignored), so they never attend to or from a real example. A weight
    other than 1 becomes a per-token `weight` row aligned with `labels`.
    """

    def __init__(self, tokenizer, length: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.length = length

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        rows = pack_rows([len(f["input_ids"]) for f in batch], self.length)
        width = max(sum(len(batch[i]["input_ids"]) for i in row) for row in rows)
        ids, labels, positions, weights = [], [], [], []
        for row in rows:
            row_ids, row_labels, row_positions, row_weights = [], [], [], []
            for i in row:
                feature = batch[i]
                n = len(feature["input_ids"])
                row_ids += list(feature["input_ids"])
                # the first token of an example is never predicted (it would be, from the previous example)
                row_labels += [IGNORE] + list(feature["labels"][1:])
                row_positions += list(range(n))
                row_weights += [float(feature.get("weight", 1.0))] * n
            fill = width - len(row_ids)
            ids.append(row_ids + [self.pad_id] * fill)
            labels.append(row_labels + [IGNORE] * fill)
            positions.append(row_positions + list(range(fill)))
            weights.append(row_weights + [0.0] * fill)
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}
        if any(float(f.get("weight", 1.0)) != 1.0 for f in batch):
            out["weight"] = torch.tensor(weights, dtype=torch.float32)
        return out


def check_packing_length(recipe, features: list[dict]) -> None:
    """Before any training: a packing length below the longest example cannot hold it."""
    length = recipe.training.packing_length
    if not recipe.training.packing or length is None or not features:
        return
    longest = max(len(f["input_ids"]) for f in features)
    if longest > length:
        raise ConfigError(f"training.packing_length is {length} but the longest example has {longest} tokens; set "
                          f"training.packing_length to at least {longest} (or data.max_length to {length} to leave "
                          "longer examples out)")
