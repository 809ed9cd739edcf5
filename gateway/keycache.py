"""Ingest keys checked without making ingest depend on the store.

An OTLP request names its key in every request; looking each one up in the store (OpenSearch
in the scale-out pipeline) would put the store on the ingest path: slower, blocking the event
loop, and down whenever the store is. `KeyCache` answers from memory instead:

- **Positive entries** (a valid key and its principal) are trusted for `ttl_s` after the store
  last said so. A key revoked in the store is refused at the latest `ttl_s` after the
  revocation, as soon as the store answers (the revocation contract, documented in
  docs/configuration.md and docs/operations.md).
- **Negative entries** (unknown or revoked keys) are remembered `negative_ttl_s`, so a sender
  with a wrong key does not turn every request into a store lookup, and a key created a moment
  ago works within that time.
- **Lookups run in a thread** (the store clients are blocking; a daemon thread, so a hanging
  lookup never holds the process at exit), at most one at a time per key
  (single flight: a burst of requests with an expired key makes one lookup), and a request
  waits at most `wait_s` for one.
- **While the store cannot answer** (unreachable, timing out, not open yet), a key the store
  confirmed less than `max_stale_s` ago keeps working (counted as `stale`); any other key is
  answered `Unavailable` (503 + Retry-After, retryable), never 401: the key may well be valid,
  and an exporter drops data on 401. Once a lookup has failed, requests with a known key no
  longer wait for the store: they are answered from the cache while one lookup at a time
  checks whether it is back.

Plain keys are never kept: entries are under the key's SHA-256 (`hash_key`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aitrail.errors import AitrailError, Unauthorized, Unavailable
from aitrail.store.base import Principal
from aitrail.store.keys import hash_key

from .telemetry import gateway_metrics
from .threads import in_daemon_thread

log = logging.getLogger(__name__)

Lookup = Callable[[str], Principal | None]
"""The store's check of one plain key (blocking): the principal, None for an unknown or
revoked key, or an exception when the store cannot answer."""


@dataclass(frozen=True)
class KeyCacheSettings:
    ttl_s: float = 60.0
    negative_ttl_s: float = 5.0
    max_stale_s: float = 900.0
    wait_s: float = 2.0
    max_entries: int = 100_000

    @classmethod
    def of(cls, ingest) -> KeyCacheSettings:
        """From the `ingest.key_*` settings (`aitrail.settings.IngestSettings`)."""
        return cls(ttl_s=ingest.key_cache_ttl_s, negative_ttl_s=ingest.key_cache_negative_ttl_s,
                   max_stale_s=ingest.key_cache_max_stale_s, wait_s=ingest.key_lookup_wait_s,
                   max_entries=ingest.key_cache_max_entries)


@dataclass
class _Entry:
    principal: Principal | None
    confirmed_at: float  # when the store last answered for this key (monotonic)
    expires_at: float


@dataclass(frozen=True)
class _Answer:
    principal: Principal | None = None
    error: str | None = None  # set: the store could not answer


class KeyCache:
    def __init__(
        self, lookup: Lookup, settings: KeyCacheSettings = KeyCacheSettings(), *,
        clock: Callable[[], float] = time.monotonic, on_outcome: Callable[[str], None] | None = None,
        on_store_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._lookup, self._settings, self._clock = lookup, settings, clock
        self._on_outcome, self._on_store_state = on_outcome, on_store_state
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._flights: dict[str, asyncio.Task[_Answer]] = {}
        self.store_error: str | None = None  # why the last lookup failed; None once one succeeds

    async def principal(self, key: str) -> Principal | None:
        """The key's principal, None when the store says it is unknown or revoked; `Unavailable`
        when the store cannot answer and the cache cannot either."""
        digest = hash_key(key)
        entry = self._entries.get(digest)
        now = self._clock()
        if entry is not None and now < entry.expires_at:
            self._count("cached")
            return entry.principal
        flight = self._flights.get(digest)
        if flight is None:
            flight = self._flights[digest] = asyncio.get_running_loop().create_task(self._check(key, digest))
        usable_stale = self._usable_stale(entry, now)
        if usable_stale and self.store_error is not None:
            self._count("stale")  # the store is known to be away: do not make the sender wait for it
            return entry.principal
        try:
            answer = await asyncio.wait_for(asyncio.shield(flight), self._settings.wait_s)
        except TimeoutError:  # the lookup goes on; meanwhile the store counts as away
            answer = self._failed(f"the key store did not answer within {self._settings.wait_s:g} s")
        if answer.error is None:
            self._count("looked_up")
            return answer.principal
        if usable_stale:
            self._count("stale")
            return entry.principal
        self._count("unavailable")
        raise Unavailable(f"cannot check the key now: {answer.error}; retry later")

    def principal_blocking(self, key: str) -> Principal | None:
        """The same answer for callers that run in a thread (the gateway's /metrics): the
        cache's entry while fresh, else the store (remembered), else the entry while not too
        stale."""
        digest = hash_key(key)
        entry = self._entries.get(digest)
        now = self._clock()
        if entry is not None and now < entry.expires_at:
            return entry.principal
        try:
            principal = self._lookup(key)
            self._remember(digest, principal)
            return principal
        except Unauthorized:
            self._remember(digest, None)
            return None
        except Exception as exc:
            if self._usable_stale(entry, now):
                return entry.principal
            if isinstance(exc, Unavailable):
                raise
            reason = exc.message if isinstance(exc, AitrailError) else f"{type(exc).__name__}: {exc}"
            raise Unavailable(f"cannot check the key now: {reason}; retry later") from exc

    async def _check(self, key: str, digest: str) -> _Answer:
        """One lookup in a thread; never raises (its answer may have no one waiting for it)."""
        try:
            try:
                principal = await in_daemon_thread(self._lookup, key, name="aitrail-key-lookup")
            except Unauthorized:  # the store refuses the key (its row does not authenticate): a negative answer
                principal = None
            except AitrailError as exc:
                return self._failed(exc.message)
            except Exception as exc:  # noqa: BLE001 (a store that fails oddly is a store that cannot answer)
                log.warning("key lookup failed unexpectedly", exc_info=exc)
                return self._failed(f"{type(exc).__name__}: {exc}")
            self._remember(digest, principal)
            if self.store_error is not None:
                log.info("the key store answers again")
            self.store_error = None
            if self._on_store_state is not None:
                self._on_store_state(True)
            return _Answer(principal)
        finally:
            self._flights.pop(digest, None)

    def _usable_stale(self, entry: _Entry | None, now: float) -> bool:
        """A valid key's entry past its TTL that may still be used while the store cannot answer."""
        return entry is not None and entry.principal is not None and now - entry.confirmed_at <= self._settings.max_stale_s

    def _remember(self, digest: str, principal: Principal | None) -> None:
        now = self._clock()
        ttl = self._settings.ttl_s if principal is not None else self._settings.negative_ttl_s
        with self._lock:  # `principal_blocking` remembers from other threads
            self._entries.pop(digest, None)  # re-inserted last: the oldest entries go first when full
            self._entries[digest] = _Entry(principal, now, now + ttl)
            while len(self._entries) > self._settings.max_entries:
                del self._entries[next(iter(self._entries))]

    def _failed(self, reason: str) -> _Answer:
        if self.store_error is None:
            log.warning("the key store cannot answer; keys it confirmed in the last %g s keep working: %s",
                        self._settings.max_stale_s, reason)
        self.store_error = reason
        if self._on_store_state is not None:
            self._on_store_state(False)
        return _Answer(error=reason)

    def _count(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)


def key_cache(lookup: Lookup, ingest_settings, metrics=None) -> KeyCache:
    """A cache over `lookup` configured by the `ingest.key_*` settings, counted on `metrics`."""
    counters = gateway_metrics(metrics)
    return KeyCache(
        lookup, KeyCacheSettings.of(ingest_settings),
        on_outcome=(lambda outcome: counters.key_lookups.labels(outcome).inc()) if counters else None,
        on_store_state=(lambda up: counters.keys_store_up.set(1 if up else 0)) if counters else None,
    )
