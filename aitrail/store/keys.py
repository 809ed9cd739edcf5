"""API keys: `atk_<key id>_<secret>`. Only a SHA-256 of the whole key is stored; the keys are
random (256 bits), so a fast hash is enough and lookups stay one index probe."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "atk_"


def new_key() -> tuple[str, str]:
    """(key id, plaintext key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
