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


class GGUFHeader:
    """A GGUF file's metadata and tensor table, read without its tensor data.

    Hand-written because gguf.GGUFReader builds a numpy view of every element of every array
    (the 150k-entry vocabulary included) before answering: 7 to 13 s per file on 2 cores, paid by
    every `ragtune models` and GGUF export, against well under a second here. Numeric arrays are read
    with numpy in one go, strings by their length prefix. Raises ValueError on a file that is not GGUF.

    `fields`: key -> (value type, array item type or None, value); arrays are lists.
    `tensors`: (name, shape in ggml order, ggml type) in file order.
    """

    def __init__(self, path: str | Path, *, stop_at: str | None = None, arrays: bool = True):
        import struct

        import numpy as np
        from gguf import GGUFValueType as T

        scalar = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
                  T.FLOAT32: "f", T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d"}
        self.fields: dict[str, tuple] = {}
        self.tensors: list[tuple[str, tuple[int, ...], int]] = []
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file (no GGUF magic)")
            order = "<" if struct.unpack("<I", handle.read(4))[0] < 0x10000 else ">"  # big-endian files exist

            def read(fmt: str):
                return struct.unpack(order + fmt, handle.read(struct.calcsize(order + fmt)))[0]

            def string() -> str:
                return handle.read(read("Q")).decode("utf-8", errors="replace")

            def value(kind):
                if kind == T.STRING:
                    return string()
                if kind == T.ARRAY:
                    item, count = T(read("I")), read("Q")
                    if item in scalar:
                        size = count * struct.calcsize(scalar[item])
                        if not arrays:
                            handle.seek(size, 1)
                            return item, None
                        dtype = np.dtype(scalar[item]).newbyteorder(order)
                        return item, np.frombuffer(handle.read(size), dtype=dtype).tolist()
                    return item, [value(item)[1] if item == T.ARRAY else value(item) for _ in range(count)]
                return read(scalar[kind])

            tensor_count, kv_count = read("Q"), read("Q")
            for _ in range(kv_count):
                name, kind = string(), T(read("I"))
                found = value(kind)
                item, found = found if kind == T.ARRAY else (None, found)
                self.fields[name] = (kind, item, found)
                if name == stop_at:
                    return
            for _ in range(tensor_count):
                name = string()
                shape = tuple(read("Q") for _ in range(read("I")))
                kind = read("I")
                read("Q")  # data offset
                self.tensors.append((name, shape, kind))

    def get(self, key: str, default=None):
        return self.fields[key][2] if key in self.fields else default


def header_value(path: str | Path, key: str):
    """One metadata value from a GGUF header, or None when the header does not declare it; stops
    reading at the key and skips arrays (`ragtune models` reads general.file_type this way)."""
    return GGUFHeader(path, stop_at=key, arrays=False).get(key)
