"""How the OTLP receivers answer a failed export, for both transports, as the OTLP
specification asks (opentelemetry-proto docs/specification.md, "Failures" and "Throttling").

An exporter decides from the answer alone whether to keep the data and retry or to drop it, so
the one rule that matters: a failure that is not the sender's fault must read as retryable.

| cause                               | HTTP | gRPC                                 | the exporter |
|-------------------------------------|------|--------------------------------------|--------------|
| undecodable or invalid payload      | 400  | INVALID_ARGUMENT (+ BadRequest)      | drops        |
| missing / unknown key               | 401  | UNAUTHENTICATED                      | drops        |
| key without the ingest role         | 403  | PERMISSION_DENIED                    | drops        |
| body above the size limit           | 413  | RESOURCE_EXHAUSTED, no RetryInfo     | drops        |
| unknown Content-Type                | 415  | (not on gRPC)                        | drops        |
| throttled (an error with status 429)| 429  | RESOURCE_EXHAUSTED + RetryInfo       | retries      |
| bus or store down, queue full       | 503  | UNAVAILABLE + RetryInfo              | retries      |
| any other error, unexpected ones too| 503  | UNAVAILABLE + RetryInfo              | retries      |

Every HTTP failure carries a `google.rpc.Status` body (code, message, details); 429 and 503
carry `Retry-After` in seconds, and their Status a `google.rpc.RetryInfo` with the same delay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from aitrail.errors import AitrailError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5

UNEXPECTED = "the server could not accept the data because of an unexpected error (logged on the server); retry later"

_GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class Failure:
    """One failed export as both transports report it."""

    http_status: int
    grpc_code: grpc.StatusCode
    message: str
    retry_after_s: int | None  # set: the exporter should retry after this many seconds

    def status(self) -> status_pb2.Status:
        """The `google.rpc.Status`: RetryInfo for retryable failures, BadRequest for bad data."""
        status = status_pb2.Status(code=self.grpc_code.value[0], message=self.message)
        if self.retry_after_s is not None:
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=self.retry_after_s)))
        elif self.grpc_code == grpc.StatusCode.INVALID_ARGUMENT:
            bad = error_details_pb2.BadRequest()
            bad.field_violations.add(field="", description=self.message)
            status.details.add().Pack(bad)
        return status


def failure_of(exc: BaseException, *, retry_after_s: int = RETRY_AFTER_S, where: str = "OTLP export") -> Failure:
    """The answer to `exc`. Anything that is not a client error (4xx) answers 503 so the exporter
    keeps the data: a plain 500 or INTERNAL would make it drop it. Unexpected exceptions are
    logged here with their traceback; the client gets a sentence, never the exception."""
    if not isinstance(exc, AitrailError):
        log.error("%s failed unexpectedly; answered 503 so the sender retries", where, exc_info=exc)
        return Failure(503, grpc.StatusCode.UNAVAILABLE, UNEXPECTED, retry_after_s)
    if exc.status == 429:
        return Failure(429, grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message, retry_after_s)
    if exc.retriable or exc.status >= 500:
        if not exc.retriable:
            log.error("%s failed: %s (%s); answered 503 so the sender retries", where, exc.message, type(exc).__name__)
        return Failure(503, grpc.StatusCode.UNAVAILABLE, exc.message, retry_after_s)
    return Failure(exc.status, _GRPC_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message, None)


# The Python OpenTelemetry gRPC exporter reads the retry delay from this trailer (as Google's
# own client libraries do) rather than from the Status details; send both.
RETRY_INFO_TRAILER = "google.rpc.retryinfo-bin"
STATUS_DETAILS_TRAILER = "grpc-status-details-bin"


def grpc_trailers(failure: Failure) -> tuple[tuple[str, bytes], ...]:
    status = failure.status()
    trailers = [(STATUS_DETAILS_TRAILER, status.SerializeToString())]
    if failure.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=failure.retry_after_s))
        trailers.append((RETRY_INFO_TRAILER, retry.SerializeToString()))
    return tuple(trailers)
