"""`aitrail serve`: the whole product in one process, no external services.

OTLP receivers (HTTP, gRPC) → LocalBus → collector pipeline → SqliteStore ← query API + page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from aitrail.bus.base import BusMessage
from aitrail.bus.local import LocalBus
from aitrail.collector.cost import PriceTable
from aitrail.collector.pipeline import Pipeline, checkpoint_timer, hmac_pseudonymiser, pricer_for, run_collector
from aitrail.collector.sequencing import open_sequencing
from aitrail.custody import attach_row_key, trusted_verifiers
from aitrail.gateway.grpc import otlp_grpc_server
from aitrail.gateway.http import otlp_http_app
from aitrail.auth import Authenticator
from aitrail.gateway.ingest import IngestAuth, Verdicts, ingest_in_process
from aitrail.gateway.keycache import key_cache
from aitrail.metrics import Metrics
from aitrail.integrity.system import append_system_records
from aitrail.query_api.access import AccessLog
from aitrail.query_api.app import create_app
from aitrail.settings import Settings
from aitrail.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: several servers share one process, and the
    CLI decides when all of them stop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every response waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_app(app, sock: socket.socket, stack: contextlib.AsyncExitStack) -> None:
    """Serve `app` on `sock` until the stack closes."""
    server = QuietServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def stop() -> None:
        server.should_exit = True
        await task

    stack.push_async_callback(stop)
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)


@dataclass
class Ports:
    otlp_http: int
    otlp_grpc: int
    api: int


@dataclass
class Embedded:
    store: SqliteStore
    ports: Ports
    bus: LocalBus  # e.g. for `aitrail.integrity.system.append_system_records`


@contextlib.asynccontextmanager
async def embedded(settings: Settings) -> AsyncIterator[Embedded]:
    """Run everything until the context exits."""
    async with contextlib.AsyncExitStack() as stack:
        store = SqliteStore.in_dir(settings.data_dir)
        stack.callback(store.close)
        attach_row_key(store, settings)  # before the first secret is read
        metrics = Metrics(tenant_labels=settings.metrics.tenant_labels)
        prices = PriceTable.load(settings.prices_file)
        pseudonymise = hmac_pseudonymiser(store.secret("pseudonym"))

        # What the collector refuses of a request whose sender still waits goes back to the sender
        # (400 or partial success) instead of into the dead letters: see `Verdicts`.
        verdicts = Verdicts()

        async def dead_letter(message: BusMessage, reason: str) -> None:
            if verdicts.claim(message, reason):
                return
            metrics.dead_letters.inc()
            await asyncio.to_thread(store.add_dead_letter, reason, message.payload or _serialise(message), {
                "signal": str(message.signal), "tenant": message.tenant or "",
            })

        bus = LocalBus(dead_letter, max_batch=settings.collector.batch_max_messages)
        pipeline = Pipeline(
            default_tenant=settings.collector.default_tenant, pricer=pricer_for(prices), pseudonymise=pseudonymise
        )

        def written(result, stored, seconds: float) -> None:
            metrics.write_seconds.observe(seconds)
            metrics.records_written.inc(stored.written)
            metrics.records_duplicate.inc(stored.duplicates)

        sequencing = open_sequencing(settings, store, create_key=True)
        # Order matters on the way down (the stack unwinds in reverse): receivers stop taking
        # data first, then the collector drains, then the store closes.
        collector = asyncio.create_task(
            run_collector(bus.batches(), pipeline, sequencing or store, on_written=written, give_up_after_s=10.0)
        )
        tasks = [collector]
        if sequencing is not None:
            tasks.append(asyncio.create_task(
                checkpoint_timer(sequencing, on_error=metrics.background_errors.labels("checkpoints").inc)
            ))

        async def stop_collector() -> None:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        stack.push_async_callback(stop_collector)

        api_sock = listen(settings.host, settings.api_port)
        verifier = trusted_verifiers(settings) or None
        async def append(records) -> None:  # access records take the same path as spans
            await append_system_records(bus, records, verdicts)  # refused: the read is not served

        api = create_app(
            store, pseudonymise=pseudonymise, metrics=metrics, verifier=verifier, oidc=settings.auth.oidc,
            access_log=AccessLog(append), operator_tenant=settings.operator_tenant,
        )
        await serve_app(api, api_sock, stack)

        auth = IngestAuth(Authenticator(store.authenticate, settings.auth.oidc), required=settings.ingest.require_auth,
                          anonymous_tenant=settings.collector.default_tenant,
                          keys=key_cache(store.authenticate, settings.ingest, metrics))
        ingest = ingest_in_process(bus, verdicts)
        http_sock = listen(settings.host, settings.otlp_http_port)
        await serve_app(
            otlp_http_app(ingest, auth, max_body_bytes=settings.ingest.max_body_bytes, metrics=metrics),
            http_sock, stack,
        )
        grpc_server, grpc_port = otlp_grpc_server(
            ingest, auth, host=settings.host, port=settings.otlp_grpc_port,
            max_body_bytes=settings.ingest.max_body_bytes, metrics=metrics,
        )
        await grpc_server.start()
        stack.push_async_callback(grpc_server.stop, 5)

        ports = Ports(otlp_http=http_sock.getsockname()[1], otlp_grpc=grpc_port, api=api_sock.getsockname()[1])
        yield Embedded(store, ports, bus)


def _serialise(message: BusMessage) -> bytes:
    return message.decoded.SerializeToString() if message.decoded is not None else b""


class EmbeddedThread:
    """`aitrail serve` in a background thread with its own event loop (tests, benchmarks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="aitrail-serve", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            async with embedded(self.settings) as running:
                self.store, self.ports, self.bus = running.store, running.ports, running.bus
                self._ready.set()
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> EmbeddedThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("embedded server did not start within 60 s")
        if self._error is not None:
            raise self._error
        return self

    def call(self, coroutine, timeout: float = 60):
        """Run `coroutine` on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._thread.is_alive():
            raise TimeoutError("embedded server did not stop within 60 s")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.ports.otlp_http}"

    @property
    def otlp_grpc(self) -> str:
        return f"127.0.0.1:{self.ports.otlp_grpc}"
