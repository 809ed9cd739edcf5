"""Per-request context the SDK stamps on spans: who is asking, and span-id generation."""

from __future__ import annotations

import contextvars
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator

from aitrail.sdk import _semconv as sc

logger = logging.getLogger("aitrail.sdk")


@dataclass(frozen=True)
class UserContext:
    """The end user on whose behalf spans are recorded (raw id; the server pseudonymises it)."""

    user_id: str | None
    roles: tuple[str, ...] = field(default_factory=tuple)
    session_id: str | None = None
    feature: str | None = None

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.user_id is not None:
            attrs[sc.ENDUSER_ID] = self.user_id
        if self.roles:
            attrs[sc.USER_ROLES] = list(self.roles)
            attrs[sc.AITRAIL_USER_ROLES] = list(self.roles)
        if self.session_id is not None:
            attrs[sc.SESSION_ID] = self.session_id
        if self.feature is not None:
            attrs[sc.AITRAIL_FEATURE] = self.feature
        return attrs


# A contextvar, so asyncio tasks inherit the user of the request that spawned them. Plain
# threads start with an empty context: wrap their work in `user(...)` again, or run it via
# `contextvars.copy_context().run`.
_current_user: contextvars.ContextVar[UserContext | None] = contextvars.ContextVar(
    "aitrail_sdk_user", default=None
)


def current_user() -> UserContext | None:
    return _current_user.get()


class user:  # lower case: reads like the function it stands for, `with user("alice"):`
    """Context manager: spans started inside carry ``enduser.id``, roles, session, feature.

    Nested blocks inherit the outer values they do not override.
    """

    def __init__(self, user_id: str | None, *, roles: Any = (), session_id: str | None = None,
                 feature: str | None = None) -> None:
        self._args = (user_id, roles, session_id, feature)
        self._token: contextvars.Token[UserContext | None] | None = None
        self.context: UserContext | None = None

    def __enter__(self) -> UserContext | None:
        try:
            user_id, roles, session_id, feature = self._args
            if isinstance(roles, str):
                roles = (roles,)
            outer = _current_user.get()
            ctx = UserContext(
                user_id=str(user_id) if user_id is not None else (outer.user_id if outer else None),
                roles=tuple(str(r) for r in roles) or (outer.roles if outer else ()),
                session_id=session_id if session_id is not None else (outer.session_id if outer else None),
                feature=feature if feature is not None else (outer.feature if outer else None),
            )
            self.context = ctx
            self._token = _current_user.set(ctx)
        except Exception:
            logger.warning("aitrail.sdk: could not set the user context", exc_info=True)
        return self.context

    def __exit__(self, *exc: object) -> bool:
        try:
            if self._token is not None:
                _current_user.reset(self._token)
                self._token = None
        except Exception:
            logger.warning("aitrail.sdk: could not restore the user context", exc_info=True)
        return False


class UserContextSpanProcessor(SpanProcessor):
    """Stamps the current `user` context on every span started while it is active."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        try:
            ctx = _current_user.get()
            if ctx is not None:
                span.set_attributes(ctx.attributes())
        except Exception:
            logger.warning("aitrail.sdk: could not stamp the user context", exc_info=True)


# Set only while `feedback()` starts a span that must join an existing trace.
_forced_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "aitrail_sdk_trace_id", default=None
)


class AitrailIdGenerator(IdGenerator):
    """Random ids, or reproducible ones from ``seed`` (the demo and tests use that).

    Also lets `feedback()` place a span in a known trace when only the trace id is known.
    """

    def __init__(self, seed: int | str | None = None, *, inner: IdGenerator | None = None) -> None:
        self._inner = inner
        self._rng = random.Random(seed) if seed is not None else None

    def _bits(self, n: int) -> int:
        rng = self._rng
        value = 0
        while value == 0:
            value = rng.getrandbits(n) if rng is not None else random.getrandbits(n)
        return value

    def generate_span_id(self) -> int:
        if self._inner is not None and self._rng is None:
            return self._inner.generate_span_id()
        return self._bits(64)

    def generate_trace_id(self) -> int:
        forced = _forced_trace_id.get()
        if forced:
            return forced
        if self._inner is not None and self._rng is None:
            return self._inner.generate_trace_id()
        return self._bits(128)


def force_trace_id(trace_id: int) -> contextvars.Token[int | None]:
    return _forced_trace_id.set(trace_id)


def release_trace_id(token: contextvars.Token[int | None]) -> None:
    _forced_trace_id.reset(token)
