"""OpenAI-compatible completions and chat completions for text-generation models (pure functions).

The shapes follow OpenAI's API as KServe's LLM runtime serves it under ``/openai/v1``: a request
becomes the text-generation guest's invoke input (``prompt``, ``max_tokens``, ``temperature``,
``seed``, ``stop``), and the guest's answer becomes a completion with ``usage``. Two fields beyond
OpenAI's tell the truth about the model: ``synthetic_weights`` and ``notices`` (a capped
``max_tokens``, weights made by ``tarsctl models make-synthetic``); OpenAI's clients keep unknown
fields (``model_extra`` in the Python client).

A generation runs to its end in one sandbox, so a streamed answer (server-sent events) is sent once
the sandbox returns, a chunk per word: clients that stream work unchanged, but the first token
arrives no sooner than the whole text.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI's clients send only what the caller set; fields this runtime cannot honour are refused by
# name below rather than ignored, the rest of OpenAI's fields (user, metadata, ...) are ignored.
_UNSUPPORTED = {"logprobs", "top_logprobs", "tools", "functions", "tool_choice", "response_format", "suffix"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class CompletionRequest(_Request):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)


OpenAIRequest = CompletionRequest | ChatRequest


def unsupported_field(body: dict[str, Any]) -> str | None:
    for name in sorted(_UNSUPPORTED & body.keys()):
        if body[name] not in (None, False, 0):
            return name
    return None


def _text_of(message: ChatMessage) -> str:
    if isinstance(message.content, list):
        return "".join(str(part.get("text", "")) for part in message.content if part.get("type") == "text")
    return message.content or ""


def chat_prompt(messages: list[ChatMessage]) -> str:
    """A plain transcript ending with the assistant's turn: GPT-2 checkpoints carry no chat template."""
    lines = [f"{m.role.capitalize()}: {_text_of(m)}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def guest_input(request: OpenAIRequest) -> dict[str, Any]:
    if isinstance(request, ChatRequest):
        prompt = chat_prompt(request.messages)
    else:
        prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
    args: dict[str, Any] = {"prompt": prompt}
    if (limit := request.max_completion_tokens or request.max_tokens) is not None:
        args["max_tokens"] = limit
    if request.temperature is not None:
        args["temperature"] = request.temperature
    if request.seed is not None:
        args["seed"] = request.seed
    if request.stop is not None:
        args["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    return args


def _finish(reason: Any) -> str:
    return "length" if reason == "length" else "stop"


def _usage(reply: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(reply.get("prompt_tokens", 0)), int(reply.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _envelope(kind: str, model: str, reply: dict[str, Any], answer_id: str, created: int) -> dict[str, Any]:
    return {
        "id": answer_id,
        "object": kind,
        "created": created,
        "model": model,
        "synthetic_weights": bool(reply.get("synthetic_weights", False)),
        "notices": list(reply.get("notices", [])),
    }


def _choice(chat: bool, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
    if not chat:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if text is not None:
        delta["content"] = text
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def answer(request: OpenAIRequest, reply: dict[str, Any]) -> dict[str, Any]:
    """The whole completion, as one JSON answer."""
    chat = isinstance(request, ChatRequest)
    kind, prefix = ("chat.completion", "chatcmpl") if chat else ("text_completion", "cmpl")
    body = _envelope(kind, request.model, reply, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))
    text, finish = str(reply.get("text", "")), _finish(reply.get("finish_reason"))
    if chat:
        message = {"role": "assistant", "content": text}
        body["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
    else:
        body["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
    body["usage"] = _usage(reply)
    return body


def pieces(text: str) -> list[str]:
    """Words with the whitespace before them, so the pieces join back to the text exactly."""
    return re.findall(r"\s*\S+|\s+$", text)


def stream_events(request: OpenAIRequest, reply: dict[str, Any]) -> list[bytes]:
    """The completion as server-sent events: a chunk per word, the finish, usage if asked, [DONE]."""
    chat = isinstance(request, ChatRequest)
    kind, prefix = ("chat.completion.chunk", "chatcmpl") if chat else ("text_completion", "cmpl")
    envelope = _envelope(kind, request.model, reply, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))
    chunks = [
        {**envelope, "choices": [_choice(chat, piece, None, index == 0)]}
        for index, piece in enumerate(pieces(str(reply.get("text", ""))) or [""])
    ]
    chunks.append({**envelope, "choices": [_choice(chat, None, _finish(reply.get("finish_reason")), False)]})
    if (request.stream_options or {}).get("include_usage"):
        chunks.append({**envelope, "choices": [], "usage": _usage(reply)})
    return [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks] + [b"data: [DONE]\n\n"]


def error_body(message: str, param: str | None, status: int) -> dict[str, Any]:
    """OpenAI's error form."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status in (401, 403):
        kind = "authentication_error" if status == 401 else "permission_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
