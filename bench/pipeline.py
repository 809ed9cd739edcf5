"""The production pipeline, all figures from the same records in one run:

(a) ceiling: OpenSearch alone bulk-indexing the documents the collector would write (the
    canonical JSON of the sealed records, `create` by record id into the records template),
    one client, for each bulk size; the best is the ceiling;
(b) end to end: OTLP/HTTP → `aitrail gateway` → Kafka → `aitrail collector` → OpenSearch,
    real processes, from the first request sent until the collector has stored every record
    (its `aitrail_records_written` counter; checked afterwards by a count after refresh) →
    spans/s, and (b)/(a) (target ≥ 0.8); CPU seconds each process spent meanwhile
    (/proc/<pid>/stat: collector, gateway, and the OpenSearch and Kafka nodes);
(c) collector CPU per span for decode + normalise + serialise on these requests
    (bench.normalise's measure; target ≤ 25 µs), beside the collector process's real CPU per
    span during (b);
(e) bytes on disk per record in OpenSearch (primary store size after a forced merge to one
    segment, per document) beside the OTLP protobuf bytes per span.
(d), answer latency over OpenSearch, is bench.answers_opensearch.

Everything lives under its own Kafka topics and `bench…` index prefixes, removed at the end.

    python -m bench.pipeline [--traces 20000] [--integrity both|on|off]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
from opensearchpy import OpenSearch

from aitrail.bus.kafka import ensure_topics
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import LogSequencer, new_log
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.record import KafkaPosition
from aitrail.settings import KafkaSettings, OpenSearchSettings
from aitrail.store.opensearch import OpenSearchStore

from .common import (
    OUT, REPO, Service, aitrail, aitrail_env, cpu_seconds, drop_opensearch_layout, free_port, median, report, wait_until,
)
from .data import build_requests, normalised
from .normalise import measure

TENANT = "bench"
URL = "http://127.0.0.1:9200"
KAFKA = "127.0.0.1:9092"
PARTITIONS = 6
RUN = REPO / "deploy" / "local" / ".run"


def node_pids() -> dict[str, int]:
    """The local OpenSearch and Kafka processes (deploy/local/services.sh), for their CPU time."""
    pids = {}
    for name in ("opensearch", "kafka"):
        try:
            pid = int((RUN / f"{name}.pid").read_text().strip())
            cpu_seconds(pid)
            pids[name] = pid
        except (OSError, ValueError):
            pass
    return pids


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except OSError:
            pass
    return out


# -- (a) the ceiling ------------------------------------------------------------------------------


def collector_documents(requests: list[bytes], topic: str) -> list[tuple[str, bytes]]:
    """(record id, canonical JSON) of the records the collector would store: normalised, given
    their Kafka position (one message per trace, keyed by trace) and sealed into the
    partition's log."""
    records = normalised(requests, TENANT)
    signer = Signer.generate("bench.example/ceiling")
    by_partition: dict[int, list] = {}
    for record in records:
        partition = int(record.trace_id[:8], 16) % PARTITIONS
        by_partition.setdefault(partition, []).append(record)
    documents = []
    for partition, items in by_partition.items():
        log_id = f"{topic}.{partition}"
        sequencer = LogSequencer(new_log(log_id, f"bench.example/ceiling/{log_id}"), signer)
        for offset, record in enumerate(items):
            record.kafka = KafkaPosition(topic=topic, partition=partition, offset=offset)
        for first in range(0, len(items), 2000):
            plan = sequencer.plan(items[first : first + 2000], lambda r: b"s" * 32)
            sequencer.commit(plan)
            documents += [(r.record_id, canonical_json(r)) for r in plan.records]
    return documents


def ceiling(url: str, documents: list[tuple[str, bytes]], bulk_size: int) -> dict:
    """Bulk-create `documents` into a fresh records index (the product's template and
    settings) in bulks of `bulk_size`, one client; documents/s until the last bulk is acknowledged."""
    prefix = f"benchceil{uuid.uuid4().hex[:8]}"
    store = OpenSearchStore.from_settings(OpenSearchSettings(url=url, index_prefix=prefix))
    client = OpenSearch([url], timeout=120)
    pids = node_pids()
    try:
        before = cpu_of(pids)
        started = time.perf_counter()
        for first in range(0, len(documents), bulk_size):
            lines = []
            for record_id, body in documents[first : first + bulk_size]:
                lines.append(orjson.dumps({"create": {"_id": record_id}}))
                lines.append(body)
            response = client.bulk(body=b"\n".join(lines) + b"\n", index=store.write_alias,
                                   params={"filter_path": "errors,items.*.error"})
            if response.get("errors"):
                raise RuntimeError(f"bulk failed: {str(response)[:500]}")
        elapsed = time.perf_counter() - started
        after = cpu_of(pids)
        client.indices.refresh(index=store.write_alias)
        count = client.count(index=store.write_alias)["count"]
        if count != len(documents):
            raise RuntimeError(f"ceiling index holds {count} documents, not {len(documents)}")
        return {"bulk_size": bulk_size, "docs_per_s": round(len(documents) / elapsed), "seconds": round(elapsed, 2),
                "cpu_s": {k: round(after[k] - before[k], 2) for k in after}}
    finally:
        store.close()
        client.close()
        drop_opensearch_layout(url, prefix)


# -- (b) end to end ------------------------------------------------------------------------------


def written_so_far(metrics_url: str) -> float:
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return 0
    match = re.search(r"^aitrail_records_written_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0


async def _topics(topic: str, action: str) -> None:
    if action == "create":
        await ensure_topics(KafkaSettings(bootstrap_servers=KAFKA, topic=topic, dlq_topic=topic + ".dlq",
                                          partitions=PARTITIONS))
        return
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=15_000)
    await admin.start()
    try:
        await admin.delete_topics([topic, topic + ".dlq"])
    finally:
        await admin.close()


def end_to_end(url: str, requests: list[bytes], spans: int, clients: int, integrity: bool, workdir: Path) -> dict:
    tag = uuid.uuid4().hex[:8]
    topic, prefix = f"bench{tag}.spans", f"bench{tag}"
    workdir = workdir / tag
    workdir.mkdir(parents=True)
    env = aitrail_env(
        AITRAIL_KAFKA__BOOTSTRAP_SERVERS=KAFKA, AITRAIL_KAFKA__TOPIC=topic, AITRAIL_KAFKA__DLQ_TOPIC=topic + ".dlq",
        AITRAIL_KAFKA__GROUP_ID=f"g-{topic}", AITRAIL_OPENSEARCH__URL=url, AITRAIL_OPENSEARCH__INDEX_PREFIX=prefix,
        AITRAIL_DATA_DIR=str(workdir / "data"), AITRAIL_LOG_FORMAT="json", AITRAIL_LOG_LEVEL="WARNING",
        AITRAIL_INTEGRITY__ENABLED=str(integrity).lower(),
    )
    services: list[Service] = []
    asyncio.run(_topics(topic, "create"))
    try:
        if integrity:
            aitrail("keys", "signing", "--create", env=env)
        key = aitrail("keys", "create", "--tenant", TENANT, "--role", "ingest", env=env)
        # /metrics answers the operator tenant's admins only (operator_tenant: the default tenant)
        operator = aitrail("keys", "create", "--tenant", "default", "--role", "admin", env=env)
        collector_port = free_port()
        collector = Service(["collector"], env | {"AITRAIL_COLLECTOR__HTTP_PORT": str(collector_port)},
                            workdir / "collector.log", f"http://127.0.0.1:{collector_port}/readyz")
        services.append(collector)
        http_port = free_port()
        gateway = Service(["gateway", "--otlp-http-port", str(http_port), "--otlp-grpc-port", str(free_port())], env,
                          workdir / "gateway.log", f"http://127.0.0.1:{http_port}/readyz")
        services.append(gateway)
        metrics = f"http://127.0.0.1:{collector_port}/metrics"
        # Let the consumer group settle (partitions assigned) before the clock starts.
        scrape = {"Authorization": f"Bearer {operator}"}
        wait_until(lambda: len(re.findall(r"^aitrail_consumer_lag\{", httpx.get(metrics, headers=scrape, timeout=5).text,
                                          re.M)) >= PARTITIONS,
                   60, "partitions assigned", 0.5)

        pids = {"collector": collector.pid, "gateway": gateway.pid, **node_pids()}
        before = cpu_of(pids)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"}
        sessions = [httpx.Client(headers=headers, timeout=120) for _ in range(clients)]
        target = f"http://127.0.0.1:{http_port}/v1/traces"

        def send(i: int) -> None:
            sessions[i % clients].post(target, content=requests[i]).raise_for_status()

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, range(len(requests))))
        acknowledged = time.perf_counter() - started
        try:
            wait_until(lambda: written_so_far(metrics) >= spans, 600, f"{spans} records stored", 0.05)
        except TimeoutError:
            kept = OUT / f"pipeline-{tag}-collector.log"
            shutil.copy(collector.log_path, kept)
            raise RuntimeError(f"the collector stored {written_so_far(metrics):.0f} of {spans} records in 600 s "
                               f"(alive: {collector.popen.poll() is None}); its log: {kept}") from None
        elapsed = time.perf_counter() - started
        after = cpu_of(pids)
        for session in sessions:
            session.close()

        client = OpenSearch([url], timeout=120)
        try:
            client.indices.refresh(index=f"{prefix}-*")
            stored = client.count(index=f"{prefix}-records-*")["count"]
            client.indices.forcemerge(index=f"{prefix}-*", params={"max_num_segments": 1, "request_timeout": 600})
            client.indices.refresh(index=f"{prefix}-*")
            stats = client.indices.stats(index=f"{prefix}-*", metric="docs,store")["indices"]
            # docs.count in the stats counts nested documents too (a record's messages and
            # retrieved documents): divide by the top-level count.
            counts = {name: client.count(index=name)["count"] for name in stats}
        finally:
            client.close()
        sizes = {}
        for name, s in sorted(stats.items()):
            if counts[name]:
                sizes[name.removeprefix(prefix + "-")] = {
                    "docs": counts[name], "bytes_per_doc": round(s["primaries"]["store"]["size_in_bytes"] / counts[name])}
        disk = sum(s["primaries"]["store"]["size_in_bytes"] for s in stats.values())
        cpu = {k: round(after[k] - before[k], 2) for k in after}
        return {
            "integrity": integrity, "spans": spans, "records_stored": stored, "seconds": round(elapsed, 2),
            "spans_per_s": round(spans / elapsed), "gateway_acknowledged_all_after_s": round(acknowledged, 2),
            "cpu_s": cpu, "collector_cpu_us_per_span": round(cpu["collector"] / spans * 1e6, 1),
            "gateway_cpu_us_per_span": round(cpu["gateway"] / spans * 1e6, 1),
            "indices": sizes, "all_indices_bytes_per_record": round(disk / max(stored, 1)),
        }
    finally:
        for service in reversed(services):
            service.stop()
        try:
            drop_opensearch_layout(url, prefix)
        finally:
            asyncio.run(_topics(topic, "delete"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20_000, help="RAG traces (2 spans each)")
    parser.add_argument("--per-request", type=int, default=250, help="traces per OTLP request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent OTLP senders")
    parser.add_argument("--bulk-sizes", default="500,1000,2000,5000")
    parser.add_argument("--rounds", type=int, default=2, help="ceiling runs per bulk size (their median counts)")
    parser.add_argument("--integrity", choices=("on", "off", "both"), default="both",
                        help="end to end with integrity on, off, or both (and their ratio)")
    parser.add_argument("--url", default=URL)
    args = parser.parse_args(argv)

    requests, spans = build_requests(args.traces, args.per_request)
    otlp_bytes = sum(len(r) for r in requests) / spans
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        documents = collector_documents(requests, "bench.spans")
        ceilings = []
        for bulk_size in (int(b) for b in args.bulk_sizes.split(",")):
            runs = [ceiling(args.url, documents, bulk_size) for _ in range(args.rounds)]
            ceilings.append(runs[-1] | {"docs_per_s": round(median([r["docs_per_s"] for r in runs])),
                                        "docs_per_s_runs": [r["docs_per_s"] for r in runs]})
        best = max(ceilings, key=lambda c: c["docs_per_s"])
        modes = {"on": [True], "off": [False], "both": [True, False]}[args.integrity]
        e2e = {("integrity_on" if m else "integrity_off"): end_to_end(args.url, requests, spans, args.clients, m, workdir)
               for m in modes}
        synthetic = measure(requests, spans)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    first = next(iter(e2e.values()))
    result = {
        "spans": spans, "spans_per_request": args.per_request * 2, "clients": args.clients,
        "a_ceiling": {"best_bulk_size": best["bulk_size"], "docs_per_s": best["docs_per_s"], "by_bulk_size": ceilings,
                      "document_bytes": round(sum(len(d) for _, d in documents) / len(documents))},
        "b_end_to_end": e2e,
        "ratio_end_to_end_to_ceiling": {k: round(v["spans_per_s"] / best["docs_per_s"], 3) for k, v in e2e.items()},
        "target_ratio": 0.8,
        "meets_target": all(v["spans_per_s"] / best["docs_per_s"] >= 0.8 for v in e2e.values()),
        "c_collector_cpu": {
            "synthetic_us_per_span": synthetic, "target_us": 25,
            "process_us_per_span": {k: v["collector_cpu_us_per_span"] for k, v in e2e.items()},
        },
        "e_bytes": {
            "otlp_protobuf_bytes_per_span": round(otlp_bytes),
            "records_index_bytes_per_record": next(
                (v["bytes_per_doc"] for k, v in first["indices"].items() if k.startswith("records")), None),
            "all_indices_bytes_per_record": first["all_indices_bytes_per_record"],
        },
    }
    if len(e2e) == 2:
        result["integrity_overhead_ratio"] = round(
            e2e["integrity_on"]["spans_per_s"] / e2e["integrity_off"]["spans_per_s"], 3)
    report("pipeline", result)


if __name__ == "__main__":
    main()
