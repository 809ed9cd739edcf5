"""What the OTLP receivers hand requests to. A receiver knows nothing of buses or stores: it
authenticates, decodes, validates and calls an `Ingest` callable, which returns once the data
is safe (or raises `Unavailable`). An `Ingest` that stores only part of a request returns
`Refused` for the rest, which the receiver answers as OTLP's partial success (200 with
`rejected_spans` / `rejected_log_records` and the reason); one that can store none of it
raises a client error (`InvalidInput`, `PayloadTooLarge`) answered 400 / 413."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from aitrail.bus.base import Bus, BusMessage, Signal
from aitrail.auth import Authenticator
from aitrail.errors import Forbidden, InvalidInput, PayloadTooLarge, Unauthorized
from aitrail.otlp import Checked, split_by_trace
from aitrail.store.base import Principal, Role
from aitrail.store.keys import PREFIX as KEY_PREFIX

from .keycache import KeyCache

Request = ExportTraceServiceRequest | ExportLogsServiceRequest


@dataclass(frozen=True)
class Refused:
    """Spans (or log records) of an acknowledged request that will not be stored, and why."""

    count: int
    message: str


Ingest = Callable[[Signal, Request, Principal], Awaitable[Refused | None]]


def with_refused(checked: Checked, refused: Refused | None) -> Checked:
    """What the receiver checked, plus what the `Ingest` refused."""
    if refused is None:
        return checked
    error = "; ".join(e for e in (checked.error, refused.message) if e)
    return Checked(checked.accepted - refused.count, checked.rejected + refused.count, error)


def export_response(signal: Signal, checked: Checked):
    """The Export*ServiceResponse: `partial_success` set only when something was rejected, as
    OTLP asks (an empty one means full success)."""
    if signal == Signal.LOGS:
        response = ExportLogsServiceResponse()
        if checked.rejected:
            response.partial_success.rejected_log_records = checked.rejected
            response.partial_success.error_message = checked.error or ""
        return response
    response = ExportTraceServiceResponse()
    if checked.rejected:
        response.partial_success.rejected_spans = checked.rejected
        response.partial_success.error_message = checked.error or ""
    return response

log = logging.getLogger(__name__)

INGEST_ROLES = (Role.INGEST, Role.ADMIN)


@dataclass
class IngestAuth:
    """Who sends: `principal(authorization)` → the caller with an ingest role, or the error to
    answer. aitrail keys go through `keys` (a `KeyCache`: cached, looked up off the event loop,
    served while the store is away) when given; everything else (OIDC tokens, a missing or
    malformed header, keys without a cache) through `authenticator`, in a thread since it may
    fetch a JWKS or read the store."""

    authenticator: Authenticator
    required: bool = True
    anonymous_tenant: str = "default"
    keys: KeyCache | None = None

    async def principal(self, authorization: str | None) -> Principal:
        if not authorization and not self.required:
            return Principal(key_id="anonymous", tenant=self.anonymous_tenant, role=Role.INGEST)
        key = _bearer_key(authorization)
        if key is not None and self.keys is not None:
            principal = await self.keys.principal(key)
            if principal is None:
                raise Unauthorized("unknown or revoked key")
        elif not authorization:
            principal = self.authenticator.principal(authorization)  # raises at once: no credentials
        else:
            principal = await asyncio.to_thread(self.authenticator.principal, authorization)
        if principal.role not in INGEST_ROLES:
            raise Forbidden(f"role '{principal.role}' cannot ingest; needs role 'ingest'")
        return principal


def _bearer_key(authorization: str | None) -> str | None:
    """The aitrail key of `Authorization: Bearer atk_…`, else None."""
    if not authorization:
        return None
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential.startswith(KEY_PREFIX):
        return None
    return credential


class Verdicts:
    """The embedded collector's verdict on messages whose sender is still waiting for its answer.

    In embedded mode the sender's answer waits until the collector has normalised and stored
    its message (`LocalBus`), so the collector's own check is the check before acknowledging:
    what the normaliser refuses reaches the dead-letter sink before the batch is acknowledged.
    The sink offers it to `claim` first; a message a sender waits on is not stored as a dead
    letter (the sender is told instead, and keeps the data), any other is."""

    def __init__(self) -> None:
        # keyed by the decoded request each message carries: the bus may hand the sink a copy of
        # the message (with dead-letter headers added), never a copy of the request
        self._waiting: dict[int, tuple[object, list[str]]] = {}

    def claim(self, message: BusMessage, reason: str) -> bool:
        waiting = self._waiting.get(id(message.decoded)) if message.decoded is not None else None
        if waiting is None or waiting[0] is not message.decoded:
            return False
        waiting[1].append(reason)
        return True

    async def publish(self, bus: Bus, messages: list[BusMessage]) -> dict[int, str]:
        """Publish and wait; {index of a refused message: the reason}. Every message must carry
        its own `decoded` request."""
        for message in messages:
            self._waiting[id(message.decoded)] = (message.decoded, [])
        try:
            await bus.publish(messages)
        finally:
            reasons = [self._waiting.pop(id(message.decoded))[1] for message in messages]
        return {index: "; ".join(r) for index, r in enumerate(reasons) if r}


def ingest_in_process(bus: Bus, verdicts: Verdicts | None = None) -> Ingest:
    """Embedded mode: the whole request as one message, already decoded. With `verdicts`, a
    request the collector refuses is not acknowledged: when one message is refused, its spans
    go again one message each (log records: one message per trace, so the events of one span
    stay together) to learn which; the others are stored and the answer is OTLP's partial
    success naming the reason (200, `rejected_spans`); when every one is refused, 400
    (`InvalidInput`) with the reason. Nothing refused is stored, not even as a dead letter."""

    def message(signal: Signal, request, tenant: str) -> BusMessage:
        return BusMessage(signal=signal, payload=b"", tenant=tenant, decoded=request)

    async def ingest(signal: Signal, request: Request, principal: Principal) -> Refused | None:
        whole = message(signal, request, principal.tenant)
        if verdicts is None:
            await bus.publish([whole])
            return None
        refused = await verdicts.publish(bus, [whole])
        if not refused:
            return None
        parts = _parts(signal, request)
        total = sum(count for _, count in parts)
        reason = next(iter(refused.values()))
        if len(parts) > 1:
            refused = await verdicts.publish(bus, [message(signal, part, principal.tenant) for part, _ in parts])
            if not refused:  # refused together, stored apart: everything is stored now
                log.warning("stored %d %s one by one after the request was refused whole: %s",
                            total, _noun(signal, 2), reason)
                return None
            reason = _first_reasons(list(refused.values()))
        count = sum(parts[index][1] for index in refused) if len(parts) > 1 else total
        log.warning("refused %d of %d %s from tenant %s (not stored): %s",
                    count, total, _noun(signal, 2), principal.tenant, reason)
        if count >= total:
            raise InvalidInput(f"the server cannot store {_these(signal, total)}: {reason}")
        return Refused(count, f"{count} {_noun(signal, count)} refused, the rest stored: {reason}")

    return ingest


def _first_reasons(reasons: list[str], shown: int = 3) -> str:
    reasons = list(dict.fromkeys(reasons))  # spans refused for one reason say it once
    more = len(reasons) - shown
    return "; ".join(reasons[:shown]) + (f"; and {more} more" if more > 0 else "")


def _these(signal: Signal, count: int) -> str:
    return f"this {_noun(signal, 1)}" if count == 1 else f"any of these {count} {_noun(signal, count)}"


def _parts(signal: Signal, request: Request) -> list[tuple[object, int]]:
    """(request part, items in it): one span per part; log records one trace per part."""
    if signal == Signal.TRACES:
        return [(single(r, s, span, ExportTraceServiceRequest), 1) for r, s, span in items(request)]
    return [
        (data, sum(len(s.log_records) for r in data.resource_logs for s in r.scope_logs))
        for _, data in split_by_trace(request, 1 << 62)
    ]


def ingest_split_by_trace(bus: Bus, max_message_bytes: int) -> Ingest:
    """Gateway mode: one `otlp_proto` message per trace (cut to fit Kafka's message size),
    keyed by trace id, so a trace stays on one partition and in one Merkle log. A span or log
    record too large for a Kafka message on its own is refused and the rest sent (partial
    success); when nothing else is left, the request is refused with 413."""

    async def ingest(signal: Signal, request: Request, principal: Principal) -> Refused | None:
        refused = None
        try:
            parts = split_by_trace(request, max_message_bytes)
        except PayloadTooLarge as exc:
            request, count = without_oversized(request, max_message_bytes)
            if not count:
                raise  # cannot happen: split_by_trace refuses only single items that do not fit
            if not any(True for _ in items(request)):
                raise PayloadTooLarge(f"nothing could be accepted: {exc.message}") from None
            refused = Refused(count, f"{count} {_noun(signal, count)} refused: {exc.message}")
            parts = split_by_trace(request, max_message_bytes)
        await bus.publish(
            [
                BusMessage(
                    signal=signal, payload=data.SerializeToString(), tenant=principal.tenant,
                    key=trace_id.hex().encode() if trace_id else None,
                )
                for trace_id, data in parts
            ]
        )
        return refused

    return ingest


_LEVELS = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
}


def _signal_of(request: Request) -> Signal:
    return Signal.TRACES if isinstance(request, ExportTraceServiceRequest) else Signal.LOGS


def _noun(signal: Signal, count: int) -> str:
    if signal == Signal.TRACES:
        return "span" if count == 1 else "spans"
    return "log record" if count == 1 else "log records"


def items(request: Request):
    """(resource container, scope container, span or log record) for every item of `request`."""
    resources, scopes, leaves = _LEVELS[_signal_of(request)]
    for resource in getattr(request, resources):
        for scope in getattr(resource, scopes):
            for item in getattr(scope, leaves):
                yield resource, scope, item


def single(resource, scope, item, request_type: type) -> Request:
    """A request of `request_type` holding only `item`, under copies of its resource and scope."""
    resources, scopes, leaves = _LEVELS[Signal.TRACES if request_type is ExportTraceServiceRequest else Signal.LOGS]
    out = request_type()
    target_resource = getattr(out, resources).add()
    target_resource.resource.CopyFrom(resource.resource)
    target_resource.schema_url = resource.schema_url
    target_scope = getattr(target_resource, scopes).add()
    target_scope.scope.CopyFrom(scope.scope)
    target_scope.schema_url = scope.schema_url
    getattr(target_scope, leaves).add().CopyFrom(item)
    return out


def without_oversized(request: Request, max_bytes: int) -> tuple[Request, int]:
    """`request` minus the items that alone would exceed `max_bytes`, and how many went.
    (The slow path: only taken once `split_by_trace` found such an item.)"""
    _, _, leaves = _LEVELS[_signal_of(request)]
    kept = type(request)()
    kept.CopyFrom(request)
    removed = 0
    for resource, scope, item in list(items(kept)):
        if single(resource, scope, item, type(kept)).ByteSize() > max_bytes:
            getattr(scope, leaves).remove(item)
            removed += 1
    return kept, removed
