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


def _cli_principal(tenant: str):
    from .store.base import Principal, Role

    return Principal(key_id="cli", tenant=tenant, role=Role.AUDITOR)


def _query_service(settings: Settings):
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

    async def run(settings: Settings, stop: asyncio.Event) -> None:
        async with collector(settings) as drain:
            await stop.wait()
            log.info("stopping: finishing the batch in flight and committing")
            await drain()

    return _run_service(args, run)


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
    settings = _settings(args)
    queries = _query_service(settings)
    result = queries.answers(
        _cli_principal(args.tenant or settings.collector.default_tenant), q=args.q, at=args.at, tz=args.tz,
        window=args.window, user=args.user, service=args.service, model=args.model, limit=args.limit,
    )
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    from .cli_render import render_answers

    render_answers(result, args.tz)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    queries = _query_service(settings)
    result = queries.trace(_cli_principal(args.tenant or settings.collector.default_tenant), args.trace_id)
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    from .cli_render import render_replay

    render_replay(result, args.tz)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 only when everything checked verifies; 1 on any failure (each printed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .custody import CheckpointMirror, trusted_verifiers
    from .integrity.verify import verify_log, verify_record
    from .query_api.integrity import Proofs
    from .store import open_store

    settings = _settings(args)
    verifier = trusted_verifiers(settings, [args.public_key] if args.public_key else ())
    if not verifier:
        raise AitrailError("no public key: pass --public-key (a vkey or a .pub file) or configure integrity.signing_key_file")
    if args.bundle:
        raise AitrailError(
            "export bundles are written by `aitrail export`, which this version does not have yet; "
            "verify the store with --log or --record"
        )
    store = open_store(settings)
    failures = 0
    try:
        if hasattr(store, "settle"):  # OpenSearch: see writes made with refresh off
            store.settle()
        if args.record:
            record = store.get(args.tenant or settings.collector.default_tenant, args.record)
            if record is None:
                raise AitrailError(f"no record {args.record} for tenant {args.tenant or settings.collector.default_tenant}")
            proof = Proofs(store, verifier).proof(record)
            report = verify_record(record, proof.path, proof.checkpoint.note, verifier)
            print(f"record {record.record_id}: {report.status} ({report.reason})")
            return 0 if report.ok else 1
        log_ids = [args.log] if args.log else store.log_ids()
        if args.log and args.log not in store.log_ids():
            raise AitrailError(f"no log {args.log}; logs: {', '.join(store.log_ids()) or 'none'}")
        checkpoint_file = CheckpointMirror(settings.integrity.checkpoint_dir, create=False)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=_stderr_console(), transient=True,
        ) as progress:
            for log_id in log_ids:
                task = progress.add_task(f"log {log_id}", total=store.log_size(log_id) or None)
                report = verify_log(
                    store, verifier, log_id, progress=lambda done, total: progress.update(task, completed=done, total=total)
                )
                problems = [str(f) for f in report.failures] + _compare_checkpoint_file(store, checkpoint_file, log_id)
                failures += len(problems)
                state = "OK" if not problems else f"{len(problems)} FAILURE(S)"
                progress.console.print(
                    f"log {log_id}: {state} — {report.records_checked} records, {report.checkpoints_checked} "
                    f"checkpoints, verified up to size {report.verified_size}"
                    + (f", {report.uncovered} newer leaves not yet under a checkpoint" if report.uncovered else "")
                    + (f", {report.erased} erased" if report.erased else "")
                )
                for problem in problems:
                    print(f"FAILED {log_id} {problem}")
        if not log_ids:
            print("no logs to verify", file=sys.stderr)
    finally:
        store.close()
    return 1 if failures else 0


def _compare_checkpoint_file(store, checkpoint_file, log_id: str) -> list[str]:
    """Checkpoints kept outside the store must all be in it, unchanged. The file is read
    first: a live log writes the store before the file, so whatever the file holds is
    already in the store, even if a checkpoint is signed while we read."""
    state = store.log_state(log_id)
    kept = checkpoint_file.read(state.origin) if state is not None else []
    if hasattr(store, "settle"):
        store.settle()
    stored = {cp.size: cp.note for cp in store.checkpoints(log_id)}
    problems = []
    for cp in kept:
        if cp.size not in stored:
            problems.append(f"checkpoint for size {cp.size} is in the checkpoint file but missing from the store")
        elif stored[cp.size] != cp.note:
            problems.append(f"checkpoint for size {cp.size} differs between the store and the checkpoint file")
    return problems


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


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

    verify = commands.add_parser("verify", help="check records, logs and checkpoints; non-zero exit on any failure")
    _common(verify)
    selector = verify.add_mutually_exclusive_group()
    selector.add_argument("--record", help="one record id (with --tenant)")
    selector.add_argument("--log", help="one log id (default: every log)")
    selector.add_argument("--bundle", type=Path, help="an export bundle directory")
    verify.add_argument("--tenant", help="tenant of --record (default: the collector's default tenant)")
    verify.add_argument("--public-key", help="verifier key (vkey text or a .pub file); default: the configured key's .pub")
    verify.set_defaults(func=cmd_verify)

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
