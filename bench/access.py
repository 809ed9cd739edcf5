"""Compliance access costs, on the embedded server over real HTTP:

- `/v1/answers` p50/p99 for a restricted role (analyst: content redacted) and a restricted
  principal (auditor with a document-ACL filter) against an unrestricted auditor — target:
  filtering costs at most 20% more;
- access-log overhead per request: the same reads through an app that logs every read into
  the trail (the product) and through one that does not (baseline, same store, same run).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import time
from pathlib import Path

import httpx

from aitrail.embedded import EmbeddedThread, listen
from aitrail.query_api.app import create_app
from aitrail.settings import load_settings
from aitrail.store.base import Role

from .common import report, summary
from .data import QUESTIONS

def seed(store, records: int) -> None:
    from decimal import Decimal

    from aitrail.schemas.record import AuditRecord, record_id_for

    rng = random.Random(3)
    batch = []
    for n in range(records):
        trace_id, span_id = f"{n:032x}", f"{1:016x}"
        second = 1_795_000_000 + n * 6  # one answer every 6 s: ~70 days for 1M
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + ".000000000Z"
        kind = "retrieval" if n % 2 else "completion"
        common = dict(tenant="bench", trace_id=trace_id, start_time=iso, service="support-bot")
        if kind == "completion":
            batch.append(AuditRecord(
                record_id=record_id_for("bench", trace_id, span_id, kind), kind=kind, span_id=span_id,
                question=rng.choice(QUESTIONS), answer="Damaged items can be refunded within 30 days.",
                provider="openai", response_model="gpt-4o-mini", input_tokens=300, output_tokens=40,
                cost={"amount": Decimal("0.000069"), "currency": "USD"}, user_pseudonym=f"u_{n % 50}", **common,
            ))
        else:
            tags = rng.choice((["public"], ["hr-only"], ["board-only"], []))
            batch.append(AuditRecord(
                record_id=record_id_for("bench", f"{n - 1:032x}", f"{2:016x}", kind), kind=kind,
                span_id=f"{2:016x}", query_text="refund", **{**common, "trace_id": f"{n - 1:032x}"},
                documents=[{"doc_id": f"doc-{n % 97}", "acl_tags": tags, "score": 0.8, "rank": 1}],
            ))
        if len(batch) == 5000:
            store.write(batch)
            batch = []
    store.write(batch)


def timed(client: httpx.Client, url: str, params: dict, key: str, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(url, params=params, headers={"Authorization": f"Bearer {key}"})
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, data_dir=Path(tmp), otlp_http_port=0, otlp_grpc_port=0, api_port=0)
        server = EmbeddedThread(settings).start()
        try:
            seed(server.store, args.records)
            auditor, _ = server.store.create_key("bench", Role.AUDITOR)
            analyst, _ = server.store.create_key("bench", Role.ANALYST)
            unlogged = create_app(server.store, pseudonymise=lambda raw: raw)  # no access log: the baseline
            sock = listen("127.0.0.1", 0)

            async def serve_unlogged(stack):
                from aitrail.embedded import serve_app

                await serve_app(unlogged, sock, stack)

            stack = contextlib.AsyncExitStack()
            server.call(stack.__aenter__())
            server.call(serve_unlogged(stack))
            base = f"http://127.0.0.1:{server.ports.api}/v1/answers"
            base_unlogged = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/answers"
            query = {"q": "refund", "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_795_000_000 + args.records * 3)),
                     "window": "6h", "limit": 20}
            with httpx.Client(timeout=60) as client:
                timed(client, base, query, auditor, 20)  # warm up
                results = {
                    "auditor (unrestricted)": summary(timed(client, base, query, auditor, args.rounds)),
                    "analyst (content redacted)": summary(timed(client, base, query, analyst, args.rounds)),
                    "auditor, visible_to=public (ACL filter)": summary(
                        timed(client, base, {**query, "visible_to": "public"}, auditor, args.rounds)),
                    "auditor, no access log (baseline)": summary(
                        timed(client, base_unlogged, query, auditor, args.rounds)),
                }
            server.call(stack.__aexit__(None, None, None))
        finally:
            server.stop()
    unrestricted = results["auditor (unrestricted)"]["p99_ms"]
    logged, unlogged_p50 = results["auditor (unrestricted)"]["p50_ms"], results["auditor, no access log (baseline)"]["p50_ms"]
    report("access", {
        "records": args.records, "rounds": args.rounds, "latency": results,
        "restricted_over_unrestricted_p99": {
            "analyst": round(results["analyst (content redacted)"]["p99_ms"] / unrestricted, 3),
            "acl_filter": round(results["auditor, visible_to=public (ACL filter)"]["p99_ms"] / unrestricted, 3),
            "target_at_most": 1.2,
        },
        "access_log_overhead_ms_p50": round(logged - unlogged_p50, 2),
        "access_log_ratio_p50": round(logged / unlogged_p50, 2),
    })


if __name__ == "__main__":
    main()

