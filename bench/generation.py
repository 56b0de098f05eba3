"""Fast local generation: llama.cpp vs transformers on the packaged GGUF models, in one run.

Per model and runtime: first-token time, prefill tokens/s, decode tokens/s and total for a chat
prompt of about --prompt-tokens tokens (sources + question, as `ragtune ask` builds them) and up to
--tokens new tokens, greedy, --threads threads, a fresh prompt each repeat (no KV reuse), median
of --repeats. The machine's fp32 GEMM rate and memory bandwidth are measured in the same run, so
prefill is also a share of the GEMM ceiling (2 x parameters FLOPs per token) and decode a share of
the bandwidth ceiling (weight bytes per token x tokens/s / bandwidth). For llama.cpp (in the weight
format ragtune picks for this CPU, and as shipped) it also times a chat follow-up's first token with
the shared prefix reused and with the cache cleared, and the aggregate decode rate of 1, 4 and 8
sequences decoding together on one loaded model (--concurrency).

`python bench/generation.py [--models ...] --json` prints {"gemm_gflops": x, "bandwidth_gbs": x,
"<model>": {"transformers_fp32": {...}, "transformers_bf16": {...}, "llamacpp": {...},
"llamacpp_as_shipped": {...}}} and writes it to bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTS = ["The harbour of Kremsville was dredged in 1871 to admit steamships.",
         "Copper lanterns were hung along the quay after the storm of 1902.",
         "The glacier above the valley has retreated 400 metres since 1950.",
         "Falcons nest in the old quarry north of the orchard every spring."]


def rag_messages(target_tokens: int, variant: int) -> list[dict]:
    """A system prompt, numbered sources padded to about `target_tokens`, and a question; `variant`
    changes the first line so no two repeats share a KV prefix."""
    sources, n = [], 0
    while sum(len(s) for s in sources) < target_tokens * 4:
        fact = FACTS[n % len(FACTS)]
        sources.append(f"[{n + 1}] Source {n + 1}\n{fact} " + "It is recorded in the town archive. " * 6)
        n += 1
    system = (f"Session {variant}. Answer the question using only the numbered sources. "
              "Cite sources as [n]. If the sources do not contain the answer, say so.")
    return [{"role": "system", "content": system},
            {"role": "user", "content": "Sources:\n" + "\n\n".join(sources) + "\n\nQuestion: When was the harbour dredged?"}]


def machine_ceilings() -> tuple[float, float]:
    """fp32 GEMM GFLOP/s (torch, 2048^3, best of 3) and copy bandwidth GB/s (numpy, 512 MB, best of 3).

    The copy runs on one thread, so it is a floor of the machine's bandwidth: a decode share above 1
    means the runtime reads memory faster than one copying thread does."""
    import numpy as np
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    gemm = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        gemm.append(2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9)
    source = np.ones(64 * 1024 * 1024, dtype=np.float64)
    target = np.empty_like(source)
    copies = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(target, source)
        copies.append(2 * source.nbytes / (time.perf_counter() - t0) / 1e9)  # read + write
    return max(gemm), max(copies)


def timed(generator, messages, tokens: int) -> dict:
    result = generator.generate(messages, max_new_tokens=tokens)
    first = result.first_token_seconds or result.seconds
    decode = (result.completion_tokens - 1) / max(result.seconds - first, 1e-9) if result.completion_tokens > 1 else 0.0
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "first_token_s": first, "prefill_tok_s": result.prompt_tokens / first, "decode_tok_s": decode,
            "total_s": result.seconds}


def median_of(samples: list[dict]) -> dict:
    return {key: round(statistics.median(s[key] for s in samples), 3) for key in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct"])
    parser.add_argument("--prompt-tokens", type=int, default=800)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generation.json")
    args = parser.parse_args()

    from rich.console import Console

    from ragtune.generate.llamacpp import LlamaCppGenerator, unavailable_reason
    from ragtune.generate.local import LocalGenerator
    from ragtune.models.gguf import gguf_file
    from ragtune.models.registry import get_model
    from ragtune.runtime import enforce_offline, resolve_precision, set_torch_threads

    enforce_offline()
    set_torch_threads(args.threads)
    console = Console(stderr=args.json)
    gemm, bandwidth = machine_ceilings()
    results: dict = {"gemm_gflops": round(gemm, 1), "bandwidth_gbs": round(bandwidth, 1), "threads": args.threads}
    runtimes = ["transformers_fp32"] + (["transformers_bf16"] if resolve_precision("auto") == "bf16" else [])
    if unavailable_reason() is None:
        runtimes += ["llamacpp", "llamacpp_as_shipped"]
    else:
        console.print(f"llama.cpp skipped: {unavailable_reason()}")
    for model in args.models:
        spec = get_model(model)
        if not spec.installed:
            console.print(f"skipping {model}: not installed ({spec.install_command})")
            continue
        weight_bytes = gguf_file(model).stat().st_size
        results[model] = {}
        for runtime in runtimes:
            if runtime.startswith("llamacpp"):
                fmt = "source" if runtime == "llamacpp_as_shipped" else "auto"
                generator = LlamaCppGenerator(model, threads=args.threads, weight_format=fmt,
                                              slots=max(args.concurrency)).load()
            else:
                generator = LocalGenerator(model, precision=runtime.rsplit("_", 1)[1], threads=args.threads).load()
            parameters = None
            if not runtime.startswith("llamacpp"):
                # GEMM work per prompt token: every matrix but the input embedding table (a row lookup)
                embedding = generator._model.get_input_embeddings().weight
                parameters = sum(p.numel() for p in generator._model.parameters() if p is not embedding)
            timed(generator, rag_messages(args.prompt_tokens, -1), 8)  # warm-up
            row = median_of([timed(generator, rag_messages(args.prompt_tokens, i), args.tokens)
                             for i in range(args.repeats)])
            if parameters:
                results[model]["parameters"] = parameters
            row["weight_bytes_per_token"] = Path(generator._engine.path).stat().st_size if runtime.startswith("llamacpp") \
                else sum(p.numel() * p.element_size() for p in generator._model.parameters())
            row["decode_share_of_bandwidth"] = round(row["weight_bytes_per_token"] * row["decode_tok_s"] / (bandwidth * 1e9), 3)
            if results[model].get("parameters"):
                row["prefill_share_of_gemm"] = round(2 * results[model]["parameters"] * row["prefill_tok_s"] / (gemm * 1e9), 3)
            if runtime.startswith("llamacpp"):
                row["weight_format"] = generator.runtime_format
                row.update(follow_up(generator, args))
                row["aggregate_decode_tok_s"] = concurrent(generator, args)
            results[model][runtime] = row
            console.print(model, runtime, row)
    report(console, results, runtimes, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")


def follow_up(generator, args) -> dict:
    """First-token time of a chat follow-up: shared prefix reused (llama.cpp keeps the evaluated
    tokens) vs the cache cleared first."""
    first = rag_messages(args.prompt_tokens, 999)
    answer = generator.generate(first, max_new_tokens=24)
    turn = first + [{"role": "assistant", "content": answer.text}, {"role": "user", "content": "And who dredged it?"}]
    reused, cold = [], []
    for _ in range(args.repeats):
        generator.generate(first, max_new_tokens=1)
        reused.append(generator.generate(turn, max_new_tokens=4).first_token_seconds)
        generator._engine.forget()
        cold.append(generator.generate(turn, max_new_tokens=4).first_token_seconds)
    return {"follow_up_first_token_reused_s": round(statistics.median(reused), 3),
            "follow_up_first_token_cold_s": round(statistics.median(cold), 3)}


def concurrent(generator, args) -> dict:
    """Aggregate decode tokens/s with n sequences decoding together (distinct prompts, prefill excluded:
    the clock starts once every sequence has its first token)."""
    import threading

    rates = {}
    for n in args.concurrency:
        conversations = [rag_messages(args.prompt_tokens // 4, 5000 + 100 * n + i) for i in range(n)]
        first_tokens = threading.Barrier(n + 1)
        results = [None] * n

        def run(i):
            seen = []

            def on_text(_piece):
                if not seen:
                    seen.append(1)
                    first_tokens.wait()

            results[i] = generator.generate(conversations[i], max_new_tokens=args.tokens, on_text=on_text)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        first_tokens.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        produced = sum(max(r.completion_tokens - 1, 0) for r in results)
        rates[str(n)] = round(produced / elapsed, 1)
    return rates


def report(console, results: dict, runtimes: list[str], args) -> None:
    from rich.table import Table

    table = Table(title=f"RAG prompt ~{args.prompt_tokens} tokens, up to {args.tokens} new, {args.threads} threads, "
                        f"median of {args.repeats}; GEMM {results['gemm_gflops']} GFLOP/s, "
                        f"bandwidth (one-thread copy) {results['bandwidth_gbs']} GB/s")
    for column in ("model", "runtime", "first token s", "prefill tok/s", "decode tok/s", "total s",
                   "decode x fp32", "prefill x fp32", "total x fp32", "follow-up x", "agg decode 1/4/8"):
        table.add_column(column, justify="right")
    for model, rows in results.items():
        if not isinstance(rows, dict) or "transformers_fp32" not in rows:
            continue
        base = rows["transformers_fp32"]
        for runtime in runtimes:
            row = rows.get(runtime)
            if row:
                table.add_row(model, runtime, f"{row['first_token_s']:.2f}", f"{row['prefill_tok_s']:.0f}",
                              f"{row['decode_tok_s']:.1f}", f"{row['total_s']:.2f}",
                              f"{row['decode_tok_s'] / base['decode_tok_s']:.2f}",
                              f"{row['prefill_tok_s'] / base['prefill_tok_s']:.2f}",
                              f"{base['total_s'] / row['total_s']:.2f}",
                              f"{row['follow_up_first_token_cold_s'] / row['follow_up_first_token_reused_s']:.1f}"
                              if "follow_up_first_token_reused_s" in row else "",
                              "/".join(str(v) for v in row.get("aggregate_decode_tok_s", {}).values()))
    console.print(table)


if __name__ == "__main__":
    main()
