"""Which weight format of a GGUF model runs fastest on this CPU, chosen once by measurement.

The packaged GGUFs are Q4_1 / Q4_K_M: small, but on x86 their matrix kernels fill a prompt at about
half the speed of llama.cpp's Q4_0 (repacked) or tinyBLAS F32/F16 paths (bench/generation.py), and RAG
prompts are long. Which type is fastest depends on the CPU (AVX2 or AVX-512, bf16), on the llama.cpp
build and on the model's shapes, so it is measured, not assumed: each candidate is written once with
llama.cpp's own quantiser, timed on a RAG-shaped workload (prompt fill plus a short answer), and the
winner is cached beside the converted checkpoints, keyed by the source's content hash and by the
machine (CPU flags and llama.cpp build). A different CPU gets its own measurement, never a stale pick.
Speed depends on the tensors' shapes and types, not on their values, so the choice is also kept by
shape (architecture plus the tensor table): a second fine-tune of the same model, exported the same
way, reuses it and pays only for the one conversion (a fine-tuned GGUF used to cost ~130 s of
measuring each; `choose` and the benches export two).

Candidates are the source itself and conversions that lose nothing (F32, F16 hold a 4-bit source
exactly) or next to nothing (Q8_0). Q4_0 is the fastest here but re-rounds 4-bit weights a second
time, and SmolLM2-135M then answered a test question with invented facts (tests/test_answer.py), so
it is never chosen on its own; `weight_format="Q4_0"` (`--weight-format Q4_0`) pins it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from ..runtime import CPU_FLAGS_THAT_MATTER

logger = logging.getLogger(__name__)

# llama.cpp's llama_ftype values for the candidates (include/llama.h)
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "BF16": 32}
CANDIDATES = ("source", "Q8_0", "F16", "F32")
WEIGHT_FORMATS = ("auto", *CANDIDATES, "Q4_0", "BF16")
# the workload a choice is scored on: a RAG answer (bench/generation.py uses the same shape)
PROMPT_TOKENS, ANSWER_TOKENS = 800, 128


def machine_key() -> str:
    """CPU features plus the llama.cpp build: what decides which kernels run."""
    import llama_cpp

    from ..runtime import cpu_flags
    from .llamacpp_log import route_native_logs

    route_native_logs()  # before the first quantise or load writes its log

    flags = sorted(f for f in cpu_flags() if f in CPU_FLAGS_THAT_MATTER)
    build = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    return hashlib.sha256(f"{flags}|{build}|{llama_cpp.__version__}".encode()).hexdigest()[:12]


def runtime_gguf(source: Path, *, weight_format: str = "auto", threads: int | None = None,
                 cache_dir: Path | None = None) -> tuple[Path, str]:
    """The GGUF file to load for `source` and its format name ('source' when used as shipped)."""
    if weight_format not in WEIGHT_FORMATS:
        raise ConfigError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}, got {weight_format!r}")
    if weight_format == "source":
        return source, "source"
    from ..models.cache import default_cache_dir, source_digest

    cache_dir = Path(cache_dir or default_cache_dir())
    digest = source_digest([source], cache_dir)
    folder = cache_dir / "llamacpp" / f"{source.stem}-{digest[:16]}-{machine_key()}"
    if weight_format != "auto":
        return _converted(source, folder, weight_format), weight_format
    choice = folder / "choice.json"
    if choice.is_file():
        try:
            record = json.loads(choice.read_text())
            picked = record["format"]
            path = source if picked == "source" else folder / f"{picked}.gguf"
            if path.is_file() and sorted(record["measured"]) == sorted(CANDIDATES):
                return path, picked
        except (OSError, ValueError, KeyError):
            logger.info("ignoring an unreadable %s; measuring again", choice)
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    try:
        shaped = cache_dir / "llamacpp" / "by-shape" / f"{shape_key(source)}-{machine_key()}.json"
    except (OSError, ValueError):  # not a GGUF we can read: llama.cpp's own load says what is wrong
        shaped = None
    with FileLock(str(folder / ".measure.lock")):  # two processes measuring at once would time each other
        if choice.is_file() and _current(choice):
            return runtime_gguf(source, threads=threads, cache_dir=cache_dir)
        if shaped is not None and shaped.is_file() and _current(shaped):
            record = json.loads(shaped.read_text())
            picked = record["format"]
            logger.info("%s has the shapes of %s, measured before on this CPU: runs as %s", display_name(source),
                        record["source"], picked)
            path = source if picked == "source" else _converted(source, folder, picked)
            _write_json(choice, {**record, "source": str(source), "same_shape_as": record["source"]})
            return path, picked
        path, picked = _measure_and_choose(source, folder, threads)
        if shaped is not None:
            shaped.parent.mkdir(parents=True, exist_ok=True)
            _write_json(shaped, json.loads(choice.read_text()))
        return path, picked


def shape_key(source: Path) -> str:
    """What decides the kernels besides the machine: the architecture and every tensor's name,
    shape and type (weights' values do not change speed)."""
    from ..models.gguf import GGUFHeader

    header = GGUFHeader(source, arrays=False)
    table = [header.get("general.architecture"), header.tensors]
    return hashlib.sha256(json.dumps(table, default=list).encode()).hexdigest()[:16]


def _write_json(path: Path, record: dict) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.part")
    with os.fdopen(handle, "w") as out:
        json.dump(record, out, indent=1)
    os.replace(tmp, path)


def _current(choice: Path) -> bool:
    """A recorded choice made among today's candidates (a changed list measures again)."""
    try:
        return sorted(json.loads(choice.read_text())["measured"]) == sorted(CANDIDATES)
    except (OSError, ValueError, KeyError):
        return False


def cached_choice(source: Path, cache_dir: Path | None = None) -> str | None:
    """The format measured for `source` on this machine, or None if it was never measured (cheap:
    no hashing unless the source's hash is already known)."""
    from ..models.cache import default_cache_dir, known_digest

    cache_dir = Path(cache_dir or default_cache_dir())
    digest = known_digest([source], cache_dir)
    if digest is None:
        return None
    choice = cache_dir / "llamacpp" / f"{source.stem}-{digest[:16]}-{machine_key()}" / "choice.json"
    try:
        record = json.loads(choice.read_text())
        return record["format"] if sorted(record["measured"]) == sorted(CANDIDATES) else None
    except (OSError, ValueError, KeyError):
        return None


def _converted(source: Path, folder: Path, fmt: str) -> Path:
    """`source` re-quantised to `fmt` by llama.cpp (once; written to a temporary name, then renamed)."""
    import llama_cpp

    from .llamacpp_log import route_native_logs

    route_native_logs()  # the quantiser lists every tensor it writes
    target = folder / f"{fmt}.gguf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, suffix=".gguf.part")
    os.close(handle)
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = FTYPES[fmt], True, os.cpu_count() or 1
        started = time.perf_counter()
        status = llama_cpp.llama_model_quantize(str(source).encode(), tmp.encode(), ctypes.byref(params))
        if status != 0:
            raise ConfigError(f"llama.cpp could not convert {source} to {fmt} (status {status})")
        os.replace(tmp, target)
        logger.info("wrote %s as %s in %.1f s", display_name(source), fmt, time.perf_counter() - started)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def measure(paths: dict[str, Path], *, threads: int | None, prompt_tokens: int = 384, answer_tokens: int = 32,
            rounds: int = 2) -> dict[str, dict]:
    """Prefill and decode tokens/s of each GGUF file on this machine.

    All candidates are loaded at once and timed in interleaved rounds, best of each kept, so a
    burst of other work on the machine slows every candidate alike instead of deciding the choice.
    """
    from .llamacpp_engine import LlamaCppEngine, Request

    engines = {}
    try:
        for name, path in paths.items():
            engines[name] = LlamaCppEngine(str(path), n_ctx=prompt_tokens + answer_tokens + 8, slots=1, threads=threads)
        first = next(iter(engines.values()))
        words = first.tokenize(" the quick brown fox jumps over a lazy dog and" * (prompt_tokens // 8))
        prompt = words[:prompt_tokens - 1]
        best = {name: {"prefill_tok_s": 0.0, "decode_tok_s": 0.0} for name in engines}
        for round_ in range(rounds):
            for name, engine in engines.items():
                request = engine.submit(Request(tokens=[round_ + 10] + prompt, max_new_tokens=answer_tokens + 1))
                started = time.perf_counter()
                _expect_token(request)
                filled = time.perf_counter()
                produced = _drain(request)
                decoded = time.perf_counter()
                best[name]["prefill_tok_s"] = max(best[name]["prefill_tok_s"], prompt_tokens / (filled - started))
                if produced:
                    best[name]["decode_tok_s"] = max(best[name]["decode_tok_s"], produced / (decoded - filled))
    finally:
        for engine in engines.values():
            engine.close()
    return {name: {"prefill_tok_s": round(v["prefill_tok_s"], 1), "decode_tok_s": round(v["decode_tok_s"], 1),
                   "size_mb": round(paths[name].stat().st_size / 1e6, 1)} for name, v in best.items()}


def _expect_token(request) -> None:
    kind, value = request.events.get()
    if kind == "error":
        raise value


def _drain(request) -> int:
    tokens = 0
    while True:
        kind, value = request.events.get()
        if kind == "token":
            tokens += 1
        elif kind == "error":
            raise value
        else:
            return tokens


def _measure_and_choose(source: Path, folder: Path, threads: int | None) -> tuple[Path, str]:
    # a warning, so the default log level shows it: the first answer waits for this
    logger.warning("measuring weight formats for %s on this CPU (once, ~%d s)…", display_name(source),
                   _estimate_s(source))
    started = time.perf_counter()
    paths = {fmt: source if fmt == "source" else _converted(source, folder, fmt) for fmt in CANDIDATES}
    results = measure(paths, threads=threads)
    for fmt, numbers in results.items():
        numbers["rag_answer_s"] = round(PROMPT_TOKENS / max(numbers["prefill_tok_s"], 1e-6)
                                        + ANSWER_TOKENS / max(numbers["decode_tok_s"], 1e-6), 2)
        logger.info("%s as %s: %s", display_name(source), fmt, numbers)
    best = min(results, key=lambda f: results[f]["rag_answer_s"])
    for fmt in CANDIDATES:  # keep the disk to the one that won
        if fmt not in ("source", best):
            (folder / f"{fmt}.gguf").unlink(missing_ok=True)
    record = {"format": best, "source": str(source), "measured": results,
              "workload": {"prompt_tokens": PROMPT_TOKENS, "answer_tokens": ANSWER_TOKENS}, "threads": threads}
    _write_json(folder / "choice.json", record)
    logger.info("%s runs as %s here (%.2f s per RAG answer vs %.2f s as shipped; measured in %.0f s)",
                display_name(source), best, results[best]["rag_answer_s"], results["source"]["rag_answer_s"],
                time.perf_counter() - started)
    return (source if best == "source" else folder / f"{best}.gguf"), best


def display_name(source: Path) -> str:
    """The model's name as a person knows it: a joined file's name less its content hash."""
    return re.sub(r"-[0-9a-f]{16}$", "", source.stem)


def _estimate_s(source: Path) -> int:
    """Rough seconds a measurement takes, to say how long the wait is: conversions and timings grow
    with the parameter count (not the file size: an F32 export is 4x a Q4 file of the same model).
    Fitted to 2 cores shared with other jobs (SmolLM2-135M: 45 s; Qwen2.5-Coder-0.5B: 120 s)."""
    import math

    from ..models.gguf import GGUFHeader

    try:
        parameters = sum(math.prod(shape) for _, shape, _ in GGUFHeader(source, arrays=False).tensors)
    except (OSError, ValueError):
        parameters = source.stat().st_size
    return int(max(10, round(25 + parameters / 1e6 * 0.2, -1)))


def prepare_packaged(threads: int | None = None) -> int:
    """Measure the weight format of every installed packaged GGUF chat model, so that the first answer
    does not wait for it (`make demo` and `make test` run this). A no-op where the choice is cached;
    never fails the caller: without llama.cpp there is nothing to measure, and a model that cannot be
    measured here is measured (or reported) on first use instead."""
    from ..models.gguf import gguf_file
    from ..models.registry import registered_models
    from .llamacpp import unavailable_reason

    reason = unavailable_reason()
    if reason:
        logger.warning("weight formats not measured: %s", reason)
        return 0
    for spec in registered_models():
        if spec.kind != "chat" or spec.format not in ("gguf", "gguf-parts") or not spec.installed:
            continue
        try:
            source = gguf_file(spec.name)
            known = cached_choice(source)
            _path, picked = runtime_gguf(source, threads=threads)
        except Exception as exc:  # e.g. a model llama.cpp cannot load: its first use says so
            logger.warning("weight formats for %s not measured: %s", spec.name, exc)
            continue
        if known:  # a new measurement has said what it chose
            logger.info("%s runs as %s on this CPU (measured before)", spec.name, picked)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)  # what was measured; llama.cpp's own lines stay at their levels
    sys.exit(prepare_packaged())
