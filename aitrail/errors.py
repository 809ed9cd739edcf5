"""One root error. `retriable` tells the collector whether to back off and retry (no offset
commit) or to dead-letter the input and move on; `status` is the HTTP status the API uses."""

from __future__ import annotations


class AitrailError(Exception):
    retriable: bool = False
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AitrailError):
    status = 500
    code = "config"


class BadRequest(AitrailError):
    status = 400
    code = "bad_request"


class PayloadTooLarge(AitrailError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(AitrailError):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(AitrailError):
    status = 401
    code = "unauthorized"


class Forbidden(AitrailError):
    status = 403
    code = "forbidden"


class NotFound(AitrailError):
    status = 404
    code = "not_found"


class InvalidInput(AitrailError):
    """Input that will never be ingested as sent: dead-letter it with this message."""

    status = 400
    code = "invalid_input"


class Unavailable(AitrailError):
    """A dependency (Kafka, OpenSearch, the disk) is down or overloaded: try again later."""

    retriable = True
    status = 503
    code = "unavailable"


class Fatal(AitrailError):
    """A condition retrying cannot fix (permissions, a topic that does not exist, a broken
    configuration): the component stops with this message instead of looping."""

    status = 500
    code = "fatal"
