"""Server under load: `ragtune serve` on loopback, measured from outside as clients see it.

Two phases against one server process (started with the real CLI, so its memory is its own):

1. search load: --clients concurrent clients (default 50) post /v1/search for --seconds (default 30),
   while one more client asks streamed chat questions in a loop: requests/s, p50/p95 latency,
   unexpected errors (anything but 200), the chat's time to first token under that load, and the
   server's resident memory sampled every 0.2 s (peak, and growth after the warm-up).
2. chat burst: --burst streamed chat requests (default 3x the model's slots + queue) sent at once:
   the share refused with 429 (+ Retry-After) instead of queued without bound, the time to first
   token of those admitted, unexpected errors (anything but 200 or 429), and memory after it.

The knowledge base is ragtune's own docs/ (ingested into a temporary folder) unless --kb is given.
Bounded: each phase has a deadline and every request a timeout; nothing leaves the machine.

`python bench/serve_load.py [--clients 50] [--seconds 30] [--slots 2 --queue 4] [--json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-serve-load-key-0123456789"
QUERIES = ["how do I install ragtune offline", "chunk size and overlap", "citation check thresholds",
           "LoRA training on a CPU", "metadata filters syntax", "hybrid search reciprocal rank fusion",
           "what happens after kill -9 during ingest", "export a run to GGUF", "compare strategies report",
           "which embedder is the default", "llama.cpp weight format", "sync deletes vanished files",
           "BEIR evaluation nDCG", "worked example prompt", "evaluation runs database resume"]
QUESTIONS = ["How do I install ragtune?", "What does ragtune sync do?", "Which embedder does a knowledge base use?",
             "What is hybrid search?", "How are citations checked?"]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class MemorySampler(threading.Thread):
    """Resident memory of the server process (and its children), every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.process, self.interval, self.samples, self.stop = psutil.Process(pid), interval, [], threading.Event()

    def rss(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:
                pass
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.rss()))
            except Exception:
                return
            time.sleep(self.interval)

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def build_kb(folder: Path, threads: int) -> Path:
    from ragtune.kb import KnowledgeBase

    kb_path = folder / "kb"
    with KnowledgeBase.init(kb_path) as kb:
        kb.threads = threads
        kb.ingest([ROOT / "docs"])
    return kb_path


def start_server(kb: Path, args) -> tuple[subprocess.Popen, str]:
    from ragtune.serve.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "ragtune.cli", "serve", str(kb), "--port", str(port), "--model", args.model,
               "--threads", str(args.threads), "--slots", str(args.slots), "--queue", str(args.queue),
               "--max-tokens", str(args.max_tokens), "--search-threads", str(args.search_threads), "--k", str(args.k)]
    env = dict(os.environ, RAGTUNE_API_KEYS=KEY)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited: {process.stderr.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    sys.exit("the server did not start within 180 s")


async def stream_chat(client, model: str, question: str, max_tokens: int) -> dict:
    """One streamed chat answer: status, time to first text, total time, whether references arrived."""
    started = time.perf_counter()
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": question}]}
    result = {"status": None, "ttft_s": None, "total_s": None, "references": False, "retry_after": None}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            result["status"] = response.status_code
            result["retry_after"] = response.headers.get("retry-after")
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
                if delta.get("content") and result["ttft_s"] is None:
                    result["ttft_s"] = time.perf_counter() - started
                if "references" in delta:
                    result["references"] = True
    except Exception as exc:  # a transport failure is an unexpected error, counted as such
        result["status"] = f"{type(exc).__name__}"
    result["total_s"] = time.perf_counter() - started
    return result


async def search_phase(url: str, model: str, args) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    latencies, statuses, chats, ended = [], {}, [], []
    deadline = time.monotonic() + args.seconds
    rng = random.Random(0)

    async def searcher(client):
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = await client.post("/v1/search", json={"query": rng.choice(QUERIES), "k": 5})
                status = response.status_code
            except Exception as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        ended.append(time.perf_counter())

    async def chatter(client):
        i = 0
        while time.monotonic() < deadline - 2:
            chats.append(await stream_chat(client, model, QUESTIONS[i % len(QUESTIONS)], args.max_tokens))
            i += 1

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*[searcher(client) for _ in range(args.clients)], chatter(client))
        elapsed = max(ended) - started  # the searchers' own span (the chat client may finish later)
    ok = statuses.get(200, 0)
    ttft = [c["ttft_s"] for c in chats if c["status"] == 200 and c["ttft_s"] is not None]
    return {"clients": args.clients, "seconds": round(elapsed, 1), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "p95_ms": round(1000 * percentile(latencies, 0.95), 1), "ok": ok,
            "unexpected_errors": len(latencies) - ok, "statuses": {str(k): v for k, v in statuses.items()},
            "chat_under_load": {"answers": len(chats), "ok": sum(c["status"] == 200 for c in chats),
                                "references_present": sum(c["references"] for c in chats),
                                "ttft_p50_s": _round(percentile(ttft, 0.5)), "ttft_p95_s": _round(percentile(ttft, 0.95))}}


async def burst_phase(url: str, model: str, args) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=args.burst + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=90) as client:
        started = time.perf_counter()
        tasks = [stream_chat(client, model, QUESTIONS[i % len(QUESTIONS)], args.max_tokens) for i in range(args.burst)]
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.burst_timeout)
        elapsed = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 429]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    return {"requests": len(results), "capacity": args.slots + args.queue, "seconds": round(elapsed, 1),
            "ok": len(ok), "rejected_429": len(refused), "share_429": round(len(refused) / len(results), 3),
            "retry_after_present": all(r["retry_after"] for r in refused),
            "refusal_p95_ms": _round(1000 * (percentile([r["total_s"] for r in refused], 0.95) or 0), 1),
            "unexpected_errors": len(results) - len(ok) - len(refused),
            "references_present": sum(r["references"] for r in ok),
            "ttft_p50_s": _round(percentile(ttft, 0.5)), "ttft_p95_s": _round(percentile(ttft, 0.95)),
            "total_p95_s": _round(percentile([r["total_s"] for r in ok], 0.95))}


def _round(value, digits: int = 3):
    return None if value is None else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=Path, help="an existing knowledge base (default: docs/ ingested into a temp dir)")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warm-up", type=float, default=5.0,
                        help="seconds of search load, plus one burst of slots + queue answers, before memory is 'warm'")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--burst", type=int, help="chat requests sent at once (default 3x slots + queue)")
    parser.add_argument("--burst-timeout", type=float, default=90.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=3, help="passages per answer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search-threads", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()
    args.burst = args.burst or 3 * (args.slots + args.queue)

    from rich.console import Console
    from rich.table import Table

    from ragtune.runtime import enforce_offline

    enforce_offline()
    console = Console(stderr=args.json)
    with tempfile.TemporaryDirectory(prefix="ragtune-serve-bench-") as tmp:
        kb = args.kb or build_kb(Path(tmp), args.threads)
        process, url = start_server(kb, args)
        try:
            import httpx

            model = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
            sampler = MemorySampler(process.pid)
            sampler.start()
            loaded = sampler.rss()
            t_warm = time.monotonic()
            warm_args = argparse.Namespace(**{**vars(args), "seconds": args.warm_up, "burst": args.slots + args.queue})
            asyncio.run(search_phase(url, model, warm_args))  # every search thread and the embedder warmed up
            asyncio.run(burst_phase(url, model, warm_args))  # every slot used once
            t0 = time.monotonic()
            search = asyncio.run(search_phase(url, model, args))
            t1 = time.monotonic()
            burst = asyncio.run(burst_phase(url, model, args))
            t2 = time.monotonic()
            time.sleep(1.0)
            sampler.stop.set()
            sampler.join()
            warm = sampler.peak_between(t_warm, t0)
            memory = {"loaded_mb": round(loaded / 2**20, 1), "warm_peak_mb": round(warm / 2**20, 1),
                      "search_peak_mb": round(sampler.peak_between(t0, t1) / 2**20, 1),
                      "burst_peak_mb": round(sampler.peak_between(t1, t2) / 2**20, 1),
                      "end_mb": round(sampler.samples[-1][1] / 2**20, 1)}
            memory["growth_after_warm_up_mb"] = round(max(memory["search_peak_mb"], memory["burst_peak_mb"]) - memory["warm_peak_mb"], 1)
            warm_end = [rss for t, rss in sampler.samples if t <= t0][-1]
            memory["settled_growth_mb"] = round((sampler.samples[-1][1] - warm_end) / 2**20, 1)  # end vs end of warm-up
            memory["timeline_mb"] = [[round(t - t_warm, 1), round(rss / 2**20, 1)] for t, rss in sampler.samples[::5]]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    result = {"model": args.model, "slots": args.slots, "queue": args.queue, "threads": args.threads,
              "max_tokens": args.max_tokens, "k": args.k, "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
              "search": search, "burst": burst, "memory": memory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    table = Table(title=f"ragtune serve under load ({args.model}, {args.slots} slots + {args.queue} queued, "
                        f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("search: clients x seconds", f"{search['clients']} x {search['seconds']}"),
        ("search: requests/s", search["requests_per_s"]), ("search: p50 / p95 ms", f"{search['p50_ms']} / {search['p95_ms']}"),
        ("search: unexpected errors", f"{search['unexpected_errors']} of {search['requests']}"),
        ("chat under search load: answers (with references)",
         f"{search['chat_under_load']['ok']} ({search['chat_under_load']['references_present']})"),
        ("chat under search load: first token p50 / p95 s",
         f"{search['chat_under_load']['ttft_p50_s']} / {search['chat_under_load']['ttft_p95_s']}"),
        ("burst: requests (capacity)", f"{burst['requests']} ({burst['capacity']})"),
        ("burst: 200 / 429 / unexpected", f"{burst['ok']} / {burst['rejected_429']} / {burst['unexpected_errors']}"),
        ("burst: share of 429", f"{burst['share_429']:.0%}"), ("burst: 429 answered within (p95 ms)", burst["refusal_p95_ms"]),
        ("burst: first token p50 / p95 s (admitted)", f"{burst['ttft_p50_s']} / {burst['ttft_p95_s']}"),
        ("memory: loaded / warm / peak MB", f"{memory['loaded_mb']} / {memory['warm_peak_mb']} / "
                                            f"{max(memory['search_peak_mb'], memory['burst_peak_mb'])}"),
        ("memory: peak growth after warm-up MB", memory["growth_after_warm_up_mb"]),
        ("memory: end minus end of warm-up MB", memory["settled_growth_mb"]),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
