"""Request bodies: the OpenAI shapes clients send, plus ragtune's own search request.

OpenAI clients send many optional fields (top_p, user, seed, logprobs...), so the OpenAI bodies
accept unknown fields; the fields that would change the answer and that the server cannot honour
(n > 1, stop sequences, tools, echo) are refused with a message instead of silently ignored.
ragtune's options ride along as `ragtune: {...}` (`extra_body` in the openai client).
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .errors import APIError


class RagFields(BaseModel):
    """Per-request retrieval options; unset ones take the server's defaults."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=1, le=100)
    mode: Literal["hybrid", "dense", "lexical"] | None = None
    filters: Union[dict, list[str], None] = None
    min_relevance: float | None = Field(None, ge=-1.0, le=1.0)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        kinds = {part.type for part in self.content} - {"text"}
        if kinds:
            raise APIError(400, f"messages: only text content is supported, not {', '.join(sorted(kinds))}",
                           param="messages", code="unsupported_content")
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Generation(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int | None = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ragtune: RagFields | None = None

    def refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise APIError(400, "n: this server returns one choice per request; send n=1 or leave it out", param="n")
        if self.stop:
            raise APIError(400, "stop: stop sequences are not supported; the answer ends where the model ends it "
                                "or at max_tokens", param="stop")
        for name in ("tools", "functions"):
            if getattr(self, name, None):
                raise APIError(400, f"{name}: tool calling is not supported by this server", param=name)


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Generation):
    prompt: Union[str, list[str]]
    echo: bool = False
    suffix: str | None = None


class EmbeddingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_type: Literal["document", "query"] = "document"


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    ragtune: EmbeddingOptions | None = None


class SearchRequest(BaseModel):
    """The body of POST /v1/search: `ragtune search`'s options, by the same names."""

    model_config = ConfigDict(extra="forbid")
    query: str
    kb: str | None = None
    k: int = Field(5, ge=1, le=1000)
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    filters: Union[dict, list[str], None] = None
    explain: bool = False
    dense_weight: float = Field(1.0, ge=0.0)
    lexical_weight: float = Field(1.0, ge=0.0)
    rrf_k: int = Field(60, ge=1)


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runs: list[str] = Field(..., min_length=2, max_length=10)
    metric: str | None = None
    knowledge_changes: Literal["daily", "monthly", "never"] = "monthly"
