"""The OpenAI chat-completions wire format: request schema, errors, and the response and chunk bodies.

Requests are validated with pydantic; fields the OpenAI API has but this server does not use (``user``,
``presence_penalty``, ``logprobs``...) are accepted and ignored, so stock clients work. Every error is answered as
OpenAI does: ``{"error": {"message", "type", "param", "code"}}`` with a matching HTTP status.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """An error answered to the client as OpenAI-format JSON."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------------------------------
# Request


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_string(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)  # one choice per request

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(data: Any) -> ChatCompletionRequest:
    """Decoded JSON -> a validated request, or a 400 APIError naming the first offending field."""
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise APIError(400, f"invalid request: {where}: {err['msg']}", param=where or None,
                       code="invalid_value") from None


# --------------------------------------------------------------------------------------------------------------
# Responses

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(request_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int, created: int | None = None) -> dict[str, Any]:
    return {
        "id": request_id, "object": "chat.completion", "created": created or int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": FINISH_REASONS[finish_reason]}],
        "usage": usage(prompt_tokens, completion_tokens), "system_fingerprint": None,
    }


def chunk(request_id: str, model: str, created: int, delta: dict[str, Any] | None,
          finish_reason: str | None = None, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` gives the usage-only chunk (no choices)."""
    finish = FINISH_REASONS[finish_reason] if finish_reason else None
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": choices, "system_fingerprint": None}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "zamba2vl"}
