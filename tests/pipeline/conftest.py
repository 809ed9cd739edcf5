"""Fixtures for the production pipeline on the real Kafka broker and OpenSearch node.

Each test gets its own topic (6 partitions), consumer group and index prefix, so tests never
see each other's data. Gateways and collectors run as real `aitrail` processes, so a test can
kill -9 one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opensearchpy import OpenSearch

from aitrail.bus.kafka import SIGNAL_HEADER, TENANT_HEADER, ensure_topics
from aitrail.settings import KafkaSettings
from aitrail.otlp import split_by_trace
from tests.conftest import drop_opensearch_layout

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Process:
    """One `aitrail` command running as a child process."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "aitrail.cli", *self.args], env=self.env, stdout=self.log, stderr=self.log,
            cwd=REPO,
        )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def terminate(self, timeout: float = 90) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(30)
        self.log.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Pipeline:
    """Names and endpoints of one test's pipeline, and the processes it started."""

    kafka: str
    opensearch_url: str
    topic: str
    prefix: str
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    @property
    def dlq(self) -> str:
        return self.topic + ".dlq"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AITRAIL_")}
        env.update(
            AITRAIL_KAFKA__BOOTSTRAP_SERVERS=self.kafka, AITRAIL_KAFKA__TOPIC=self.topic,
            AITRAIL_KAFKA__DLQ_TOPIC=self.dlq, AITRAIL_KAFKA__GROUP_ID=f"g-{self.topic}",
            AITRAIL_OPENSEARCH__URL=self.opensearch_url, AITRAIL_OPENSEARCH__INDEX_PREFIX=self.prefix,
            AITRAIL_DATA_DIR=str(self.workdir / "data"), AITRAIL_LOG_FORMAT="json",
            AITRAIL_COLLECTOR__DEFAULT_TENANT="stock",
            # this test's own logs topic: never the broker-wide otlp_logs other tests' collectors read
            AITRAIL_KAFKA__LOGS_TOPIC=self.topic.replace(".spans", ".logs"),
        )
        env.update(extra)
        return env

    def start(self, command: str, *args: str, **env: str) -> Process:
        name = f"{command}-{len(self.processes)}"
        process = Process(name, [command, *args], self.env(**env), self.workdir / f"{name}.log").start()
        self.processes.append(process)
        return process

    def collector(self, **env: str) -> Process:
        port = free_port()
        process = self.start("collector", AITRAIL_COLLECTOR__HTTP_PORT=str(port), **env)
        process.port = port
        wait_until(lambda: _ready(f"http://127.0.0.1:{port}/readyz") or not process.alive(), 120,
                   f"{process.name} ready")
        assert process.alive(), process.output()
        return process

    def gateway(self) -> Process:
        http_port, grpc_port = free_port(), free_port()
        process = self.start("gateway", "--otlp-http-port", str(http_port), "--otlp-grpc-port", str(grpc_port))
        process.port, process.grpc_port = http_port, grpc_port
        wait_until(lambda: _ready(f"http://127.0.0.1:{http_port}/readyz") or not process.alive(), 120,
                   f"{process.name} ready")
        assert process.alive(), process.output()
        return process

    def api(self) -> Process:
        port = free_port()
        process = self.start("api", "--api-port", str(port))
        process.port = port
        wait_until(lambda: _ready(f"http://127.0.0.1:{port}/readyz") or not process.alive(), 120,
                   f"{process.name} ready")
        assert process.alive(), process.output()
        return process

    def keys(self, tenant: str, role: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "aitrail.cli", "keys", "create", "--tenant", tenant, "--role", role],
            env=self.env(), capture_output=True, text=True, timeout=120, cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def metrics(self, process: Process) -> str:
        """`/metrics` of a gateway or collector, read with an admin key of the operator tenant
        (`operator_tenant`: the default tenant, `stock` here)."""
        if not hasattr(self, "_operator_key"):
            self._operator_key = self.keys("stock", "admin")
        response = httpx.get(f"http://127.0.0.1:{process.port}/metrics", timeout=10,
                             headers={"Authorization": f"Bearer {self._operator_key}"})
        assert response.status_code == 200, response.text
        return response.text

    def verify(self) -> str:
        """`aitrail verify` over everything stored: every Merkle log must check out."""
        result = subprocess.run(
            [sys.executable, "-m", "aitrail.cli", "verify"], env=self.env(), capture_output=True, text=True,
            timeout=300, cwd=REPO,
        )
        assert result.returncode == 0, f"aitrail verify failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    # -- OpenSearch views of what was stored ---------------------------------------------

    def client(self) -> OpenSearch:
        return OpenSearch(self.opensearch_url, timeout=60)

    def stored(self, tenant: str | None = None) -> tuple[int, int]:
        """(documents, distinct record ids) in this test's record indices."""
        client = self.client()
        index = f"{self.prefix}-records-*"
        client.indices.refresh(index=index)
        query = {"term": {"tenant": tenant}} if tenant else {"match_all": {}}
        body = {
            "size": 0, "track_total_hits": True, "query": query,
            "aggs": {"ids": {"cardinality": {"field": "record_id", "precision_threshold": 40000}}},
        }
        result = client.search(index=index, body=body)
        return result["hits"]["total"]["value"], result["aggregations"]["ids"]["value"]

    def duplicates(self) -> list[str]:
        client = self.client()
        body = {"size": 0, "aggs": {"d": {"terms": {"field": "record_id", "min_doc_count": 2, "size": 20}}}}
        result = client.search(index=f"{self.prefix}-records-*", body=body)
        return [b["key"] for b in result["aggregations"]["d"]["buckets"]]

    def stop_all(self) -> None:
        for process in self.processes:
            process.terminate(timeout=60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def pipeline(services, tmp_path):
    tag = uuid.uuid4().hex[:8]
    p = Pipeline(services.kafka, services.opensearch, topic=f"t{tag}.spans", prefix=f"p{tag}", workdir=tmp_path)
    result = subprocess.run([sys.executable, "-m", "aitrail.cli", "keys", "signing", "--create"], env=p.env(),
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr  # one checkpoint signing key shared by every collector
    asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=p.kafka, topic=p.topic, dlq_topic=p.dlq, partitions=6)))
    yield p
    p.stop_all()
    if os.environ.get("AITRAIL_TEST_KEEP_INDICES"):  # for a post-mortem of a failed run
        return
    try:
        drop_opensearch_layout(p.opensearch_url, p.prefix)
    except Exception:  # the node may be the thing a test broke
        pass


async def produce(bootstrap: str, topic: str, requests: list, *, tenant: str | None = "acme", keyed: bool = True,
                  signal_: str = "traces") -> int:
    """Write OTLP requests straight to Kafka as the gateway would (one message per trace), or
    as a stock OpenTelemetry Collector would (`tenant=None`, `keyed=False`: no headers, no key).
    Returns the number of messages."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for request in requests:
            for trace_id, data in split_by_trace(request, 900_000):
                headers = [(SIGNAL_HEADER, signal_.encode())]
                if tenant is not None:
                    headers.append((TENANT_HEADER, tenant.encode()))
                futures.append(await producer.send(
                    topic, data.SerializeToString(), key=trace_id.hex().encode() if keyed else None,
                    headers=headers if tenant is not None else None,
                ))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        records, deadline = [], time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        try:
            await consumer.stop()
        except asyncio.CancelledError:  # aiokafka's group-less consumer on stop; harmless here
            pass
