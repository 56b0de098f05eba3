"""`ragtune export RUN --merge OUT`: a self-contained model folder from a training run.

LoRA adapters are merged into full-precision base weights (merging into 4-bit weights would round
them again), so OUT is a plain transformers model: safetensors, tokenizer, chat template and a
model card with the run's metrics and recipe. Any command that takes --model accepts OUT.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError


def load_run_recipe(run_dir: Path):
    from .recipe import load_recipe

    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a ragtune run directory (no recipe.yaml); pass the output_dir of `ragtune train`")
    return load_recipe(path)


def export_run(run_dir: str | Path, out: str | Path, *, merge: bool = True, overwrite: bool = False) -> Path:
    import torch

    from ..runtime import quiet_transformers
    from .modeling import load_tokenizer

    quiet_transformers()
    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    recipe = load_run_recipe(run_dir)
    trained = run_dir / "model"
    if not trained.is_dir():
        raise ConfigError(f"{run_dir} has no finished model (model/ is missing); finish it with `ragtune train --resume`")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.method in ("lora", "qlora") and not merge:
        shutil.copytree(trained, out, dirs_exist_ok=True)  # the adapter alone, for PEFT users
    else:
        if recipe.is_classifier:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(trained, dtype=torch.float32, local_files_only=True)
        else:
            model = trained_causal_lm(recipe, run_dir)
        model.save_pretrained(out)
        load_tokenizer(trained).save_pretrained(out)
    (out / "README.md").write_text(model_card(recipe, run_dir, merged=merge), encoding="utf-8")
    return out


def trained_causal_lm(recipe, run_dir: Path):
    """The run's causal LM in fp32, LoRA adapters merged into the full-precision base weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models.cache import resolve_model_dir
    from ..runtime import quiet_transformers

    quiet_transformers()
    trained = Path(run_dir) / "model"
    if not trained.is_dir():
        raise ConfigError(f"{run_dir} has no finished model (model/ is missing); finish it with `ragtune train --resume`")
    if recipe.method in ("lora", "qlora"):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve_model_dir(recipe.model), dtype=torch.float32, local_files_only=True)
        return PeftModel.from_pretrained(base, trained).merge_and_unload()  # a local folder: peft reads it directly
    return AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32, local_files_only=True)


def model_card(recipe, run_dir: Path, *, merged: bool) -> str:
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()).get("metrics", {}) if metrics_path.exists() else {}
    shown = {k: v for k, v in metrics.items() if k in ("train_loss", "epoch") or
             (k.startswith("eval_") and not k.endswith(("_runtime", "_per_second")))}
    rows = "\n".join(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in sorted(shown.items()))
    what = {"lora": "LoRA adapters merged into the base weights" if merged else "a LoRA adapter (not merged)",
            "qlora": "QLoRA adapters merged into full-precision base weights" if merged else "a QLoRA adapter",
            "full": "all weights fine-tuned", "freeze": f"top {recipe.freeze.train_top_blocks} blocks fine-tuned",
            "classify": "a classification head over the pre-trained body"}[recipe.method]
    usage = ("ragtune ask KB \"question\" --model THIS_FOLDER" if not recipe.is_classifier
             else "transformers.AutoModelForSequenceClassification.from_pretrained(THIS_FOLDER)")
    return f"""---
base_model: {recipe.model}
library_name: transformers
tags: [ragtune, {recipe.method}]
---

# {recipe.name}

Fine-tuned with ragtune from **{recipe.model}**: {what}.
Exported {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from `{run_dir.resolve()}`.

## Use

```
{usage}
```

## Validation metrics

| metric | value |
|---|---|
{rows or '| (no validation set) | |'}

## Recipe

```yaml
{recipe.to_yaml().strip()}
```
"""
