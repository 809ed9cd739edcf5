"""Generate the committed artefacts from the models: the JSON Schema of AuditRecord and the
OpenSearch index template. `python -m aitrail.schemas.generate` rewrites them; the golden
test (tests/test_schemas.py) fails when the committed files drift from the models."""

from __future__ import annotations

import json
import sys
import types
import typing
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .record import SCHEMA_VERSION, AuditRecord

HERE = Path(__file__).parent
JSON_SCHEMA_FILE = HERE / "audit-record.v1.schema.json"
TEMPLATE_FILE = HERE / "opensearch-template.v1.json"

# Free text people search: English (stemmed) as the main field, Chinese/Japanese/Korean by
# bigrams and Thai by dictionary words as sub-fields; a query asks all three.
TEXT_FIELDS = {
    "question", "answer", "system_instructions", "content", "query_text", "snippet", "error_message",
    "tool_arguments", "tool_result",
}
MULTILINGUAL_TEXT = {
    "type": "text",
    "analyzer": "english",
    "fields": {
        "cjk": {"type": "text", "analyzer": "cjk"},
        "thai": {"type": "text", "analyzer": "thai"},
    },
}
NESTED = {"documents"}  # so a query can ask about one document (its ACL tags, its id) at a time
DATE = {"type": "date_nanos", "format": "strict_date_optional_time_nanos"}
DATE_FIELDS = {"start_time", "end_time", "ingested_at", "erased_at"}


def _unwrap(annotation: Any) -> Any:
    """Optional[X] → X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _mapping(name: str, annotation: Any) -> dict[str, Any]:
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if name in DATE_FIELDS:
        return dict(DATE)
    if name in TEXT_FIELDS:
        return json.loads(json.dumps(MULTILINGUAL_TEXT))
    if origin is list:
        (item,) = typing.get_args(annotation)
        item = _unwrap(item)
        if typing.get_origin(item) is dict:
            return {"type": "flat_object"}
        mapping = _mapping(name, item)
        if name in NESTED and mapping.get("properties"):
            mapping["type"] = "nested"
        return mapping
    if origin is dict or annotation is dict:
        return {"type": "flat_object"}
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return {
                "properties": {
                    field: _mapping(field, info.annotation) for field, info in annotation.model_fields.items()
                }
            }
        if issubclass(annotation, bool):
            return {"type": "boolean"}
        if issubclass(annotation, Enum) or issubclass(annotation, str):
            return {"type": "keyword", "ignore_above": 1024}
        if issubclass(annotation, int):
            return {"type": "long"}
        if issubclass(annotation, float):
            return {"type": "double"}
        if issubclass(annotation, Decimal):
            # exact value stays in _source; sums run on the scaled long
            return {"type": "scaled_float", "scaling_factor": 10_000_000_000}
    raise TypeError(f"no OpenSearch mapping for field {name!r} of type {annotation!r}")


def json_schema() -> dict[str, Any]:
    schema = AuditRecord.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://aitrail.dev/schemas/audit-record.v{SCHEMA_VERSION}.json"
    return schema


def index_template(prefix: str = "aitrail") -> dict[str, Any]:
    mapping = _mapping("record", AuditRecord)
    return {
        "index_patterns": [f"{prefix}-records-*"],
        "priority": 100,
        "_meta": {"schema_version": SCHEMA_VERSION, "generated_by": "aitrail.schemas.generate"},
        "template": {
            "settings": {
                "index": {
                    "number_of_shards": 1,
                    "number_of_replicas": 0,
                    "refresh_interval": "1s",
                    "codec": "best_compression",
                    "mapping": {"total_fields": {"limit": 2000}},
                }
            },
            "mappings": {"dynamic": "strict", "_source": {"enabled": True}, **mapping},
        },
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    JSON_SCHEMA_FILE.write_text(render(json_schema()), encoding="utf-8")
    TEMPLATE_FILE.write_text(render(index_template()), encoding="utf-8")
    print(f"wrote {JSON_SCHEMA_FILE.name} and {TEMPLATE_FILE.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
