"""The production pipeline's processes: `aitrail gateway` (OTLP → Kafka), `aitrail collector`
(Kafka → OpenSearch) and `aitrail api` (query API over the configured store).

Each is an async context manager that runs until its context exits, like `embedded()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aitrail import __version__
from aitrail.bus.kafka import KafkaBus
from aitrail.collector.cost import PriceTable
from aitrail.collector.pipeline import (
    BatchResult, Pipeline, checkpoint_timer, hmac_pseudonymiser, pricer_for, run_collector,
)
from aitrail.collector.sequencing import open_sequencing
from aitrail.custody import access_key_path, trusted_verifiers
from aitrail.embedded import listen, serve_app
from aitrail.errors import AitrailError, ConfigError, Unavailable
from aitrail.gateway.grpc import otlp_grpc_server
from aitrail.gateway.http import otlp_http_app
from aitrail.auth import Authenticator
from aitrail.gateway.ingest import IngestAuth, ingest_split_by_trace
from aitrail.gateway.keycache import key_cache
from aitrail.gateway.keystore import BackgroundStore
from aitrail.gateway.readiness import Readiness
from aitrail.metrics import CONTENT_TYPE_LATEST, Metrics, require_operator
from aitrail.query_api.access import AccessLog
from aitrail.query_api.app import create_app
from aitrail.settings import Settings
from aitrail.store import open_store
from aitrail.store.base import WriteResult

log = logging.getLogger(__name__)

# Room for the record batch framing and headers Kafka adds around our value.
KAFKA_MESSAGE_OVERHEAD = 4096


def operations_routes(
    metrics: Metrics, ready: Callable[[], Awaitable[str | Readiness | None]], *, authenticator: Authenticator,
    operator_tenant: str,
) -> list[Route]:
    """/healthz (the process runs), /readyz (its dependencies answer), /metrics (Prometheus,
    for an admin key or token of `operator_tenant` only: the gateway serves it on the OTLP
    port every tenant reaches). `ready()` returns None when ready, else what is missing, or
    a `Readiness` naming each dependency (the gateway)."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> JSONResponse:
        problem = await ready()
        if isinstance(problem, Readiness):
            return JSONResponse(problem.body, status_code=problem.status_code)
        if problem is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)

    async def prometheus(request: Request) -> Response:
        try:
            await asyncio.to_thread(
                require_operator, authenticator.principal, operator_tenant, request.headers.get("authorization")
            )
        except AitrailError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="aitrail"'} if exc.status == 401 else None
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status,
                                headers=headers)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", prometheus)]


async def _retry_start(what: str, start: Callable[[], Awaitable], deadline_s: float = 60.0):
    """Dependencies may come up after us (compose, systemd): retry for a while, then fail
    with the reason."""
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            return await start()
        except AitrailError as exc:
            if time.monotonic() > give_up:
                raise Unavailable(f"{what} still unavailable after {deadline_s:.0f} s: {exc.message}") from exc
            log.warning("%s unavailable, retrying: %s", what, exc.message)
            await asyncio.sleep(2)


@dataclass
class GatewayPorts:
    otlp_http: int
    otlp_grpc: int


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[GatewayPorts]:
    """OTLP receivers whose requests are answered only once Kafka acknowledged them. Ingest does
    not depend on the key store (OpenSearch, or the embedded store without `opensearch.url`):
    it is opened in the background and retried until it opens, keys are answered from a cache
    (`gateway.keycache`), so the gateway starts and acknowledges known keys while it is down."""
    async with contextlib.AsyncExitStack() as stack:
        metrics = Metrics(tenant_labels=settings.metrics.tenant_labels)
        keys_store = BackgroundStore(lambda: open_store(settings), retry_s=settings.ingest.key_store_retry_s)
        opener = asyncio.create_task(keys_store.run())

        async def stop_opener() -> None:
            opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opener
            keys_store.close()

        stack.push_async_callback(stop_opener)
        bus = await _retry_start("Kafka", lambda: KafkaBus(settings.kafka, produce=True).__aenter__())
        stack.push_async_callback(bus.close)
        cache = key_cache(keys_store.authenticate, settings.ingest, metrics)

        async def ready() -> Readiness:
            kafka = None if await bus.ping() else f"Kafka at {settings.kafka.bootstrap_servers} does not answer"
            return Readiness.of(
                required={"kafka": kafka},
                degraded={"keys_store": await keys_store.check(settings.ingest.key_lookup_wait_s)},
            )

        ingest = ingest_split_by_trace(bus, settings.kafka.max_message_bytes - KAFKA_MESSAGE_OVERHEAD)
        authenticator = Authenticator(cache.principal_blocking, settings.auth.oidc)
        auth = IngestAuth(authenticator, required=settings.ingest.require_auth,
                          anonymous_tenant=settings.collector.default_tenant, keys=cache)
        http_sock = listen(settings.host, settings.otlp_http_port)
        app = otlp_http_app(
            ingest, auth, max_body_bytes=settings.ingest.max_body_bytes, metrics=metrics,
            extra_routes=operations_routes(metrics, ready, authenticator=authenticator,
                                           operator_tenant=settings.operator_tenant),
        )
        await serve_app(app, http_sock, stack)
        grpc_server, grpc_port = otlp_grpc_server(
            ingest, auth, host=settings.host, port=settings.otlp_grpc_port,
            max_body_bytes=settings.ingest.max_body_bytes, metrics=metrics,
        )
        await grpc_server.start()
        stack.push_async_callback(grpc_server.stop, 5)
        yield GatewayPorts(otlp_http=http_sock.getsockname()[1], otlp_grpc=grpc_port)


@contextlib.asynccontextmanager
async def collector(
    settings: Settings, *, store=None, on_fatal: Callable[[str], None] | None = None
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Kafka → normalise → OpenSearch. Yields `drain()`: stop taking batches, finish and
    commit the ones in flight, and return (what SIGTERM does). `on_fatal(message)` is called
    when the collector stops on an error no retry can fix (the CLI then exits non-zero)."""
    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = open_store(settings)
            stack.callback(store.close)
        metrics = Metrics(tenant_labels=settings.metrics.tenant_labels)
        prices = PriceTable.load(settings.prices_file)
        pipeline = Pipeline(
            default_tenant=settings.collector.default_tenant, pricer=pricer_for(prices),
            pseudonymise=hmac_pseudonymiser(store.secret("pseudonym")),
        )
        sequencing = open_sequencing(settings, store, create_key=False)

        async def assigned(partitions) -> None:
            if sequencing is None:
                return
            # Consumption resumes at the committed offset, never further: a partition holds the
            # logs of several tenants, and a position past it taken from one tenant's log could
            # skip another tenant's records that are not stored (its log lags, or does not exist
            # yet). The committed offset is the one position every log of the partition is known
            # to have passed; what lies between it and a log's end is replayed as no-ops (each
            # log skips offsets below its own resume position, and stored records are skipped).
            await asyncio.to_thread(sequencing.assign, [f"{tp.topic}.{tp.partition}" for tp in partitions])

        async def revoked(partitions) -> None:
            if sequencing is not None:
                await asyncio.to_thread(sequencing.forget, [f"{tp.topic}.{tp.partition}" for tp in partitions])

        bus = KafkaBus(
            settings.kafka, produce=True, consume=True, max_batch=settings.collector.batch_max_messages,
            fetch_wait_ms=settings.collector.batch_max_wait_ms, on_assigned=assigned, on_revoked=revoked,
        )
        bus.row_mac = getattr(store, "row_mac", None)  # dead letters carry a MAC header (aitrail.store.rowmac)
        await _retry_start("Kafka", bus.__aenter__)
        stack.push_async_callback(bus.close)

        def written(result: BatchResult, stored: WriteResult, seconds: float) -> None:
            metrics.write_seconds.observe(seconds)
            metrics.records_written.inc(stored.written)
            metrics.records_duplicate.inc(stored.duplicates)

        def dead(reason: str) -> None:
            metrics.dead_letters.inc()

        task = asyncio.create_task(
            run_collector(bus.batches(), pipeline, sequencing or store, on_written=written,
                          on_retry=metrics.store_retries.inc, on_dead_letter=dead)
        )
        task.add_done_callback(lambda done: _report_stop(done, on_fatal))
        timer = (
            asyncio.create_task(checkpoint_timer(sequencing, on_error=metrics.background_errors.labels("checkpoints").inc))
            if sequencing is not None else None
        )

        async def ready() -> str | None:
            if not await bus.ping():
                return f"Kafka at {settings.kafka.bootstrap_servers} does not answer"
            if not await asyncio.to_thread(store.ping):
                return "the store does not answer"
            return None

        async def watch_lag() -> None:
            while True:
                try:
                    lags = await bus.lag()
                except Exception as exc:  # Kafka away: keep the last figures, try again later
                    log.debug("consumer lag unavailable: %s", exc)
                    metrics.background_errors.labels("consumer_lag").inc()
                else:
                    metrics.consumer_lag.clear()  # partitions this collector no longer owns drop out
                    for tp, lag in lags.items():
                        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
                await asyncio.sleep(2)

        async def watch_rollover() -> None:
            """Without ISM on the node, the collectors roll the records index over themselves."""
            while True:
                await asyncio.sleep(settings.opensearch.rollover_check_s)
                try:
                    result = await asyncio.to_thread(store.rollover)
                except AitrailError as exc:
                    log.warning("rollover check failed: %s", exc.message)
                    metrics.background_errors.labels("rollover").inc()
                except Exception:  # a bug must not end the task silently: rollover would stop
                    log.exception("rollover check failed")
                    metrics.background_errors.labels("rollover").inc()
                else:
                    if result.rolled_over:
                        log.info("rolled %s over to %s (%s)", result.old_index, result.new_index, result.conditions)

        lag_task = asyncio.create_task(watch_lag())
        rollover_task = asyncio.create_task(watch_rollover()) if hasattr(store, "rollover") else None
        ops = Starlette(routes=operations_routes(
            metrics, ready, authenticator=Authenticator(store.authenticate, settings.auth.oidc),
            operator_tenant=settings.operator_tenant,
        ))
        await serve_app(ops, listen(settings.host, settings.collector.http_port), stack)

        async def drain() -> None:
            bus.stop()
            await task

        async def stop() -> None:
            lag_task.cancel()
            if rollover_task is not None:
                rollover_task.cancel()
            if timer is not None:
                timer.cancel()
            if not task.done():
                bus.stop()
                try:
                    await asyncio.wait_for(task, 60)
                except TimeoutError:
                    log.error("collector did not drain within 60 s; uncommitted batches will be delivered again")

        stack.push_async_callback(stop)
        topics = ", ".join(t for t in (settings.kafka.topic, settings.kafka.logs_topic) if t)
        log.info("collector %s consuming %s from %s", __version__, topics, settings.kafka.bootstrap_servers)
        yield drain


def _report_stop(task: asyncio.Task, on_fatal: Callable[[str], None] | None) -> None:
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    causes = error.exceptions if isinstance(error, BaseExceptionGroup) else (error,)
    message = "; ".join(c.message if isinstance(c, AitrailError) else f"{type(c).__name__}: {c}" for c in causes)
    log.critical("collector stopped: %s", message, exc_info=error)
    if on_fatal is not None:
        on_fatal(message)


@contextlib.asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[int]:
    """The query API and web page over the configured store; yields the bound port."""
    async with contextlib.AsyncExitStack() as stack:
        store = open_store(settings)
        stack.callback(store.close)
        # The API seals its access records into logs of its own, one per tenant
        # (`<tenant>/access.<instance>`): no other process writes them.
        instance = settings.instance_name or socket.gethostname()
        # Signed with its own key: the API never holds the collectors' key.
        sequencing = open_sequencing(
            settings, store, create_key=True, default_log=f"access.{instance}", key_path=access_key_path(settings)
        )
        if sequencing is None:
            raise ConfigError("aitrail api logs every read in the tamper-evident trail; integrity.enabled must be true")
        timer = asyncio.create_task(checkpoint_timer(sequencing, period_s=0.25))
        stack.callback(timer.cancel)

        async def append(records) -> None:
            result = await asyncio.to_thread(sequencing.write, records)
            refused = getattr(result, "refused", None) or {}
            if refused:  # the entry itself refused by the store: as unwritten as a failed write
                outcome, why = next(iter(refused.values()))
                raise AitrailError(f"the store refused the access entry ({outcome}): {why}")

        app = create_app(
            store, pseudonymise=hmac_pseudonymiser(store.secret("pseudonym")), verifier=trusted_verifiers(settings) or None,
            oidc=settings.auth.oidc, access_log=AccessLog(append), operator_tenant=settings.operator_tenant,
        )
        sock = listen(settings.host, settings.api_port)
        await serve_app(app, sock, stack)
        yield sock.getsockname()[1]
