"""The gateway's key store, opened in the background, so the gateway starts (and acknowledges
spans of keys it knows) while the store is down.

`BackgroundStore.run()` opens the store (OpenSearch: `open_store`, which also checks the index
layout) and retries every `retry_s` until it succeeds; until then `authenticate` raises
`Unavailable` with the reason, which the key cache turns into 503 + Retry-After for keys it
does not know. `check()` says whether the store answers, for /readyz.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aitrail.errors import AitrailError, Unavailable
from aitrail.store.base import Principal

from .threads import in_daemon_thread

log = logging.getLogger(__name__)


class BackgroundStore:
    def __init__(self, open_store: Callable[[], object], *, retry_s: float = 2.0, what: str = "the key store") -> None:
        self._open, self._retry_s, self._what = open_store, retry_s, what
        self._store = None
        self._ping: asyncio.Task[bool] | None = None
        self.open_error: str | None = "not opened yet"

    @property
    def store(self):
        return self._store

    async def run(self) -> None:
        """Open the store, retrying until it opens (or the task is cancelled)."""
        attempt = 0
        while self._store is None:
            attempt += 1
            try:
                self._store = await in_daemon_thread(self._open, name="aitrail-key-store-open")
            except Exception as exc:  # noqa: BLE001 (anything that stops the open is retried)
                reason = exc.message if isinstance(exc, AitrailError) else f"{type(exc).__name__}: {exc}"
                if attempt == 1 or reason != self.open_error:
                    log.warning("%s cannot be opened, retrying every %g s: %s", self._what, self._retry_s, reason)
                self.open_error = reason
                await asyncio.sleep(self._retry_s)
        self.open_error = None
        log.info("%s is open (after %d attempt%s)", self._what, attempt, "" if attempt == 1 else "s")

    def authenticate(self, key: str) -> Principal | None:
        """The store's `authenticate` (blocking: call it in a thread); `Unavailable` until open."""
        store = self._store
        if store is None:
            raise Unavailable(f"{self._what} is not open yet: {self.open_error}")
        return store.authenticate(key)

    async def check(self, wait_s: float) -> str | None:
        """None when the store answers a ping within `wait_s`, else why not. One ping at a time:
        a store that hangs does not pile up threads."""
        if self._store is None:
            return f"not open: {self.open_error}"
        if self._ping is None or self._ping.done():
            ping = in_daemon_thread(self._store.ping, name="aitrail-key-store-ping")
            self._ping = asyncio.get_running_loop().create_task(ping)
        try:
            answered = await asyncio.wait_for(asyncio.shield(self._ping), wait_s)
        except TimeoutError:
            return f"no answer to a ping within {wait_s:g} s"
        return None if answered else "does not answer a ping"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
