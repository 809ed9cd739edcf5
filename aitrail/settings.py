"""One settings object, built once by the CLI and passed down.

Sources, strongest first: CLI flags (applied by the CLI), `AITRAIL_*` environment variables
(nested with `__`, e.g. `AITRAIL_OPENSEARCH__URL`), the TOML file given with `--config`,
then the defaults below. Nothing else in aitrail reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from aitrail.tenancy import TENANT_PATTERN
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    topic: str = Field("aitrail.spans.v1", description="Topic the gateway writes and the collector reads.")
    logs_topic: str = Field(
        "otlp_logs", description="OTLP logs topic a stock OpenTelemetry Collector writes, also read by the collector "
                                 "(empty: none)."
    )
    dlq_topic: str = Field("aitrail.spans.dlq", description="Dead-letter topic for messages that cannot be ingested.")
    group_id: str = Field("aitrail-collector", description="Consumer group of the collectors.")
    max_message_bytes: int = Field(1_000_000, gt=8192, description="Largest message the gateway produces.")
    partitions: int = Field(6, gt=0, description="Partitions of the topics the gateway creates when missing.")
    replication_factor: int = Field(1, gt=0, description="Replication of the topics the gateway creates.")
    session_timeout_ms: int = Field(
        10_000, ge=1_000, description="A collector silent this long loses its partitions to the others."
    )
    heartbeat_interval_ms: int = Field(1_000, ge=100, description="How often a collector tells the group it is alive.")
    max_poll_interval_ms: int = Field(
        300_000, ge=1_000,
        description="A collector that does not poll for this long leaves its group (it keeps polling while the store is away).",
    )

    @model_validator(mode="after")
    def _distinct_topics(self) -> KafkaSettings:
        if self.logs_topic and self.logs_topic in (self.topic, self.dlq_topic):
            raise ValueError(
                f"kafka.logs_topic ({self.logs_topic}) must differ from kafka.topic and kafka.dlq_topic: messages "
                "without an aitrail-signal header are told apart by their topic"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"kafka.heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be at most a third of "
                f"kafka.session_timeout_ms ({self.session_timeout_ms})"
            )
        return self


class OpenSearchSettings(BaseModel):
    url: str | None = Field(None, description="OpenSearch URL; when set, keys/collector/api use OpenSearch.")
    index_prefix: str = Field("aitrail", description="Prefix of every index aitrail creates.")
    username: str | None = None
    password: str | None = None
    verify_certs: bool = True
    shards: int = Field(1, ge=1, description="Primary shards of each records index and of the answers index.")
    replicas: int = Field(0, ge=0, description="Replicas of every aitrail index; 0 suits a single node only.")
    refresh_interval: str = Field("1s", description="How soon writes become searchable (`-1`: only on demand).")
    rollover_max_age: str | None = Field("7d", description="Roll the records index over once it is this old.")
    rollover_max_docs: int | None = Field(None, gt=0, description="Roll the records index over at this many records.")
    rollover_max_size: str | None = Field("50gb", description="Roll the records index over at this primary size.")
    rollover_check_s: int = Field(300, gt=0, description="How often the collector checks the rollover conditions.")


class CollectorSettings(BaseModel):
    default_tenant: str = Field(
        "default", pattern=f"^{TENANT_PATTERN}$", description="Tenant for messages without an aitrail-tenant header."
    )
    batch_max_messages: int = Field(500, gt=0, description="Most OTLP payloads handled as one batch.")
    batch_max_wait_ms: int = Field(200, ge=0, description="Longest wait for Kafka to fill a batch.")
    http_port: int = Field(8081, ge=0, le=65535, description="The collector's /metrics, /healthz and /readyz.")


class IngestSettings(BaseModel):
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest OTLP request body accepted (after gunzip).")
    require_auth: bool = Field(True, description="Require an ingest key on OTLP requests.")
    key_cache_ttl_s: float = Field(
        60.0, gt=0, description="How long a valid ingest key is trusted without asking the store (revocation delay)."
    )
    key_cache_negative_ttl_s: float = Field(
        5.0, ge=0, description="How long an unknown or revoked ingest key is remembered as such."
    )
    key_cache_max_stale_s: float = Field(
        900.0, ge=0, description="While the key store is unreachable, keys it confirmed within this long keep working."
    )
    key_lookup_wait_s: float = Field(
        2.0, gt=0, description="Longest a request waits for a key lookup before answering from the cache or 503."
    )
    key_cache_max_entries: int = Field(100_000, gt=0, description="Most ingest keys kept in the cache.")
    key_store_retry_s: float = Field(
        2.0, gt=0, description="How often the gateway retries opening its key store when it started without it."
    )


class OidcSettings(BaseModel):
    issuer: str | None = Field(None, description="Expected `iss`; OIDC tokens are refused while unset.")
    audience: str | None = Field(None, description="Expected `aud`; required once issuer and jwks_url are set.")
    jwks_url: str | None = Field(None, description="The provider's JWKS (https:// or file://; http:// is refused).")
    algorithms: list[str] = Field(
        ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"],
        description="Signature algorithms accepted at all; each key is further pinned to its own `alg`.",
    )
    ca_file: Path | None = Field(None, description="CA certificates (PEM) for the https JWKS; default the system's.")
    tenant_claim: str = Field("tenant", description="Claim holding the caller's tenant.")
    role_claim: str = Field("aitrail_role", description="Claim holding the role (a string or a list).")
    leeway_s: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat.")


class AuthSettings(BaseModel):
    oidc: OidcSettings = OidcSettings()


class MetricsSettings(BaseModel):
    tenant_labels: bool = Field(
        False, description="Label span counts by tenant on /metrics; off, no metric names a tenant."
    )


class IntegritySettings(BaseModel):
    enabled: bool = Field(True, description="Seal records into Merkle logs with signed checkpoints.")
    keys_dir: Path | None = Field(
        None, description="Where this installation's signing keys live, outside the data folder; default "
                          "$XDG_CONFIG_HOME/aitrail/installations/<id of the data folder> (~/.config/...)."
    )
    signing_key_file: Path | None = Field(
        None, description="Ed25519 checkpoint signing key of the logs; default <keys_dir>/log-signing.key."
    )
    access_signing_key_file: Path | None = Field(
        None, description="`aitrail api`'s own key for its access log; default <keys_dir>/access-signing.key."
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="More verifier keys `aitrail verify` and the API accept (vkey text or .pub files): keys "
                    "retired by rotation, other processes' access-log keys.",
    )
    origin: str | None = Field(None, description="Checkpoint origin prefix; default the signing key's name.")
    checkpoint_every: int = Field(256, gt=0, description="Sign a checkpoint at least every this many leaves.")
    checkpoint_interval_ms: int = Field(1000, gt=0, description="...and at least this often while leaves wait.")
    checkpoint_dir: Path | None = Field(
        None, description="The checkpoint mirror: append-only files outside the store, one per log; default "
                          "$XDG_STATE_HOME/aitrail/checkpoints (~/.local/state/...)."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AITRAIL_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(Path("aitrail-data"), description="Embedded store, keys and checkpoint files.")
    host: str = Field("127.0.0.1", description="Address the servers listen on.")
    otlp_http_port: int = Field(4318, ge=0, le=65535)
    otlp_grpc_port: int = Field(4317, ge=0, le=65535)
    api_port: int = Field(8080, ge=0, le=65535)
    prices_file: Path | None = Field(None, description="Your own price table, merged over the shipped one.")
    instance_name: str | None = Field(
        None, description="This process's name in the ids of logs it keeps (aitrail api's access log); default the host name."
    )
    log_format: str = Field("text", description="`json` for services, `text` for people.")
    log_level: str = Field("INFO")
    kafka: KafkaSettings = KafkaSettings()
    opensearch: OpenSearchSettings = OpenSearchSettings()
    collector: CollectorSettings = CollectorSettings()
    ingest: IngestSettings = IngestSettings()
    integrity: IntegritySettings = IntegritySettings()
    auth: AuthSettings = AuthSettings()
    metrics: MetricsSettings = MetricsSettings()
    operator_tenant: str | None = Field(
        None, pattern=f"^{TENANT_PATTERN}$",
        description="Tenant of the installation's operators: its admin keys read /metrics, and requests refused "
                    "without a valid credential are logged in its access log; default collector.default_tenant.",
    )

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("json", "text"):
            raise ValueError("must be 'json' or 'text'")
        return value

    @model_validator(mode="after")
    def _custody(self) -> Settings:
        """Keys and the checkpoint mirror default to places outside the data folder, so that
        whoever holds the folder can neither re-sign a log nor rewrite its mirrored checkpoints.
        Resolved here, once, like every other setting."""
        import hashlib
        import os

        integrity = self.integrity
        if integrity.keys_dir is None:
            config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            folder = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
            integrity.keys_dir = config_home / "aitrail" / "installations" / folder
        if integrity.checkpoint_dir is None:
            state_home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
            integrity.checkpoint_dir = state_home / "aitrail" / "checkpoints"
        return self

    @model_validator(mode="after")
    def _operator(self) -> Settings:
        if self.operator_tenant is None:
            self.operator_tenant = self.collector.default_tenant
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        config_file = _CONFIG_FILE.get("path")
        if config_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=config_file),)
        return sources


_CONFIG_FILE: dict[str, Path | None] = {}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once. `overrides` are CLI flags (None means not given)."""
    from .errors import ConfigError

    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    _CONFIG_FILE["path"] = config_file
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
    finally:
        _CONFIG_FILE.clear()
