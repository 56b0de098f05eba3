"""Build and install llama-cpp-python for this CPU, once per CPU kind: `python -m ragtune.generate.llamacpp_build`.

Why not `pip install llama-cpp-python`: pip builds it with -march=native, and the result can crash
with an illegal instruction on another CPU, or even on this one: a CPU may list AMX while the
kernel does not let programs use it (measured here: a native build died with SIGILL on load). So
ragtune builds one of two explicit variants, AVX2 (every x86 machine this targets) or AVX-512
(VNNI, VBMI, BF16; about twice the prompt speed of the AVX2 kernels where the CPU has them), trimmed
to the library (no tools, server, examples or tests), and keeps each wheel in the cache keyed by
variant and flags, so a .venv that moves to another machine picks or builds the wheel that fits.
A marker beside the venv records the variant installed; `unavailable_reason()` checks it against the
CPU before `llama_cpp` is ever imported, so a mismatch is a clear message, never a crash.

`make demo` and `make test` run this; when the build fails (no compiler, no CMake) they go on and
ragtune uses transformers, saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..runtime import cpu_flags

logger = logging.getLogger(__name__)
VERSION = "0.3.36"
COMMON = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
          "-DGGML_OPENMP=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
          "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF")
# required CPU flags (as /proc/cpuinfo names them) and the extra CMake switches, best first
VARIANTS = {
    "avx512": (("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd",
                "avx512_vnni", "avx512vbmi", "avx512_bf16"),
               "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"),
    "avx2": (("avx2", "fma", "f16c", "bmi2"), ""),
}
MARKER = Path(sys.prefix) / "ragtune-llamacpp.json"


def pick_variant(flags: set[str]) -> str | None:
    for name, (required, _cmake) in VARIANTS.items():
        if all(f in flags for f in required):
            return name
    return None


def installed_variant() -> dict | None:
    """What this venv's llama-cpp-python was built for, if ragtune built it."""
    try:
        return json.loads(MARKER.read_text())
    except (OSError, ValueError):
        return None


def missing_flags(flags: set[str]) -> list[str]:
    """CPU flags the installed build needs and this CPU lacks (empty when it fits or is not ours)."""
    record = installed_variant()
    if not record or not flags:
        return []
    return [f for f in record.get("requires", []) if f not in flags]


def wheel_dir(variant: str) -> Path:
    from ..models.cache import default_cache_dir

    cmake = f"{COMMON} {VARIANTS[variant][1]}"
    key = hashlib.sha256(f"{VERSION}|{cmake}|{sys.version_info[:2]}".encode()).hexdigest()[:12]
    return default_cache_dir() / "wheels" / f"llama-cpp-python-{VERSION}-{variant}-{key}"


def ensure(force: bool = False) -> int:
    """Install the wheel that fits this CPU (building it once); 0 on success or a clean skip."""
    flags = cpu_flags()
    variant = pick_variant(flags)
    if variant is None:
        logger.warning("llama.cpp skipped: this CPU lacks AVX2/FMA/F16C; ragtune will use transformers")
        return 0
    record = installed_variant()
    if record and record.get("variant") == variant and record.get("version") == VERSION and not force:
        logger.info("llama.cpp %s (%s) already installed", VERSION, variant)
        return 0
    folder = wheel_dir(variant)
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        logger.warning("building llama.cpp %s for this CPU (%s), once: about 7-10 minutes on 2 cores; "
                       "the wheel is kept in %s", VERSION, variant, folder)
        env = dict(os.environ, CMAKE_ARGS=f"{COMMON} {VARIANTS[variant][1]}",
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        started = time.perf_counter()
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q",
                                "-w", str(folder), f"llama-cpp-python=={VERSION}"], env=env)
        wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
        if build.returncode != 0 or not wheels:
            logger.warning("llama.cpp did not build (exit %s); ragtune will use transformers. Retry with "
                           "`make llamacpp` after installing a C++ compiler and CMake", build.returncode)
            return 0
        logger.warning("built llama.cpp in %.0f s", time.perf_counter() - started)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q",
                              str(wheels[-1])])
    if install.returncode != 0:
        logger.warning("installing %s failed; ragtune will use transformers", wheels[-1])
        return 0
    # the bindings' own dependencies (numpy, jinja2, diskcache, typing-extensions) come with ragtune
    MARKER.write_text(json.dumps({"variant": variant, "version": VERSION, "requires": list(VARIANTS[variant][0]),
                                  "wheel": str(wheels[-1])}, indent=1))
    logger.warning("llama.cpp %s (%s) installed", VERSION, variant)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(ensure(force="--force" in sys.argv))
