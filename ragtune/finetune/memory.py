"""`training.fit_memory`: the micro-batch that fits this machine's memory, by measurement.

A recipe's batch is a quality setting (how many examples each optimizer step averages); how many
of them go through the model at once is a memory setting, and a wrong guess is costly either way:
RAFT examples of ~1,400 tokens ran a 24 GB machine out of memory at batch 8, while short FAQ
examples waste nothing at 8. So before training, one forward and backward pass of the recipe's
longest examples is measured (the process's peak resident memory, reset just before it; Linux
/proc), the optimizer's state is added (AdamW keeps two fp32 copies of every trainable weight), and
the result is compared with the memory the system has available (nothing is measured where a
generous bound from the model's size and the batch's tokens leaves half of it free). When it does not fit, fewer
examples go through at once and gradient accumulation makes up the difference: the same examples
per optimizer step, the same loss and gradients (tests/test_grad_accumulation.py). When even one
example does not fit, training stops before it starts with what to change.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)
HEADROOM = 0.8  # use at most this share of the memory available when training starts
ADAM_BYTES = 8  # AdamW's two fp32 moments per trainable weight, allocated at the first optimizer step
# Above what a training step needs per token, per block, per hidden unit: measured 2.7 MB a token for
# SmolLM2 (30 blocks of 576) on RAFT examples, about 160 bytes per unit with the model itself; twice
# that is a bound. Where even the bound leaves half the memory free, nothing is measured.
BOUND_BYTES = 320


def _proc_kb(path: str, field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path(path).read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def available_bytes() -> int | None:
    kb = _proc_kb("/proc/meminfo", "MemAvailable")
    return kb * 1024 if kb is not None else None


def _release_freed_memory() -> None:
    """Hand memory freed by an earlier probe back to the system (glibc keeps some of it), so that the next
    probe's peak is its own."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def step_peak_bytes(model, batch: dict, *, precision: str, classifier: bool = False) -> int | None:
    """The resident memory one training step on `batch` adds at its peak; None where it cannot be read.
    Leaves no gradient and no RNG drift."""
    import torch

    from .trainer import probe_step

    _release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current size
    except OSError:
        return None
    before = _proc_kb("/proc/self/status", "VmRSS")
    rng, was_training = torch.get_rng_state(), model.training
    model.train()
    try:
        probe_step(model, batch, precision=precision, classifier=classifier)
    finally:
        torch.set_rng_state(rng)
        model.train(was_training)
    peak = _proc_kb("/proc/self/status", "VmHWM")
    return None if before is None or peak is None else max(0, peak - before) * 1024


def fit_micro_batch(recipe, model, collator, features: list[dict], *, precision: str, available: int | None = None,
                    announce=None) -> tuple[int, int, dict | None]:
    """(micro-batch, gradient accumulation, the measurement) for `recipe` on this machine: the recipe's own
    when its longest examples fit, else the largest divisor of its batch that does, accumulating the rest."""
    import torch

    batch, accumulation = recipe.training.batch_size, recipe.training.gradient_accumulation
    if not recipe.training.fit_memory or torch.cuda.is_available() or not features:
        return batch, accumulation, None
    available = available if available is not None else available_bytes()
    if available is None:
        return batch, accumulation, None
    budget = HEADROOM * available
    optimizer = ADAM_BYTES * sum(p.numel() for p in model.parameters() if p.requires_grad)
    longest = sorted(features, key=lambda f: -len(f["input_ids"]))
    config = getattr(model, "config", None)
    units = getattr(config, "num_hidden_layers", 0) * getattr(config, "hidden_size", 0)
    tokens = int(collator(longest[:batch])["input_ids"].numel())
    bound = BOUND_BYTES * tokens * units + optimizer
    if units and bound < budget / 2:
        return batch, accumulation, {"micro_batch": batch, "gradient_accumulation": accumulation, "measured": False,
                                     "bound_mb": round(bound / 2**20), "available_mb": round(available / 2**20)}
    tried = {}
    for size in [d for d in range(batch, 0, -1) if batch % d == 0]:
        peak = step_peak_bytes(model, collator(longest[:size]), precision=precision, classifier=recipe.is_classifier)
        if peak is None:
            return batch, accumulation, None
        tried[size] = peak + optimizer
        if tried[size] <= budget:
            record = {"micro_batch": size, "gradient_accumulation": accumulation * batch // size, "measured": True,
                      "needed_mb": round(tried[size] / 2**20), "available_mb": round(available / 2**20),
                      "tried_mb": {k: round(v / 2**20) for k, v in tried.items()}}
            if size < batch:
                message = (f"{batch} of the longest examples at once need {tried[batch] / 2**30:.1f} GB, "
                           f"{available / 2**30:.1f} GB is available: training {size} at a time with "
                           f"{record['gradient_accumulation']}x accumulation (the same {batch * accumulation} "
                           f"examples per step)")
                logger.info(message)
                if announce:
                    announce(message)
            return size, record["gradient_accumulation"], record
    longest_tokens = len(longest[0]["input_ids"])
    raise ConfigError(
        f"one example of {longest_tokens} tokens needs {tried[1] / 2**30:.1f} GB to train and only "
        f"{available / 2**30:.1f} GB is available: lower data.max_length, set training.gradient_checkpointing: true, "
        "or set training.fit_memory: false to try anyway")
