"""LocalBus: the in-process bus of `aitrail serve`.

A publisher waits until the collector has stored (or dead-lettered) its messages, so an OTLP
sender gets its 2xx only for data on disk, as with Kafka's acks=all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from aitrail.errors import Unavailable

from .base import BusMessage

DeadLetterSink = Callable[[BusMessage, str], Awaitable[None]]


@dataclass
class _Pending:
    messages: Sequence[BusMessage]
    done: asyncio.Future[None]


class LocalBatch:
    def __init__(self, pending: list[_Pending], sink: DeadLetterSink) -> None:
        self._pending = pending
        self._sink = sink
        self.messages = [m for p in pending for m in p.messages]

    async def ack(self) -> None:
        for p in self._pending:
            if not p.done.done():
                p.done.set_result(None)

    # In-process batches are handed out one at a time and never rewound: none is ever stale.
    stale = False

    async def discard(self) -> None:
        raise AssertionError("a local batch is never stale, so never discarded")

    async def pause(self) -> None:
        """Nothing to keep alive in-process: senders simply wait on the batch."""

    async def resume(self) -> None:
        """See `pause`."""

    async def dead_letter(self, message: BusMessage, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """The sink gets the message with `headers` added to its own."""
        if headers:
            message = replace(message, headers={**message.headers, **headers})
        await self._sink(message, reason)

    async def fail(self, error: BaseException) -> None:
        for p in self._pending:
            if not p.done.done():
                p.done.set_exception(error)


class LocalBus:
    def __init__(self, dead_letter_sink: DeadLetterSink, *, max_batch: int = 2000, max_queue: int = 10_000) -> None:
        self._sink = dead_letter_sink
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)

    async def publish(self, messages: Sequence[BusMessage]) -> None:
        if not messages:
            return
        pending = _Pending(messages, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Unavailable("ingest queue is full; retry later") from None
        await pending.done

    async def batches(self) -> AsyncIterator[LocalBatch]:
        while True:
            group = [await self._queue.get()]
            size = len(group[0].messages)
            while size < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                group.append(item)
                size += len(item.messages)
            yield LocalBatch(group, self._sink)
