"""The OpenAI wire format of `edgedelta serve`: request bodies parsed and checked into a
`CompletionRequest`, OpenAI-style JSON errors, and the response and stream-chunk objects.

Checks follow OpenAI's API: a field of the wrong type or range is a 400 naming the field
(`param`), an argument the API does not know is a 400 ("unrecognized request argument"), and
an OpenAI argument this server does not implement is accepted only at its neutral value
(n=1, penalties 0, no logprobs), so a client that sends the defaults works and one that asks
for more is told which field is not supported. Nothing here knows the model: the token-level
checks (context length) are made by the app with the artifact's tokenizer."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_STOP = 4  # OpenAI's limit on stop strings
ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """An answer other than 200: HTTP status + OpenAI's error object
    {"error": {"message", "type", "param", "code"}} (+ response headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class CompletionRequest:
    """One checked request of /v1/chat/completions (kind 'chat': `messages`) or /v1/completions
    (kind 'completion': `prompt`, text or token ids). max_tokens None: the server's default."""

    kind: str
    model: str
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | tuple[int, ...] = ""
    max_tokens: int | None = None
    temperature: float = 1.0  # OpenAI's default; 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with usage
    ignore_eos: bool = False  # vLLM's and llama.cpp's extension: generate max_tokens even past EOS

    @property
    def prompt_param(self) -> str:
        """The field a prompt-length error names."""
        return "messages" if self.kind == "chat" else "prompt"


# ---- field checks --------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int(body: dict, name: str, low: int | None = None, high: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise bad(name, f"'{name}' must be an integer, got {json.dumps(v)[:40]}")
    if (low is not None and v < low) or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise bad(name, f"'{name}' must be {rng}, got {v}")
    return v


def _num(body: dict, name: str, low: float, high: float, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v):
        raise bad(name, f"'{name}' must be a number, got {json.dumps(v)[:40]}")
    if not low <= v <= high:
        raise bad(name, f"'{name}' must be between {low:g} and {high:g}, got {v}")
    return float(v)


def _bool(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(name, f"'{name}' must be a boolean, got {json.dumps(v)[:40]}")
    return v


def _neutral(body: dict, name: str, allowed: tuple) -> None:
    """An OpenAI argument this server does not implement: accepted at its neutral value only."""
    v = body.get(name)
    if v is None or any(v == a and type(v) is type(a) for a in allowed):
        return
    raise bad(name, f"'{name}' = {json.dumps(v)[:40]} is not supported by this server (allowed: "
                    f"{', '.join(json.dumps(a) for a in allowed)})", code="unsupported_value")


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("stop", "'stop' must be a string or a list of strings")
    if len(items) > MAX_STOP:
        raise bad("stop", f"'stop' holds at most {MAX_STOP} strings, got {len(items)}")
    if any(not s for s in items):
        raise bad("stop", "'stop' strings must not be empty")
    return tuple(items)


def _content(v: Any, where: str) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        out = []
        for i, part in enumerate(v):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{i}]", f"'{where}.content[{i}]' must be a text part "
                                                    '{"type": "text", "text": "..."} (this model reads text only)')
            out.append(part["text"])
        return "".join(out)
    raise bad(f"{where}.content", f"'{where}.content' must be a string or a list of text parts")


def _messages(body: dict) -> tuple[dict[str, str], ...]:
    v = body.get("messages")
    if v is None:
        raise bad("messages", "'messages' is required")
    if not isinstance(v, list) or not v:
        raise bad("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"'{where}' must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}")
        if m.get("content") is None:
            raise bad(f"{where}.content", f"'{where}.content' is required")
        out.append({"role": role, "content": _content(m["content"], where)})
    return tuple(out)


def _prompt(body: dict) -> str | tuple[int, ...]:
    """A string, a list holding one string, a list of token ids, or a list holding one such list."""
    v = body.get("prompt")
    if v is None:
        raise bad("prompt", "'prompt' is required")
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]
    if isinstance(v, str):
        if not v:
            raise bad("prompt", "'prompt' is empty")
        return v
    if isinstance(v, list) and v and all(_is_int(t) and t >= 0 for t in v):
        return tuple(v)
    if isinstance(v, list) and len(v) > 1 and all(isinstance(x, (str, list)) for x in v):
        raise bad("prompt", f"'prompt' holds {len(v)} prompts; this server takes one per request "
                            "(send them as separate requests: concurrent requests are batched)")
    raise bad("prompt", "'prompt' must be a non-empty string or a non-empty list of token ids")


# every field each endpoint knows; anything else is refused as OpenAI refuses it
_COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n",
           "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "ignore_eos"}
_FIELDS = {
    "chat": _COMMON | {"messages", "max_completion_tokens", "response_format", "tools", "tool_choice",
                       "parallel_tool_calls", "metadata", "store"},
    "completion": _COMMON | {"prompt", "echo", "best_of", "suffix"},
}


def parse_request(raw: bytes, kind: str) -> CompletionRequest:
    """A request body -> CompletionRequest, or ApiError(400) naming the bad field."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - _FIELDS[kind])
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument supplied: '{unknown[0]}'", code="unknown_parameter")
    model = body.get("model")
    if model is None:
        raise bad("model", "'model' is required (GET /v1/models lists the model this server runs)")
    if not isinstance(model, str):
        raise bad("model", f"'model' must be a string, got {json.dumps(model)[:40]}")
    for name, allowed in (("n", (1,)), ("frequency_penalty", (0, 0.0)), ("presence_penalty", (0, 0.0)),
                          ("logit_bias", ({},)), ("logprobs", (False,) if kind == "chat" else (0,)),
                          ("top_logprobs", (0,)), ("echo", (False,)), ("best_of", (1,)), ("tools", ([],)),
                          ("tool_choice", ("none",)), ("response_format", ({"type": "text"},))):
        _neutral(body, name, allowed)
    for name in ("user", "suffix"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad(name, f"'{name}' must be a string")
    max_tokens = _int(body, "max_tokens", low=1)
    if kind == "chat":
        mct = _int(body, "max_completion_tokens", low=1)
        if max_tokens is not None and mct is not None and mct != max_tokens:
            raise bad("max_completion_tokens", "'max_tokens' and 'max_completion_tokens' differ; send one")
        max_tokens = max_tokens if max_tokens is not None else mct
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise bad("stream_options", "'stream_options' is only allowed with 'stream': true")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
            raise bad("stream_options", "'stream_options' must be an object {\"include_usage\": true|false}")
        include_usage = _bool(opts, "include_usage")
    return CompletionRequest(
        kind=kind, model=model,
        messages=_messages(body) if kind == "chat" else (),
        prompt=_prompt(body) if kind == "completion" else "",
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_num(body, "top_p", 0.0, 1.0, 1.0),
        stop=_stop(body),
        seed=_int(body, "seed", low=0, high=2**63 - 1),
        stream=stream, include_usage=include_usage,
        ignore_eos=_bool(body, "ignore_eos"),
    )


# ---- responses ---------------------------------------------------------------------------------
FINISH_REASON = {"eos": "stop", "stop": "stop", "length": "length"}  # engine reason -> OpenAI's


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(req: CompletionRequest, rid: str, created: int, text: str, finish: str,
                    prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The whole answer of a non-streaming request."""
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": FINISH_REASON[finish]}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": FINISH_REASON[finish]}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(req: CompletionRequest, rid: str, created: int, text: str | None = None, finish: str | None = None,
               role: bool = False, usage_obj: dict[str, int] | None = None) -> dict[str, Any]:
    """One server-sent event of a streaming request: a text piece, the finish reason, or (with
    `usage_obj`) the closing usage chunk, which has no choices, as OpenAI sends it."""
    if usage_obj is not None:
        choices: list[dict[str, Any]] = []
    elif req.kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choices = [{"index": 0, "delta": delta, "logprobs": None,
                    "finish_reason": FINISH_REASON[finish] if finish else None}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None,
                    "finish_reason": FINISH_REASON[finish] if finish else None}]
    out = {"id": rid, "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion",
           "created": created, "model": req.model, "choices": choices}
    if usage_obj is not None:
        out["usage"] = usage_obj
    return out


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line ('[DONE]' is sent as is)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
