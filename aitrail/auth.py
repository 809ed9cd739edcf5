"""Who is calling: aitrail API keys, or OIDC bearer tokens checked against the identity
provider's JWKS, with claims mapped to tenant and role.

The tenant always comes from the credential, never from the request.

OIDC tokens are checked the way RFC 8725 asks, so that no token the identity provider did
not sign for this API gets in:

- The algorithm comes from the key, never from the token. A JWK's `alg`, when present, pins
  the key to that one algorithm (and must be in `auth.oidc.algorithms`); a JWK without `alg`
  allows what its key type signs with: RSA RS256/RS384/RS512, EC its curve's ES algorithm
  (P-256 ES256, P-384 ES384, P-521 ES512), OKP Ed25519/Ed448 EdDSA. The token header's `alg`
  must be one of them. PSS (PS256/384/512) only for RSA keys that declare it: OIDC's default
  is RS256, and a provider that signs with PSS says so on its keys. `none` and HS* never:
  an HMAC "secret" would be the public key anyone can read.
- `iss`, `aud`, `sub` and `exp` are required; `nbf` and `iat` are checked when present.
- The JWKS comes over https:// (redirects followed to https:// only) or from a file://.

Errors: a token that does not pass is 401 with the reason; a valid token whose tenant or role
claim does not fit is 403; a JWKS that cannot be fetched or read is 503 (the identity provider
is down or misconfigured, not the caller's fault; a retry may succeed, and OTLP exporters
retry on 503 rather than dropping the data). Never 500.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import jwt

from aitrail.errors import ConfigError, Forbidden, InvalidInput, Unauthorized, Unavailable
from aitrail.settings import OidcSettings
from aitrail.store.base import Principal, Role
from aitrail.store.keys import PREFIX as KEY_PREFIX
from aitrail.tenancy import check_tenant

log = logging.getLogger(__name__)

# When a token carries several roles, the most capable one is used.
ROLE_PRIORITY = (Role.ADMIN, Role.AUDITOR, Role.ANALYST, Role.INGEST)

# Asymmetric signatures only: what `auth.oidc.algorithms` may name.
SUPPORTED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_RSA_UNDECLARED = ("RS256", "RS384", "RS512")
_RSA_DECLARED = _RSA_UNDECLARED + ("PS256", "PS384", "PS512")
_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp"]

JWKS_LIFESPAN_S = 300  # fetch the JWKS again after this long
JWKS_RETRY_S = 30  # an unknown kid, or a failed fetch, fetches again at most this often
JWKS_MAX_STALE_S = 3600  # keys kept while the provider cannot be reached, at most this long
JWKS_TIMEOUT_S = 5
JWKS_MAX_BYTES = 1 << 20


class Authenticator:
    """`principal(authorization_header)` → the caller, or Unauthorized / Forbidden with the
    reason (Unavailable when the JWKS cannot be had). Built once at start-up: a bad OIDC
    configuration raises ConfigError naming the setting."""

    def __init__(self, lookup_key: Callable[[str], Principal | None], oidc: OidcSettings | None = None) -> None:
        self._lookup_key = lookup_key
        self._oidc = _Oidc.configure(oidc) if oidc is not None else None

    def principal(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing credentials: send 'Authorization: Bearer <key or token>'")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("Authorization must be 'Bearer <key or token>'")
        if credential.startswith(KEY_PREFIX):
            principal = self._lookup_key(credential)
            if principal is None:
                raise Unauthorized("unknown or revoked key")
            return principal
        if self._oidc is None:
            raise Unauthorized("not an aitrail key, and OIDC tokens are not configured (auth.oidc.issuer, jwks_url)")
        return self._oidc.principal(credential)


class _Oidc:
    def __init__(self, settings: OidcSettings, algorithms: tuple[str, ...], keys: _KeySet) -> None:
        self.settings, self.algorithms, self.keys = settings, algorithms, keys

    @classmethod
    def configure(cls, settings: OidcSettings) -> _Oidc | None:
        """None when OIDC is off (none of issuer, jwks_url, audience set); ConfigError naming
        the setting when it is half configured or unsafe."""
        reasons = {
            "issuer": "the `iss` tokens must carry",
            "jwks_url": "where the keys that sign the tokens are published",
            "audience": "the `aud` the identity provider puts in tokens meant for aitrail; without it, "
                        "a token it issued for any other application would be accepted",
        }
        given = [name for name in reasons if getattr(settings, name)]
        if not given:
            return None
        missing = [name for name in reasons if name not in given]
        if missing:
            raise ConfigError("; ".join(
                f"auth.oidc.{name} must be set when {' and '.join('auth.oidc.' + g for g in given)} "
                f"{'is' if len(given) == 1 else 'are'} ({reasons[name]})"
                for name in missing
            ))
        algorithms = tuple(dict.fromkeys(settings.algorithms))
        refused = [a for a in algorithms if a not in SUPPORTED_ALGORITHMS]
        if refused or not algorithms:
            raise ConfigError(
                f"auth.oidc.algorithms: {', '.join(map(repr, refused)) or 'empty'} not accepted; choose among "
                f"{', '.join(SUPPORTED_ALGORITHMS)} (`none` and the HS* shared-secret algorithms are never "
                "accepted for tokens from an identity provider)"
            )
        return cls(settings, algorithms, _KeySet.open(settings))

    def principal(self, token: str) -> Principal:
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"cannot check the token: malformed token ({_short(exc)})") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not alg:
            raise Unauthorized("cannot check the token: its header names no algorithm ('alg')")
        if alg not in self.algorithms:
            raise Unauthorized(f"token algorithm {_short(alg)} is not accepted (accepted: {', '.join(self.algorithms)})")
        if not kid:
            raise Unauthorized("cannot check the token: its header names no key ('kid')")
        key = self._key(kid, alg)
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=settings.audience, issuer=settings.issuer,
                leeway=settings.leeway_s, options={"require": REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token is not valid yet (its nbf or iat is in the future)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"token audience is not {settings.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"token issuer is not {settings.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized(f"invalid token: its signature does not verify with key {_short(kid)}") from None
        except jwt.DecodeError as exc:
            raise Unauthorized(f"cannot check the token: malformed token ({_short(exc)})") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {_short(exc)}") from None
        except jwt.PyJWTError as exc:  # InvalidKeyError: e.g. an RSA key shorter than 2048 bits
            raise Unauthorized(f"cannot check the token: key {_short(kid)}: {_short(exc)}") from None
        except (ValueError, TypeError) as exc:  # from the cryptography backend; never a 500
            log.warning("OIDC token check failed unexpectedly with key %r: %r", kid, exc)
            raise Unauthorized(f"cannot check the token: {_short(exc)}") from None
        if not isinstance(claims.get("sub"), str):
            raise Unauthorized("invalid token: its 'sub' claim must be a string")
        tenant = claims.get(settings.tenant_claim)
        if tenant is None or tenant == "":
            raise Forbidden(f"token has no tenant claim {settings.tenant_claim!r}")
        try:
            check_tenant(tenant)
        except InvalidInput as exc:
            raise Forbidden(f"token tenant claim {settings.tenant_claim!r}: {exc.message}") from None
        return Principal(key_id=f"oidc:{claims['sub']}", tenant=tenant, role=_role(claims.get(settings.role_claim), settings))

    def _key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The JWK `kid`, prepared for `alg` if the key allows it; Unauthorized otherwise."""
        candidates = self.keys.keys_for(kid)
        if not candidates:
            raise Unauthorized(
                f"cannot check the token: signing key not found (no key {_short(kid)} in the identity provider's JWKS)"
            )
        allowed: list[str] = []
        for key in candidates:
            algorithms = key.algorithms(self.algorithms)
            if alg in algorithms:
                return key.prepared(alg)
            allowed += algorithms
        if not allowed:
            raise Unauthorized(
                f"cannot check the token: key {_short(kid)} of the identity provider allows none of the "
                f"accepted algorithms ({', '.join(candidates[0].describe())})"
            )
        raise Unauthorized(
            f"token algorithm {alg!r} is not allowed for key {_short(kid)} (it allows {', '.join(dict.fromkeys(allowed))})"
        )


class _Key:
    """One signing key of the JWKS; PyJWK objects made on first use, per algorithm."""

    def __init__(self, jwk: dict) -> None:
        self.jwk, self.kid = jwk, jwk["kid"]
        self._prepared: dict[str, jwt.PyJWK] = {}

    def algorithms(self, accepted: tuple[str, ...]) -> tuple[str, ...]:
        kty, crv, declared = self.jwk.get("kty"), self.jwk.get("crv"), self.jwk.get("alg")
        if kty == "RSA":
            possible, undeclared = _RSA_DECLARED, _RSA_UNDECLARED
        elif kty == "EC" and crv in _CURVE_ALGORITHM:
            possible = undeclared = (_CURVE_ALGORITHM[crv],)
        elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
            possible = undeclared = ("EdDSA",)
        else:
            return ()
        chosen = undeclared if declared is None else (declared,) if declared in possible else ()
        return tuple(a for a in chosen if a in accepted)

    def describe(self) -> list[str]:
        return [f"{name} {_short(self.jwk[name])}" for name in ("kty", "crv", "alg") if name in self.jwk]

    def prepared(self, alg: str) -> jwt.PyJWK:
        if alg not in self._prepared:
            try:
                self._prepared[alg] = jwt.PyJWK(self.jwk, algorithm=alg)
            except jwt.PyJWTError as exc:
                raise Unauthorized(
                    f"cannot check the token: key {_short(self.kid)} of the identity provider is unusable ({_short(exc)})"
                ) from None
        return self._prepared[alg]


class _KeySet(ABC):
    """The identity provider's signing keys by kid, kept fresh by `_refresh` (thread-safe:
    the API checks tokens in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, list[_Key]] = {}

    @staticmethod
    def open(settings: OidcSettings) -> _KeySet:
        url = settings.jwks_url or ""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https" and parts.hostname:
            return _HttpsKeys(url, _tls_context(settings.ca_file))
        if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path:
            path = Path(urllib.parse.unquote(parts.path))
            if not path.is_file():
                raise ConfigError(f"auth.oidc.jwks_url {url}: no such file")
            return _FileKeys(path)
        if parts.scheme == "http":
            raise ConfigError(
                f"auth.oidc.jwks_url {url} is plain http://: use https:// or file://. Anyone on the path of "
                "an http fetch could swap in keys of their own and sign tokens for any tenant"
            )
        raise ConfigError(f"auth.oidc.jwks_url {url!r} must be an https:// or a file:// URL")

    def keys_for(self, kid: str) -> list[_Key]:
        with self._lock:
            self._refresh(missing=kid not in self._keys)
            return list(self._keys.get(kid, ()))

    @abstractmethod
    def _refresh(self, missing: bool) -> None:
        """Load the keys again when due; Unavailable when there are none to use."""


class _FileKeys(_KeySet):
    """A JWKS kept in a file, read again whenever it changes."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._version: tuple[int, int] | None = None

    def _refresh(self, missing: bool) -> None:
        try:
            stat = self._path.stat()
            if (stat.st_mtime_ns, stat.st_size) == self._version:
                return
            document = self._path.read_bytes()
        except OSError as exc:
            self._keys, self._version = {}, None
            raise Unavailable(f"cannot check the token: cannot read the JWKS file {self._path}: {exc.strerror or exc}") from None
        self._keys, self._version = {}, None
        self._keys = _parse(document, str(self._path))
        self._version = (stat.st_mtime_ns, stat.st_size)


class _HttpsKeys(_KeySet):
    """A JWKS fetched over https: again after JWKS_LIFESPAN_S, and on an unknown kid (a key
    rotation) at most every JWKS_RETRY_S. While the provider cannot be reached, the keys last
    fetched are used for up to JWKS_MAX_STALE_S, then no more (a withdrawn key must stop working)."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        super().__init__()
        self._url = url
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects())
        self._loaded_at: float | None = None
        self._tried_at: float | None = None
        self._failure: str | None = None

    def _refresh(self, missing: bool) -> None:
        now = time.monotonic()
        fresh = self._loaded_at is not None and now - self._loaded_at < JWKS_LIFESPAN_S
        if fresh and not missing:
            return
        if self._tried_at is not None and now - self._tried_at < JWKS_RETRY_S:
            self._stale_or_fail(now)
            return
        self._tried_at = now
        try:
            keys = _parse(self._fetch(), self._url)
        except Unavailable as exc:
            self._failure = exc.message
            log.warning("%s", exc.message)
            self._stale_or_fail(now)
            return
        self._keys, self._loaded_at, self._failure = keys, now, None

    def _stale_or_fail(self, now: float) -> None:
        """Keep the keys last fetched if they are not too old, unless the last fetch failed
        and there is nothing to use."""
        if self._loaded_at is not None and now - self._loaded_at < JWKS_MAX_STALE_S:
            return
        if self._loaded_at is not None:
            self._keys, self._loaded_at = {}, None
        if self._failure is not None:
            raise Unavailable(self._failure)

    def _fetch(self) -> bytes:
        request = urllib.request.Request(self._url, headers={"Accept": "application/json", "User-Agent": "aitrail"})
        try:
            with self._opener.open(request, timeout=JWKS_TIMEOUT_S) as response:
                document = response.read(JWKS_MAX_BYTES + 1)
        except _InsecureRedirect as exc:
            raise Unavailable(f"cannot check the token: {exc}") from None
        except urllib.error.HTTPError as exc:
            raise Unavailable(
                f"cannot check the token: the identity provider answered {exc.code} for its JWKS {self._url}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unavailable(
                f"cannot check the token: the identity provider's JWKS {self._url} cannot be reached ({_short(reason)})"
            ) from None
        if len(document) > JWKS_MAX_BYTES:
            raise Unavailable(f"cannot check the token: the JWKS {self._url} is larger than {JWKS_MAX_BYTES} bytes")
        return document


class _InsecureRedirect(Exception):
    pass


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https:// URL: a JWKS must never come over plain http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(target).scheme != "https":
            raise _InsecureRedirect(f"the JWKS {req.full_url} redirects to {target}, which is not https://; not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"auth.oidc.ca_file {ca_file}: {exc}") from None


def _parse(document: bytes, where: str) -> dict[str, list[_Key]]:
    """The signing keys of a JWKS document, by kid. Keys without a kid, keys for encryption
    and private keys are left out."""
    try:
        data = json.loads(document)
    except ValueError:
        raise Unavailable(f"cannot check the token: the JWKS {where} is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise Unavailable(f"cannot check the token: {where} is not a JWKS (an object with a 'keys' list)")
    keys: dict[str, list[_Key]] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            continue
        if jwk.get("use", "sig") != "sig" or ("key_ops" in jwk and "verify" not in (jwk["key_ops"] or ())):
            continue
        if "d" in jwk or "k" in jwk:
            log.error("the JWKS %s publishes secret key material (key %r); that key is ignored", where, jwk["kid"])
            continue
        keys.setdefault(jwk["kid"], []).append(_Key(jwk))
    if not keys:
        raise Unavailable(f"cannot check the token: the JWKS {where} holds no signing key with a kid")
    return keys


def _short(value: object, limit: int = 120) -> str:
    text = value if isinstance(value, str) else str(value)
    text = text if len(text) <= limit else text[:limit] + "…"
    return repr(text) if isinstance(value, str) else text


def _role(value, settings: OidcSettings) -> Role:
    offered = value if isinstance(value, list) else [value]
    known = {str(v) for v in offered if isinstance(v, str)} & {r.value for r in Role}
    for role in ROLE_PRIORITY:
        if role.value in known:
            return role
    raise Forbidden(f"token has no aitrail role in claim {settings.role_claim!r} (one of: {', '.join(Role)})")


def require(principal: Principal, *roles: Role) -> Principal:
    if principal.role not in roles:
        needed = " or ".join(r.value for r in roles)
        raise Forbidden(f"role '{principal.role}' may not do this; it needs role {needed}")
    return principal
