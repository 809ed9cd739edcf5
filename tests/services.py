"""Real Kafka and OpenSearch for tests, chosen in this order:

1. endpoints given in the environment (`AITRAIL_TEST_KAFKA_BOOTSTRAP`, `AITRAIL_TEST_OPENSEARCH_URL`);
2. testcontainers (`KafkaContainer`, `OpenSearchContainer`) when a Docker engine answers;
3. the native launcher in deploy/local (Kafka and OpenSearch from Maven Central).

Nothing here skips: a test that needs a service fails when none can be had, with the reason.
Tests that stop or restart a service use `NativeServices`, which only the native launcher
supports (the container ones are never restarted mid-test).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "deploy" / "local" / "services.sh"


@dataclass
class Endpoints:
    kafka: str
    opensearch: str
    native: bool  # True when the tests may stop and restart the services


def _docker_answers() -> bool:
    if not Path("/var/run/docker.sock").exists() and "DOCKER_HOST" not in os.environ:
        return False
    try:
        import docker  # noqa: F401  (testcontainers' dependency)
    except ImportError:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def launcher(*args: str, timeout: float = 600) -> None:
    """Run deploy/local/services.sh; raise with its output when it fails."""
    result = subprocess.run(["bash", str(LAUNCHER), *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"services.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def start_services() -> tuple[Endpoints, list]:
    """Endpoints, and the things to stop at the end of the session."""
    kafka = os.environ.get("AITRAIL_TEST_KAFKA_BOOTSTRAP")
    opensearch = os.environ.get("AITRAIL_TEST_OPENSEARCH_URL")
    if kafka and opensearch:
        return Endpoints(kafka, opensearch, native=False), []
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.opensearch import OpenSearchContainer

        kafka_container = KafkaContainer("apache/kafka:4.3.1").start()
        opensearch_container = OpenSearchContainer("opensearchproject/opensearch:2.19.6").start()
        config = opensearch_container.get_config()
        url = f"http://{config['host']}:{config['port']}"
        return Endpoints(kafka_container.get_bootstrap_server(), url, native=False), [
            kafka_container.stop, opensearch_container.stop,
        ]
    launcher("up")
    return Endpoints("127.0.0.1:9092", "http://127.0.0.1:9200", native=True), []
