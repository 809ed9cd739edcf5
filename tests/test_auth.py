"""OIDC bearer tokens against a JWKS made here, and API keys, through the real API.

The identity provider is simulated with real keys: a JWKS file, and a TLS server on the
loopback for the https:// cases (its own CA, trusted through `auth.oidc.ca_file`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from aitrail import auth as auth_module
from aitrail.auth import SUPPORTED_ALGORITHMS, Authenticator
from aitrail.errors import ConfigError, Forbidden, Unauthorized, Unavailable
from aitrail.query_api.app import create_app
from aitrail.settings import OidcSettings
from aitrail.store.base import Role
from aitrail.store.sqlite import SqliteStore
from tests.factories import completion

ISSUER, AUDIENCE = "https://idp.example.test/", "aitrail-api"
ACCEPTED = ", ".join(SUPPORTED_ALGORITHMS)


def _public_jwk(private, **fields) -> dict:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "use": "sig", **fields}


@pytest.fixture(scope="module")
def signers():
    """The provider's private keys, by kid (and one key of an attacker's)."""
    return {
        "k1": rsa.generate_private_key(public_exponent=65537, key_size=2048),  # alg RS256
        "rsa-any": rsa.generate_private_key(public_exponent=65537, key_size=2048),  # no alg
        "pss": rsa.generate_private_key(public_exponent=65537, key_size=2048),  # alg PS256
        "ec1": ec.generate_private_key(ec.SECP256R1()),  # no alg
        "ed1": ed25519.Ed25519PrivateKey.generate(),  # no alg
        "bogus": rsa.generate_private_key(public_exponent=65537, key_size=2048),  # RSA that says HS256
        "enc1": rsa.generate_private_key(public_exponent=65537, key_size=2048),  # for encryption only
        "attacker-ec": ec.generate_private_key(ec.SECP256R1()),
        "attacker-rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture(scope="module")
def jwks(signers) -> dict:
    return {"keys": [
        _public_jwk(signers["k1"], kid="k1", alg="RS256"),
        _public_jwk(signers["rsa-any"], kid="rsa-any"),
        _public_jwk(signers["pss"], kid="pss", alg="PS256"),
        _public_jwk(signers["ec1"], kid="ec1"),
        _public_jwk(signers["ed1"], kid="ed1"),
        _public_jwk(signers["bogus"], kid="bogus", alg="HS256"),
        _public_jwk(signers["enc1"], kid="enc1", use="enc"),
        {"kty": "oct", "kid": "sym", "alg": "HS256", "k": base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("=")},
    ]}


@pytest.fixture(scope="module")
def idp(tmp_path_factory, signers, jwks):
    """Settings with the JWKS in a file, and `token(...)` signing as the provider would."""
    path = tmp_path_factory.mktemp("idp") / "jwks.json"
    path.write_text(json.dumps(jwks))
    settings = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=path.as_uri())

    def token(kid="k1", signer=None, algorithm="RS256", headers=None, **claims):
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 300,
                "tenant": "acme", "aitrail_role": "auditor", **claims}
        signer = signer if signer is not None else signers.get(kid, signers["k1"])
        return jwt.encode({k: v for k, v in body.items() if v is not None}, signer, algorithm=algorithm,
                          headers={"kid": kid, **(headers or {})} if kid is not None else headers)

    return settings, token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(header: dict, claims: dict, hmac_secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: HS256 keyed with a public key, or alg none."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest() if hmac_secret else b""
    return f"{signing_input}.{_b64(signature)}"


def bearer(value: str) -> str:
    return f"Bearer {value}"


def valid_claims(**claims) -> dict:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 300,
            "tenant": "acme", "aitrail_role": "auditor", **claims}


# --- tokens checked by the Authenticator ---------------------------------------------------


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


def test_token_signed_by_another_key_is_refused(idp, signers):
    settings, token = idp
    with pytest.raises(Unauthorized, match="invalid token"):
        Authenticator(lambda key: None, settings).principal(bearer(token(signer=signers["attacker-rsa"])))


def test_tokens_refused_when_oidc_is_not_configured(idp):
    _, token = idp
    with pytest.raises(Unauthorized, match="OIDC tokens are not configured"):
        Authenticator(lambda key: None, None).principal(bearer(token()))


@pytest.mark.parametrize(
    ("kid", "algorithm"),
    [("k1", "RS256"), ("rsa-any", "RS256"), ("rsa-any", "RS384"), ("rsa-any", "RS512"), ("pss", "PS256"),
     ("ec1", "ES256"), ("ed1", "EdDSA")],
)
def test_each_key_accepts_the_algorithms_it_is_pinned_to(idp, kid, algorithm):
    settings, token = idp
    principal = Authenticator(lambda key: None, settings).principal(bearer(token(kid=kid, algorithm=algorithm)))
    assert (principal.tenant, principal.key_id) == ("acme", "oidc:alice")


def test_the_allow_list_setting_narrows_what_keys_allow(idp):
    settings, token = idp
    narrow = Authenticator(lambda key: None, settings.model_copy(update={"algorithms": ["ES256"]}))
    assert narrow.principal(bearer(token(kid="ec1", algorithm="ES256"))).tenant == "acme"
    with pytest.raises(Unauthorized) as refused:
        narrow.principal(bearer(token(kid="k1", algorithm="RS256")))
    assert refused.value.message == "token algorithm 'RS256' is not accepted (accepted: ES256)"


# --- every token error through the API: status and message ---------------------------------


@pytest.fixture(scope="module")
def api(idp, tmp_path_factory):
    settings, _ = idp
    store = SqliteStore.in_dir(tmp_path_factory.mktemp("api"))
    store.write([completion("acme", trace=1), completion("globex", trace=2)])
    yield TestClient(create_app(store, pseudonymise=lambda raw: "u_" + raw, oidc=settings))
    store.close()


def _rsa_public_pem(signers) -> bytes:
    return signers["k1"].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(json.dumps(valid_claims(tenant='globex')).encode())}.{signature}"


CASES = {
    # the reviewer's: algorithm confusion between key types, and within RSA
    "ES256 header against an RSA key": (
        lambda t, s: t(kid="k1", signer=s["attacker-ec"], algorithm="ES256"),
        401, "token algorithm 'ES256' is not allowed for key 'k1' (it allows RS256)"),
    "PS256 against an alg=RS256 key": (
        lambda t, s: t(kid="k1", algorithm="PS256"),
        401, "token algorithm 'PS256' is not allowed for key 'k1' (it allows RS256)"),
    "HS256 keyed with the RSA public key": (
        lambda t, s: forged({"alg": "HS256", "typ": "JWT", "kid": "k1"}, valid_claims(), _rsa_public_pem(s)),
        401, f"token algorithm 'HS256' is not accepted (accepted: {ACCEPTED})"),
    "HS256 against the provider's symmetric key": (
        lambda t, s: forged({"alg": "HS256", "kid": "sym"}, valid_claims(), b"s" * 32),
        401, f"token algorithm 'HS256' is not accepted (accepted: {ACCEPTED})"),
    "alg none": (
        lambda t, s: forged({"alg": "none", "kid": "k1"}, valid_claims(), None),
        401, f"token algorithm 'none' is not accepted (accepted: {ACCEPTED})"),
    "RSA key without alg refuses PS256": (
        lambda t, s: t(kid="rsa-any", algorithm="PS256"),
        401, "token algorithm 'PS256' is not allowed for key 'rsa-any' (it allows RS256, RS384, RS512)"),
    "alg=PS256 key refuses RS256": (
        lambda t, s: t(kid="pss", algorithm="RS256"),
        401, "token algorithm 'RS256' is not allowed for key 'pss' (it allows PS256)"),
    "P-256 key refuses ES384": (
        lambda t, s: t(kid="ec1", signer=ec.generate_private_key(ec.SECP384R1()), algorithm="ES384"),
        401, "token algorithm 'ES384' is not allowed for key 'ec1' (it allows ES256)"),
    "Ed25519 key refuses RS256": (
        lambda t, s: t(kid="ed1", signer=s["k1"], algorithm="RS256"),
        401, "token algorithm 'RS256' is not allowed for key 'ed1' (it allows EdDSA)"),
    "RSA key that declares HS256": (
        lambda t, s: t(kid="bogus", algorithm="RS256"),
        401, "cannot check the token: key 'bogus' of the identity provider allows none of the accepted "
             "algorithms (kty 'RSA', alg 'HS256')"),
    # claims
    "no aud": (lambda t, s: t(aud=None), 401, "token has no 'aud' claim"),
    "wrong aud": (lambda t, s: t(aud="another-app"), 401, "token audience is not 'aitrail-api'"),
    "wrong iss": (lambda t, s: t(iss="https://evil.example/"), 401, "token issuer is not 'https://idp.example.test/'"),
    "no iss": (lambda t, s: t(iss=None), 401, "token has no 'iss' claim"),
    "no sub": (lambda t, s: t(sub=None), 401, "token has no 'sub' claim"),
    "no exp": (lambda t, s: t(exp=None), 401, "token has no 'exp' claim"),
    "expired": (lambda t, s: t(exp=int(time.time()) - 3600), 401, "token expired"),
    "not yet valid": (lambda t, s: t(nbf=int(time.time()) + 3600), 401,
                      "token is not valid yet (its nbf or iat is in the future)"),
    "issued in the future": (lambda t, s: t(iat=int(time.time()) + 3600), 401,
                             "token is not valid yet (its nbf or iat is in the future)"),
    # signatures and keys
    "bad signature": (lambda t, s: t(signer=s["attacker-rsa"]), 401,
                      "invalid token: its signature does not verify with key 'k1'"),
    "payload changed after signing": (lambda t, s: _tampered(t()), 401,
                                      "invalid token: its signature does not verify with key 'k1'"),
    "unknown kid": (lambda t, s: t(kid="unknown"), 401,
                    "cannot check the token: signing key not found (no key 'unknown' in the identity provider's JWKS)"),
    "encryption key": (lambda t, s: t(kid="enc1"), 401,
                       "cannot check the token: signing key not found (no key 'enc1' in the identity provider's JWKS)"),
    "no kid": (lambda t, s: t(kid=None), 401, "cannot check the token: its header names no key ('kid')"),
    "garbage": (lambda t, s: "not-a-token", 401, "cannot check the token: malformed token (Not enough segments)"),
    "garbage header": (lambda t, s: f"{_b64(b'{not json')}.e30.c2ln", 401,
                       "cannot check the token: malformed token (Invalid header string: "),
    "header without alg": (lambda t, s: forged({"kid": "k1"}, valid_claims(), None), 401,
                           "cannot check the token: its header names no algorithm ('alg')"),
    "payload not JSON": (lambda t, s: jwt.api_jws.encode(b"not json", s["k1"], algorithm="RS256", headers={"kid": "k1"}),
                         401, "cannot check the token: malformed token (Invalid payload string: "),
    # tenant and role
    "tenant claim with '/'": (lambda t, s: t(tenant="acme/../globex"), 403,
                              "token tenant claim 'tenant': invalid tenant name 'acme/../globex': 1 to 64 letters, "
                              "digits, '.', '_' or '-', starting with a letter or digit"),
    "tenant claim not a string": (lambda t, s: t(tenant=["acme"]), 403, "token tenant claim 'tenant': invalid tenant name"),
    "no tenant claim": (lambda t, s: t(tenant=None), 403, "token has no tenant claim 'tenant'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_token_error_is_a_4xx_with_the_reason(api, idp, signers, case):
    _, token = idp
    make, status, message = CASES[case]
    response = api.get("/v1/answers", headers={"Authorization": bearer(make(token, signers))})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == ("unauthorized" if status == 401 else "forbidden")
    assert error["message"].startswith(message), error["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="aitrail"'


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
    by_ec_token = client.get("/v1/answers", headers={"Authorization": bearer(token(kid="ec1", algorithm="ES256"))})
    assert [a["trace_id"] for a in by_ec_token.json()["data"]] == [f"{1:032x}"]

    ingest_only = client.get("/v1/answers", headers={"Authorization": bearer(token(aitrail_role="ingest"))})
    assert ingest_only.status_code == 403 and "needs role" in ingest_only.json()["error"]["message"]
    expired = client.get("/v1/answers", headers={"Authorization": bearer(token(exp=int(time.time()) - 3600))})
    assert expired.status_code == 401 and expired.json()["error"]["message"] == "token expired"
    store.close()


# --- the JWKS file ---------------------------------------------------------------------------


def test_jwks_file_read_again_when_it_changes(tmp_path, signers, jwks, idp):
    settings, token = idp
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [k for k in jwks["keys"] if k["kid"] == "k1"]}))
    auth = Authenticator(lambda key: None, settings.model_copy(update={"jwks_url": path.as_uri()}))
    assert auth.principal(bearer(token())).tenant == "acme"
    with pytest.raises(Unauthorized, match="no key 'ec1'"):
        auth.principal(bearer(token(kid="ec1", algorithm="ES256")))

    path.write_text(json.dumps(jwks) + "\n")  # rotation: a new key published
    assert auth.principal(bearer(token(kid="ec1", algorithm="ES256"))).tenant == "acme"

    path.write_text("{not json")
    with pytest.raises(Unavailable) as broken:
        auth.principal(bearer(token()))
    assert broken.value.message == f"cannot check the token: the JWKS {path} is not JSON"
    path.unlink()
    with pytest.raises(Unavailable, match=r"cannot check the token: cannot read the JWKS file .*No such file"):
        auth.principal(bearer(token()))


def test_private_key_material_in_the_jwks_is_never_used(tmp_path, signers, idp):
    settings, token = idp
    private = jwt.algorithms.RSAAlgorithm.to_jwk(signers["k1"], as_dict=True)  # carries "d"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**private, "kid": "k1", "alg": "RS256"}]}))
    auth = Authenticator(lambda key: None, settings.model_copy(update={"jwks_url": path.as_uri()}))
    with pytest.raises(Unavailable) as refused:
        auth.principal(bearer(token()))
    assert refused.value.message == f"cannot check the token: the JWKS {path} holds no signing key with a kid"


def test_rsa_keys_shorter_than_2048_bits_are_refused(tmp_path, idp):
    settings, token = idp
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_public_jwk(short, kid="short", alg="RS256")]}))
    auth = Authenticator(lambda key: None, settings.model_copy(update={"jwks_url": path.as_uri()}))
    with warnings.catch_warnings():  # PyJWT warns when signing with it, as it should
        warnings.simplefilter("ignore")
        weak = token(kid="short", signer=short)
    with pytest.raises(Unauthorized) as refused:
        auth.principal(bearer(weak))
    assert refused.value.message.startswith("cannot check the token: key 'short': The RSA key is 1024 bits long")


# --- start-up refuses what is unsafe ---------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"audience": None},
         "auth.oidc.audience must be set when auth.oidc.issuer and auth.oidc.jwks_url are (the `aud` the identity "
         "provider puts in tokens meant for aitrail; without it, a token it issued for any other application "
         "would be accepted)"),
        ({"issuer": None, "jwks_url": None},
         "auth.oidc.issuer must be set when auth.oidc.audience is (the `iss` tokens must carry); "
         "auth.oidc.jwks_url must be set when auth.oidc.audience is ("),
        ({"jwks_url": "http://127.0.0.1:9/jwks.json"},
         "auth.oidc.jwks_url http://127.0.0.1:9/jwks.json is plain http://: use https:// or file://."),
        ({"jwks_url": "ftp://idp.example.test/jwks.json"},
         "auth.oidc.jwks_url 'ftp://idp.example.test/jwks.json' must be an https:// or a file:// URL"),
        ({"jwks_url": "/etc/jwks.json"}, "auth.oidc.jwks_url '/etc/jwks.json' must be an https:// or a file:// URL"),
        ({"jwks_url": "file:///nonexistent/jwks.json"}, "auth.oidc.jwks_url file:///nonexistent/jwks.json: no such file"),
        ({"algorithms": ["RS256", "HS256"]}, "auth.oidc.algorithms: 'HS256' not accepted; choose among"),
        ({"algorithms": ["none"]}, "auth.oidc.algorithms: 'none' not accepted; choose among"),
        ({"algorithms": []}, "auth.oidc.algorithms: empty not accepted"),
        ({"jwks_url": "https://idp.example.test/jwks.json", "ca_file": Path("/nonexistent/ca.pem")},
         "auth.oidc.ca_file /nonexistent/ca.pem: "),
    ],
)
def test_unsafe_oidc_settings_refuse_to_start(idp, tmp_path, changes, message):
    settings, _ = idp
    bad = OidcSettings(**(settings.model_dump() | changes))
    with pytest.raises(ConfigError) as refused:
        Authenticator(lambda key: None, bad)
    assert refused.value.message.startswith(message), refused.value.message
    with pytest.raises(ConfigError):
        create_app(SqliteStore.in_dir(tmp_path), pseudonymise=str, oidc=bad)


def test_aitrail_api_refuses_to_start_with_an_http_jwks(tmp_path):
    env = {**os.environ, "AITRAIL_AUTH__OIDC__ISSUER": ISSUER, "AITRAIL_AUTH__OIDC__AUDIENCE": AUDIENCE,
           "AITRAIL_AUTH__OIDC__JWKS_URL": "http://127.0.0.1:9/jwks.json"}
    env.pop("AITRAIL_OPENSEARCH__URL", None)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "aitrail"), "api", "--data-dir", str(tmp_path), "--api-port", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "aitrail: auth.oidc.jwks_url http://127.0.0.1:9/jwks.json is plain http://" in result.stderr


def test_oidc_off_when_nothing_is_set():
    auth = Authenticator(lambda key: None, OidcSettings())
    with pytest.raises(Unauthorized, match="OIDC tokens are not configured"):
        auth.principal(bearer("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"))


# --- the JWKS over https ---------------------------------------------------------------------


class Idp:
    """An identity provider on the loopback over TLS, with its own CA: `routes` maps a path to
    (status, headers, body); `hits` counts requests per path."""

    def __init__(self, folder: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aitrail test idp")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self.ca_file, key_file = folder / "ca.pem", folder / "key.pem"
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.hits: Counter[str] = Counter()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handler(self):
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                idp.hits[self.path] += 1
                status, headers, body = idp.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def https_idp(tmp_path, jwks):
    server = Idp(tmp_path)
    server.routes["/jwks.json"] = (200, {"Content-Type": "application/json"}, json.dumps(jwks).encode())
    yield server
    server.close()


def over_https(settings: OidcSettings, server: Idp, path: str = "/jwks.json") -> Authenticator:
    return Authenticator(lambda key: None, settings.model_copy(
        update={"jwks_url": server.url + path, "ca_file": server.ca_file}))


class Clock:
    """Stands in for `time` in aitrail.auth, so the JWKS cache's intervals pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(auth_module, "time", clock)
    return clock


def test_jwks_fetched_over_https_cached_and_fetched_again_for_a_new_kid_at_most_every_30_s(
        idp, https_idp, clock, signers, jwks):
    settings, token = idp
    auth = over_https(settings, https_idp)
    assert auth.principal(bearer(token(tenant="initech"))).tenant == "initech"
    assert auth.principal(bearer(token(kid="ed1", algorithm="EdDSA"))).tenant == "acme"
    assert https_idp.hits["/jwks.json"] == 1  # cached

    for _ in range(3):  # unknown kids right after a fetch: no new fetch
        with pytest.raises(Unauthorized, match="no key 'rotated'"):
            auth.principal(bearer(token(kid="rotated", signer=signers["attacker-rsa"])))
    assert https_idp.hits["/jwks.json"] == 1

    rotated = {"keys": jwks["keys"] + [_public_jwk(signers["attacker-rsa"], kid="rotated", alg="RS256")]}
    https_idp.routes["/jwks.json"] = (200, {}, json.dumps(rotated).encode())
    clock.now += auth_module.JWKS_RETRY_S  # the provider rotated; a token with the new kid fetches again
    assert auth.principal(bearer(token(kid="rotated", signer=signers["attacker-rsa"]))).tenant == "acme"
    with pytest.raises(Unauthorized, match="no key 'other'"):
        auth.principal(bearer(token(kid="other")))
    assert https_idp.hits["/jwks.json"] == 2

    clock.now += auth_module.JWKS_LIFESPAN_S  # and a known kid fetches again once the keys are old
    assert auth.principal(bearer(token())).tenant == "acme"
    assert https_idp.hits["/jwks.json"] == 3


def test_jwks_from_a_server_not_trusted_is_refused(idp, https_idp):
    settings, token = idp
    auth = Authenticator(lambda key: None, settings.model_copy(update={"jwks_url": https_idp.url + "/jwks.json"}))
    with pytest.raises(Unavailable) as refused:
        auth.principal(bearer(token()))
    assert refused.value.message.startswith(
        f"cannot check the token: the identity provider's JWKS {https_idp.url}/jwks.json cannot be reached (")
    assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message


def test_redirects_are_followed_to_https_only(idp, https_idp, tmp_path):
    settings, token = idp
    plain_hits: list[str] = []

    class Plain(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            plain_hits.append(self.path)
            self.send_error(500)

        def log_message(self, *args):
            pass

    plain = ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        downgrade = f"http://127.0.0.1:{plain.server_port}/jwks.json"
        https_idp.routes["/to-http"] = (302, {"Location": downgrade}, b"")
        https_idp.routes["/to-https"] = (301, {"Location": "/jwks.json"}, b"")

        assert over_https(settings, https_idp, "/to-https").principal(bearer(token())).tenant == "acme"

        with TestClient(create_app(SqliteStore.in_dir(tmp_path), pseudonymise=str, oidc=settings.model_copy(
                update={"jwks_url": https_idp.url + "/to-http", "ca_file": https_idp.ca_file}))) as client:
            response = client.get("/v1/answers", headers={"Authorization": bearer(token())})
        assert response.status_code == 503
        assert response.json()["error"]["message"] == (
            f"cannot check the token: the JWKS {https_idp.url}/to-http redirects to {downgrade}, "
            "which is not https://; not followed")
        assert response.headers["Retry-After"]
        assert plain_hits == []
    finally:
        plain.shutdown()
        plain.server_close()


def test_identity_provider_unreachable_is_503_with_the_reason(idp, tmp_path):
    settings, token = idp
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"https://127.0.0.1:{closed_port}/jwks.json"
    client = TestClient(create_app(SqliteStore.in_dir(tmp_path), pseudonymise=str,
                                   oidc=settings.model_copy(update={"jwks_url": url})))
    for _ in range(2):  # the second within JWKS_RETRY_S: the same answer, without a new attempt
        response = client.get("/v1/answers", headers={"Authorization": bearer(token())})
        assert response.status_code == 503 and response.headers["Retry-After"]
        error = response.json()["error"]
        assert error["code"] == "unavailable"
        assert error["message"].startswith(f"cannot check the token: the identity provider's JWKS {url} cannot be reached (")
        assert "refused" in error["message"].lower()


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ((500, {}, b"oops"), "cannot check the token: the identity provider answered 500 for its JWKS {url}"),
        ((200, {}, b"<html>"), "cannot check the token: the JWKS {url} is not JSON"),
        ((200, {}, b'{"keys": "none"}'), "cannot check the token: {url} is not a JWKS (an object with a 'keys' list)"),
        ((200, {}, b" " * (auth_module.JWKS_MAX_BYTES + 1)),
         "cannot check the token: the JWKS {url} is larger than 1048576 bytes"),
    ],
)
def test_jwks_that_cannot_be_used_is_503_with_the_reason(idp, https_idp, route, message):
    settings, token = idp
    https_idp.routes["/broken"] = route
    with pytest.raises(Unavailable) as refused:
        over_https(settings, https_idp, "/broken").principal(bearer(token()))
    assert refused.value.message == message.format(url=https_idp.url + "/broken")


def test_keys_kept_while_the_provider_is_down_then_dropped(idp, https_idp, clock):
    settings, token = idp
    auth = over_https(settings, https_idp)
    assert auth.principal(bearer(token())).tenant == "acme"

    https_idp.routes["/jwks.json"] = (503, {}, b"down")
    clock.now += auth_module.JWKS_LIFESPAN_S
    assert auth.principal(bearer(token())).tenant == "acme"  # the keys last fetched still serve
    assert auth.principal(bearer(token())).tenant == "acme"  # and the next try waits JWKS_RETRY_S
    assert https_idp.hits["/jwks.json"] == 2

    clock.now += auth_module.JWKS_MAX_STALE_S  # ...until they are too old: a withdrawn key stops working
    for _ in range(2):
        with pytest.raises(Unavailable) as down:
            auth.principal(bearer(token()))
        assert down.value.message == (
            f"cannot check the token: the identity provider answered 503 for its JWKS {https_idp.url}/jwks.json")
    assert https_idp.hits["/jwks.json"] == 3

    https_idp.routes["/jwks.json"] = (200, {}, b'{"keys": []}')  # back, but publishing nothing usable
    clock.now += auth_module.JWKS_RETRY_S
    with pytest.raises(Unavailable, match="holds no signing key with a kid"):
        auth.principal(bearer(token()))
