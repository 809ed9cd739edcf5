"""Property-based API tests: schemathesis generates requests from the OpenAPI document, valid
and invalid (wrong types, out-of-range limits, odd unicode, missing or garbled credentials…),
sends them to the app over a seeded store and checks every response against the document:
never a 5xx, only documented status codes, content types, headers and bodies, and 405 with
`Allow` for methods an endpoint does not take.

Bounded and deterministic: a fixed seed, no example database, a few dozen cases per endpoint.
"""

from __future__ import annotations

import schemathesis

from aitrail.query_api.app import create_app

CHECKS = (
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
    "response_headers_conformance", "unsupported_method", "allow_header_conformance",
)
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261124,
        "generation": {"mode": "all", "max-examples": 30, "deterministic": True, "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "phases": {"stateful": {"enabled": False}},
    }
)


class _NoStore:
    """The document is the same for every store; building it reads nothing."""

    def authenticate(self, key):
        raise AssertionError("building the OpenAPI document must not authenticate")

    def __getattr__(self, name):
        raise AssertionError(f"building the OpenAPI document must not use the store ({name})")


schema = schemathesis.openapi.from_dict(create_app(_NoStore(), pseudonymise=str).openapi(), config=CONFIG)

# Coverage cases are built when the test is collected, before the store (and its keys) exist:
# they carry this stand-in, swapped for the seeded auditor key when sent.
STAND_IN = "Bearer atk_stand-in-for-the-seeded-auditor-key"


@schema.auth(refresh_interval=None)
class AuditorKey:
    """The auditor's key on every case, except those that leave credentials out or garble them on purpose."""

    def get(self, case, context):
        return STAND_IN

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": data}


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case, seeded_api):
    if (case.headers or {}).get("Authorization") == STAND_IN:
        case.headers["Authorization"] = f"Bearer {seeded_api.keys['auditor']}"
    case.call_and_validate(app=seeded_api.app)
