"""LoRA training throughput and peak memory: ragtune's `train` vs a plain TRL SFTTrainer + PEFT script.

Same model, data (recipes/data/ragtune-faq.jsonl, single-turn examples), LoRA settings (r 16, alpha
32, q/k/v/o), batch size, one epoch, loss on the answer only in both (TRL through a conversational
prompt/completion dataset). Each configuration runs in its own subprocess so the peak RSS is its
own. tokens/s = the epoch's non-padding tokens / Trainer's train_runtime. Prints a table and
writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data" / "ragtune-faq.jsonl"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def single_turn() -> list[list[dict]]:
    chats = [json.loads(line)["messages"] for line in DATA.read_text().splitlines() if line.strip()]
    return [m for m in chats if len(m) == 3]


def dataset_tokens(model_dir, chats) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]) for m in chats)


def run_ours(model: str, precision: str, batch: int, threads: int, tmp: Path) -> dict:
    from ragtune.finetune.recipe import validate_recipe
    from ragtune.finetune.run import train

    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in single_turn()))
    recipe = validate_recipe({"name": "bench", "method": "lora", "model": model, "output_dir": str(tmp / "run"),
                              "data": {"train": str(data), "max_length": 512, "validation_share": 0},
                              "training": {"epochs": 1, "batch_size": batch, "precision": precision, "threads": threads,
                                           "learning_rate": 2e-4, "warmup": 0, "logging_steps": 100},
                              "lora": LORA})
    return train(recipe, progress=False).metrics


def run_trl(model: str, precision: str, batch: int, threads: int, tmp: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ragtune.models.cache import resolve_model_dir

    torch.set_num_threads(threads)
    model_dir = resolve_model_dir(model)
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in single_turn()]
    config = SFTConfig(output_dir=str(tmp / "trl"), num_train_epochs=1, per_device_train_batch_size=batch,
                       learning_rate=2e-4, bf16=precision == "bf16", use_cpu=True, max_length=512, report_to="none",
                       save_strategy="no", logging_steps=100, completion_only_loss=True, disable_tqdm=True, seed=0)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=LORA["target_modules"],
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model_dir),
                         peft_config=peft_config)
    return trainer.train().metrics


def one(args) -> None:
    """Child process: one configuration, JSON on stdout."""
    from ragtune.models.cache import resolve_model_dir
    from ragtune.runtime import enforce_offline, resolve_precision

    enforce_offline()
    precision = resolve_precision(args.precision)
    with tempfile.TemporaryDirectory(prefix="ragtune-throughput-") as tmp:
        runner = run_ours if args.one == "ours" else run_trl
        metrics = runner(args.model, precision, args.batch_size, args.threads, Path(tmp))
    tokens = dataset_tokens(resolve_model_dir(args.model), single_turn())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"runner": args.one, "model": args.model, "precision": precision, "tokens": tokens,
                      "seconds": metrics["train_runtime"], "tokens_per_s": tokens / metrics["train_runtime"],
                      "peak_rss_mb": round(peak_mb), "train_loss": metrics.get("train_loss")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_throughput.json")
    args = parser.parse_args()
    if args.one:
        return one(args)

    from rich.console import Console
    from rich.table import Table

    from ragtune.models.registry import get_model

    console = Console()
    rows = []
    for model in args.models:
        if not get_model(model).installed:
            console.print(f"skipping {model}: not installed ({get_model(model).install_command})")
            continue
        for precision in args.precisions:
            pair = {}
            for runner in ("ours", "trl"):
                command = [sys.executable, __file__, "--one", runner, "--model", model, "--precision", precision,
                           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    console.print(f"[red]{runner} {model} {precision} failed:[/]\n{done.stderr[-2000:]}")
                    continue
                pair[runner] = json.loads(done.stdout.strip().splitlines()[-1])
                console.print(pair[runner])
            if len(pair) == 2:
                rows.append({**{f"{k}_{r}": v for r, d in pair.items() for k, v in d.items() if k not in ("model", "precision")},
                             "model": model, "precision": precision,
                             "ratio": round(pair["ours"]["tokens_per_s"] / pair["trl"]["tokens_per_s"], 3)})
    table = Table(title=f"LoRA training throughput, batch {args.batch_size}, {args.threads} threads, one epoch of {DATA.name}")
    for column in ("model", "precision", "ragtune tok/s", "TRL tok/s", "ratio", "ragtune peak MB", "TRL peak MB"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["model"], r["precision"], f"{r['tokens_per_s_ours']:.0f}", f"{r['tokens_per_s_trl']:.0f}",
                      f"{r['ratio']:.2f}x", str(r["peak_rss_mb_ours"]), str(r["peak_rss_mb_trl"]))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(DATA), "batch_size": args.batch_size, "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
