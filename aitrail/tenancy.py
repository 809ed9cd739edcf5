"""Tenant names, and the Merkle log ids that carry them.

Every tenant has Merkle logs of its own (`<tenant>/local` embedded, `<tenant>/<topic>.<partition>`
in the pipeline, `<tenant>/access.<instance>` for `aitrail api`), so a checkpoint or a proof
says nothing about another tenant's traffic. A tenant name is therefore part of log ids,
checkpoint origins and file names, and is restricted to a safe alphabet.
"""

from __future__ import annotations

import re

from aitrail.errors import InvalidInput

TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_TENANT = re.compile(TENANT_PATTERN)


def valid_tenant(name: object) -> bool:
    return isinstance(name, str) and _TENANT.fullmatch(name) is not None


def check_tenant(name: object) -> str:
    """The name, or InvalidInput saying what a tenant name may hold."""
    if not valid_tenant(name):
        raise InvalidInput(
            f"invalid tenant name {str(name)[:80]!r}: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name  # type: ignore[return-value]


def tenant_log_id(tenant: str, base: str) -> str:
    """The id of a tenant's log: `<tenant>/<base>`."""
    return f"{tenant}/{base}"


def log_tenant(log_id: str) -> str | None:
    """The tenant a log belongs to; None for logs written before logs were per tenant."""
    tenant, sep, _ = log_id.partition("/")
    return tenant if sep and valid_tenant(tenant) else None
