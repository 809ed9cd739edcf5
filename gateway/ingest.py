"""What the OTLP receivers hand requests to. A receiver knows nothing of buses or stores: it
authenticates, decodes, validates and calls an `Ingest` callable, which returns once the data
is safe (or raises `Unavailable`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aitrail.bus.base import Bus, BusMessage, Signal
from aitrail.auth import Authenticator
from aitrail.errors import Forbidden
from aitrail.otlp import split_by_trace
from aitrail.store.base import Principal, Role

Request = ExportTraceServiceRequest | ExportLogsServiceRequest
Ingest = Callable[[Signal, Request, Principal], Awaitable[None]]

INGEST_ROLES = (Role.INGEST, Role.ADMIN)


@dataclass
class IngestAuth:
    authenticator: Authenticator
    required: bool = True
    anonymous_tenant: str = "default"

    def principal(self, authorization: str | None) -> Principal:
        if not authorization and not self.required:
            return Principal(key_id="anonymous", tenant=self.anonymous_tenant, role=Role.INGEST)
        principal = self.authenticator.principal(authorization)
        if principal.role not in INGEST_ROLES:
            raise Forbidden(f"role '{principal.role}' cannot ingest; needs role 'ingest'")
        return principal


def ingest_in_process(bus: Bus) -> Ingest:
    """Embedded mode: the whole request as one message, already decoded."""

    async def ingest(signal: Signal, request: Request, principal: Principal) -> None:
        await bus.publish([BusMessage(signal=signal, payload=b"", tenant=principal.tenant, decoded=request)])

    return ingest


def ingest_split_by_trace(bus: Bus, max_message_bytes: int) -> Ingest:
    """Gateway mode: one `otlp_proto` message per trace (cut to fit Kafka's message size),
    keyed by trace id, so a trace stays on one partition and in one Merkle log."""

    async def ingest(signal: Signal, request: Request, principal: Principal) -> None:
        await bus.publish(
            [
                BusMessage(
                    signal=signal, payload=data.SerializeToString(), tenant=principal.tenant,
                    key=trace_id.hex().encode() if trace_id else None,
                )
                for trace_id, data in split_by_trace(request, max_message_bytes)
            ]
        )

    return ingest
