"""Health and smoke checks for the local Kafka broker and OpenSearch node.

Used by services.sh; also handy by hand:

    python deploy/local/probe.py kafka-ready        # metadata request, exit 0 when the broker serves it
    python deploy/local/probe.py kafka-smoke        # idempotent produce (acks=all) + consume back + a transaction
    python deploy/local/probe.py opensearch-smoke   # template with flat_object + cjk + thai, bulk, search, aggs, rollover

kafka-* need aiokafka (the project's venv has it); opensearch-smoke needs only the standard library.
Every check is bounded in time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import urllib.error
import urllib.request
import uuid

KAFKA = "127.0.0.1:9092"
OPENSEARCH = "http://127.0.0.1:9200"


# --------------------------------------------------------------------------- kafka


async def kafka_ready(bootstrap: str, timeout: float) -> None:
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), timeout)
        brokers = metadata.brokers()
        if not brokers:
            raise RuntimeError("metadata lists no broker yet")
        print(f"kafka: metadata ok, brokers={sorted(b.nodeId for b in brokers)}")
    finally:
        await client.close()


async def kafka_smoke(bootstrap: str, timeout: float) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"aitrail.smoke.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(20):
            await producer.send(topic, f"m{i}".encode(), key=f"k{i % 5}".encode(), headers=[("aitrail-tenant", b"t1")])
        await producer.flush()
    finally:
        await producer.stop()

    tx = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"smoke-{topic}")
    await tx.start()
    try:
        async with tx.transaction():
            await tx.send(topic, b"in-transaction", key=b"tx")
    finally:
        await tx.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"smoke-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < 21 and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(m.value for m in messages)
        await consumer.commit()
    finally:
        await consumer.stop()
    if len(got) != 21:
        raise RuntimeError(f"consumed {len(got)} of 21 messages from {topic}")

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    print(f"kafka: smoke ok (idempotent produce acks=all, transaction, consumer group commit on {topic})")


# --------------------------------------------------------------------------- opensearch


def _os(method: str, path: str, body: object | None = None, ndjson: str | None = None) -> dict:
    data = None
    headers = {}
    if ndjson is not None:
        data = ndjson.encode()
        headers["Content-Type"] = "application/x-ndjson"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(OPENSEARCH + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None


def opensearch_smoke() -> None:
    name = f"aitrail-smoke-{uuid.uuid4().hex[:8]}"
    template = {
        "index_patterns": [f"{name}-*"],
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "properties": {
                    "attributes": {"type": "flat_object"},
                    "prompt_cjk": {"type": "text", "analyzer": "cjk"},
                    "prompt_th": {"type": "text", "analyzer": "thai"},
                    "model": {"type": "keyword"},
                    "cost_usd": {"type": "scaled_float", "scaling_factor": 1000000},
                    "ts": {"type": "date"},
                }
            },
        },
    }
    try:
        _os("PUT", f"/_index_template/{name}", template)
        _os("PUT", f"/{name}-000001", {"aliases": {f"{name}-write": {"is_write_index": True}}})
        docs = [
            {"attributes": {"tenant": "t1", "gen_ai": {"system": "openai"}}, "prompt_cjk": "東京で人工知能の監査",
             "prompt_th": "การตรวจสอบปัญญาประดิษฐ์", "model": "gpt-4o", "cost_usd": 0.0012, "ts": "2026-01-01T10:00:00Z"},
            {"attributes": {"tenant": "t2"}, "prompt_cjk": "北京の天気", "prompt_th": "ภาษาไทย",
             "model": "claude", "cost_usd": 0.5, "ts": "2026-01-01T11:00:00Z"},
        ]
        bulk = "".join(json.dumps({"create": {"_index": f"{name}-write"}}) + "\n" + json.dumps(d) + "\n" for d in docs)
        res = _os("POST", "/_bulk?refresh=true", ndjson=bulk)
        if res.get("errors"):
            raise RuntimeError(f"bulk create failed: {res}")

        def hits(query: dict) -> int:
            return _os("POST", f"/{name}-write/_search", {"query": query})["hits"]["total"]["value"]

        checks = {
            "cjk match": hits({"match": {"prompt_cjk": "東京"}}),
            "thai match": hits({"match": {"prompt_th": "ปัญญา"}}),
            "flat_object term": hits({"term": {"attributes.gen_ai.system": "openai"}}),
        }
        for what, n in checks.items():
            if n != 1:
                raise RuntimeError(f"{what}: expected 1 hit, got {n}")
        aggs = _os("POST", f"/{name}-*/_search", {
            "size": 0,
            "aggs": {"by_model": {"terms": {"field": "model"}, "aggs": {"cost": {"sum": {"field": "cost_usd"}}}}},
        })["aggregations"]["by_model"]["buckets"]
        if sorted(b["key"] for b in aggs) != ["claude", "gpt-4o"]:
            raise RuntimeError(f"terms aggregation: {aggs}")
        roll = _os("POST", f"/{name}-write/_rollover", {"conditions": {"max_docs": 1}})
        if not roll.get("rolled_over"):
            raise RuntimeError(f"rollover: {roll}")
        deleted = _os("POST", f"/{name}-*/_delete_by_query?refresh=true", {"query": {"term": {"model": "claude"}}})
        if deleted.get("deleted") != 1:
            raise RuntimeError(f"delete_by_query: {deleted}")
        print("opensearch: smoke ok (index template, alias, flat_object, cjk, thai, bulk create, "
              "search, terms+sum aggregation, rollover, delete_by_query)")
    finally:
        for path in (f"/{name}-*", f"/_index_template/{name}"):
            try:
                _os("DELETE", path)
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["kafka-ready", "kafka-smoke", "opensearch-smoke"])
    parser.add_argument("--bootstrap", default=KAFKA)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    # aiokafka logs expected transient states (coordinator not yet available) at WARNING
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if args.check == "kafka-ready":
            asyncio.run(kafka_ready(args.bootstrap, args.timeout))
        elif args.check == "kafka-smoke":
            asyncio.run(kafka_smoke(args.bootstrap, max(args.timeout, 30.0)))
        else:
            opensearch_smoke()
    except ImportError as exc:
        print(f"{args.check}: {exc} (run it with the project's venv python)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not raise
        print(f"{args.check}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
