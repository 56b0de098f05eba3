"""OpenAI-compatible endpoints: chat completions, completions, embeddings, models.

Every chat answer is retrieval-augmented by the knowledge base of the model id (`KB/GENERATOR`).
The answer text carries the model's [n] markers; the checked citations travel as `references` on
the message, and, when streaming, on the last chunk's delta (next to finish_reason), a field
standard clients keep as an extra and otherwise ignore. A RAFT model's chain of thought goes in
`reasoning_content` (the field reasoning-model APIs use), its final answer in `content`. ragtune's
own details (grounding, the query retrieval used, timings) are under the response's `ragtune` key.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from . import answering
from .errors import APIError, error_body, from_ragtune
from .jobs import AnswerJob
from .schemas import ChatRequest, CompletionRequest, EmbeddingRequest

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _state(request: Request):
    return request.app.state.ragtune


def _max_new_tokens(state, requested: int | None) -> int:
    settings = state.settings
    if requested is None:
        return settings.max_tokens
    if requested > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens: {requested} is over this server's limit of {settings.max_tokens_limit}",
                       param="max_tokens", code="invalid_value")
    return requested


def _options(state, body, max_new_tokens: int) -> answering.RagOptions:
    settings, extra = state.settings, body.ragtune
    pick = lambda name, default: default if extra is None or getattr(extra, name) is None else getattr(extra, name)  # noqa: E731
    return answering.RagOptions(k=pick("k", settings.k), mode=pick("mode", settings.mode), filters=pick("filters", None),
                                min_relevance=pick("min_relevance", settings.min_relevance), max_new_tokens=max_new_tokens,
                                temperature=body.temperature or 0.0)


def split_messages(messages, limit: int) -> tuple[str, list[dict], str | None]:
    """(question, earlier turns, client system text): the last message is the question."""
    if len(messages) > limit:
        raise APIError(400, f"messages: {len(messages)} messages is over this server's limit of {limit}", param="messages")
    if messages[-1].role != "user":
        raise APIError(400, f"messages: the last message must be the user's question, not {messages[-1].role!r}",
                       param="messages")
    system, history = [], []
    for message in messages[:-1]:
        if message.role in ("system", "developer"):
            system.append(message.text())
        elif message.role in ("user", "assistant"):
            history.append({"role": message.role, "content": message.text()})
        else:
            raise APIError(400, f"messages: {message.role!r} messages are not supported (no tool calling)", param="messages")
    question = messages[-1].text()
    if not question.strip():
        raise APIError(400, "messages: the last user message is empty; send the question", param="messages")
    return question, history, "\n\n".join(s for s in system if s.strip()) or None


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def _stream_error(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return sse(error_body(exc.status, exc.message, exc.param, exc.code))
    from ..errors import RagtuneError

    if isinstance(exc, RagtuneError):
        api = from_ragtune(exc)
        return sse(error_body(api.status, api.message, code=api.code))
    return sse(error_body(500, f"internal error ({type(exc).__name__}); the server log has the details"))


async def _run(request: Request, body, question: str, history: list[dict], system: str | None, streaming: bool):
    state = _state(request)
    body.refuse_unsupported()
    model = state.resolve(body.model)
    options = _options(state, body, _max_new_tokens(state, getattr(body, "max_completion_tokens", None) or body.max_tokens))

    def run(on_text, on_ready):
        return answering.answer(model.access, model.served, question, options, history=history, system=system,
                                rewrite=state.settings.rewrite, on_text=on_text, on_ready=on_ready)

    job = AnswerJob(state, model, run, streaming=streaming)
    await job.start(request)
    return model, job


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    """A grounded chat answer; `stream: true` sends it as server-sent events."""
    question, history, system = split_messages(body.messages, _state(request).settings.max_messages)
    model, job = await _run(request, body, question, history, system, body.stream)
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not body.stream:
        result = await job.result(request)
        message = {"role": "assistant", "content": result.text, "references": result.references}
        if result.reasoning:
            message["reasoning_content"] = result.reasoning
        return JSONResponse({"id": ident, "object": "chat.completion", "created": created, "model": model.id,
                             "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason,
                                          "logprobs": None}],
                             "usage": _usage(result), "ragtune": result.summary})
    await job.ready(request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish=None, **extra) -> str:
        return sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model.id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra})

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        async for kind, value in job.events():
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "reasoning":
                yield chunk({"reasoning_content": value})
            elif kind == "done":
                yield chunk({"references": value.references}, value.finish_reason, ragtune=value.summary)
                if include_usage:
                    yield sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model.id,
                               "choices": [], "usage": _usage(value)})
            elif kind == "error":
                yield _stream_error(value)
                return
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    """The legacy completions form: the prompt is the question, answered from the knowledge base."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, f"prompt: send one prompt per request, got {len(prompts)}", param="prompt")
    if body.echo or body.suffix:
        raise APIError(400, "echo and suffix are not supported by this server", param="echo" if body.echo else "suffix")
    if not prompts[0].strip():
        raise APIError(400, "prompt: the prompt is empty", param="prompt")
    model, job = await _run(request, body, prompts[0], [], None, body.stream)
    ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def body_for(choice: dict, **extra) -> dict:
        return {"id": ident, "object": "text_completion", "created": created, "model": model.id,
                "choices": [{"index": 0, "logprobs": None, "finish_reason": None, **choice}], **extra}

    if not body.stream:
        result = await job.result(request)
        choice = {"text": result.text, "finish_reason": result.finish_reason, "references": result.references}
        return JSONResponse(body_for(choice, usage=_usage(result), ragtune=result.summary))
    await job.ready(request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        async for kind, value in job.events():
            if kind == "text":
                yield sse(body_for({"text": value}))
            elif kind == "done":
                yield sse(body_for({"text": "", "finish_reason": value.finish_reason, "references": value.references},
                                   ragtune=value.summary))
                if include_usage:
                    yield sse({**body_for({}), "choices": [], "usage": _usage(value)})
            elif kind == "error":
                yield _stream_error(value)
                return
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    """Vectors from a knowledge base's embedder (model: a served model id or the embedder's name)."""
    state = _state(request)
    access = _embedding_kb(state, body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input: send a string or a list of strings (token id arrays are not supported)", param="input")
    if len(texts) > state.settings.max_embedding_inputs:
        raise APIError(400, f"input: {len(texts)} texts is over the limit of {state.settings.max_embedding_inputs} "
                            "per request", param="input")
    if any(not t.strip() for t in texts):
        raise APIError(400, "input: empty strings cannot be embedded", param="input")
    embedder = access.embedder
    if body.dimensions is not None and body.dimensions != embedder.dimension:
        raise APIError(400, f"dimensions: {embedder.name} makes {embedder.dimension}-d vectors, not {body.dimensions}",
                       param="dimensions")
    as_query = body.ragtune is not None and body.ragtune.input_type == "query"

    def work():
        vectors = embedder.encode_queries(texts) if as_query else embedder.encode(texts)
        return np.asarray(vectors, dtype=np.float32), embedder.count_tokens(texts)

    import asyncio

    vectors, tokens = await asyncio.get_running_loop().run_in_executor(state.search_pool, work)
    data = []
    for i, vector in enumerate(vectors):
        value = (base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") if body.encoding_format == "base64"
                 else vector.tolist())
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _embedding_kb(state, name: str):
    if name in state.models:
        return state.models[name].access
    if name in state.kbs:
        return state.kbs[name]
    for access in state.kbs.values():
        if name == access.kb.config.embedder:
            return access
    names = [*state.models, *sorted({a.kb.config.embedder for a in state.kbs.values()})]
    raise APIError(404, f"the model {name!r} does not exist; for embeddings use one of {', '.join(names)}",
                   param="model", code="model_not_found")


def _model_entry(state, model) -> dict:
    served = model.served
    return {"id": model.id, "object": "model", "created": int(state.started), "owned_by": "ragtune",
            "ragtune": {"kb": model.access.name, "generator": served.label, "runtime": served.runtime,
                        "prompt": served.settings.prompt,
                        "slots": served.gate.slots, "queue": served.gate.queue,
                        "embedder": model.access.kb.config.embedder}}


@router.get("/v1/models")
async def list_models(request: Request):
    """One model per knowledge base and generator."""
    state = _state(request)
    return {"object": "list", "data": [_model_entry(state, m) for m in state.models.values()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    state = _state(request)
    return _model_entry(state, state.resolve(model_id))
