"""Conversions to the GenAI semantic-convention message shapes, and the SDK's JSON encoder.

Messages are recorded parts-based, as ``gen_ai.input.messages`` / ``gen_ai.output.messages``
define them: ``{"role": "user", "parts": [{"type": "text", "content": "..."}]}``; output
messages also carry ``finish_reason``. ``gen_ai.system_instructions`` is a list of parts.
Callers may pass the common OpenAI chat shape (``{"role", "content"}`` with string or
content-part lists, ``tool_calls``, ``role="tool"``) or messages already in parts form.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import enum
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any


def _json_default(value: Any) -> Any:
    # Common non-JSON types in template variables become strings; anything else is an error
    # the caller logs (the attribute is then left out rather than recorded wrongly).
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


def to_json(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is (Thai, Japanese… stay readable in the record)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _text_part(text: Any) -> dict[str, Any]:
    return {"type": "text", "content": text if isinstance(text, str) else str(text)}


def content_to_parts(content: Any) -> list[dict[str, Any]]:
    """A chat ``content`` value (string, OpenAI content-part list, parts) as semconv parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text_part(content)]
    if isinstance(content, Mapping):
        content = [content]
    if isinstance(content, Iterable):
        parts: list[dict[str, Any]] = []
        for item in content:
            if isinstance(item, str):
                parts.append(_text_part(item))
            elif isinstance(item, Mapping):
                if item.get("type", "text") == "text":
                    text = item.get("content", item.get("text", ""))
                    parts.append(_text_part(text))
                else:
                    parts.append(dict(item))
            else:
                parts.append(_text_part(item))
        return parts
    return [_text_part(content)]


def _tool_call_part(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments: Any = function.get("arguments", call.get("arguments"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    part: dict[str, Any] = {"type": "tool_call", "id": call.get("id"),
                            "name": function.get("name", call.get("name")), "arguments": arguments}
    return {k: v for k, v in part.items() if v is not None}


def to_message(message: Any, default_role: str = "user") -> dict[str, Any]:
    """One message in parts form. A bare string is a text message with ``default_role``."""
    if isinstance(message, str):
        return {"role": default_role, "parts": [_text_part(message)]}
    if not isinstance(message, Mapping):
        raise TypeError(f"a message must be a mapping or a string, not {type(message).__name__}")
    if "parts" in message:
        out = dict(message)
        out.setdefault("role", default_role)
        out["parts"] = content_to_parts(message["parts"])
        return out
    role = message.get("role") or default_role
    if role == "tool":
        part: dict[str, Any] = {"type": "tool_call_response", "id": message.get("tool_call_id"),
                                "response": message.get("content")}
        out = {"role": "tool", "parts": [{k: v for k, v in part.items() if v is not None}]}
    else:
        parts = content_to_parts(message.get("content"))
        parts.extend(_tool_call_part(call) for call in message.get("tool_calls") or ())
        out = {"role": role, "parts": parts}
    for key in ("name", "finish_reason"):
        if message.get(key):
            out[key] = message[key]
    return out


def input_messages(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, (str, Mapping)):
        messages = [messages]
    return [to_message(m) for m in messages]


def output_messages(output: Any, finish_reason: str | None) -> list[dict[str, Any]]:
    """Output messages, each with a ``finish_reason`` (the given one unless a message has its own)."""
    if isinstance(output, (str, Mapping)):
        output = [output]
    result = []
    for item in output:
        message = to_message(item, default_role="assistant")
        if message.get("finish_reason") is None:
            message["finish_reason"] = finish_reason or "stop"
        result.append(message)
    return result


def system_instruction_parts(instructions: Any) -> list[dict[str, Any]]:
    return content_to_parts(instructions)
