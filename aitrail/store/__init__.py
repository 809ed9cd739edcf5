"""Storage seam (`base`) and its backends. `open_store` picks one from the settings:
OpenSearch when `opensearch.url` is set, the embedded SQLite file otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aitrail.settings import Settings

    from .base import Store


def open_store(settings: Settings, *, read_only: bool = False) -> Store:
    """`read_only` (`aitrail verify`): change nothing, not even the index layout (OpenSearch)
    or the schema (SQLite, opened read-only: see `SqliteStore`); a missing store is an error."""
    if settings.opensearch.url:
        from .opensearch import OpenSearchStore

        return OpenSearchStore.from_settings(settings.opensearch, ensure_layout=not read_only)
    from .sqlite import SqliteStore

    return SqliteStore.in_dir(settings.data_dir, read_only=read_only)
