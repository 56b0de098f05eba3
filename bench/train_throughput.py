"""LoRA training throughput, how close it runs to the machine, and peak memory: ragtune's `train` vs TRL.

Workloads (`--workloads faq,raft`):
  faq   recipes/data/ragtune-faq.jsonl, single-turn examples (short: ~100 tokens, most of them trained).
  raft  RAFT examples built by `ragtune.raft.builder.build_raft` from the Gorilla Torch Hub knowledge base
        (../shared/datasets/gorilla-torchhub, Gorilla APIBench, Apache-2.0; the compact API docs and
        questions of bench/raft_torchhub.py): oracle + distractor docs + question, a quoting chain of
        thought and the answer, ~15% of the tokens trained. The first --limit training questions.
Runners, same model, data, LoRA (r 16, alpha 32, q/k/v/o, every block), batch, one epoch, loss on the
answer only: ragtune (`ragtune train`: packed rows, logits only at trained positions) and TRL's
SFTTrainer with its own best CPU settings (prompt/completion data, completion-only loss, padding-free).
Each runs in its own subprocess so its peak RSS is its own.

Per runner and precision: tokens/s (the epoch's tokens / train_runtime), trained tokens/s, useful GFLOP/s
and its share of a GEMM ceiling measured in the same process. Useful FLOPs, counted the same for both
runners: 4 x body parameters x tokens (forward, and backward through activations; the frozen weights
need no weight gradient) + 4 x layers x hidden x tokens^2 per example (causal attention scores and
weighted sums, forward and backward) + 4 x vocabulary x hidden x trained tokens (the output layer where
the loss is). Ceiling: the best of five (1024 x hidden) @ (hidden x 4 hidden) products in the run's
precision. Prints a table, writes bench/results/train_throughput.json:
  {"<workload>": {"<precision>": {"ours_tok_s", "trl_tok_s", "ratio", "ours_peak_mb", "trl_peak_mb",
                                  "ceiling_share", ...}}}
Goals (issue 22): raft >= 3x TRL, faq >= 2x, peak memory <= TRL, >= 0.7 of the ceiling.

  .venv/bin/python bench/train_throughput.py --workloads faq,raft --models SmolLM2-135M-Instruct --json
  (TRL: pip install 'ragtune[bench]')
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
FAQ = ROOT / "recipes" / "data" / "ragtune-faq.jsonl"
CACHE = ROOT / "bench" / ".cache" / "train-throughput"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def workload_chats(workload: str, limit: int, threads: int) -> list[list[dict]]:
    if workload == "faq":
        chats = [json.loads(line)["messages"] for line in FAQ.read_text().splitlines() if line.strip()]
        return [m for m in chats if len(m) == 3][:limit or None]
    data = CACHE / f"raft-{limit}" / "raft-data" / "chat.jsonl"
    if not data.is_file():
        build_raft_workload(data.parent.parent, limit, threads)
    return [json.loads(line)["messages"] for line in data.read_text().splitlines() if line.strip()]


def build_raft_workload(work: Path, limit: int, threads: int) -> None:
    """RAFT data as bench/raft_torchhub.py builds it (no teacher: the questions carry their answers)."""
    from raft_torchhub import build_kb
    from raft_torchhub_data import DATA, held_out_split, load_records, write_questions

    from ragtune.raft.builder import BuildOptions, build_raft

    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: the raft workload is built from the Gorilla Torch Hub data set")
    work.mkdir(parents=True, exist_ok=True)
    pool, _held = held_out_split(load_records(DATA / "torchhub_train.jsonl"), 0.2)
    questions = write_questions(pool[:limit], work / "questions.jsonl")
    build_raft(build_kb(work, threads), BuildOptions(out=work / "raft-data", questions=questions, k=3, p=0.8,
                                                     distractors="hard", chunk_tokens=256, seed=0, eval_share=0.0,
                                                     target_model="SmolLM2-135M-Instruct", threads=threads))


def run_ours(model: str, precision: str, chats, batch: int, threads: int, tmp: Path, layers: int | None) -> dict:
    from ragtune.finetune.recipe import validate_recipe
    from ragtune.finetune.run import train

    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    lora = {**LORA, **({"layers": layers} if layers else {})}
    recipe = validate_recipe({"name": "bench", "method": "lora", "model": model, "output_dir": str(tmp / "run"),
                              "data": {"train": str(data), "max_length": 4096, "validation_share": 0},
                              "training": {"epochs": 1, "batch_size": batch, "precision": precision, "threads": threads,
                                           "learning_rate": 2e-4, "warmup": 0, "logging_steps": 100, "packing": True},
                              "lora": lora})
    return train(recipe, progress=False).metrics


def run_trl(model: str, precision: str, chats, batch: int, threads: int, tmp: Path, layers: int | None) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ragtune.models.cache import resolve_model_dir

    torch.set_num_threads(threads)
    model_dir = resolve_model_dir(model)
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in chats]
    config = SFTConfig(output_dir=str(tmp / "trl"), num_train_epochs=1, per_device_train_batch_size=batch,
                       learning_rate=2e-4, bf16=precision == "bf16", use_cpu=True, max_length=None, report_to="none",
                       save_strategy="no", logging_steps=100, completion_only_loss=True, padding_free=True,
                       disable_tqdm=True, seed=0)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=LORA["target_modules"],
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model_dir),
                         peft_config=peft_config)
    return trainer.train().metrics


def gemm_ceiling(hidden: int, precision: str) -> float:
    """GFLOP/s of the best of five (1024 x hidden) @ (hidden x 4 hidden) products: what the machine gives."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(1024, hidden, dtype=dtype), torch.randn(hidden, 4 * hidden, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 1024 * hidden * 4 * hidden / best / 1e9


def workload_counts(model: str, chats) -> dict:
    """Tokens, trained tokens and useful FLOPs of one epoch (see the module docstring)."""
    from transformers import AutoConfig

    from ragtune.finetune.encode import encode_chats
    from ragtune.finetune.formats import ChatExample
    from ragtune.finetune.modeling import load_tokenizer
    from ragtune.models.cache import resolve_model_dir

    model_dir = resolve_model_dir(model)
    tokenizer, config = load_tokenizer(model_dir), AutoConfig.from_pretrained(model_dir)
    features = encode_chats([ChatExample(m, line=i) for i, m in enumerate(chats)], tokenizer, 1 << 20).features
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = d * config.num_key_value_heads // config.num_attention_heads
    body = layers * (2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size)
    tokens = sum(len(f["input_ids"]) for f in features)
    trained = sum(sum(1 for label in f["labels"][1:] if label != -100) for f in features)
    flops = sum(4 * body * len(f["input_ids"]) + 4 * layers * d * len(f["input_ids"]) ** 2 for f in features)
    return {"examples": len(features), "tokens": tokens, "trained_tokens": trained,
            "useful_gflop": (flops + 4 * vocab * d * trained) / 1e9, "hidden": d}


def one(args) -> None:
    """Child process: one configuration, JSON on stdout."""
    from ragtune.runtime import enforce_offline

    enforce_offline()
    chats = workload_chats(args.workload, args.limit, args.threads)
    counts = workload_counts(args.model, chats)
    with tempfile.TemporaryDirectory(prefix="ragtune-throughput-") as tmp:
        runner = run_ours if args.one == "ours" else run_trl
        metrics = runner(args.model, args.precision, chats, args.batch_size, args.threads, Path(tmp), args.lora_layers)
    ceiling = gemm_ceiling(counts["hidden"], args.precision)
    seconds = metrics["train_runtime"]
    print(json.dumps({"runner": args.one, "seconds": round(seconds, 1), "tok_s": round(counts["tokens"] / seconds, 1),
                      "trained_tok_s": round(counts["trained_tokens"] / seconds, 1),
                      "gflop_s": round(counts["useful_gflop"] / seconds, 2), "ceiling_gflop_s": round(ceiling, 1),
                      "ceiling_share": round(counts["useful_gflop"] / seconds / ceiling, 3),
                      "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "train_loss": metrics.get("train_loss"), **{k: v for k, v in counts.items() if k != "hidden"}}))


def child(args, workload: str, model: str, precision: str, runner: str) -> dict | None:
    command = [sys.executable, __file__, "--one", runner, "--workload", workload, "--model", model, "--precision",
               precision, "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--limit", str(args.limit)]
    if args.lora_layers and runner == "ours":
        command += ["--lora-layers", str(args.lora_layers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{runner} {workload} {model} {precision} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="faq,raft", help="faq,raft")
    parser.add_argument("--models", default="SmolLM2-135M-Instruct")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=48, help="examples per workload (0: all FAQ examples)")
    parser.add_argument("--lora-layers", type=int, default=None, help="ragtune only: adapt the top N blocks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_throughput.json")
    parser.add_argument("--json", action="store_true", help="also print the JSON")
    for hidden in ("--one", "--workload", "--model", "--precision"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    result: dict = {}
    for workload in args.workloads.split(","):
        for model in args.models.split(","):
            for precision in args.precisions.split(","):
                pair = {runner: child(args, workload, model, precision, runner) for runner in ("ours", "trl")}
                ours, trl = pair["ours"], pair["trl"]
                if not ours:
                    continue
                row = {"model": model, "ours_tok_s": ours["tok_s"], "ours_trained_tok_s": ours["trained_tok_s"],
                       "ours_gflop_s": ours["gflop_s"], "ceiling_share": ours["ceiling_share"],
                       "ceiling_gflop_s": ours["ceiling_gflop_s"], "ours_peak_mb": ours["peak_mb"],
                       "examples": ours["examples"], "tokens": ours["tokens"], "trained_tokens": ours["trained_tokens"],
                       "ours_loss": ours["train_loss"]}
                if trl:
                    row.update({"trl_tok_s": trl["tok_s"], "trl_trained_tok_s": trl["trained_tok_s"],
                                "trl_gflop_s": trl["gflop_s"], "trl_ceiling_share": trl["ceiling_share"],
                                "trl_peak_mb": trl["peak_mb"], "ratio": round(ours["tok_s"] / trl["tok_s"], 2),
                                "trl_loss": trl["train_loss"]})
                result.setdefault(workload, {})[precision if len(args.models.split(",")) == 1
                                              else f"{model}/{precision}"] = row
                console.print(f"{workload} {model} {precision}: {row}", highlight=False)
    table = Table(title=f"LoRA training throughput: batch {args.batch_size}, {args.threads} threads, one epoch")
    for column in ("workload", "precision", "ragtune tok/s", "TRL tok/s", "ratio", "trained tok/s", "GFLOP/s",
                   "of ceiling", "ragtune MB", "TRL MB"):
        table.add_column(column, justify="right")
    for workload, rows in result.items():
        for precision, r in rows.items():
            table.add_row(workload, precision, f"{r['ours_tok_s']:.0f}", f"{r.get('trl_tok_s', 0):.0f}",
                          f"{r.get('ratio', 0):.2f}x", f"{r['ours_trained_tok_s']:.0f}", f"{r['ours_gflop_s']:.1f}",
                          f"{r['ceiling_share']:.2f}", str(r["ours_peak_mb"]), str(r.get("trl_peak_mb", "-")))
    console.print(table)
    meta = {"batch_size": args.batch_size, "threads": args.threads, "limit": args.limit, "lora": LORA,
            "lora_layers": args.lora_layers, "measured": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "settings": meta}, indent=2))
    if args.json:
        print(json.dumps({**result, "settings": meta}, indent=2))


if __name__ == "__main__":
    main()
