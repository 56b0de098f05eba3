"""One loaded GGUF model on llama.cpp serving several sequences at once (continuous batching).

Why not llama-cpp-python's `Llama.generate`: it decodes one sequence, samples in Python over the whole
vocabulary with numpy, and copies the logits out on every token, which left decoding at a third of
what the kernels do (bench/generation.py). Here the C API does the work: one `llama_decode` per step
carries the next token of every active sequence, sampling runs in llama.cpp's sampler chain, and
each slot keeps the tokens its KV cache holds, so a new prompt that shares a prefix with a slot
(a fixed system prompt, earlier chat turns) only evaluates what differs.

A single scheduler thread owns the llama.cpp context; callers submit requests and read token events
from a queue, so any number of threads may generate at once and the server and evaluation share one
model. This is hand-written because no maintained Python library does continuous batching on
llama.cpp's C API in-process (llama-cpp-python's own server serialises requests behind a lock).
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Request:
    """One prompt to complete; events arrive on `events`: ("token", id), then ("done", finish_reason)
    or ("error", exception)."""

    tokens: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    seed: int = 0
    repeat_penalty: float = 1.0  # over the last 64 tokens, as Ollama's default (1.1) does; 1.0 is off
    grammar: str | None = None  # GBNF (root rule "root"): only tokens the grammar allows are sampled
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_evaluated: int = 0  # prompt tokens actually run through the model (the rest came from the cache)
    generated: int = 0
    pending: int = -1  # the last sampled token, fed to the model on the next step
    sampler: object = None
    slot: "_Slot | None" = None


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV cache holds, in order
    request: Request | None = None
    last_used: float = 0.0


class LlamaCppEngine:
    """A GGUF model, a context with `slots` sequences (one KV stream each), and the scheduler thread."""

    def __init__(self, path: str, *, n_ctx: int, slots: int = 1, threads: int | None = None,
                 batch_threads: int | None = None, n_batch: int = 512, lora: str | None = None,
                 flash_attn: bool = True):
        import llama_cpp

        from .llamacpp_log import route_native_logs

        self._c = llama_cpp
        route_native_logs()
        llama_cpp.llama_backend_init()
        self.path, self.slots_count, self.n_batch = path, max(1, slots), n_batch
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        trained = int(llama_cpp.llama_model_n_ctx_train(self.model))
        n_ctx = min(n_ctx, trained) if trained > 0 else n_ctx  # never beyond what the model was trained for
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * self.slots_count
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = self.slots_count
        # one KV stream per sequence: attention then reads only that sequence's cells; a shared pool
        # made every token attend over all sequences' cells and capped 8 sequences at 1.7x one
        # (bench/generation.py). Flash attention: faster prefill and batched decode on CPU here too.
        cparams.kv_unified = False
        threads = threads or 2
        cparams.n_threads, cparams.n_threads_batch = threads, batch_threads or threads
        cparams.flash_attn_type = 1 if flash_attn else 0
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a {n_ctx}-token context for {path}")
        self.n_ctx_seq = n_ctx
        self._adapter = None
        if lora:
            self._adapter = llama_cpp.llama_adapter_lora_init(self.model, str(lora).encode())
            if not self._adapter:
                self.close()
                raise RuntimeError(f"llama.cpp could not load the LoRA adapter {lora} over {path}")
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapter)
            llama_cpp.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(max(n_batch, self.slots_count), 0, 1)
        self._slots = [_Slot(seq_id=i) for i in range(self.slots_count)]
        self._waiting: list[Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._forget = False
        self._thread = threading.Thread(target=self._run, name="llamacpp-scheduler", daemon=True)
        self._thread.start()

    # -- vocabulary (thread-safe: read-only) -------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buffer = (self._c.llama_token * capacity)()
        n = self._c.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_bos, special)
        if n < 0:
            buffer = (self._c.llama_token * -n)()
            n = self._c.llama_tokenize(self.vocab, data, len(data), buffer, -n, add_bos, special)
        return list(buffer[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self._c.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._c.llama_token_to_piece(self.vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    def is_end(self, token: int) -> bool:
        return bool(self._c.llama_vocab_is_eog(self.vocab, token))

    def special_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "ignore") if token >= 0 else ""

    def bos(self) -> int:
        return self._c.llama_vocab_bos(self.vocab)

    def eos(self) -> int:
        return self._c.llama_vocab_eos(self.vocab)

    def metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        n = self._c.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        if n < 0:
            return None
        if n >= len(buffer):
            buffer = ctypes.create_string_buffer(n + 1)
            self._c.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace")

    # -- requests ----------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        if len(request.tokens) + request.max_new_tokens > self.n_ctx_seq:
            raise ValueError(f"{len(request.tokens)} prompt tokens + {request.max_new_tokens} new exceed "
                             f"the {self.n_ctx_seq}-token context")
        with self._cond:
            if self._closed:
                raise RuntimeError("the llama.cpp engine is closed")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def forget(self) -> None:
        """Drop the cached prompts of idle sequences (before the next request is admitted): a cold start."""
        with self._cond:
            self._forget = True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        if getattr(self, "_thread", None) is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        c = self._c
        if getattr(self, "batch", None) is not None:
            c.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            c.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "_adapter", None):
            c.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        if getattr(self, "model", None):
            c.llama_model_free(self.model)
            self.model = None

    # -- the scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._active() and not self._forget:
                    self._cond.wait()
                if self._forget:
                    self._forget = False
                    self._evict_idle()
                if self._closed:
                    for request in self._waiting + [s.request for s in self._slots if s.request]:
                        request.events.put(("error", RuntimeError("the llama.cpp engine was closed")))
                    return
                admitted = self._admit()
            for request in admitted:
                self._guard(request, self._prefill)
            active = self._active()
            if active:
                try:
                    self._step(active)
                except Exception as exc:  # one failed step fails its requests, never the thread
                    logger.exception("llama.cpp decode step failed")
                    for request in active:
                        self._finish(request, ("error", exc))

    def _active(self) -> list[Request]:
        return [s.request for s in self._slots if s.request is not None and s.request.pending >= 0]

    def _admit(self) -> list[Request]:
        """Give waiting requests free slots, preferring the slot whose cache shares the longest prefix."""
        admitted = []
        while self._waiting:
            free = [s for s in self._slots if s.request is None]
            if not free:
                break
            request = self._waiting.pop(0)
            if request.cancelled.is_set():
                request.events.put(("done", "cancelled"))
                continue
            slot = max(free, key=lambda s: (_common_prefix(s.tokens, request.tokens), -s.last_used))
            slot.request, request.slot = request, slot
            admitted.append(request)
        return admitted

    def _guard(self, request: Request, action) -> None:
        try:
            action(request)
        except Exception as exc:
            logger.debug("llama.cpp request failed: %s", exc)
            if request.slot is not None:  # a failed batch may leave part of it in the cache: start clean
                self._c.llama_memory_seq_rm(self.memory, request.slot.seq_id, -1, -1)
                request.slot.tokens = []
            self._finish(request, ("error", exc))

    def _prefill(self, request: Request) -> None:
        c, slot, prompt = self._c, request.slot, request.tokens
        self._borrow_prefix(slot, prompt)
        keep = min(_common_prefix(slot.tokens, prompt), len(prompt) - 1)  # the last token is run for its logits
        c.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1)
        slot.tokens = slot.tokens[:keep]
        request.prompt_evaluated = len(prompt) - keep
        request.sampler = self._sampler(request)
        for start in range(keep, len(prompt), self.n_batch):
            chunk = prompt[start:start + self.n_batch]
            last = start + len(chunk) == len(prompt)
            entries = [(token, start + i, slot.seq_id, last and i == len(chunk) - 1) for i, token in enumerate(chunk)]
            self._decode(entries)
            slot.tokens.extend(chunk)
        token = c.llama_sampler_sample(request.sampler, self.ctx, len(chunk) - 1)
        self._emit(request, token)

    def _borrow_prefix(self, slot: _Slot, prompt: list[int]) -> None:
        """When another sequence's cache shares a longer prefix with `prompt`, take it over (a buffer
        copy, far cheaper than evaluating it): questions behind one system prompt evaluate it once."""
        own = _common_prefix(slot.tokens, prompt)
        donor = max((s for s in self._slots if s is not slot), default=None,
                    key=lambda s: _common_prefix(s.tokens, prompt))
        shared = _common_prefix(donor.tokens, prompt) if donor is not None else 0
        if shared > own + 16:
            c = self._c
            # across streams llama.cpp copies whole buffers only: copy, then cut after the prefix
            c.llama_memory_seq_cp(self.memory, donor.seq_id, slot.seq_id, -1, -1)
            c.llama_memory_seq_rm(self.memory, slot.seq_id, shared, -1)
            slot.tokens = donor.tokens[:shared]

    def _step(self, active: list[Request]) -> None:
        entries = [(r.pending, len(r.slot.tokens), r.slot.seq_id, True) for r in active]
        self._decode(entries)
        for index, request in enumerate(active):
            request.slot.tokens.append(request.pending)
            token = self._c.llama_sampler_sample(request.sampler, self.ctx, index)
            self._emit(request, token)

    def _emit(self, request: Request, token: int) -> None:
        if request.cancelled.is_set():
            self._finish(request, ("done", "cancelled"))
        elif self.is_end(token):
            self._finish(request, ("done", "stop"))
        else:
            request.generated += 1
            request.events.put(("token", token))
            if request.generated >= request.max_new_tokens:
                self._finish(request, ("done", "length"))
            else:
                request.pending = token

    def _finish(self, request: Request, event: tuple) -> None:
        request.pending = -1
        if request.sampler is not None:
            self._c.llama_sampler_free(request.sampler)
            request.sampler = None
        if request.slot is not None:
            request.slot.request, request.slot.last_used = None, time.monotonic()
            request.slot = None
        request.events.put(event)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Run one batch; when the KV cache is full, free the caches of idle slots and retry once."""
        self._fill(entries)
        status = self._c.llama_decode(self.ctx, self.batch)
        if status == 1 and self._evict_idle():
            self._fill(entries)
            status = self._c.llama_decode(self.ctx, self.batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp decode failed (status {status}"
                               + (": the context is full" if status == 1 else "") + ")")

    def _fill(self, entries) -> None:
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)

    def _evict_idle(self) -> bool:
        idle = [s for s in self._slots if s.request is None and s.tokens]
        for slot in idle:
            self._c.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            slot.tokens = []
        return bool(idle)

    def _sampler(self, request: Request):
        c = self._c
        grammar = None
        if request.grammar:
            grammar = c.llama_sampler_init_grammar(self.vocab, request.grammar.encode(), b"root")
            if not grammar:
                raise ValueError("llama.cpp could not parse the grammar (its parser wrote where on stderr)")
        chain = c.llama_sampler_chain_init(c.llama_sampler_chain_default_params())
        if request.repeat_penalty != 1.0:
            c.llama_sampler_chain_add(chain, c.llama_sampler_init_penalties(
                c.llama_vocab_n_tokens(self.vocab), 64, request.repeat_penalty, 0.0, 0.0))
        if grammar:  # before top-k / greedy: mask what the grammar forbids, then pick among the rest
            c.llama_sampler_chain_add(chain, grammar)
        if request.temperature <= 0:
            c.llama_sampler_chain_add(chain, c.llama_sampler_init_greedy())
        else:
            c.llama_sampler_chain_add(chain, c.llama_sampler_init_top_k(40))
            c.llama_sampler_chain_add(chain, c.llama_sampler_init_top_p(0.95, 1))
            c.llama_sampler_chain_add(chain, c.llama_sampler_init_temp(request.temperature))
            c.llama_sampler_chain_add(chain, c.llama_sampler_init_dist(request.seed))
        return chain


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
