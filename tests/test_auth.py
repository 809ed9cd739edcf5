"""OIDC bearer tokens against a JWKS made here, and API keys, through the real API."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from aitrail.auth import Authenticator
from aitrail.errors import Forbidden, Unauthorized
from aitrail.query_api.app import create_app
from aitrail.settings import OidcSettings
from aitrail.store.base import Role
from aitrail.store.sqlite import SqliteStore
from tests.factories import completion

ISSUER, AUDIENCE = "https://idp.example.test/", "aitrail-api"


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    """A signing key and its JWKS file, as an identity provider publishes them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    path = tmp_path_factory.mktemp("idp") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    settings = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=path.as_uri())

    def token(kid="k1", signer=key, **claims):
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 300,
                "tenant": "acme", "aitrail_role": "auditor", **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, signer, algorithm="RS256",
                          headers={"kid": kid})

    return settings, token


def bearer(value: str) -> str:
    return f"Bearer {value}"


def test_valid_token_maps_claims(idp):
    settings, token = idp
    principal = Authenticator(lambda key: None, settings).principal(bearer(token()))
    assert (principal.tenant, principal.role, principal.key_id) == ("acme", Role.AUDITOR, "oidc:alice")


def test_role_list_uses_the_most_capable_role(idp):
    settings, token = idp
    auth = Authenticator(lambda key: None, settings)
    assert auth.principal(bearer(token(aitrail_role=["viewer", "analyst", "admin"]))).role == Role.ADMIN


@pytest.mark.parametrize(
    ("claims", "error", "message"),
    [
        ({"exp": int(time.time()) - 3600}, Unauthorized, "token expired"),
        ({"aud": "someone-else"}, Unauthorized, "audience"),
        ({"iss": "https://evil.example/"}, Unauthorized, "issuer"),
        ({"tenant": None}, Forbidden, "no tenant claim"),
        ({"aitrail_role": "superuser"}, Forbidden, "no aitrail role"),
        ({"kid": "unknown"}, Unauthorized, "signing key not found"),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(idp, claims, error, message):
    settings, token = idp
    auth = Authenticator(lambda key: None, settings)
    with pytest.raises(error, match=message):
        auth.principal(bearer(token(**claims)))


def test_token_signed_by_another_key_is_refused(idp):
    settings, token = idp
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized, match="invalid token"):
        Authenticator(lambda key: None, settings).principal(bearer(token(signer=other)))


def test_tokens_refused_when_oidc_is_not_configured(idp):
    _, token = idp
    with pytest.raises(Unauthorized, match="OIDC tokens are not configured"):
        Authenticator(lambda key: None, None).principal(bearer(token()))


def test_api_accepts_tokens_and_keys_and_keeps_tenants_apart(idp, tmp_path):
    settings, token = idp
    store = SqliteStore.in_dir(tmp_path)
    store.write([completion("acme", trace=1), completion("globex", trace=2)])
    key, _ = store.create_key("globex", Role.AUDITOR)
    client = TestClient(create_app(store, pseudonymise=lambda raw: "u_" + raw, oidc=settings))

    by_token = client.get("/v1/answers", headers={"Authorization": bearer(token())}).json()
    assert [a["trace_id"] for a in by_token["data"]] == [f"{1:032x}"]
    by_key = client.get("/v1/answers", headers={"Authorization": bearer(key)}).json()
    assert [a["trace_id"] for a in by_key["data"]] == [f"{2:032x}"]

    ingest_only = client.get("/v1/answers", headers={"Authorization": bearer(token(aitrail_role="ingest"))})
    assert ingest_only.status_code == 403 and "needs role" in ingest_only.json()["error"]["message"]
    expired = client.get("/v1/answers", headers={"Authorization": bearer(token(exp=int(time.time()) - 3600))})
    assert expired.status_code == 401 and expired.json()["error"]["message"] == "token expired"


def test_jwks_fetched_over_http(idp, tmp_path):
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    settings, token = idp
    folder = Path(settings.jwks_url.removeprefix("file://")).parent
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        over_http = settings.model_copy(update={"jwks_url": f"http://127.0.0.1:{server.server_port}/jwks.json"})
        principal = Authenticator(lambda key: None, over_http).principal(bearer(token(tenant="initech")))
        assert principal.tenant == "initech"
    finally:
        server.shutdown()
