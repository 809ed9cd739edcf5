"""Chat messages and retrieved documents, from every shape the GenAI conventions send.

Input is already plain Python (see `otlp_values`); output is dicts shaped like
`aitrail.schemas.record.Message` / `Document`, ready for one `model_validate` of the record.

Message shapes understood:

- OpenTelemetry GenAI "parts" messages (`gen_ai.input.messages` / `gen_ai.output.messages`,
  JSON string or structured): `{"role", "parts": [{"type": "text", "content"}, {"type":
  "tool_call", ...}, ...], "finish_reason"?, "name"?}`;
- OpenAI-style messages (`{"role", "content": str | [blocks], "tool_calls", "tool_call_id",
  "name"}`), as in OpenInference `input.value`, the older `gen_ai.prompt` JSON and the
  older per-message events;
- choices (`{"index", "finish_reason", "message": {...}}`: the `gen_ai.choice` event, OpenAI
  responses);
- flat indexed attributes after un-flattening: `gen_ai.prompt.N.*` / `gen_ai.completion.N.*`
  (older GenAI / OpenLLMetry) and `llm.input_messages.N.message.*` (OpenInference).

`content` holds the message text (text parts joined by a newline); `parts` keeps the
structured parts as sent whenever any part is not plain text, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

_TEXT_PART_TYPES = frozenset(("text", "input_text", "output_text"))
_SYSTEM_ROLES = frozenset(("system", "developer"))
_ASSISTANT_ROLES = frozenset(("assistant", "model", "ai", "bot"))


def _is_text_type(kind: Any) -> bool:
    return type(kind) is str and kind in _TEXT_PART_TYPES


# --- small coercions -------------------------------------------------------------------


def loads_maybe(value: Any) -> Any:
    """JSON text → Python; anything else (or text that is not JSON) unchanged."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def to_text(value: Any) -> str | None:
    """Any attribute value as text: strings as they are, structured values as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def to_int(value: Any) -> int | None:
    """Counts (tokens, top_k) as int; None when not a number or beyond 64 bits (JSON, OpenSearch)."""
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, int):
        try:
            value = int(float(value))
        except (TypeError, ValueError, OverflowError):
            return None
    return value if -_INT64 <= value < _INT64 else None


_INT64 = 2**63


def to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def to_str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parsed = loads_maybe(value)
        if isinstance(parsed, list):
            value = parsed
        else:
            return [s.strip() for s in value.split(",") if s.strip()]
    if isinstance(value, (list, tuple)):
        return [v if isinstance(v, str) else to_text(v) or "" for v in value if v is not None]
    return [to_text(value) or ""]


# --- un-flattening indexed attributes --------------------------------------------------


def add_indexed(store: dict[int, dict[str, Any]], rest: str, value: Any) -> bool:
    """`"3.message.role"` → `store[3]["message.role"] = value`. False if `rest` has no index."""
    idx, _, sub = rest.partition(".")
    if not sub or not idx.isascii() or not idx.isdigit():
        return False
    store.setdefault(int(idx), {})[sub] = value
    return True


# --- messages ---------------------------------------------------------------------------


def _tool_call(call: Any, every_key: bool = True) -> dict[str, Any] | None:
    """One tool call as `{"id", "name", "arguments", ...}`. OpenAI's `function` object is
    lifted (`{"id", "type", "function": {"name", "arguments"}}`), Anthropic's `input` read as
    the arguments; with `every_key` the call's other keys (`type` …) are kept as sent (a
    parts message keeps its parts whole, so its calls carry the three alone)."""
    if not isinstance(call, dict):
        return None
    if not every_key:
        out = {"id": call.get("id"), "name": call.get("name"), "arguments": call.get("arguments", call.get("input"))}
        return {k: v for k, v in out.items() if v is not None}
    out = {k: v for k, v in call.items() if v is not None and k != "function"}
    fn = call.get("function")
    if isinstance(fn, dict):
        rest = {}
        for k, v in fn.items():
            if v is None:
                continue
            if (k == "name" or k == "arguments") and out.get(k, v) == v:
                out[k] = v
            else:
                rest[k] = v
        if rest:
            out["function"] = rest
    elif fn is not None:
        out["function"] = fn
    if "arguments" not in out and "input" in out:
        out["arguments"] = out.pop("input")
    return out


def _block_text(block: Any) -> str | None:
    """Text of one OpenAI / Anthropic content block, None if it is not text."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return None
    if _is_text_type(block.get("type", "text")):
        text = block.get("text", block.get("content"))
        if isinstance(text, dict):  # Azure agents: {"text": {"value": "..."}}
            text = text.get("value")
        return text if isinstance(text, str) else None
    return None


_PLAIN_BLOCK_KEYS = frozenset(("type", "text", "content"))


def _plain_block(block: Any) -> bool:
    """The block is text and nothing else: its text alone says all it held."""
    if isinstance(block, str):
        return True
    if not isinstance(block, dict) or len(block) > 2 or not _PLAIN_BLOCK_KEYS.issuperset(block):
        return False
    text = block.get("text", block.get("content"))
    return isinstance(text, str) and _is_text_type(block.get("type", "text"))


_PARTS_KEYS = frozenset(("role", "parts", "name", "finish_reason"))
_OPENAI_KEYS = frozenset(("role", "content", "tool_calls", "tool_call_id", "name", "finish_reason"))


def _from_parts(m: dict[str, Any], role: str, left: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
    parts = m.get("parts")
    msg: dict[str, Any] = {"role": role}
    if type(parts) is list and len(parts) == 1:  # fast path: one text part, the usual case
        part = parts[0]
        if type(part) is dict and len(part) == 2 and part.get("type") == "text" and type(part.get("content")) is str:
            msg["content"] = part["content"]
            if len(m) > 2:
                _copy_meta(m, msg, left, prefix, _PARTS_KEYS)
            return msg
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    structured = False
    if isinstance(parts, list):
        for part in parts:
            if not isinstance(part, dict):
                if isinstance(part, str):
                    texts.append(part)
                elif part is not None:
                    structured = True
                continue
            kind = part.get("type")
            if kind == "text":
                c = part.get("content")
                texts.append(c if isinstance(c, str) else to_text(c) or "")
                if len(part) > 2 or not isinstance(c, str):
                    structured = True  # more than its text: keep the part as sent
            elif kind == "tool_call":
                structured = True
                call = _tool_call(part, every_key=False)
                if call:
                    calls.append(call)
            elif kind == "tool_call_response":
                structured = True
                if part.get("id") is not None:
                    msg["tool_call_id"] = str(part["id"]).strip()
                texts.append(to_text(part.get("response", part.get("result"))) or "")
            else:
                structured = True
    elif isinstance(parts, str):
        texts.append(parts)
    elif parts is not None and left is not None:
        left[prefix + "parts"] = parts
    if texts:
        msg["content"] = "\n".join(texts)
    if calls:
        msg["tool_calls"] = calls
    if structured:
        msg["parts"] = [p if isinstance(p, dict) else {"type": "text", "content": p} for p in parts]
    _copy_meta(m, msg, left, prefix, _PARTS_KEYS)
    return msg


def _from_openai(m: dict[str, Any], role: str, left: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": role}
    content = m.get("content")
    if isinstance(content, str):
        msg["content"] = content
    elif isinstance(content, list):
        texts = []
        structured = False
        for block in content:
            text = _block_text(block)
            if text is None:
                structured = True
            else:
                texts.append(text)
                if not structured and not _plain_block(block):
                    structured = True  # cache_control, annotations …: keep the blocks as sent
        if texts:
            msg["content"] = "\n".join(texts)
        if structured:
            msg["parts"] = [b if isinstance(b, dict) else {"type": "text", "text": b} for b in content]
    elif isinstance(content, dict):
        text = _block_text(content)
        if text is None:
            msg["content"] = to_text(content)  # the whole block, as JSON text
        else:
            msg["content"] = text
            if not _plain_block(content):
                msg["parts"] = [content]
    elif content is not None:
        msg["content"] = to_text(content)
    calls = m.get("tool_calls")
    used_function_call = False
    if isinstance(calls, list):
        tool_calls = []
        for i, c in enumerate(calls):
            call = _tool_call(c)
            if call:
                tool_calls.append(call)
            elif c is not None and c != {} and left is not None:
                left[f"{prefix}tool_calls.{i}"] = c
        if tool_calls:
            msg["tool_calls"] = tool_calls
    elif isinstance(m.get("function_call"), dict):
        call = _tool_call(m["function_call"])
        if call:
            msg["tool_calls"] = [call]
            used_function_call = True
    tool_call_id = m.get("tool_call_id")
    used_id = False
    if tool_call_id is None and role == "tool":
        tool_call_id = m.get("id")
        used_id = tool_call_id is not None
    if tool_call_id is not None:
        msg["tool_call_id"] = str(tool_call_id)
    if left is None:
        _copy_meta(m, msg, None, prefix, _OPENAI_KEYS)
        return msg
    if calls is not None and not isinstance(calls, list):
        left[prefix + "tool_calls"] = calls
    _copy_meta(m, msg, left, prefix, _OPENAI_KEYS)
    if used_function_call:
        left.pop(prefix + "function_call", None)
    if used_id:
        left.pop(prefix + "id", None)
    return msg


def _copy_meta(
    src: dict[str, Any], msg: dict[str, Any], left: dict[str, Any] | None, prefix: str, known: frozenset[str]
) -> None:
    """`name` and `finish_reason` onto the message; with `left`, every other field of the
    message the mapping did not read goes there (`prefix + key`)."""
    name = src.get("name")
    if isinstance(name, str):
        msg["name"] = name
    finish = src.get("finish_reason")
    if finish is not None:
        msg["finish_reason"] = str(finish)
    if left is None:
        return
    for k, v in src.items():
        if v is None:
            continue
        if k not in known or (k == "name" and not isinstance(v, str)) or (k == "role" and not isinstance(v, str)):
            left[prefix + k] = v
        elif k == "finish_reason" and not isinstance(v, str):
            left[prefix + k] = v  # kept as text on the message, as sent here


def to_message(
    obj: Any, default_role: str, left: dict[str, Any] | None = None, prefix: str = ""
) -> dict[str, Any] | None:
    """One message in any known shape → Message-shaped dict (None if unusable).

    With `left`, the message's fields the mapping did not read (`id`, `index`, `refusal`,
    `logprobs`, an inner message's leftovers as `message.<key>` …) are added to it under
    `prefix + key`, for the caller to keep in `raw_attributes`."""
    if type(obj) is dict and "parts" in obj:
        role = obj.get("role")
        return _from_parts(obj, role if isinstance(role, str) and role else default_role, left, prefix)
    if isinstance(obj, str):
        return {"role": default_role, "content": obj}
    if not isinstance(obj, dict):
        return None
    inner = obj.get("message")
    if isinstance(inner, dict) and "role" not in obj:  # a choice
        msg = to_message(inner, default_role, left, prefix + "message.") or {"role": default_role}
        finish = obj.get("finish_reason")
        if finish is not None:
            if left is not None and msg.get("finish_reason") not in (None, str(finish)):
                left[prefix + "message.finish_reason"] = msg["finish_reason"]
            msg["finish_reason"] = str(finish)
        if left is not None:
            for k, v in obj.items():
                if v is not None and k != "message" and k != "finish_reason":
                    left[prefix + k] = v
        return msg
    role = obj.get("role")
    role = role if isinstance(role, str) and role else default_role
    return _from_openai(obj, role, left, prefix)


def parse_messages(value: Any, default_role: str, left: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
    """A messages attribute (JSON text or structured) → list of Message dicts.

    None when the value cannot be read as messages (e.g. JSON truncated by an attribute length
    limit): the caller then keeps the value in `raw_attributes`. With `left`, what the mapping
    did not read is added to it as `"<position>.<key>"` (a message's other fields) or
    `"<position>"` (an item that is no message at all)."""
    value = loads_maybe(value)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None
    out = []
    if left is None:
        for item in value:
            msg = to_message(item, default_role)
            if msg is not None:
                out.append(msg)
        return out
    for i, item in enumerate(value):
        prefix = f"{i}."
        msg = to_message(item, default_role, left, prefix)
        if msg is not None:
            out.append(msg)
            if left and type(left.get(prefix + "index")) is int and left[prefix + "index"] == i:
                del left[prefix + "index"]  # a choice's index that its position says already
        elif item is not None:
            left[str(i)] = item
    return out


def messages_from_indexed(
    indexed: dict[int, dict[str, Any]], default_role: str, openinference: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Un-flattened indexed attributes → (messages in index order, leftovers by sub-key).

    `openinference=True` reads `message.role` / `message.contents.M.message_content.text` /
    `message.tool_calls.M.tool_call.function.name`; otherwise the `gen_ai.prompt.N.*` form
    (`role`, `content`, `tool_calls.M.name` ...). Leftovers are `"N.sub.key" → value` for the
    caller to keep in `raw_attributes`."""
    messages: list[dict[str, Any]] = []
    leftovers: dict[str, Any] = {}
    for idx in sorted(indexed):
        flat = indexed[idx]
        msg = _oi_message(flat, default_role, leftovers, idx) if openinference else _legacy_message(
            flat, default_role, leftovers, idx
        )
        messages.append(msg)
    return messages, leftovers


def _legacy_message(flat: dict[str, Any], default_role: str, left: dict[str, Any], idx: int) -> dict[str, Any]:
    role = flat.get("role")
    msg: dict[str, Any] = {"role": role if isinstance(role, str) and role else default_role}
    calls: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        if key == "role":
            continue
        if key == "content":
            parsed = loads_maybe(value) if isinstance(value, str) and value[:1] == "[" else value
            if isinstance(parsed, list) and parsed and all(isinstance(b, dict) and "type" in b for b in parsed):
                inner = _from_openai({"content": parsed}, msg["role"], None, "")
                if "content" in inner:
                    msg["content"] = inner["content"]
                if "parts" in inner:
                    msg["parts"] = inner["parts"]
            else:
                msg["content"] = to_text(value)
        elif key == "finish_reason":
            msg["finish_reason"] = to_text(value)
        elif key == "tool_call_id":
            msg["tool_call_id"] = to_text(value)
        elif key == "name":
            msg["name"] = to_text(value)
        elif key.startswith("tool_calls."):
            if not add_indexed(calls, key[11:], value):
                left[f"{idx}.{key}"] = value
        elif key.startswith("function_call."):
            calls.setdefault(0, {})[key[14:]] = value
        else:
            left[f"{idx}.{key}"] = value
    if calls:
        tool_calls = []
        for i in sorted(calls):
            call = {}
            for k, v in calls[i].items():
                if k in ("id", "name", "arguments", "type"):
                    call[k] = v
                else:
                    left[f"{idx}.tool_calls.{i}.{k}"] = v
            tool_calls.append(call)
        msg["tool_calls"] = tool_calls
    return msg


_OI_CALL_KEYS = {"tool_call.id": "id", "tool_call.function.name": "name", "tool_call.function.arguments": "arguments"}


def _oi_message(flat: dict[str, Any], default_role: str, left: dict[str, Any], idx: int) -> dict[str, Any]:
    role = flat.get("message.role")
    msg: dict[str, Any] = {"role": role if isinstance(role, str) and role else default_role}
    contents: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        if key == "message.role":
            continue
        if key == "message.content":
            msg["content"] = to_text(value)
        elif key == "message.name":
            msg["name"] = to_text(value)
        elif key == "message.tool_call_id":
            msg["tool_call_id"] = to_text(value)
        elif key == "message.finish_reason":
            msg["finish_reason"] = to_text(value)
        elif key.startswith("message.contents."):
            if not add_indexed(contents, key[17:], value):
                left[f"{idx}.{key}"] = value
        elif key.startswith("message.tool_calls."):
            if not add_indexed(calls, key[19:], value):
                left[f"{idx}.{key}"] = value
        elif key == "message.function_call_name":
            calls.setdefault(-1, {})["tool_call.function.name"] = value
        elif key == "message.function_call_arguments_json":
            calls.setdefault(-1, {})["tool_call.function.arguments"] = value
        else:
            left[f"{idx}.{key}"] = value
    if contents:
        texts = []
        parts = []
        structured = False
        for i in sorted(contents):
            c = contents[i]
            kind = c.get("message_content.type", "text")
            part = {k.removeprefix("message_content."): v for k, v in c.items()}
            parts.append(part)
            if kind == "text" and isinstance(c.get("message_content.text"), str):
                texts.append(c["message_content.text"])
                if len(c) > 2 or (len(c) == 2 and "message_content.type" not in c):
                    structured = True  # more than the text: keep the part as sent
            else:
                structured = True
        if texts:
            joined = "\n".join(texts)
            if "content" not in msg:
                msg["content"] = joined
            elif msg["content"] != joined:
                structured = True  # `message.content` wins; the contents stay as parts
        if structured:
            msg["parts"] = parts
    if calls:
        tool_calls = []
        for i in sorted(calls):
            c = calls[i]
            call = {}
            for k, v in c.items():
                short = _OI_CALL_KEYS.get(k)
                if short is not None:
                    call[short] = v
                elif i >= 0:
                    left[f"{idx}.message.tool_calls.{i}.{k}"] = v
            tool_calls.append(call)
        msg["tool_calls"] = tool_calls
    return msg


def text_of_parts(value: Any) -> str | None:
    """`gen_ai.system_instructions` (parts list, JSON text or plain text) → text."""
    return instructions_text(value)[0]


_MESSAGE_KEYS = frozenset(("role", "parts"))


def instructions_text(value: Any) -> tuple[str | None, bool]:
    """`gen_ai.system_instructions` → (its text, whether the text is all it held). False when
    a part is not plain text (an image, a cache marker, a whole message with other fields):
    the caller then keeps the value as sent too."""
    value = loads_maybe(value)
    if isinstance(value, str):
        return value, True
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return to_text(value), False
    texts = []
    plain = True
    for part in value:
        if isinstance(part, str):
            texts.append(part)
            continue
        if isinstance(part, dict):
            if "parts" in part:  # a whole message
                t, inner_plain = instructions_text(part["parts"])
                plain = plain and inner_plain and _MESSAGE_KEYS.issuperset(part)
            else:
                t = _block_text(part)
                plain = plain and t is not None and _plain_block(part)
            if t:
                texts.append(t)
        elif part is not None:
            plain = False
    if not texts:
        return None, False
    return "\n".join(texts), plain


def system_text(messages: list[dict[str, Any]]) -> str | None:
    texts = [m["content"] for m in messages if m.get("role") in _SYSTEM_ROLES and m.get("content")]
    return "\n".join(texts) if texts else None


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user" and m.get("content"):
            return m["content"]
    return None


def assistant_text(messages: list[dict[str, Any]]) -> str | None:
    texts = [m["content"] for m in messages if m.get("content") and m.get("role") in _ASSISTANT_ROLES]
    return "\n".join(texts) if texts else None


# --- documents --------------------------------------------------------------------------

_ID_KEYS = ("doc_id", "id", "document_id", "source_id")
_SNIPPET_KEYS = ("snippet", "content", "text", "page_content", "document")
_URI_KEYS = ("source_uri", "source", "uri", "url", "file_path", "path", "document_uri")
_VERSION_KEYS = ("doc_version", "version", "document_version")
_ACL_KEYS = ("acl_tags", "acl")
_SCORE_KEYS = ("score", "relevance_score")
_SHA_KEYS = ("content_sha256",)
_RANK_KEYS = ("rank",)


def _take(d: dict[str, Any], keys: tuple[str, ...], used: set[str] | None) -> Any:
    """First usable scalar under `keys` (lists only for ACL tags); records the key in `used`."""
    for k in keys:
        v = d.get(k)
        if v is None:
            continue
        if type(v) is str:
            if not v:
                continue
        elif v == "" or isinstance(v, dict) or (isinstance(v, list) and k not in _ACL_KEYS):
            continue
        if used is not None:
            used.add(k)
        return v
    return None


# A document sent in our own shape (the aitrail SDK's, much RAG code's) maps to itself.
_OWN_SHAPE = {
    "doc_id": str, "chunk_id": str, "source_uri": str, "doc_version": str, "content_sha256": str, "snippet": str,
    "score": float, "rank": int, "acl_tags": list,
}


def _as_sent(d: dict[str, Any], position: int) -> dict[str, Any] | None:
    """`to_document(d, position)` when `d` already has the Document shape (known keys, usable
    values of the field's type), else None. A shortcut: the general mapping gives the same."""
    for k, v in d.items():
        kind = _OWN_SHAPE.get(k)
        if type(v) is not kind:  # also refuses keys of another shape (kind None)
            return None
        if kind is str and not v and k != "snippet":  # empty ids and versions go to metadata
            return None
    score = d.get("score")
    if score is not None and not math.isfinite(score):
        return None
    rank = d.get("rank")
    if rank is not None and not -_INT64 <= rank < _INT64:
        return None
    acl = d.get("acl_tags")
    if acl is not None and not all(type(tag) is str for tag in acl):
        return None
    doc = dict(d)
    if acl is not None:
        doc["acl_tags"] = list(acl)
    if rank is None:
        doc["rank"] = position + 1
    content = d.get("snippet")
    if content is not None and "content_sha256" not in d:
        doc["content_sha256"] = hashlib.sha256(content.encode()).hexdigest()
    return doc


# Text fields of a document: (field, keys in order of preference, also read from metadata).
_TEXT_FIELDS = (
    ("doc_id", _ID_KEYS, False),
    ("chunk_id", ("chunk_id",), True),
    ("source_uri", _URI_KEYS, True),
    ("doc_version", _VERSION_KEYS, True),
)


def to_document(d: dict[str, Any], position: int) -> dict[str, Any]:
    """One retrieved document in any known shape → Document dict.

    Fields missing on the document are taken from its metadata (source uri, version, ACL tags,
    chunk id). `content_sha256` is computed from the full content when the sender gave none;
    `snippet` is the content as sent (not shortened: it is what the model saw). `rank` is the
    sender's rank or the 1-based position in the list. Keys of the document not mapped to a
    field, and its metadata, are kept in `metadata`."""
    as_sent = _as_sent(d, position)
    if as_sent is not None:
        return as_sent
    used: set[str] = {"metadata"}
    meta = d.get("metadata")
    if meta is not None:
        meta = loads_maybe(meta)
    meta_d = meta if isinstance(meta, dict) else None
    doc: dict[str, Any] = {}

    for field, keys, from_meta in _TEXT_FIELDS:
        v = _take(d, keys, used)
        if v is None and from_meta and meta_d:
            v = _take(meta_d, keys, None)
        if v is not None:
            doc[field] = v if type(v) is str else to_text(v)
    content = d.get("snippet")
    if content is None:
        for k in _SNIPPET_KEYS[1:]:
            if d.get(k) is not None:
                content = d[k]
                used.add(k)
                break
    else:
        used.add("snippet")
    if content is not None:
        if type(content) is not str:
            content = to_text(content)
        doc["snippet"] = content
    sha = _take(d, _SHA_KEYS, used)
    if sha is None and meta_d:
        sha = _take(meta_d, _SHA_KEYS, None)
    if sha is not None:
        doc["content_sha256"] = sha if type(sha) is str else to_text(sha)
    elif content is not None:
        doc["content_sha256"] = hashlib.sha256(content.encode()).hexdigest()
    score = to_float(_take(d, _SCORE_KEYS, used))
    if score is not None:
        doc["score"] = score
    rank = to_int(_take(d, _RANK_KEYS, used))
    doc["rank"] = rank if rank is not None else position + 1
    acl = _take(d, _ACL_KEYS, used)
    if acl is None and meta_d:
        acl = _take(meta_d, _ACL_KEYS, None)
    if acl is not None:
        doc["acl_tags"] = to_str_list(acl)

    # `used` holds the keys read from `d`, and "metadata"
    unread = len(d) - len(used) + (0 if "metadata" in d else 1)
    extra = {k: v for k, v in d.items() if k not in used and v is not None} if unread else None
    if meta is not None or extra:
        # metadata that is not a non-empty object is kept under its own key
        merged: dict[str, Any] = dict(meta_d) if meta_d else {} if meta is None else {"metadata": meta}
        if extra:
            merged.update(extra)
        doc["metadata"] = merged
    return doc


def parse_documents(value: Any) -> list[dict[str, Any]] | None:
    """A documents attribute (JSON text or structured list) → Document dicts; None if unreadable."""
    value = loads_maybe(value)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None
    return [to_document(d if isinstance(d, dict) else {"content": d}, i) for i, d in enumerate(value)]


def documents_from_indexed(indexed: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenInference `retrieval.documents.N.document.*` after un-flattening."""
    docs = []
    for position, idx in enumerate(sorted(indexed)):
        flat = indexed[idx]
        d = {k.removeprefix("document."): v for k, v in flat.items()}
        docs.append(to_document(d, position))
    return docs
