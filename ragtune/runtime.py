"""Process-level switches that must be set explicitly: offline mode, logging and torch threads.

Environment variables and logging handlers belong to the process, so only entry points (`ragtune`'s
`main()`, the bench scripts, the tests' conftest) call `enforce_offline` and `configure_logging`,
once, at start. Library code never mutates `os.environ` (tests/test_runtime.py checks it): it stays
offline through explicit arguments (`local_files_only=True` on every load from a resolved local
folder) and sets threads through APIs (`set_torch_threads`, faiss.omp_set_num_threads).
"""

from __future__ import annotations

import logging
import os

OFFLINE_VARIABLES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def enforce_offline() -> None:
    """Make Hugging Face libraries fail instead of downloading anything, process-wide.

    For entry points only, before Hugging Face libraries are imported (they read some of these
    variables at import): it writes `os.environ`, which a library must leave to its caller.
    """
    for key, value in OFFLINE_VARIABLES.items():
        os.environ[key] = value


LOG_LEVEL_VARIABLE = "RAGTUNE_LOG_LEVEL"
_HANDLER_MARK = "_ragtune_cli_handler"


def log_level(verbose: bool = False) -> int:
    """The level for ragtune's loggers: `$RAGTUNE_LOG_LEVEL` (a name such as DEBUG or a number) when
    set, else INFO with `verbose`, else WARNING."""
    name = os.environ.get(LOG_LEVEL_VARIABLE, "").strip().upper()
    if name:
        level = int(name) if name.isdigit() else logging.getLevelName(name)
        if isinstance(level, int):
            return level
        logging.getLogger(__name__).warning("%s=%s is not a logging level (DEBUG, INFO, WARNING, ERROR); ignored",
                                            LOG_LEVEL_VARIABLE, os.environ[LOG_LEVEL_VARIABLE])
    return logging.INFO if verbose else logging.WARNING


def configure_logging(verbose: bool = False, console=None) -> None:
    """For entry points: show ragtune's log records on stderr through rich, at `log_level(verbose)`.

    Calling it again (e.g. once `--verbose` has been parsed) replaces the handler it installed.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("ragtune")
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(handler)
    handler = RichHandler(console=console or Console(stderr=True), show_time=False, show_path=False,
                          rich_tracebacks=False, markup=False)
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(log_level(verbose))


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars; ragtune shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def set_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count; None keeps torch's default.

    On a 2-core laptop, torch's threads contend with everything else running: users pass
    `--threads` (or the KB config's `threads`) to keep the machine responsive.
    """
    if threads is None:
        return
    if threads < 1:
        from .errors import ConfigError

        raise ConfigError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 `flags`, ARM `Features`), empty where /proc/cpuinfo is unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# the flags that decide which matrix kernels torch and llama.cpp can run
CPU_FLAGS_THAT_MATTER = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                         "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "sse4_2", "bmi2")


def cpu_key() -> str:
    """A short key for this CPU's kernels (its relevant flags and core count): measurements cached
    under it are never reused on a machine where they may not hold."""
    import hashlib

    flags = sorted(f for f in cpu_flags() if f in CPU_FLAGS_THAT_MATTER)
    return hashlib.sha256(f"{flags}|{os.cpu_count()}".encode()).hexdigest()[:12]


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 embedding is faster.

    Measured on a 2-core AVX512-BF16 machine: MiniLM bf16 encodes 2.2x faster than fp32 with
    cosine >= 0.998 to the fp32 vectors. Without native support bf16 is emulated and slower.
    """
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str) -> str:
    """'auto' becomes bf16 or fp32 for this CPU; explicit choices pass through."""
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision
