"""Storage seam (`base`) and its backends. `open_store` picks one from the settings:
OpenSearch when `opensearch.url` is set, the embedded SQLite file otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aitrail.settings import Settings

    from .base import Store


def open_store(settings: Settings, *, read_only: bool = False) -> Store:
    """`read_only` (`aitrail verify`): change nothing, not even the index layout (OpenSearch)
    or the schema (SQLite, opened read-only: see `SqliteStore`); a missing store is an error.
    The store gets the installation's row key (created when missing unless `read_only`)."""
    from aitrail.custody import attach_row_key

    if settings.opensearch.url:
        from .opensearch import OpenSearchStore

        store = OpenSearchStore.from_settings(settings.opensearch, ensure_layout=not read_only)
    else:
        from .sqlite import SqliteStore

        store = SqliteStore.in_dir(settings.data_dir, read_only=read_only)
    try:
        attach_row_key(store, settings, create=not read_only)  # API keys, secrets, dead letters: aitrail.store.rowmac
    except BaseException:
        store.close()
        raise
    return store
