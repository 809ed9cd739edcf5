"""Blocking calls to a store that may hang (a blackholed OpenSearch holds a request for its
client timeout, retries included, minutes in all), run off the event loop in daemon threads:
unlike `asyncio.to_thread`, whose pool `asyncio.run` joins on the way out, a call still
hanging never keeps the process from exiting. Only for rare calls (a key lookup per key and
TTL, the store's ping and opening), each gets its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: object, name: str = "aitrail-store-call") -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the waiter was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting coroutine)
            error, result = exc, None
        else:
            error = None
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed while the call hung: nobody is waiting any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
