"""The integrity layer's costs, on collector-made records (bench/data.py):

1. sequencer: leaves appended per second to one log — `LogSequencer.plan` + `commit` on
   2,000-record batches (sealing, leaf and node hashing, Ed25519 checkpoint signing at the
   product's cadence), no store. Target ≥ 20,000/s. With the share spent sealing alone.
2. proofs: inclusion proof (`Proofs.proof`: newest checkpoint + tree nodes from the store)
   and its verification (`verify_record`: signature, content commitment, leaf, path) per
   record, on a log of `--leaves` leaves written through `Sequencing` into SqliteStore
   (and, smaller, OpenSearchStore). Target ≤ 1 ms (mean). Beside it, the same path with
   all its nodes read in one `nodes()` call.
3. checkpoint lag: the embedded server under a steady load; for every request, the time
   from its 200 OK until the log's newest signed checkpoint covers the leaves of its records
   (polled every few ms). Target p99 ≤ 2 s.
4. overhead on ingest: bench.ingest_embedded's run with integrity on and off, alternated,
   medians; the ratio on/off.

    python -m bench.integrity [--leaves 100000] [--lag-seconds 30 --lag-rate 2000]
"""

from __future__ import annotations

import argparse
import bisect
import random
import statistics
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from aitrail.collector.sequencing import LOCAL_BASE, Sequencing
from aitrail.embedded import EmbeddedThread
from aitrail.integrity import merkle
from aitrail.integrity.leaf import derive_salt, seal_with_hash
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import LogSequencer, new_log
from aitrail.tenancy import tenant_log_id
from aitrail.integrity.verify import RecordStatus, verify_record
from aitrail.query_api.integrity import Proofs
from aitrail.settings import load_settings
from aitrail.store.base import Role
from aitrail.store.sqlite import SqliteStore

from . import ingest_embedded
from .common import drop_opensearch_layout, median, percentile, report
from .data import build_requests, normalised

TENANT = "bench"
LOG = tenant_log_id(TENANT, LOCAL_BASE)  # the log all of the bench's records go to
BATCH = 2000


def subject_keys():
    keys: dict[str, bytes] = {}

    def key_for(record) -> bytes:
        subject = record.user_pseudonym or "-"
        if subject not in keys:
            keys[subject] = random.randbytes(32)
        return keys[subject]

    return key_for


# -- 1. the sequencer alone ------------------------------------------------------------------


def sequencer_rate(records: list, repeats: int) -> dict:
    signer = Signer.generate("bench.example/log")
    key_for = subject_keys()
    rates, sealing = [], []
    for _ in range(repeats):
        sequencer = LogSequencer(new_log("bench", "bench.example/log/bench"), signer)
        checkpoints = 0
        started = time.perf_counter()
        for first in range(0, len(records), BATCH):
            plan = sequencer.plan(records[first : first + BATCH], key_for)
            sequencer.commit(plan)
            checkpoints += len(plan.update.checkpoints)
        rates.append(len(records) / (time.perf_counter() - started))
        started = time.perf_counter()  # the sealing part alone: split, commit to content, leaf hash
        for index, record in enumerate(records):
            seal_with_hash(record, log_id="bench", leaf_index=index, salt=derive_salt(key_for(record), record.record_id))
        sealing.append((time.perf_counter() - started) / len(records))
    rate = median(rates)
    started = time.perf_counter()
    for _ in range(200):
        signer.sign(b"bench.example/log/bench\n1234\n" + b"x" * 44 + b"\n")
    sign_us = (time.perf_counter() - started) / 200 * 1e6
    return {
        "leaves_per_s": round(rate), "runs": [round(r) for r in rates], "us_per_leaf": round(1e6 / rate, 1),
        "sealing_us_per_leaf": round(median(sealing) * 1e6, 1), "checkpoints_per_run": checkpoints,
        "ed25519_sign_us": round(sign_us, 1), "batch": BATCH, "target_leaves_per_s": 20_000,
        "meets_target": rate >= 20_000,
    }


# -- 2. proofs ------------------------------------------------------------------------------


def fill_log(store, records: list, signer: Signer) -> dict:
    sequencing = Sequencing(store, signer, "bench.example/log", checkpoint_every=256, checkpoint_interval_s=0.2)
    started = time.perf_counter()
    for first in range(0, len(records), BATCH):
        sequencing.write(records[first : first + BATCH])
    elapsed = time.perf_counter() - started
    time.sleep(0.25)
    sequencing.tick()  # cover the tail
    return {"leaves": len(records), "write_leaves_per_s": round(len(records) / elapsed)}


def time_proofs(store, verifier, samples: int, seed: int = 3) -> dict:
    proofs = Proofs(store, verifier)
    size = store.latest_checkpoint(LOG).size
    rng = random.Random(seed)
    ids = [r[0] for r in store._conn().execute("SELECT record_id FROM records")] if isinstance(store, SqliteStore) else None
    return _time_proofs(store, proofs, verifier, ids, size, samples, rng)


def one_fetch_path(store, record, size: int) -> list[bytes]:
    """The same inclusion path with every node it needs read in one `nodes()` call (what
    `Proofs.path` could do; it reads them one at a time)."""
    keys = merkle.inclusion_proof_nodes(record.leaf_index, size)
    found = store.nodes(record.log_id, keys)
    return merkle.build_inclusion_proof(lambda level, index: found[level, index], record.leaf_index, size)


def _time_proofs(store, proofs, verifier, ids, size, samples, rng) -> dict:
    get_s, proof_s, verify_s, one_fetch_s = [], [], [], []
    failures = 0
    for _ in range(samples):
        record_id = rng.choice(ids)
        started = time.perf_counter()
        record = store.get(TENANT, record_id)
        fetched = time.perf_counter()
        proof = proofs.proof(record)
        proved = time.perf_counter()
        result = verify_record(record, proof.path, proof.checkpoint.note, verifier)
        verified = time.perf_counter()
        failures += result.status != RecordStatus.VERIFIED
        get_s.append(fetched - started)
        proof_s.append(proved - fetched)
        verify_s.append(verified - proved)
        started = time.perf_counter()
        failures += one_fetch_path(store, record, proof.checkpoint.size) != proof.path
        one_fetch_s.append(time.perf_counter() - started)
    total = [p + v for p, v in zip(proof_s, verify_s, strict=True)]

    def ms(values):
        return {"p50_ms": round(percentile(values, 50) * 1000, 3), "p99_ms": round(percentile(values, 99) * 1000, 3),
                "mean_ms": round(statistics.fmean(values) * 1000, 3)}

    return {"tree_size": size, "samples": samples, "failures": failures, "proof": ms(proof_s), "verify": ms(verify_s),
            "proof_plus_verify": ms(total), "reading_the_record": ms(get_s),
            "path_nodes_in_one_read": ms(one_fetch_s),
            "meets_target": statistics.fmean(total) * 1000 <= 1.0}


def proofs_sqlite(records: list, samples: int, workdir: Path) -> dict:
    signer = Signer.generate("bench.example/log")
    store = SqliteStore(workdir / "proofs.db")
    try:
        filled = fill_log(store, records, signer)
        return filled | time_proofs(store, signer.verifier(), samples)
    finally:
        store.close()


def proofs_opensearch(records: list, samples: int, url: str) -> dict:
    from aitrail.settings import OpenSearchSettings
    from aitrail.store.opensearch import OpenSearchStore

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    signer = Signer.generate("bench.example/log")
    store = OpenSearchStore.from_settings(OpenSearchSettings(url=url, index_prefix=prefix), refresh=False)
    try:
        filled = fill_log(store, records, signer)
        store._client.indices.refresh(index=f"{prefix}-*")
        rng = random.Random(3)
        ids = [r.record_id for r in records]
        size = store.latest_checkpoint(LOG).size
        return filled | _time_proofs(store, Proofs(store, signer.verifier()), signer.verifier(), ids, size, samples, rng)
    finally:
        store.close()
        drop_opensearch_layout(url, prefix)


# -- 3. checkpoint lag ------------------------------------------------------------------------


def checkpoint_lag(seconds: float, rate: int, spans_per_request: int) -> dict:
    traces_per_request = max(1, spans_per_request // 2)
    count = max(1, int(seconds * rate / (traces_per_request * 2)))
    requests, spans = build_requests(count * traces_per_request, traces_per_request, seed=11)
    ids = [[r.record_id for r in normalised([request], TENANT)] for request in requests]
    period = seconds / len(requests)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, data_dir=Path(tmp) / "data", otlp_http_port=0, otlp_grpc_port=0, api_port=0)
        server = EmbeddedThread(settings).start()
        try:
            key, _ = server.store.create_key(TENANT, Role.INGEST)
            url = server.otlp_http + "/v1/traces"
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"}
            changes: list[tuple[float, int]] = [(0.0, 0)]  # (time, newest checkpoint size) at each change
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    checkpoint = server.store.latest_checkpoint(LOG)
                    size = checkpoint.size if checkpoint else 0
                    if size != changes[-1][1]:
                        changes.append((time.perf_counter(), size))
                    time.sleep(0.005)

            acks: list[tuple[float, int]] = []  # (200 OK at, highest leaf index of the request's records)
            late = []

            def send(first: int, step: int, started: float) -> None:
                with httpx.Client(headers=headers, timeout=60) as client:
                    for i in range(first, len(requests), step):
                        due = started + i * period
                        pause = due - time.perf_counter()
                        if pause > 0:
                            time.sleep(pause)
                        else:
                            late.append(-pause)
                        client.post(url, content=requests[i]).raise_for_status()
                        at = time.perf_counter()
                        leaves = server.store.existing(ids[i])
                        acks.append((at, max(leaf for _, leaf in leaves.values())))

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            started = time.perf_counter() + 0.1
            senders = [threading.Thread(target=send, args=(k, 2, started)) for k in range(2)]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join()
            sent_s = time.perf_counter() - started
            deadline = time.perf_counter() + 10
            last_leaf = max(leaf for _, leaf in acks)
            while changes[-1][1] <= last_leaf and time.perf_counter() < deadline:
                time.sleep(0.01)
            stop.set()
            poller.join()
        finally:
            server.stop()
    times = [t for t, _ in changes]
    lags = []
    for at, leaf in acks:
        position = bisect.bisect_right(times, at) - 1  # the newest checkpoint known at the 200 OK
        while position < len(changes) and changes[position][1] <= leaf:
            position += 1
        if position == len(changes):
            lags.append(float("inf"))
        else:
            lags.append(max(0.0, changes[position][0] - at))
    covered = [lag for lag in lags if lag != float("inf")]
    p99 = percentile(lags, 99)
    return {
        "requests": len(requests), "spans": spans, "spans_per_request": traces_per_request * 2,
        "offered_spans_per_s": rate, "achieved_spans_per_s": round(spans / sent_s),
        "sends_behind_schedule": len(late), "checkpoints_seen": len(changes) - 1,
        "lag_p50_ms": round(percentile(covered, 50) * 1000, 1), "lag_p99_ms": round(p99 * 1000, 1),
        "lag_max_ms": round(max(lags) * 1000, 1), "never_covered": len(lags) - len(covered),
        "target_p99_ms": 2000, "meets_target": p99 <= 2.0,
    }


# -- 4. overhead on ingest ----------------------------------------------------------------------


def overhead(traces: int, per_request: int, clients: int, rounds: int) -> dict:
    requests, spans = build_requests(traces, per_request)
    runs: dict[str, list[int]] = {"on": [], "off": []}
    for _ in range(rounds):
        for mode in ("on", "off"):
            runs[mode].append(ingest_embedded.run(requests, spans, clients, integrity=mode == "on")["spans_per_s"])
    on, off = median(runs["on"]), median(runs["off"])
    return {"spans": spans, "spans_per_s_integrity_on": round(on), "spans_per_s_integrity_off": round(off),
            "runs": runs, "ratio_on_to_off": round(on / off, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=100_000, help="leaves in the log the proofs are taken from")
    parser.add_argument("--sequencer-leaves", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--proofs", type=int, default=1000, help="records proved and verified")
    parser.add_argument("--opensearch-leaves", type=int, default=20_000, help="0: skip the OpenSearch proofs")
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--lag-seconds", type=float, default=30)
    parser.add_argument("--lag-rate", type=int, default=2000, help="spans/s offered during the lag test")
    parser.add_argument("--lag-request-spans", type=int, default=100)
    parser.add_argument("--overhead-traces", type=int, default=20_000)
    parser.add_argument("--overhead-rounds", type=int, default=2)
    args = parser.parse_args(argv)

    records = normalised(build_requests(max(args.leaves, args.sequencer_leaves) // 2, 250)[0], TENANT)
    result: dict = {"sequencer": sequencer_rate(records[: args.sequencer_leaves], args.repeats)}
    workdir = Path(tempfile.mkdtemp(prefix="bench-integrity-"))
    try:
        result["proofs_sqlite"] = proofs_sqlite(records[: args.leaves], args.proofs, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.opensearch_leaves:
        result["proofs_opensearch"] = proofs_opensearch(records[: args.opensearch_leaves], min(args.proofs, 200), args.url)
    result["checkpoint_lag"] = checkpoint_lag(args.lag_seconds, args.lag_rate, args.lag_request_spans)
    result["ingest_overhead"] = overhead(args.overhead_traces, 250, 4, args.overhead_rounds)
    report("integrity", result)


if __name__ == "__main__":
    main()
