"""Every benchmark in sequence, each in its own process (`python -m bench`, `make bench`), then
one table of the headline figures against their targets (also bench/out/summary.md).

    python -m bench                                  # defaults: about 6-7 minutes on 2 cores
    python -m bench --records 1000000                # the answers benchmarks at full size
    python -m bench --only integrity,pipeline -X pipeline="--integrity both"

Kafka and OpenSearch must be running for answers_opensearch, pipeline and (its OpenSearch
proofs) integrity: `bash deploy/local/services.sh up`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime

from .common import OUT, REPO, machine

BENCHES = ("normalise", "ingest_embedded", "integrity", "answers_sqlite", "answers_opensearch", "pipeline")


def _get(data: dict, *path, default=None):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, measured, target) for each headline figure present."""
    out = []

    def add(bench, figure, value, target, ok=None):
        mark = "" if ok is None else (" ✓" if ok else " ✗")
        out.append((bench, figure, f"{value}{mark}", target))

    if r := results.get("normalise"):
        synthetic = next((v for k, v in r.items() if k.startswith("synthetic")), {})
        add("normalise", "collector CPU, decode+normalise+serialise (synthetic RAG)", f"{synthetic.get('total_us_per_span')} µs/span",
            "≤ 25 µs/span", synthetic.get("meets_target"))
        for name in ("otelv2-span", "openinference", "openllmetry"):
            if name in r:
                add("normalise", f"  same, {name} capture", f"{r[name]['total_us_per_span']} µs/span", "≤ 25 µs/span",
                    r[name]["meets_target"])
    if r := results.get("ingest_embedded"):
        add("ingest_embedded", "embedded durable ingest", f"{r['spans_per_s']:,} spans/s", "≥ 20,000 spans/s", r["meets_target"])
        add("ingest_embedded", "  vs bare SQLite rows/s, same run", f"{r['ratio_to_bare_sqlite']}× of {r['baseline_bare_sqlite_rows_per_s']:,}", "")
    for name, target in (("answers_sqlite", 50), ("answers_opensearch", 100)):
        if r := results.get(name):
            http = r["http"]
            add(name, f"/v1/answers over {r['records']:,} records, p50 / p99", f"{http['all']['p50_ms']} / {http['all']['p99_ms']} ms",
                f"p99 ≤ {target} ms", r["meets_target"])
            for shape in ("q", "at_window", "q_at_window", "user"):
                add(name, f"  {shape}: p50 / p99 (in-process p99)",
                    f"{http[shape]['p50_ms']} / {http[shape]['p99_ms']} ms ({r['in_process'][shape]['p99_ms']})",
                    f"p99 ≤ {target} ms", http[shape]["p99_ms"] <= target)
            add(name, "  baseline /healthz, /v1/whoami p99",
                f"{http['baseline_healthz']['p99_ms']}, {http['baseline_whoami']['p99_ms']} ms", "")
    if r := results.get("pipeline"):
        add("pipeline", "(a) OpenSearch alone, bulk (best size)", f"{r['a_ceiling']['docs_per_s']:,} docs/s (bulk {r['a_ceiling']['best_bulk_size']})", "")
        for mode, e2e in r["b_end_to_end"].items():
            ratio = r["ratio_end_to_end_to_ceiling"][mode]
            add("pipeline", f"(b) OTLP→gateway→Kafka→collector→OpenSearch, {mode.replace('_', ' ')}",
                f"{e2e['spans_per_s']:,} spans/s = {ratio}× (a)", "≥ 0.8× (a)", ratio >= 0.8)
            add("pipeline", f"(c) collector process CPU, {mode.replace('_', ' ')}", f"{e2e['collector_cpu_us_per_span']} µs/span", "≤ 25 µs/span",
                e2e["collector_cpu_us_per_span"] <= 25)
        synthetic = r["c_collector_cpu"]["synthetic_us_per_span"]
        add("pipeline", "(c) decode+normalise+serialise, these requests", f"{synthetic['total_us_per_span']} µs/span", "≤ 25 µs/span",
            synthetic["meets_target"])
        if "integrity_overhead_ratio" in r:
            add("pipeline", "(b) with integrity / without", f"{r['integrity_overhead_ratio']}×", "")
        b = r["e_bytes"]
        add("pipeline", "(e) OpenSearch bytes per record: records index / all indices",
            f"{b['records_index_bytes_per_record']} / {b['all_indices_bytes_per_record']} B "
            f"(OTLP protobuf {b['otlp_protobuf_bytes_per_span']} B/span)", "")
    if r := results.get("integrity"):
        s = r["sequencer"]
        add("integrity", "sequencer plan+commit, 2,000-record batches", f"{s['leaves_per_s']:,} leaves/s", "≥ 20,000/s", s["meets_target"])
        for backend in ("sqlite", "opensearch"):
            if p := r.get(f"proofs_{backend}"):
                add("integrity", f"proof + verify per record ({backend}, {p['tree_size']:,} leaves), p50 / p99",
                    f"{p['proof_plus_verify']['p50_ms']} / {p['proof_plus_verify']['p99_ms']} ms", "≤ 1 ms", p["meets_target"])
        if lag := r.get("checkpoint_lag"):
            add("integrity", f"checkpoint lag at {lag['offered_spans_per_s']:,} spans/s, p50 / p99",
                f"{lag['lag_p50_ms']} / {lag['lag_p99_ms']} ms", "p99 ≤ 2,000 ms", lag["meets_target"])
        if o := r.get("ingest_overhead"):
            add("integrity", "embedded ingest with integrity / without", f"{o['ratio_on_to_off']}× "
                f"({o['spans_per_s_integrity_on']:,} vs {o['spans_per_s_integrity_off']:,} spans/s)", "")
    return out


def table(results: dict[str, dict]) -> str:
    lines = ["| benchmark | figure | measured | target |", "|---|---|---|---|"]
    lines += [f"| {b} | {f} | {m} | {t} |" for b, f, m, t in rows(results)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="run every benchmark (see bench/__main__.py)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--skip", help="comma-separated benchmarks to leave out")
    parser.add_argument("--records", type=int, help="records in the answers benchmarks' stores (default 200k SQLite, 100k OpenSearch)")
    parser.add_argument("--traces", type=int, help="traces sent by ingest_embedded and pipeline (default 20,000)")
    parser.add_argument("-X", "--extra", action="append", default=[], metavar='NAME="ARGS"',
                        help="more arguments for one benchmark, e.g. -X answers_sqlite=\"--try-indexes\"")
    args = parser.parse_args()

    chosen = [b for b in BENCHES if not args.only or b in args.only.split(",")]
    chosen = [b for b in chosen if not args.skip or b not in args.skip.split(",")]
    extra: dict[str, list[str]] = {}
    for item in args.extra:
        name, _, rest = item.partition("=")
        extra.setdefault(name, []).extend(shlex.split(rest))
    started_at = datetime.now(UTC)
    results, failed = {}, []
    for name in chosen:
        argv = []
        if args.records and name.startswith("answers_"):
            argv += ["--records", str(args.records)]
        if args.traces and name in ("ingest_embedded", "pipeline"):
            argv += ["--traces", str(args.traces)]
        argv += extra.get(name, [])
        print(f"\n== bench.{name} {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}", *argv], cwd=REPO)
        print(f"== bench.{name}: {'ok' if code == 0 else f'FAILED ({code})'} in {time.perf_counter() - started:.0f} s",
              flush=True)
        if code == 0:
            results[name] = json.loads((OUT / f"{name}.json").read_text())
        else:
            failed.append(name)
    text = (f"Measured {started_at:%Y-%m-%d %H:%M} UTC on {machine()}.\n\n{table(results)}\n"
            + (f"\nFailed: {', '.join(failed)}\n" if failed else ""))
    OUT.mkdir(exist_ok=True)
    (OUT / "summary.md").write_text(text)
    print("\n" + text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
