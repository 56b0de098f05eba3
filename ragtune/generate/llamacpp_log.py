"""llama.cpp's own log (model loader, quantiser, context set-up) sent to Python logging, not the terminal.

Why: loading or re-quantising a GGUF makes llama.cpp describe every metadata key and tensor, about a
thousand lines on a first run. llama-cpp-python's default callback prints all of them to stderr
unless its high-level `Llama` turns it down, and ragtune drives the C API without `Llama`. Here each
line becomes a record of the `ragtune.llamacpp.native` logger: DEBUG for llama.cpp's debug and info
lines (`RAGTUNE_LOG_LEVEL=DEBUG` shows them), INFO for its warnings (`--verbose`), ERROR for its
errors, which the user always sees. llama.cpp and ggml write through this one callback on the load and
quantise paths; only crash reports (abort, backtrace) go to stderr directly, and they should.
"""

from __future__ import annotations

import ctypes
import logging
import threading

native_logger = logging.getLogger("ragtune.llamacpp.native")

# ggml_log_level (ggml/include/ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last)
LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
CONT = 5


class NativeLog:
    """Joins llama.cpp's fragments into lines: it often writes one line in several calls (the
    quantiser's tensor name, then its size), so a line is logged when its newline arrives, at the
    highest level any of its fragments had."""

    def __init__(self, logger: logging.Logger = native_logger):
        self.logger = logger
        self._partial = ""
        self._level = logging.DEBUG
        self._lock = threading.Lock()  # the scheduler thread and the caller's may both load or decode

    def write(self, level: int, text: str) -> None:
        with self._lock:
            if level != CONT:
                self._level = max(self._level, LEVELS.get(level, logging.DEBUG)) if self._partial \
                    else LEVELS.get(level, logging.DEBUG)
            *lines, self._partial = (self._partial + text).split("\n")
            line_level = self._level
            if not self._partial:
                self._level = logging.DEBUG
        for line in lines:
            if line.strip() and self.logger.isEnabledFor(line_level):
                self.logger.log(line_level, "%s", line.rstrip())


_sink = NativeLog()
_callback = None
_route_lock = threading.Lock()


def route_native_logs() -> None:
    """Install the callback once per process, before anything loads or quantises a model."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp  # importing it installs llama-cpp-python's printing callback, replaced here

    with _route_lock:
        if _callback is not None:
            return

        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            _sink.write(int(level), (text or b"").decode("utf-8", "replace"))

        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        _callback = callback  # keep a reference: ctypes frees the C trampoline with the Python object
