"""The one validated, frozen settings object.

Every process (worker, CLI, tests) reads its configuration from environment variables prefixed
``ROUTER_`` (or a ``.env`` file) through :class:`Settings`. Secrets are ``SecretStr`` so they never
end up in logs, reprs or ``--help`` output by accident.
"""

from __future__ import annotations

import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from router_stream.dsn import dsn_problem, mask_dsn
from router_stream.errors import ConfigError

# Logical topic names (SPEC §2). The configured prefix is prepended to every one of them.
SIGNALS = "signals"
SOURCE_HEALTH = "source-health"
OUTCOMES = "outcomes"
CONTROL = "router.control"
DECISIONS = "router.decisions"
DLQ = "router.dlq"
ROUTED_PREFIX = "routed."
WORKERS = "router.workers"  # worker heartbeats when ROUTER_PERSIST=false (docs/operations.md)
STATE = "router.state"  # checkpoints of the shared routing state (docs/worker.md)
EVENTS = "router.events"  # state events for the Postgres projection (core/events.py)


class Settings(BaseSettings):
    """Configuration shared by the worker and every CLI command."""

    model_config = SettingsConfigDict(
        env_prefix="ROUTER_", env_file=".env", extra="ignore", frozen=True
    )

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="host:port[,host:port]")
    topic_prefix: str = Field("", description="prepended to every topic name, e.g. 'prod.'")
    topics_file: Path | None = Field(
        None,
        description="this deployment's topic declarations (a copy of topics/topics.yaml, e.g. "
        "with other partition counts or retention, per destination too): what `topics apply` "
        "creates and what the worker verifies at start; unset: the file shipped with "
        "router-stream")
    group_id: str = "router-stream"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None

    # --- Postgres ----------------------------------------------------------------------------
    database_url: SecretStr = SecretStr("postgresql://router@127.0.0.1:15432/router")
    database_sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = (
        "prefer"
    )
    database_sslrootcert: str | None = None

    # --- worker ------------------------------------------------------------------------------
    policy_file: str | None = None
    batch_max: int = Field(500, ge=1, le=100_000)
    persist: bool = Field(
        True,
        description="the deployment keeps its ledger in Postgres (written by `router-stream "
        "persist`, never on the worker's batch path): worker heartbeats go there; false: Kafka "
        "only, heartbeats on router.workers, `router-stream dlq reindex` rebuilds the DLQ table "
        "from router.dlq when needed",
    )
    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = Field(
        "lz4",
        description="how the worker's producer compresses routed, decision, DLQ and retry "
        "records: a signal the broker accepted compressed on `signals` must fit compressed "
        "on routed.<d> too. lz4 costs the least CPU (docs/worker.md); all four codecs are "
        "built into librdkafka")
    poison_restarts: int = Field(
        3, ge=1, le=1000,
        description="how often workers may start on the same offset of a partition without "
        "getting past it before its record is dead-lettered unseen (processing_error)")
    stall_threshold_s: float = Field(
        30.0, gt=0, le=86_400,
        description="/readyz answers 503 (check making_progress) and router_ready is 0 while a "
        "batch has been retried this long without an offset commit")
    dedupe_window_s: float = Field(3600.0, gt=0, le=7 * 86_400)
    dedupe_max_entries: int = Field(
        1_000_000, ge=1, le=100_000_000,
        description="signal ids the dedupe window holds at most (~150 bytes each); past it the "
        "oldest are forgotten early")
    worker_persist: bool = Field(
        False,
        description="run the Postgres projection (`router-stream persist`) inside the worker "
        "process, beside routing and never in its way: the one-process set-up "
        "(`router-stream worker --persist`); ignored with persist=false (no Postgres)")
    worker_processes: int = Field(
        1, ge=1, le=64,
        description="worker processes (consumer group members) `router-stream worker` runs "
        "under one supervisor process (`worker --processes N`, docs/worker.md); 1: the worker "
        "itself, no supervisor")
    projection_group: str | None = Field(
        None, min_length=1,
        description="consumer group of `router-stream persist`; default <group_id>.projection")
    projection_batch_max: int = Field(10_000, ge=1, le=100_000)
    projection_linger_ms: int = Field(
        100, ge=0, le=5_000,
        description="`router-stream persist` fetches (and writes one transaction) at most once "
        "per linger: a trickle is written in fewer, larger transactions; a backlog's batches "
        "take longer to write than this, so it does not slow a drain")
    projection_http_port: int = Field(
        6067, ge=0, le=65535, description="/metrics /livez /readyz of `router-stream persist`")
    http_host: str = "127.0.0.1"
    http_port: int = Field(6066, ge=0, le=65535)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once: each batch's outputs and input offsets in one Kafka "
        "transaction, no duplicates for read_committed consumers (docs/worker.md, "
        "\"Exactly-once mode\"); needs a worker_id (or host name) stable across restarts and "
        "unique among live workers")
    static_membership: bool = Field(
        False,
        description="the signal consumer joins as a static member (group.instance.id "
        "<group_id>.<worker_id or host name>): a worker restarted under the same worker_id "
        "within the session timeout (6 s) gets its partitions back without a rebalance, but a "
        "stopped one holds them until that timeout. For StatefulSets, whose pod names survive "
        "restarts; worker_id must be unique among live workers (docs/worker.md, \"Static "
        "membership\")")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    worker_id: str | None = Field(
        None, min_length=1, max_length=200,
        description="how this worker names itself in heartbeats (`policy show`); default "
        "host:pid (child i of `worker --processes N`: <ROUTER_WORKER_ID or host>-<i>). Set it "
        "to the pod name in Kubernetes.")
    checkpoint_interval_s: float = Field(
        60.0, ge=0, le=86_400,
        description="how often the worker that owns partition 0 of `signals` writes a checkpoint "
        "of the shared state to router.state (only when the state topics moved); a starting "
        "worker restores the newest and replays only what came after it. 0: never write")
    startup_wait_s: float = Field(
        0.0, ge=0, le=86_400,
        description="how long a starting worker waits for missing topics (not ready, logging "
        "what is missing, backing off) before it refuses to start; 0: refuse at once. "
        "Deployments set it so workers started before the init job wait instead of crash-looping")
    metrics_per_id: int = Field(
        100, ge=0, le=1_000_000,
        description="how many trust_score and breaker_state series /metrics shows: the lowest "
        "trust scores and the worst non-closed breakers (router_breakers and "
        "router_trust_sources count all ids); 0: every id (100k ids are 100k series)")
    heartbeat_interval_s: float = Field(
        5.0, gt=0, le=300,
        description="how often each worker records its heartbeat; `policy show` calls a worker "
        "stale after 3 intervals without one")

    def __init__(self, **values: Any) -> None:
        """As pydantic's, but a bad setting is a :class:`ConfigError` (CLI: one line, exit 1)
        naming the variable and the rule — never the value, which may be a secret."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {_describe_errors(exc)}") from None

    @field_validator(
        "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "database_sslrootcert",
        "kafka_sasl_username", "worker_id", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `export ROUTER_KAFKA_SSL_CAFILE=` should mean "not set", not "the file named ''".
        return None if value == "" else value

    @field_validator(
        "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "database_sslrootcert"
    )
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        # Checked here so a typo is one clear line at start-up, not an ssl traceback at connect.
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol={self.kafka_security_protocol} needs "
                "ROUTER_KAFKA_SASL_USERNAME and ROUTER_KAFKA_SASL_PASSWORD"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _dsn_is_usable(cls, value: SecretStr) -> SecretStr:
        # checked here so a bad URL is one line naming what to fix, with the password masked,
        # instead of a parser traceback holding part of it
        dsn = value.get_secret_value()
        problem = dsn_problem(dsn)
        if problem is not None:
            raise ValueError(f"{problem} (got {mask_dsn(dsn)})")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("topic_prefix may only contain [a-zA-Z0-9._-]")
        return value

    def topic(self, logical: str) -> str:
        """The physical topic name for a logical one (SPEC §2 names)."""
        return f"{self.topic_prefix}{logical}"

    @property
    def projection_group_id(self) -> str:
        return self.projection_group or f"{self.group_id}.projection"

    def routed_topic(self, destination: str) -> str:
        return self.topic(f"{ROUTED_PREFIX}{destination}")

    @property
    def member_name(self) -> str:
        """``<group_id>.<worker_id or host name>``: this worker's identity across restarts, as
        Kafka knows it (exactly_once's transactional.id, static membership's
        group.instance.id), so it must be unique among live workers."""
        return f"{self.group_id}.{self.worker_id or socket.gethostname()}"

    @cached_property
    def librdkafka_config(self) -> dict[str, str]:
        """Connection settings for confluent-kafka (librdkafka) clients, TLS / SASL included;
        callers add their role's own keys (group.id, acks, ...)."""
        conf = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        tls_files = {"ssl.ca.location": self.kafka_ssl_cafile,
                     "ssl.certificate.location": self.kafka_ssl_certfile,
                     "ssl.key.location": self.kafka_ssl_keyfile}
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            conf.update({k: v for k, v in tls_files.items() if v})
        if self.kafka_security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism or "PLAIN"
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else "")
        return conf


def _describe_errors(exc: ValidationError) -> str:
    """``ROUTER_X: reason; …`` from pydantic's errors, without their ``input_value``."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        reason = str(error["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        parts.append(f"ROUTER_{field.upper()}: {reason}" if field else reason)
    return "; ".join(parts)
