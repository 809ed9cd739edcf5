"""What `aitrail verify` costs on a SQLite store of collector-made records (bench/data.py):

1. logs: `verify_logs` alone (every record's leaf and content commitment recomputed, every
   checkpoint's signature and consistency, every stored Merkle node compared) — the baseline;
2. views: `verify_views` (answers, full-text terms, costs, retrieved documents, feedback,
   record columns, unsealed records, the file's layout and `PRAGMA integrity_check`);
3. the ratio (1 + 2) / 1 in the same run: what checking the derived views adds.

Records per second for each. Best of `--repeats`, store in a temporary folder.

    python -m bench.verify [--records 100000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from aitrail.collector.sequencing import Sequencing
from aitrail.integrity.note import Signer
from aitrail.integrity.verify import verify_logs
from aitrail.integrity.views import verify_views
from aitrail.store.sqlite import SqliteStore

from .common import report
from .data import build_requests, normalised

BATCH = 2000


def build(folder: Path, records: int) -> tuple[int, Signer]:
    traces = max(1, records // 2)  # a retrieval and a completion per trace
    requests, _ = build_requests(traces, 100, seed=11)
    rows = normalised(requests, "acme")
    signer = Signer.generate("bench.example")
    store = SqliteStore.in_dir(folder)
    sequencing = Sequencing(store, signer, "bench.example", checkpoint_every=256, checkpoint_interval_s=0)
    for first in range(0, len(rows), BATCH):
        sequencing.write(rows[first : first + BATCH])
    sequencing.tick()
    store.close()
    return len(rows), signer


def best(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="aitrail-bench-verify-"))
    try:
        count, signer = build(folder, args.records)
        store = SqliteStore.in_dir(folder, read_only=True)
        try:
            logs_s, reports = best(args.repeats, lambda: verify_logs(store, [signer.verifier()]))
            views_s, findings = best(args.repeats, lambda: verify_views(store))
        finally:
            store.close()
        failures = sum(len(r.failures) for r in reports) + len(findings)
        report("verify", {
            "records": count,
            "failures": failures,
            "logs_s": round(logs_s, 2), "logs_records_per_s": round(count / logs_s),
            "views_s": round(views_s, 2), "views_records_per_s": round(count / views_s),
            "ratio_logs_plus_views_to_logs": round((logs_s + views_s) / logs_s, 2),
        })
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
