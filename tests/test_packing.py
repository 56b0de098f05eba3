"""Padding-free packing (ragtune/finetune/packing.py): a packed batch trains exactly like the padded one."""

from __future__ import annotations

import pytest

from conftest import two_block_smollm2

from ragtune.errors import ConfigError

ANSWERS = ["Yes, it is.", "The codeword for river is falcon, and for stone it is violet.", "No.",
           "Paris is the capital of France; it sits on the Seine, which flows into the English Channel."]
WEIGHTS = [1.0, 3.0, 0.5, 1.0]


def _features(tokenizer, weights=WEIGHTS):
    from ragtune.finetune.encode import encode_chats
    from ragtune.finetune.formats import ChatExample

    examples = [ChatExample([{"role": "user", "content": f"Question number {i}, please?"},
                             {"role": "assistant", "content": answer}], weight=weight, line=i + 1)
                for i, (answer, weight) in enumerate(zip(ANSWERS, weights))]
    features = encode_chats(examples, tokenizer, 256).features
    assert len({len(f["input_ids"]) for f in features}) > 2  # lengths differ: the padded batch pads
    return features


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M's first two blocks: real weights and tokenizer, a fifteenth of the compute."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.finetune.modeling import load_tokenizer

    model_dir = two_block_smollm2(tmp_path_factory.mktemp("packing") / "smollm2-2-blocks")
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), load_tokenizer(model_dir)


def _loss_and_gradient(model, batch, keep_positions: bool):
    import torch

    from ragtune.finetune.trainer import trained_positions, weighted_token_loss

    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "weight")}
    positions = trained_positions(batch["labels"]) if keep_positions else None
    # as the trainer calls it: packed rows are told apart only without a KV cache
    logits = model(**inputs, use_cache=False, **({} if positions is None else {"logits_to_keep": positions})).logits
    loss = weighted_token_loss(logits, batch["labels"], batch.get("weight"), None, positions)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("capped", [False, True], ids=["one-row", "capped-rows"])
def test_packed_batch_has_the_padded_batchs_loss_and_gradients(smollm2, capped):
    import torch

    from ragtune.finetune.encode import PadCollator
    from ragtune.finetune.packing import PackedCollator

    model, tokenizer = smollm2
    features = _features(tokenizer)
    lengths = [len(f["input_ids"]) for f in features]
    length = max(lengths) + min(lengths) if capped else None  # capped: the longest and the shortest share a row
    padded = PadCollator(tokenizer)(features)
    packed = PackedCollator(tokenizer, length)(features)
    assert "attention_mask" not in packed  # transformers finds the examples from the restarting positions
    if length is None:
        assert packed["input_ids"].shape == (1, sum(lengths))  # no pad token at all
    else:
        assert packed["input_ids"].shape[0] > 1 and packed["input_ids"].shape[1] <= length
        assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert int((packed["position_ids"] == 0).sum()) >= len(features)  # each example starts at position 0
    assert int((packed["labels"] != -100).sum()) == int((padded["labels"][:, 1:] != -100).sum())

    for keep in (False, True):
        padded_loss, padded_gradient = _loss_and_gradient(model, padded, keep)
        packed_loss, packed_gradient = _loss_and_gradient(model, packed, keep)
        assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
        error = torch.linalg.vector_norm(packed_gradient - padded_gradient) / torch.linalg.vector_norm(padded_gradient)
        assert float(error) < 1e-5, f"gradient differs by {float(error):.2e} of its norm (logits kept: {keep})"


def test_without_the_restarting_positions_the_examples_would_see_each_other(smollm2):
    """The equality above is not vacuous: the same row read as one sequence gives another loss."""
    import torch

    from ragtune.finetune.encode import PadCollator
    from ragtune.finetune.packing import PackedCollator

    model, tokenizer = smollm2
    features = _features(tokenizer, [1.0] * len(ANSWERS))
    packed = PackedCollator(tokenizer)(features)
    padded_loss, _ = _loss_and_gradient(model, PadCollator(tokenizer)(features), True)

    as_one = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    joined_loss, _ = _loss_and_gradient(model, as_one, True)
    assert abs(joined_loss - padded_loss) > 1e-3


def test_rows_are_filled_longest_first_and_an_example_never_split():
    from ragtune.finetune.packing import pack_rows

    assert pack_rows([5, 30, 20, 10], None) == [[1, 2, 3, 0]]
    rows = pack_rows([5, 30, 20, 10], 35)
    assert rows == [[1, 0], [2, 3]]
    with pytest.raises(ConfigError, match="training.packing_length"):
        pack_rows([40, 5], 35)


def test_packing_settings_are_checked_before_training(tmp_path):
    from ragtune.finetune.packing import check_packing_length
    from ragtune.finetune.recipe import validate_recipe

    data = {"train": str(tmp_path / "t.jsonl")}
    recipe = validate_recipe({"data": data, "training": {"packing": True, "packing_length": 64}})
    with pytest.raises(ConfigError, match=r"training.packing_length is 64 but the longest example has 100 tokens; "
                                          r"set training.packing_length to at least 100"):
        check_packing_length(recipe, [{"input_ids": [1] * 100}, {"input_ids": [1] * 10}])
    check_packing_length(recipe, [{"input_ids": [1] * 64}])
    with pytest.raises(ConfigError, match="training.packing_length is set but training.packing is false"):
        validate_recipe({"data": data, "training": {"packing_length": 64}})
    with pytest.raises(ConfigError, match="method classify cannot use it"):
        validate_recipe({"method": "classify", "data": data, "training": {"packing": True}})
