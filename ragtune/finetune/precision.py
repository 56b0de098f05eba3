"""`training.precision: auto`: fp32 or bf16 chosen by timing this workload on this machine, once.

Which is faster on a CPU is not something its flags tell: measured in this project, bf16 trained
SmolLM2 1.26x faster than fp32 on FAQ examples on an AVX-512-bf16 CPU, and 1.8x slower on another
workload while other jobs shared the cores; on an AVX2 CPU a bf16 LoRA step took 16x fp32's (emulated).
So `auto` measures, in two stages. First a matrix product at the model's width in both precisions
(milliseconds): where bf16 is over twice as slow, fp32 is kept without more. Otherwise it times real
training steps (forward, the loss as the trainer computes it, backward) of the recipe's own model on
one of its own examples of median length, fp32 and under bf16 autocast (what the Trainer's `bf16`
does on a CPU), alternating so that drift hits both, and keeps the faster; bf16 must also give the
same loss to within 2%. The choice is cached in `<cache>/precision.json`, keyed by the CPU (flags and
cores), torch's version, the model, the method, the trained blocks and the example's length (rounded
to a power of two), so a new machine or workload measures again and the same one never does. A GPU
uses bf16 where it supports it, without a probe.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)
ROUNDS = 2  # timed steps per precision, after one untimed warm-up step each
GEMM_SLOWER = 2.0  # bf16 products this many times slower than fp32: no training step is timed
BF16_GAIN = 0.95  # bf16 must take under 95% of fp32's time to be chosen (drift is ±10%)
LOSS_TOLERANCE = 0.02


def workload_key(recipe, model, batch_tokens: int) -> str:
    import torch

    from ..runtime import cpu_key

    name = Path(str(recipe.model)).name
    blocks = recipe.lora.layers if recipe.method in ("lora", "qlora") else (
        recipe.freeze.train_top_blocks if recipe.method == "freeze" else None)
    size = 2 ** max(4, math.ceil(math.log2(max(batch_tokens, 1))))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{cpu_key()}|torch-{torch.__version__}|{name}|{recipe.method}|blocks-{blocks}|trainable-{trainable}|tokens-{size}"


def training_precision(recipe, model, collator, features: list[dict], *, cache_dir: Path | None = None,
                       announce=None) -> str:
    """The precision to train `recipe` in: as pinned, or for `auto` the measured faster (see the module docstring)."""
    import torch

    wanted = recipe.training.precision
    if torch.cuda.is_available():
        if wanted == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return wanted
    if wanted == "bf16":
        check_cpu_bf16()
    if wanted != "auto":
        return wanted
    from ..models.cache import default_cache_dir

    batch = collator([_median_example(features)])
    key = workload_key(recipe, model, int(batch["input_ids"].numel()))
    path = Path(cache_dir or default_cache_dir()) / "precision.json"
    records = _read(path)
    if key in records and records[key].get("precision") in ("fp32", "bf16"):
        return records[key]["precision"]
    if announce:
        announce("measuring fp32 against bf16 on this machine and workload (once, cached)")
    record = probe(model, batch, classifier=recipe.is_classifier)
    records = _read(path)  # another run may have written meanwhile
    records[key] = record
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        logger.warning("could not cache the precision measurement in %s (%s); it will be measured again", path, exc)
    logger.info("training precision %s by measurement: %s (%s)", record["precision"], record, key)
    return record["precision"]


def probe(model, batch: dict, *, classifier: bool = False) -> dict:
    """Time training steps in fp32 and bf16 autocast on `batch`; leaves no gradient and no RNG drift."""
    import torch

    from .trainer import probe_step

    hidden = getattr(getattr(model, "config", None), "hidden_size", 512)
    gemm = gemm_slowdown(hidden)
    if gemm > GEMM_SLOWER:
        return {"precision": "fp32", "gemm_bf16_over_fp32": round(gemm, 2), "tokens": int(batch["input_ids"].numel()),
                "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    rng = torch.get_rng_state()
    was_training = model.training
    model.train()

    def step(precision: str) -> tuple[float, float]:
        started = time.perf_counter()
        loss = probe_step(model, batch, precision=precision, classifier=classifier)
        return time.perf_counter() - started, loss

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, float] = {}
    try:
        for precision in ("fp32", "bf16"):
            losses[precision] = step(precision)[1]  # warm-up: first-call allocations and kernel choices
        for _ in range(ROUNDS):
            for precision in ("fp32", "bf16"):
                times[precision].append(step(precision)[0])
    finally:
        torch.set_rng_state(rng)
        model.train(was_training)
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    loss_gap = abs(losses["bf16"] - losses["fp32"]) / max(abs(losses["fp32"]), 1e-6)
    chosen = "bf16" if bf16 < BF16_GAIN * fp32 and loss_gap <= LOSS_TOLERANCE else "fp32"
    return {"precision": chosen, "gemm_bf16_over_fp32": round(gemm, 2), "fp32_s": round(fp32, 4), "bf16_s": round(bf16, 4),
            "loss_gap": round(loss_gap, 5), "tokens": int(batch["input_ids"].numel()),
            "measured": time.strftime("%Y-%m-%d %H:%M:%S")}


def gemm_slowdown(hidden: int) -> float:
    """Time of a (256 x hidden) @ (hidden x hidden) product in bf16 over fp32, best of five each."""
    import torch

    generator = torch.Generator().manual_seed(0)  # its own: the training's random stream is not touched

    def best(dtype) -> float:
        a = torch.randn(256, hidden, generator=generator).to(dtype)
        b = torch.randn(hidden, hidden, generator=generator).to(dtype)
        a @ b  # first call: kernel selection
        times = []
        for _ in range(5):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        return min(times)

    return best(torch.bfloat16) / max(best(torch.float32), 1e-9)


def check_cpu_bf16() -> None:
    """A pinned bf16 must run here: a failing bf16 matrix product is a one-line error before training."""
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            product = torch.ones(8, 8) @ torch.ones(8, 8)
        if product.dtype != torch.bfloat16 or float(product[0, 0]) != 8.0:
            raise RuntimeError(f"got {product.dtype} {float(product[0, 0])}")
    except RuntimeError as exc:
        raise ConfigError(f"training.precision is bf16 but this CPU cannot compute in bf16 ({exc}); "
                          "set training.precision: fp32 (or auto)") from None


def _median_example(features: list[dict]) -> dict:
    """The example of median length: a typical step of this workload."""
    return sorted(features, key=lambda f: len(f["input_ids"]))[len(features) // 2]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
