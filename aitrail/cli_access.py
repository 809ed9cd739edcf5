"""Reads of audit data through the `aitrail` command are logged like reads through the API.

The command is not `aitrail serve` or `aitrail api`: it must not append to their logs (two
writers would fork a log). Each tenant therefore has one access log per host for the command,
`<tenant>/access.cli-<host>`, signed with the access-log key (`integrity.access_signing_key_file`)
and written under an exclusive lock (`fcntl.flock` on `<keys_dir>/locks/<tenant>.access.cli-<host>.lock`,
beside the key that signs it), so that concurrent runs append one after another and never fork it.
Each entry names the operating-system user (login name and uid), the host and the process.

A read whose access record cannot be written is not shown (exit 2, as the API answers 503).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aitrail.errors import AitrailError, Unavailable
from aitrail.query_api.access import access_details, access_record
from aitrail.store.base import Principal, Role, Store
from aitrail.tenancy import check_tenant, tenant_log_id

CLI_ROLE = Role.AUDITOR  # what the command may read: the operator holds the data folder or the store anyway


def host_name() -> str:
    """This host's name as it appears in log ids (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"


def cli_log_base(host: str | None = None) -> str:
    """The part of the command's log id after the tenant: `access.cli-<host>`."""
    return f"access.cli-{host or host_name()}"


def cli_log_id(tenant: str, host: str | None = None) -> str:
    return tenant_log_id(tenant, cli_log_base(host))


def os_user() -> dict[str, Any]:
    """Who runs the command: login name, uid, host, process id."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name for this uid (a container)
        user = f"uid-{os.getuid()}"
    return {"os_user": user, "uid": os.getuid(), "host": socket.gethostname(), "pid": os.getpid()}


def cli_principal(tenant: str) -> Principal:
    who = os_user()
    return Principal(key_id=f"cli:{who['os_user']}@{who['host']}", tenant=tenant, role=CLI_ROLE)


def lock_path(settings, tenant: str, host: str | None = None) -> Path:
    return Path(settings.integrity.keys_dir) / "locks" / f"{tenant}.access.cli-{host or host_name()}.lock"


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes, even on kill -9
        yield
    finally:
        os.close(fd)


def record_cli_read(
    settings, *, tenant: str, command: str, query: dict[str, Any], ids: list[str], status: int = 200,
    reason: str | None = None, store: Store | None = None,
) -> None:
    """Seal one access record of a CLI read into `<tenant>/access.cli-<host>` and sign a
    checkpoint covering it before returning. `command`: e.g. `answers`, `replay`, `verify --record`
    (the entry's endpoint is `cli:<command>`); `status`: the HTTP status the same read would
    have had through the API (200 served, 400, 404…). `store`: a writable store (default: the
    configured one, opened and closed here). Raises Unavailable when the record cannot be written:
    then the read must not be shown."""
    from aitrail.collector.sequencing import open_sequencing
    from aitrail.custody import access_key_path
    from aitrail.store import open_store

    tenant = check_tenant(tenant)
    who = os_user()
    details = access_details(
        key_id=f"cli:{who['os_user']}@{who['host']}", role=str(CLI_ROLE), endpoint=f"cli:{command}", query=query,
        ids=ids, status=status, reason=reason, cli=who,
    )
    entry = access_record(tenant, details)
    own = store is None
    try:
        if own:
            store = open_store(settings)
        # Every entry under a checkpoint of its own: the process ends right after.
        sealing = settings.model_copy(update={"integrity": settings.integrity.model_copy(update={"checkpoint_every": 1})})
        with _exclusive(lock_path(settings, tenant)):
            sequencing = open_sequencing(
                sealing, store, create_key=True, default_log=cli_log_base(), key_path=access_key_path(settings)
            )
            if sequencing is None:  # integrity off: logged all the same, unsealed
                result = store.write([entry])
            else:
                result = sequencing.write([entry])
        refused = getattr(result, "refused", None) or {}
        if refused:  # the store refused the entry itself: as unwritten as a failed write
            outcome, why = next(iter(refused.values()))
            raise AitrailError(f"the store refused the entry ({outcome}): {why}")
    except AitrailError as exc:
        raise Unavailable(
            f"this read could not be written to the access log, so it is not shown: {exc.message}"
        ) from exc
    except OSError as exc:
        raise Unavailable(f"this read could not be written to the access log, so it is not shown: {exc}") from exc
    finally:
        if own and store is not None:
            store.close()


class CliRead:
    """One read in progress: `principal` to query as, `returned(ids)` once the result is known."""

    def __init__(self, tenant: str) -> None:
        self.principal = cli_principal(tenant)
        self.ids: list[str] = []

    def returned(self, ids: list[str]) -> None:
        self.ids = list(ids)


@contextlib.contextmanager
def logged_read(settings, store: Store, tenant: str, command: str, query: dict[str, Any]) -> Iterator[CliRead]:
    """Run a read and log it: served (the ids given to `returned`) or refused (the error's
    status and message; the error then goes on). Show the result only after the block."""
    read = CliRead(check_tenant(tenant))
    try:
        yield read
    except AitrailError as exc:
        record_cli_read(settings, tenant=tenant, command=command, query=query, ids=[], status=exc.status,
                        reason=exc.message, store=store)
        raise
    record_cli_read(settings, tenant=tenant, command=command, query=query, ids=read.ids, store=store)
