"""The GGUF file of a packaged chat model, as llama.cpp loads it: in place, or parts joined once.

llama.cpp runs GGUF files as they are (quantised), so nothing is converted. A model split across
several packages (Qwen2.5-Coder-0.5B) is joined once into the cache (models/cache.py `joined_gguf`),
the same file the transformers conversion reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from .cache import default_cache_dir, joined_gguf
from .registry import get_model

logger = logging.getLogger(__name__)


def is_gguf_path(name: str | Path) -> bool:
    path = Path(name).expanduser()
    return path.suffix.lower() == ".gguf" and path.is_file()


def gguf_file(name: str | Path, cache_dir: Path | None = None) -> Path:
    """The GGUF file for a registered chat model or a path to a .gguf file; nothing is downloaded."""
    if is_gguf_path(name):
        return Path(name).expanduser().resolve()
    spec = get_model(str(name))
    if spec.format not in ("gguf", "gguf-parts"):
        raise ConfigError(f"model {spec.name!r} ({spec.format}) is not a GGUF model; use --backend transformers")
    return joined_gguf(spec, Path(cache_dir or default_cache_dir()))


def header_value(path: str | Path, key: str):
    """One metadata value from a GGUF header, or None when the header does not declare it.

    Hand-written because gguf.GGUFReader builds a numpy view of every element of every array
    (the 150k-entry vocabulary included) before answering: 13 s per file on 2 cores against
    milliseconds here. Only the key/value section is walked; arrays are skipped by size, strings
    by their length prefix. Raises ValueError on a file that is not GGUF.
    """
    import struct

    from gguf import GGUFValueType as T

    scalar = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
              T.FLOAT32: "f", T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d"}
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (no GGUF magic)")
        raw_version = handle.read(4)
        order = "<" if struct.unpack("<I", raw_version)[0] < 0x10000 else ">"  # big-endian files exist

        def read(fmt: str):
            size = struct.calcsize(order + fmt)
            return struct.unpack(order + fmt, handle.read(size))[0]

        def string() -> bytes:
            return handle.read(read("Q"))

        def value(kind: int):
            kind = T(kind)
            if kind == T.STRING:
                return string().decode("utf-8", errors="replace")
            if kind == T.ARRAY:
                item, count = T(read("I")), read("Q")
                if item in scalar:
                    handle.seek(count * struct.calcsize(scalar[item]), 1)
                else:
                    for _ in range(count):
                        value(item)
                return None  # arrays are skipped, not returned
            return read(scalar[kind])

        read("Q")  # tensor count
        for _ in range(read("Q")):
            name = string().decode("utf-8", errors="replace")
            found = value(read("I"))
            if name == key:
                return found
    return None
