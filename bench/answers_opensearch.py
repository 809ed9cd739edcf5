"""`/v1/answers` latency over a large OpenSearch store: p50/p99 per query shape (see
bench/answers.py) through a real `aitrail api` process over loopback, and the same queries
in-process (query service + OpenSearchStore, no HTTP, no access log) with the time
OpenSearch itself reports (`took`). Baselines in the same run: `/healthz` and `/v1/whoami`.
Target p99 ≤ 100 ms over 1M records.

The store is filled with `OpenSearchStore.write` (records, then the answers merge) by
`--workers` processes, each building and writing its own chunks of collector-made records
(bench/data.py); not sealed. Every index lives under a `bench…` prefix, dropped at the end
unless `--keep` (then `--prefix` finds it again next time).

    python -m bench.answers_opensearch --records 1000000 [--prefix benchanswers1m --keep]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from opensearchpy import OpenSearch

from aitrail.query_api.service import QueryService
from aitrail.settings import OpenSearchSettings
from aitrail.store.base import Principal, Role
from aitrail.store.opensearch import OpenSearchStore

from .answers import SHAPES, query_mix, time_http, time_service, verdict
from .common import Service, aitrail, aitrail_env, drop_opensearch_layout, free_port, percentile, report
from .data import chunks, pseudonymiser, record_chunk

TENANT = "bench"
TARGET_MS = 100
URL = "http://127.0.0.1:9200"


def _store(url: str, prefix: str, *, ensure_layout: bool = False) -> OpenSearchStore:
    return OpenSearchStore.from_settings(OpenSearchSettings(url=url, index_prefix=prefix), refresh=False,
                                         ensure_layout=ensure_layout)


def _fill(job: tuple[str, str, tuple, int, int]) -> tuple[int, float]:
    """One worker's chunk: build the records, write them in batches. (written, seconds writing)"""
    url, prefix, part, users, batch = job
    _, records = record_chunk(part, tenant=TENANT, users=users)
    store = _store(url, prefix)
    try:
        written, seconds = 0, 0.0
        for first in range(0, len(records), batch):
            started = time.perf_counter()
            written += store.write(records[first : first + batch]).written
            seconds += time.perf_counter() - started
        return written, seconds
    finally:
        store.close()


def build(url: str, prefix: str, records: int, days: float, users: int, batch: int, workers: int) -> dict:
    client = OpenSearch([url], timeout=120)
    store = _store(url, prefix, ensure_layout=True)
    try:
        client.indices.refresh(index=f"{prefix}-*")
        stored = store.count(TENANT)
        if stored >= records * 0.99:
            return {"written": stored, "reused": True}
        if stored:
            raise SystemExit(f"prefix {prefix} holds {stored} records, not {records}; use another --prefix")
        parts = chunks(records, end_ns=time.time_ns(), days=days)
        started = time.perf_counter()
        written, writing = 0, 0.0
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for n, seconds in pool.imap_unordered(_fill, [(url, prefix, p, users, batch) for p in parts]):
                written += n
                writing += seconds
        elapsed = time.perf_counter() - started
        client.indices.refresh(index=f"{prefix}-*")
        return {"written": written, "reused": False, "build_s": round(elapsed, 1),
                "records_per_s": round(written / elapsed), "workers": workers,
                "write_records_per_s_per_worker": round(written / writing / workers) if writing else None}
    finally:
        store.close()
        client.close()


def data_end(url: str, prefix: str) -> datetime:
    client = OpenSearch([url])
    try:
        result = client.search(index=f"{prefix}-answers", body={"size": 0, "aggs": {"end": {"max": {"field": "time"}}}})
        return datetime.fromtimestamp(result["aggregations"]["end"]["value"] / 1000, UTC)
    finally:
        client.close()


def index_sizes(url: str, prefix: str) -> dict:
    client = OpenSearch([url])
    try:
        stats = client.indices.stats(index=f"{prefix}-*", metric="store,segments")["indices"]
        out = {}
        for name, s in sorted(stats.items()):
            docs = client.count(index=name)["count"]  # top-level documents (the stats count nested ones too)
            if docs:
                size = s["primaries"]["store"]["size_in_bytes"]
                out[name] = {"docs": docs, "bytes_per_doc": round(size / docs), "segments": s["primaries"]["segments"]["count"]}
        return out
    finally:
        client.close()


def took_by_shape(store: OpenSearchStore, service: QueryService, principal: Principal, queries) -> dict:
    """OpenSearch's own `took` for each shape's searches: what the node spends, without the
    client, the network and our service."""
    took: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    current = {"shape": None}
    search = store._search

    def timed(index, body, what):
        response = search(index, body, what)
        took[current["shape"]].append(response["took"] / 1000)
        return response

    store._search = timed
    try:
        for shape, params in queries:
            current["shape"] = shape
            service.answers(principal, **params)
    finally:
        store._search = search
    return {shape: {"p50_ms": round(percentile(v, 50) * 1000, 1), "p99_ms": round(percentile(v, 99) * 1000, 1),
                    "mean_ms": round(statistics.fmean(v) * 1000, 1)} for shape, v in took.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="audit records in the store (half are answers)")
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=2000, help="records per OpenSearchStore.write")
    parser.add_argument("--workers", type=int, default=2, help="processes filling the store")
    parser.add_argument("--queries", type=int, default=150, help="queries of each shape")
    parser.add_argument("--url", default=URL)
    parser.add_argument("--prefix", help="index prefix (must start with 'bench'); default a fresh one")
    parser.add_argument("--keep", action="store_true", help="leave the indices for the next run (with --prefix)")
    args = parser.parse_args(argv)

    prefix = args.prefix or f"bench{uuid.uuid4().hex[:8]}"
    if not prefix.startswith("bench"):
        raise SystemExit("--prefix must start with 'bench'")
    workdir = Path(tempfile.mkdtemp(prefix="bench-answers-os-"))
    try:
        data = build(args.url, prefix, args.records, args.days, args.users, args.batch, args.workers)
        end = data_end(args.url, prefix)
        queries = query_mix(args.queries, end=end, days=args.days, users=args.users)

        store = _store(args.url, prefix)
        key, info = store.create_key(TENANT, Role.AUDITOR)
        principal = Principal(key_id=info.key_id, tenant=TENANT, role=Role.AUDITOR)
        service = QueryService(store, pseudonymise=pseudonymiser())
        env = aitrail_env(AITRAIL_OPENSEARCH__URL=args.url, AITRAIL_OPENSEARCH__INDEX_PREFIX=prefix,
                          AITRAIL_DATA_DIR=str(workdir / "data"), AITRAIL_LOG_LEVEL="WARNING")
        aitrail("keys", "signing", "--create", env=env)  # the API seals its access records
        port = free_port()
        server = Service(["api", "--api-port", str(port)], env, workdir / "api.log", f"http://127.0.0.1:{port}/readyz")
        try:
            http = time_http(f"http://127.0.0.1:{port}", key, queries)
        finally:
            server.stop()
        in_process = time_service(service, principal, queries)
        took = took_by_shape(store, service, principal, queries)
        store.close()
        sizes = index_sizes(args.url, prefix)
    finally:
        if not args.keep:
            drop_opensearch_layout(args.url, prefix)
        shutil.rmtree(workdir, ignore_errors=True)

    report("answers_opensearch", {
        "records": data["written"], "days": args.days, "users": args.users, "prefix": prefix, "kept": args.keep,
        "build": data, **verdict(http, TARGET_MS),
        "http": http, "in_process": in_process, "opensearch_took": took, "indices": sizes,
        "queries_per_shape": args.queries,
    })


if __name__ == "__main__":
    main()
