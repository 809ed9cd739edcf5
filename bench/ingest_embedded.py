"""Embedded ingest, durable: OTLP/HTTP → LocalBus → normalise → SQLite (fsync'd), measured as
spans/s acknowledged by 200 OK. Baseline in the same run: the same number of ~2 KB rows
inserted straight into a bare SQLite table with the same durability. Target ≥ 20,000 spans/s."""

from __future__ import annotations

import argparse
import concurrent.futures
import sqlite3
import tempfile
import time
from pathlib import Path

import httpx

from aitrail.embedded import EmbeddedThread
from aitrail.settings import load_settings
from aitrail.store.base import Role

from .common import report
from .data import build_requests


def bare_sqlite(rows: int, batch: int, row_bytes: int, directory: Path) -> float:
    conn = sqlite3.connect(directory / "bare.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, body BLOB)")
    payload = b"x" * row_bytes
    started = time.perf_counter()
    for first in range(0, rows, batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (k, body) VALUES (?, ?)", ((f"{i:032x}", payload) for i in range(first, first + batch)))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return rows / elapsed


def run(requests: list[bytes], spans: int, clients: int, *, integrity: bool = True) -> dict:
    """Send every request to a fresh embedded server; spans/s acknowledged, and what was stored."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, data_dir=Path(tmp) / "data", otlp_http_port=0, otlp_grpc_port=0, api_port=0,
                                 integrity={"enabled": integrity})
        server = EmbeddedThread(settings).start()
        try:
            key, _ = server.store.create_key("bench", Role.INGEST)
            url = server.otlp_http + "/v1/traces"
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"}
            sessions = [httpx.Client(headers=headers, timeout=120) for _ in range(clients)]

            def send(i: int) -> int:
                response = sessions[i % len(sessions)].post(url, content=requests[i])
                response.raise_for_status()
                return i

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                list(pool.map(send, range(len(requests))))
            elapsed = time.perf_counter() - started
            stored = server.store.count("bench")
            for session in sessions:
                session.close()
        finally:
            server.stop()
    return {"spans": spans, "records_stored": stored, "seconds": round(elapsed, 2), "spans_per_s": round(spans / elapsed)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--per-request", type=int, default=250, help="traces per OTLP request (2 spans each)")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)

    requests, spans = build_requests(args.traces, args.per_request)
    result = run(requests, spans, args.clients)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = bare_sqlite(result["records_stored"], args.per_request * 2, 2100, Path(tmp))
    rate = result["spans_per_s"]
    report("ingest_embedded", {
        **result, "target_spans_per_s": 20_000, "meets_target": rate >= 20_000,
        "baseline_bare_sqlite_rows_per_s": round(baseline), "ratio_to_bare_sqlite": round(rate / baseline, 3),
        "clients": args.clients, "spans_per_request": args.per_request * 2,
    })


if __name__ == "__main__":
    main()
