"""`/v1/answers` latency over a large embedded store: p50/p99 per query shape (see
bench/answers.py) through a real `aitrail serve` process over loopback, and the same queries
in-process (query service + SqliteStore, no HTTP, no access log). Baselines in the same run:
the HTTP round trip to `/healthz` and to `/v1/whoami`. Target p99 ≤ 50 ms over 1M records.

The store is filled directly: collector-made records (bench/data.py) written with
`SqliteStore.write` in batches (not sealed: integrity plays no part in the query). For each
query shape the benchmark also prints the SQL the store ran, its time and its
`EXPLAIN QUERY PLAN`; with `--try-fixes` it also times alternative statements for the slow
shapes on its own database (nothing in the product changes), to show what a fix would gain.

    python -m bench.answers_sqlite --records 1000000 [--data-dir /tmp/answers-1m  (kept, reused)]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aitrail.query_api.service import QueryService
from aitrail.store.base import Principal, Role
from aitrail.store.sqlite import SqliteStore

from .answers import SHAPES, query_mix, time_http, time_service, verdict
from .common import Service, aitrail_env, free_port, report
from .data import pseudonymiser, record_batches

TENANT = "bench"
TARGET_MS = 50

COLUMNS = ("record_id, trace_id, span_id, time, question, answer, provider, model, input_tokens, output_tokens, "
           "cost_e10, cost_currency, service, user")


def build(data_dir: Path, records: int, days: float, users: int, batch: int) -> dict:
    """Fill `data_dir`/aitrail.db unless it already holds this data set (then reuse it)."""
    meta_path = data_dir / "bench-answers.json"
    wanted = {"records": records, "days": days, "users": users}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted:
            started = time.perf_counter()
            SqliteStore.in_dir(data_dir).close()  # brings an older store's schema up to date, as the server would
            return meta | {"reused": True, "schema_upgrade_s": round(time.perf_counter() - started, 1)}
        raise SystemExit(f"{data_dir} holds another data set ({meta}); use another --data-dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore.in_dir(data_dir)
    end_ns = time.time_ns()
    started = time.perf_counter()
    write_s, written = 0.0, 0
    try:
        for _, chunk in record_batches(records, tenant=TENANT, end_ns=end_ns, days=days, users=users):
            for first in range(0, len(chunk), batch):
                t = time.perf_counter()
                written += store.write(chunk[first : first + batch]).written
                write_s += time.perf_counter() - t
        conn = store._conn()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no ANALYZE: the product never runs one
        answers = conn.execute("SELECT count(*) FROM answers").fetchone()[0]
    finally:
        store.close()
    meta = wanted | {
        "end_ns": end_ns, "written": written, "answers": answers, "build_s": round(time.perf_counter() - started, 1),
        "write_records_per_s": round(written / write_s), "db_bytes_per_record": round(
            (data_dir / "aitrail.db").stat().st_size / max(written, 1)),
    }
    meta_path.write_text(json.dumps(meta))
    return meta | {"reused": False}


def traced_statements(store: SqliteStore, service: QueryService, principal: Principal, params: dict) -> list[str]:
    """The SQL (values bound) that one answers query runs, in order."""
    statements: list[str] = []
    conn = store._conn()
    conn.set_trace_callback(statements.append)
    try:
        service.answers(principal, **params)
    finally:
        conn.set_trace_callback(None)
    return [s for s in statements if not s.startswith("--")]  # "--": FTS5's own statements, nested


def replay(conn: sqlite3.Connection, statements: list[str], repeats: int = 5) -> list[float]:
    """Each statement's median time (ms), running the whole sequence `repeats` times (a
    query may fill a temporary table that its next statements read)."""
    times: list[list[float]] = [[] for _ in statements]
    for _ in range(repeats):
        for i, sql in enumerate(statements):
            started = time.perf_counter()
            conn.execute(sql).fetchall()
            times[i].append(time.perf_counter() - started)
    return [round(statistics.median(t) * 1000, 2) for t in times]


def plan_of(conn: sqlite3.Connection, sql: str) -> list[str]:
    if sql.lstrip().split(None, 1)[0].upper() not in ("SELECT", "INSERT", "DELETE", "WITH"):
        return []
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]


def short(sql: str) -> str:
    return sql if len(sql) < 600 else sql[:600] + " …"


def plans(store: SqliteStore, service: QueryService, principal: Principal, queries, try_fixes: bool) -> dict:
    """Per shape, for one typical query: each statement's median time and query plan."""
    conn = store._conn()
    examples = {}
    for shape, params in queries:
        examples.setdefault(shape, params)
    traced = {shape: traced_statements(store, service, principal, examples[shape]) for shape in SHAPES}
    out: dict = {}
    for shape in SHAPES:
        out[shape] = {"params": examples[shape], "total_ms": 0.0, "statements": [
            {"sql": short(sql), "ms": ms, "plan": plan_of(conn, sql)}
            for sql, ms in zip(traced[shape], replay(conn, traced[shape]), strict=True)
        ]}
        out[shape]["total_ms"] = round(sum(s["ms"] for s in out[shape]["statements"]), 2)
    if try_fixes:
        out["fixes"] = fixes(conn, examples)
    return out


def timed(conn: sqlite3.Connection, sql: str, params: tuple = (), repeats: int = 5) -> dict:
    times, rows = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        rows = conn.execute(sql, params).fetchall()
        times.append(time.perf_counter() - started)
    return {"ms": round(statistics.median(times) * 1000, 2), "rows": len(rows) if len(rows) != 1 else rows[0],
            "plan": [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]}


def fixes(conn: sqlite3.Connection, examples: dict[str, dict]) -> dict:
    """Alternatives for the shapes that miss the target, each with what it would replace.
    Read-only: run on the benchmark's own database."""
    from aitrail.query_api.timeparse import parse_when, parse_window, to_iso
    from aitrail.store.text import match_expression

    out: dict = {}
    user = examples["user"]["user"]
    out["user: page through the user index (INDEXED BY answers_user, or statistics from ANALYZE)"] = timed(
        conn, f"SELECT {COLUMNS} FROM answers a INDEXED BY answers_user WHERE a.tenant = ? AND a.user = ? "
              "ORDER BY a.time DESC, a.record_id DESC LIMIT 20", (TENANT, user))

    params = examples["q_at_window"]
    moment, span = parse_when(params["at"], params.get("tz")), parse_window(params.get("window"))
    start, end, expression = to_iso(moment - span), to_iso(moment + span), match_expression(params["q"])
    out["q_at_window: full-text hits of the whole tenant (what the store gathers now)"] = timed(
        conn, "SELECT count(*) FROM answers_fts WHERE answers_fts MATCH ?", (expression,))
    bounds = "SELECT min(id), max(id) FROM answers WHERE tenant = ? AND time >= ? AND time <= ?"
    out["q_at_window: rowid bounds of the window (answers_time)"] = timed(conn, bounds, (TENANT, start, end))
    out["q_at_window: full-text hits only inside those rowid bounds (FTS5 seeks by rowid)"] = timed(
        conn, f"SELECT count(*) FROM answers_fts WHERE answers_fts MATCH ? AND rowid BETWEEN ({bounds.replace('min(id), max(id)', 'min(id)')}) "
              f"AND ({bounds.replace('min(id), max(id)', 'max(id)')})", (expression, TENANT, start, end, TENANT, start, end))

    expression = match_expression(examples["q"]["q"])
    out["q: exact count of the tenant's hits (now: hits table + answers_id_tenant)"] = timed(
        conn, "SELECT count(*) FROM answers a INDEXED BY answers_id_tenant WHERE a.tenant = ? AND a.id IN "
              "(SELECT rowid FROM answers_fts WHERE answers_fts MATCH ?)", (TENANT, expression))
    out["q: count of every hit from the index alone (a tenant term in the full-text row would allow it)"] = timed(
        conn, "SELECT count(*) FROM answers_fts WHERE answers_fts MATCH ?", (expression,))
    out["q: count capped at 10,001 ('10,000+')"] = timed(
        conn, "SELECT count(*) FROM (SELECT rowid FROM answers_fts WHERE answers_fts MATCH ? LIMIT 10001)", (expression,))
    out["q: newest 20 hits by rowid (exact only if rowid order were time order)"] = timed(
        conn, f"SELECT {COLUMNS} FROM answers a WHERE a.id IN (SELECT rowid FROM answers_fts WHERE answers_fts MATCH ? "
              "ORDER BY rowid DESC LIMIT 20) ORDER BY a.id DESC", (expression,))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="audit records in the store (half are answers)")
    parser.add_argument("--days", type=float, default=30, help="the records spread over this many days up to now")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=2000, help="records per SqliteStore.write")
    parser.add_argument("--queries", type=int, default=150, help="queries of each shape")
    parser.add_argument("--data-dir", type=Path, help="keep the store here and reuse it next time (default: a temporary one)")
    parser.add_argument("--try-fixes", action="store_true", help="also time alternative statements for the slow shapes")
    args = parser.parse_args(argv)

    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="bench-answers-")) if temporary else args.data_dir
    try:
        data = build(data_dir, args.records, args.days, args.users, args.batch)
        end = datetime.fromtimestamp(data["end_ns"] / 1e9, UTC)
        queries = query_mix(args.queries, end=end, days=args.days, users=args.users)

        store = SqliteStore.in_dir(data_dir)
        key, info = store.create_key(TENANT, Role.AUDITOR)
        principal = Principal(key_id=info.key_id, tenant=TENANT, role=Role.AUDITOR)
        service = QueryService(store, pseudonymise=pseudonymiser())

        port = free_port()
        env = aitrail_env(AITRAIL_LOG_LEVEL="WARNING")
        server = Service(
            ["serve", "--data-dir", str(data_dir), "--api-port", str(port), "--otlp-http-port", str(free_port()),
             "--otlp-grpc-port", str(free_port())],
            env, data_dir / "serve.log", f"http://127.0.0.1:{port}/readyz",
        )
        try:
            http = time_http(f"http://127.0.0.1:{port}", key, queries)
        finally:
            server.stop()
        in_process = time_service(service, principal, queries)
        explained = plans(store, service, principal, queries, args.try_fixes)
        store.close()
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)

    report("answers_sqlite", {
        "records": data["written"], "answers": data["answers"], "days": args.days, "users": args.users,
        "build": {k: data[k] for k in ("build_s", "write_records_per_s", "db_bytes_per_record", "reused")},
        **verdict(http, TARGET_MS),
        "http": http, "in_process": in_process, "plans": explained,
        "queries_per_shape": args.queries,
    })


if __name__ == "__main__":
    main()
