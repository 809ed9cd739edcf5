"""Who is calling: aitrail API keys, or OIDC bearer tokens checked against the identity
provider's JWKS (issuer, audience, expiry) with claims mapped to tenant and role.

The tenant always comes from the credential, never from the request.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import jwt

from aitrail.errors import Forbidden, Unauthorized
from aitrail.settings import OidcSettings
from aitrail.store.base import Principal, Role
from aitrail.store.keys import PREFIX as KEY_PREFIX

log = logging.getLogger(__name__)

# When a token carries several roles, the most capable one is used.
ROLE_PRIORITY = (Role.ADMIN, Role.AUDITOR, Role.ANALYST, Role.INGEST)
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class Authenticator:
    """`principal(authorization_header)` → the caller, or Unauthorized with the reason."""

    def __init__(self, lookup_key: Callable[[str], Principal | None], oidc: OidcSettings | None = None) -> None:
        self._lookup_key = lookup_key
        self._oidc = oidc if oidc is not None and oidc.issuer and oidc.jwks_url else None
        self._jwks = _jwks(self._oidc.jwks_url) if self._oidc else None

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
        return self._token(credential)

    def _token(self, token: str) -> Principal:
        if self._oidc is None:
            raise Unauthorized("not an aitrail key, and OIDC tokens are not configured (auth.oidc.issuer, jwks_url)")
        settings = self._oidc
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token, signing_key.key, algorithms=ALGORITHMS, audience=settings.audience, issuer=settings.issuer,
                leeway=settings.leeway_s, options={"require": ["exp", "iss"] + (["aud"] if settings.audience else [])},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"token audience is not {settings.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"token issuer is not {settings.issuer!r}") from None
        except jwt.PyJWKClientError as exc:
            raise Unauthorized(f"token signing key not found in the JWKS: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        tenant = claims.get(settings.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Forbidden(f"token has no tenant claim {settings.tenant_claim!r}")
        return Principal(key_id=f"oidc:{claims.get('sub', '?')}", tenant=tenant, role=_role(claims.get(settings.role_claim), settings))


class _FileJwks:
    """A JWKS kept in a file (file://…), read again when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime: float | None = None
        self._keys: jwt.PyJWKSet | None = None

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        try:
            mtime = self._path.stat().st_mtime
            if mtime != self._mtime:
                self._keys, self._mtime = jwt.PyJWKSet.from_json(self._path.read_text()), mtime
        except (OSError, jwt.PyJWKSetError) as exc:
            raise jwt.PyJWKClientError(f"cannot read the JWKS {self._path}: {exc}") from None
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._keys.keys:
            if key.key_id == kid:
                return key
        raise jwt.PyJWKClientError(f'no key with kid "{kid}"')


def _jwks(url: str):
    if url.startswith("file://"):
        return _FileJwks(Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)))
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)


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
