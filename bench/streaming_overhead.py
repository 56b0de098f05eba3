"""Tokens/s of ragtune's generation path vs raw `transformers.generate`, fp32 vs bf16.

Same model, same chat-templated prompt, greedy decoding of --tokens new tokens (min_new_tokens pins
the length so both sides decode exactly the same count). ragtune's path adds streaming through
a callback streamer that decodes each token; the goal is to stay within 5% of raw generate.
Prints a table and writes bench/results/streaming_overhead.json. One run, --repeats timings each (median).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Explain in a few paragraphs how a refrigerator keeps food cold."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "streaming_overhead.json")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from ragtune.generate.local import LocalGenerator
    from ragtune.runtime import enforce_offline, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console()
    rows = []
    from ragtune.models.registry import get_model

    for model in args.models:
        spec = get_model(model)
        if not spec.installed:
            console.print(f"skipping {model}: not installed ({spec.install_command})")
            continue
        for precision in args.precisions:
            generator = LocalGenerator(model, precision=precision, threads=args.threads).load()
            tokenizer, hf_model = generator.tokenizer, generator._model
            inputs = generator.encode_chat(PROMPT)
            pin = dict(min_new_tokens=args.tokens, max_new_tokens=args.tokens)
            original = hf_model.generate

            def pinned(*a, **k):
                k.update(pin)
                return original(*a, **k)

            def raw():
                with torch.inference_mode():
                    original(**inputs, do_sample=False, pad_token_id=tokenizer.eos_token_id, **pin)

            def ours():
                hf_model.generate = pinned
                try:
                    generator.generate(PROMPT, max_new_tokens=args.tokens, on_text=lambda _piece: None)
                finally:
                    hf_model.generate = original

            raw()  # warm-up
            # interleaved (raw, ours, raw, ours, ...) so drift in the machine's speed hits both alike
            samples = {"raw": [], "ragtune": []}
            for _ in range(args.repeats):
                for name, fn in (("raw", raw), ("ragtune", ours)):
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
            timings = {name: args.tokens / statistics.median(values) for name, values in samples.items()}
            row = {"model": model, "precision": precision, "raw_tok_s": round(timings["raw"], 2),
                   "ragtune_tok_s": round(timings["ragtune"], 2),
                   "overhead_pct": round(100 * (1 - timings["ragtune"] / timings["raw"]), 1)}
            rows.append(row)
            console.print(row)
    table = Table(title=f"generation, {args.tokens} new tokens, {args.threads} threads, median of {args.repeats}")
    for column in ("model", "precision", "raw generate tok/s", "ragtune tok/s", "overhead %"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["model"], row["precision"], f"{row['raw_tok_s']:.1f}", f"{row['ragtune_tok_s']:.1f}", f"{row['overhead_pct']:.1f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
