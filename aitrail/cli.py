"""The `aitrail` command. Settings are built once here and passed down."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import AitrailError
from .settings import Settings, load_settings

log = logging.getLogger("aitrail")


# -- helpers --------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (AITRAIL_* variables override it)")
    parser.add_argument("--data-dir", type=Path, help="embedded data folder (default ./aitrail-data)")


def _servers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name, None)
        for name in ("data_dir", "host", "otlp_http_port", "otlp_grpc_port", "api_port")
    }
    return load_settings(args.config, **overrides)


def _configure_logging(settings: Settings, *, service: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if service and settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # opensearch-py logs every request at INFO and every 404 (a missing log state, say) at
    # WARNING; aitrail reports the failures that matter itself.
    logging.getLogger("opensearch").setLevel(logging.ERROR)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
            "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _query_service(settings: Settings):
    """The queries the API answers, over the configured store (`.store`; the caller closes it)."""
    from .collector.pipeline import hmac_pseudonymiser
    from .custody import trusted_verifiers
    from .query_api.service import QueryService
    from .store import open_store

    store = open_store(settings)
    return QueryService(
        store, pseudonymise=hmac_pseudonymiser(store.secret("pseudonym")), verifier=trusted_verifiers(settings) or None
    )


async def _run_until_signal(run) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)


def _run_service(args: argparse.Namespace, run) -> int:
    """Build the settings, log as a service, and run `run(settings, stop)` until SIGINT/SIGTERM."""
    settings = _settings(args)
    _configure_logging(settings, service=True)
    asyncio.run(_run_until_signal(lambda stop: run(settings, stop)))
    return 0


# -- commands -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .embedded import embedded

    async def run(settings: Settings, stop: asyncio.Event) -> None:
        async with embedded(settings) as running:
            store, ports = running.store, running.ports
            base = f"http://{settings.host}:{ports.api}"
            log.info(
                "aitrail %s serving: OTLP http://%s:%d (HTTP) and %s:%d (gRPC); API and page %s; data in %s",
                __version__, settings.host, ports.otlp_http, settings.host, ports.otlp_grpc, base,
                settings.data_dir.resolve(),
            )
            if args.demo:
                await asyncio.to_thread(_demo, store, settings, ports, base)
            await stop.wait()
            log.info("stopping")

    return _run_service(args, run)


def cmd_gateway(args: argparse.Namespace) -> int:
    from .scaleout import gateway

    async def run(settings: Settings, stop: asyncio.Event) -> None:
        async with gateway(settings) as ports:
            log.info(
                "aitrail gateway %s: OTLP %s:%d (HTTP) and %s:%d (gRPC) → Kafka %s topic %s", __version__,
                settings.host, ports.otlp_http, settings.host, ports.otlp_grpc, settings.kafka.bootstrap_servers,
                settings.kafka.topic,
            )
            await stop.wait()
            log.info("stopping")

    return _run_service(args, run)


def cmd_collector(args: argparse.Namespace) -> int:
    from .scaleout import collector

    fatal: list[str] = []

    async def run(settings: Settings, stop: asyncio.Event) -> None:
        def stopped(message: str) -> None:
            fatal.append(message)
            stop.set()

        async with collector(settings, on_fatal=stopped) as drain:
            await stop.wait()
            if fatal:
                return
            log.info("stopping: finishing the batch in flight and committing")
            await drain()

    _run_service(args, run)
    if fatal:
        print(f"aitrail: the collector stopped: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from .scaleout import api

    async def run(settings: Settings, stop: asyncio.Event) -> None:
        async with api(settings) as port:
            backend = settings.opensearch.url or f"SQLite in {settings.data_dir.resolve()}"
            log.info("aitrail api %s on http://%s:%d over %s", __version__, settings.host, port, backend)
            await stop.wait()

    return _run_service(args, run)


def _demo(store, settings: Settings, ports, base: str) -> None:
    from .demo import send_sample_traffic
    from .store.base import Role

    tenant = settings.collector.default_tenant
    ingest_key, _ = store.create_key(tenant, Role.INGEST)
    auditor_key, _ = store.create_key(tenant, Role.AUDITOR)
    summary = send_sample_traffic(f"http://{settings.host}:{ports.otlp_http}", ingest_key)
    print(
        f"\nSent {summary.traces} sample traces to tenant '{tenant}'.\n"
        f"Auditor key: {auditor_key}\n\nTry:\n"
        f"  curl -s -H 'Authorization: Bearer {auditor_key}' "
        f"'{base}/v1/answers?q=refund+policy&at=last+Tuesday+14:30&tz=Asia/Bangkok&window=2h'\n"
        f"  curl -s -H 'Authorization: Bearer {auditor_key}' '{base}/v1/traces/{summary.example_trace_id}'\n"
        f"  aitrail answers --q 'refund policy' --at 'last Tuesday 14:30' --tz Asia/Bangkok --window 2h\n"
        f"or open {base}/ and paste the key.\n",
        flush=True,
    )


def cmd_keys(args: argparse.Namespace) -> int:
    from .store import open_store
    from .store.base import Role

    settings = _settings(args)
    store = open_store(settings)
    try:
        if args.keys_command == "create":
            key, _ = store.create_key(args.tenant, Role(args.role))
            print(key)
        elif args.keys_command == "list":
            for info in store.list_keys(args.tenant):
                state = f"revoked {info.revoked_at}" if info.revoked_at else "active"
                print(f"{info.key_id}\t{info.tenant}\t{info.role}\t{info.created_at}\t{state}")
        elif args.keys_command == "signing":
            from .custody import ensure_signing_key, public_key_path, rotate_signing_key, signing_key_path

            path = public_key_path(settings)
            if args.rotate:
                retired, signer = rotate_signing_key(settings)
                print(f"retired {retired.to_vkey()} (its .pub stays in {path.parent}, so old checkpoints "
                      "keep verifying)", file=sys.stderr)
                print(signer.verifier().to_vkey())
            elif args.create:
                signer = ensure_signing_key(settings)
                print(f"signing key: {signing_key_path(settings)}", file=sys.stderr)
                print(signer.verifier().to_vkey())
            elif path.exists():
                print(path.read_text().strip())
            else:
                raise AitrailError(f"no signing key yet ({path} missing); create it with `aitrail keys signing --create`")
        elif args.keys_command == "revoke":
            if not store.revoke_key(args.key_id):
                raise AitrailError(f"no active key with id {args.key_id}")
            print(f"revoked {args.key_id}", file=sys.stderr)
    finally:
        store.close()
    return 0


def cmd_answers(args: argparse.Namespace) -> int:
    from .cli_access import logged_read

    settings = _settings(args)
    params = dict(q=args.q, at=args.at, tz=args.tz, window=args.window, user=args.user, service=args.service,
                  model=args.model, limit=args.limit)
    queries = _query_service(settings)
    try:  # logged (who, what, the ids shown) before anything is shown
        with logged_read(settings, queries.store, args.tenant or settings.collector.default_tenant, "answers",
                         params) as read:
            result = queries.answers(read.principal, **params)
            read.returned([a.record_id for a in result.data])
    finally:
        queries.store.close()
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    from .cli_render import render_answers

    render_answers(result, args.tz)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .cli_access import logged_read

    settings = _settings(args)
    queries = _query_service(settings)
    try:  # logged (who, what, the ids shown) before anything is shown
        with logged_read(settings, queries.store, args.tenant or settings.collector.default_tenant, "replay",
                         {"trace_id": args.trace_id}) as read:
            result = queries.trace(read.principal, args.trace_id)
            read.returned([r["record_id"] for r in result.records])
    finally:
        queries.store.close()
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    from .cli_render import render_replay

    render_replay(result, args.tz)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0: everything checked verified; 1: tampering or loss found, each item printed;
    2: could not check (a sentence on stderr, never a traceback). Reads only."""
    from .integrity.trusted import TrustedFileError

    try:
        return _verify(args)
    except (AitrailError, OSError):
        raise  # main(): the message, exit 2
    except TrustedFileError as exc:
        print(f"aitrail: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - "could not check" must never read as "tampering found"
        print(f"aitrail: verify could not check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _verify(args: argparse.Namespace) -> int:
    """`aitrail verify` itself: the store against itself, against the checkpoints kept outside
    it (the mirror, legacy checkpoint files, `--trusted` files), and absent content against
    its sealed reasons. Kept checkpoints are read before the store: a live log writes the
    store before the mirror, so whatever the mirror holds the store must already hold."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .custody import CheckpointMirror, trusted_verifiers
    from .integrity.coverage import ErasureStatus
    from .integrity.trusted import legacy_checkpoints, mirrored_checkpoints, read_trusted_file
    from .integrity.verify import RecordStatus, verify_logs, verify_record
    from .query_api.integrity import Proofs
    from .store import open_store

    settings = _settings(args)
    verifiers = trusted_verifiers(settings, args.public_key or ())
    if not verifiers:
        raise AitrailError(
            "no public key: pass --public-key (a vkey or a .pub file) or configure integrity.signing_key_file"
        )
    if args.bundle:
        raise AitrailError(
            "export bundles are written by `aitrail export`, which this version does not have yet; "
            "verify the store with --log or --record"
        )
    # Our logs' origins are `<key name>/<log id>`; other installations' entries are ignored.
    prefixes = [settings.integrity.origin] if settings.integrity.origin else sorted({v.name for v in verifiers})
    external = mirrored_checkpoints(CheckpointMirror(settings.integrity.checkpoint_dir, create=False), prefixes)
    external += legacy_checkpoints(settings.data_dir, prefixes)
    for path in args.trusted or ():
        external += read_trusted_file(path, prefixes)

    store = open_store(settings, read_only=True)
    try:
        if hasattr(store, "settle"):  # OpenSearch: see writes made with refresh off
            store.settle()
        proofs = Proofs(store, verifiers)
        erasures = proofs.erasure_coverage()
        if args.record:
            tenant = args.tenant or settings.collector.default_tenant
            record = store.get(tenant, args.record)
            if record is None:
                _log_verify_read(settings, tenant, args.record, False)
                raise AitrailError(f"no record {args.record} for tenant {tenant}")
            proof = proofs.proof(record)
            report = verify_record(record, proof.path, proof.checkpoint.note, verifiers)
            status, reason = str(report.status), report.reason
            if report.status == RecordStatus.ERASED:
                explanation = erasures.explain(record)
                reason = explanation.reason
                if explanation.status == ErasureStatus.UNEXPLAINED:
                    status = "FAILED [unexplained_erasure]"
                elif explanation.status == ErasureStatus.PENDING:
                    status = "erased (its erasure record awaits a checkpoint)"
            _log_verify_read(settings, tenant, record.record_id, True)  # after the last read of this store
            print(f"record {record.record_id}: {status} ({reason})")
            return 1 if status.startswith("FAILED") or not report.ok else 0

        known = set(store.log_ids()) | {e.checkpoint.log_id for e in external}
        if args.log and args.log not in known:
            raise AitrailError(f"no log {args.log}; logs: {', '.join(sorted(known)) or 'none'}")
        log_ids = [args.log] if args.log else sorted(known)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=_stderr_console(), transient=True,
        ) as progress:
            tasks: dict[str, object] = {}

            def advance(log_id: str, done: int, total: int) -> None:
                if log_id not in tasks:
                    tasks[log_id] = progress.add_task(f"log {log_id}", total=total or None)
                progress.update(tasks[log_id], completed=done, total=total or None)

            reports = verify_logs(store, verifiers, log_ids=log_ids, external=external, erasures=erasures,
                                  progress=advance)
        failures = 0
        console = _stderr_console()
        for report in reports:
            failures += len(report.failures)
            state = "OK" if report.ok else f"{len(report.failures)} FAILURE(S)"
            console.print(
                f"log {report.log_id}: {state} — {report.records_checked} records, {report.checkpoints_checked} "
                f"checkpoints, {report.external_checked} kept outside the store, verified up to size "
                f"{report.verified_size}"
                + (f", {report.uncovered} newer leaves not yet under a checkpoint" if report.uncovered else "")
                + (f", {report.erased} erased" if report.erased else "")
                + (f" ({report.erasures_pending} awaiting the checkpoint of their erasure record)"
                   if report.erasures_pending else ""),
                highlight=False,
            )
            for failure in report.failures:
                print(f"FAILED {report.log_id} {failure}")
        # Derived views (answers, full-text terms, costs, retrieved documents' ACL tags,
        # feedback, the records' indexed columns) rebuilt from the stored bodies: every
        # mismatch is a failure. Only on a whole-store check (--log checks one log).
        if not args.log:
            from .integrity.views import verify_views

            with Progress(TextColumn("{task.description}"), TextColumn("{task.completed}"),
                          console=_stderr_console(), transient=True) as progress:
                stages: dict[str, object] = {}

                def rebuilt(stage: str, done: int) -> None:
                    if stage not in stages:
                        stages[stage] = progress.add_task(f"views: {stage}", total=None)
                    progress.update(stages[stage], completed=done)

                view_findings = verify_views(store, progress=rebuilt)
            for finding in view_findings:
                print(f"FAILED view {finding}")
            failures += len(view_findings)
            console.print(f"views: {'OK' if not view_findings else f'{len(view_findings)} FAILURE(S)'} — answers, "
                          "full-text terms, costs, retrieved documents, feedback and record columns rebuilt from "
                          "the records", highlight=False)
        if not log_ids:
            print("no logs to verify", file=sys.stderr)
        return 1 if failures else 0
    finally:
        store.close()


def _log_verify_read(settings, tenant: str, record_id: str, found: bool) -> None:
    """`verify --record` reads one record of a tenant: logged like `answers` and `replay`
    (aitrail.cli_access), in its own connection, since verification itself opens the store
    read-only. On a read-only copy (an auditor's snapshot) the entry cannot be written: the
    check still runs, and stderr says the read was not logged; it shows no content."""
    from .cli_access import Unavailable, record_cli_read

    try:
        record_cli_read(settings, tenant=tenant, command="verify --record", query={"record": record_id},
                        ids=[record_id] if found else [], status=200 if found else 404,
                        reason=None if found else f"no record {record_id}")
    except Unavailable as exc:
        print(f"aitrail: note: this check is not in the access log ({exc.message})", file=sys.stderr)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def cmd_dlq(args: argparse.Namespace) -> int:
    """`aitrail dlq list|replay`: exit 0 done, 1 some dead letters failed again (or cannot be
    replayed: truncated), 2 could not run (a sentence on stderr)."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from . import dlq

    settings = _settings(args)
    backend = dlq.backend_for(settings, args.backend)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=_stderr_console(),
                  transient=True) as bar:
        tasks: dict[str, object] = {}

        def progress(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        if args.dlq_command == "list":
            listing = dlq.list_dead_letters(settings, backend, tenant=args.tenant, limit=args.limit,
                                            include_replayed=args.all, progress=progress)
        else:
            report = dlq.replay_dead_letters(settings, backend, dead_letter_id=args.id, tenant=args.tenant,
                                             wait_s=args.wait, progress=progress)
    if args.dlq_command == "list":
        if args.json:
            print(json.dumps(listing.to_json(), indent=2, ensure_ascii=False))
            return 0
        from rich.console import Console
        from rich.table import Table

        console = Console(width=max(Console().width, 160), emoji=False, highlight=False)
        where = settings.kafka.dlq_topic if backend == dlq.Backend.KAFKA else f"{settings.data_dir}/aitrail.db"
        table = Table(title=f"{listing.count} dead letter(s) in {escape(where)}"
                      + ("" if args.all else " waiting for a replay"))
        for column in ("id", "time", "tenant", "signal", "reason", "source", "size"):
            table.add_column(column, overflow="fold", no_wrap=column in ("id", "time"))
        if args.all:
            table.add_column("replayed", overflow="fold")
        for d in listing.data:
            source = f"{d.source['topic']}/{d.source['partition']}@{d.source['offset']}" if d.source else "in-process"
            size = f"{d.size}" + (f" (truncated to {d.stored_bytes}: not replayable)" if d.truncated else "")
            reason = (f"[{d.refused}{' ' + d.record_id if d.record_id else ''}] " if d.refused else "") + d.reason
            reason += f" (replay of {d.replay_of})" if d.replay_of else ""
            if d.authentic is not True:  # aitrail.store.rowmac: a forged dead letter is never replayed
                reason = ("[NOT AUTHENTIC] " if d.authentic is False else "[unchecked] ") + reason
            row = [d.id, d.time, d.tenant, d.signal, escape(reason), escape(source), size]
            if args.all:
                r = d.replayed
                row.append("-" if r is None else escape(f"{r.at} {r.outcome}" + (f" as {r.new_id}" if r.new_id else "")))
            table.add_row(*row)
        console.print(table)
        if listing.count > len(listing.data):
            console.print(f"showing the newest {len(listing.data)} of {listing.count}; raise --limit (0: all)")
        return 0
    for line in dlq.outcome_lines(report.outcomes):
        print(line)
    print(dlq.summary(report), file=sys.stderr)
    if report.note:
        print(f"aitrail: {report.note}", file=sys.stderr)
    return dlq.exit_code(report)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import send_sample_traffic

    summary = send_sample_traffic(args.endpoint, args.api_key, traces=args.traces)
    print(f"sent {summary.traces} traces; example trace {summary.example_trace_id}")
    return 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aitrail", description="Flight recorder for AI systems.")
    parser.add_argument("--version", action="version", version=f"aitrail {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="embedded all-in-one: OTLP receivers, store, API and page")
    _common(serve)
    _servers(serve)
    serve.add_argument("--otlp-http-port", type=int, help="OTLP/HTTP port (default 4318)")
    serve.add_argument("--otlp-grpc-port", type=int, help="OTLP/gRPC port (default 4317)")
    serve.add_argument("--api-port", type=int, help="query API and web page port (default 8080)")
    serve.add_argument("--demo", action="store_true", help="send sample traffic once started and print a key")
    serve.set_defaults(func=cmd_serve)

    gateway = commands.add_parser("gateway", help="OTLP receivers (HTTP and gRPC) → Kafka")
    _common(gateway)
    _servers(gateway)
    gateway.add_argument("--otlp-http-port", type=int, help="OTLP/HTTP port (default 4318)")
    gateway.add_argument("--otlp-grpc-port", type=int, help="OTLP/gRPC port (default 4317)")
    gateway.set_defaults(func=cmd_gateway)

    collector = commands.add_parser("collector", help="Kafka → normalise → OpenSearch")
    _common(collector)
    _servers(collector)
    collector.set_defaults(func=cmd_collector)

    api = commands.add_parser("api", help="query API and web page over OpenSearch (or the embedded store)")
    _common(api)
    _servers(api)
    api.add_argument("--api-port", type=int, help="port (default 8080)")
    api.set_defaults(func=cmd_api)

    answers = commands.add_parser("answers", help="find past answers")
    _common(answers)
    answers.add_argument("--q", help="words of the question or answer")
    answers.add_argument("--at", help="ISO 8601 or plain language, e.g. 'last Tuesday 14:30'")
    answers.add_argument("--tz", help="IANA time zone for --at and the output (default UTC)")
    answers.add_argument("--window", help="half-width around --at (default 15m)")
    answers.add_argument("--user", help="user id or pseudonym")
    answers.add_argument("--service")
    answers.add_argument("--model")
    answers.add_argument("--tenant", help="tenant to read (default: the collector's default tenant)")
    answers.add_argument("--limit", type=int, default=20)
    answers.add_argument("--json", action="store_true", help="print the API's JSON")
    answers.set_defaults(func=cmd_answers)

    replay = commands.add_parser("replay", help="print the full reconstruction of one answer")
    _common(replay)
    replay.add_argument("trace_id")
    replay.add_argument("--tenant", help="tenant to read (default: the collector's default tenant)")
    replay.add_argument("--tz", help="IANA time zone for the timeline (default UTC)")
    replay.add_argument("--json", action="store_true", help="print the API's JSON")
    replay.set_defaults(func=cmd_replay)

    keys = commands.add_parser("keys", help="ingest and API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key and print it, alone, on stdout")
    _common(create)
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, choices=["ingest", "auditor", "analyst", "admin"])
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    _common(listing)
    listing.add_argument("--tenant")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its id")
    _common(revoke)
    revoke.add_argument("key_id")
    signing = key_commands.add_parser(
        "signing", help="print the checkpoint signing key's public half (a note verifier key), alone, on stdout"
    )
    _common(signing)
    signing.add_argument("--create", action="store_true", help="create the key pair first if there is none")
    signing.add_argument(
        "--rotate", action="store_true",
        help="replace the key with a new one of the same name; the old public key stays trusted (stop the "
             "sequencers first, restart them after)",
    )
    keys.set_defaults(func=cmd_keys)

    verify = commands.add_parser(
        "verify", help="check records, logs and checkpoints against the store and checkpoints kept outside it",
        description="Check every log of the store, of the checkpoint mirror and of --trusted files (or one log, "
                    "or one record): every leaf recomputed, every signed checkpoint checked, and today's logs "
                    "proven to extend every checkpoint kept outside the store.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status:\n"
               "  0  everything checked verified\n"
               "  1  tampering or loss found: each item on stdout, 'FAILED <log id> [<kind>] record <id> ...'\n"
               "     (edited, deleted or inserted records, forged or inconsistent checkpoints, a log rolled\n"
               "     back, truncated, forked, wiped, content removed without a sealed erasure record)\n"
               "  2  could not check: store missing or unreadable, OpenSearch unreachable, no public key,\n"
               "     a --trusted file or the mirror unreadable, any unexpected error (a sentence on stderr)\n\n"
               "verify writes nothing: SQLite is opened read-only (it runs on a read-only copy of the data\n"
               "folder), no schema, secret, index or mirror folder is created. See docs/integrity.md.",
    )
    _common(verify)
    selector = verify.add_mutually_exclusive_group()
    selector.add_argument("--record", help="one record id (with --tenant)")
    selector.add_argument("--log", help="one log id (default: every log)")
    selector.add_argument("--bundle", type=Path, help="an export bundle directory")
    verify.add_argument("--tenant", help="tenant of --record (default: the collector's default tenant)")
    verify.add_argument(
        "--public-key", action="append", metavar="KEY",
        help="trusted verifier key (vkey text or a .pub file), repeatable; replaces the configured keys "
             "(default: the keys folder's .pub files and integrity.trusted_keys)",
    )
    verify.add_argument(
        "--trusted", action="append", type=Path, metavar="FILE",
        help="checkpoints you kept earlier (the JSON of GET /v1/checkpoints/latest, or signed notes one after "
             "another), repeatable: today's logs must extend every one",
    )
    verify.set_defaults(func=cmd_verify)

    dlq_parser = commands.add_parser(
        "dlq", help="read dead letters and replay them into ingest after a fix",
        description="Dead letters: input the collector could not ingest, kept with the reason. Embedded: the "
                    "dead_letters table of the data folder; pipeline: the Kafka topic kafka.dlq_topic.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status:\n"
               "  0  done (list shown; every replayed dead letter stored, or submitted with --wait 0)\n"
               "  1  some replayed dead letters failed again (dead letters again, with the new reason) or\n"
               "     cannot be replayed (truncated to fit the dead-letter topic, or not authentic: its MAC\n"
               "     is missing or wrong, so aitrail did not write it)\n"
               "  2  could not run: store or Kafka unreachable, no such dead letter, one already replayed,\n"
               "     or the collectors did not process the replays within --wait\n\n"
               "See docs/operations.md.",
    )
    dlq_commands = dlq_parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_commands.add_parser("list", help="dead letters waiting for a replay: id, time, reason, source, size")
    dlq_replay = dlq_commands.add_parser(
        "replay", help="re-submit dead letters into the normal ingest path; each is replayed once"
    )
    for sub in (dlq_list, dlq_replay):
        _common(sub)
        sub.add_argument(
            "--backend", choices=["embedded", "kafka"],
            help="where the dead letters are (default: kafka when opensearch.url is set, else embedded)",
        )
        sub.add_argument("--tenant", help="only this tenant's dead letters")
    dlq_list.add_argument("--limit", type=int, default=50, help="show the newest N (default 50; 0: all)")
    dlq_list.add_argument("--all", action="store_true", help="include dead letters already replayed, with the outcome")
    dlq_list.add_argument("--json", action="store_true", help="machine-readable output")
    dlq_replay.add_argument("--id", help="replay this one dead letter (an id from `aitrail dlq list`)")
    dlq_replay.add_argument(
        "--wait", type=float, default=120.0, metavar="SECONDS",
        help="kafka: how long to wait for the collectors to process the replays and report each outcome "
             "(default 120; 0: submit and return)",
    )
    dlq_parser.set_defaults(func=cmd_dlq)

    demo = commands.add_parser("demo", help="send sample RAG traffic to a running aitrail")
    demo.add_argument("--endpoint", default="http://127.0.0.1:4318", help="OTLP/HTTP base URL")
    demo.add_argument("--api-key", required=True, help="an ingest key")
    demo.add_argument("--traces", type=int, default=60)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AitrailError as exc:
        print(f"aitrail: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"aitrail: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
