"""An embedded aitrail on free ports in a background thread."""

from __future__ import annotations

from pathlib import Path

from aitrail.embedded import EmbeddedThread
from aitrail.settings import load_settings


def RunningServer(data_dir: Path, **overrides) -> EmbeddedThread:  # noqa: N802 (reads like a class)
    return EmbeddedThread(
        load_settings(None, data_dir=data_dir, otlp_http_port=0, otlp_grpc_port=0, api_port=0, **overrides)
    )
