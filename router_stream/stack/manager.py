"""``stack up|down|status``: the Kafka + PostgreSQL pair, with its state in one directory.

State (data, logs, pid files) lives in ``ROUTER_STACK_DIR`` or ``/var/tmp/router-stream-<user>``:
outside the repository, kept across reboots, and traversable by the ``postgres`` user when the
stack runs as root. Kafka's jars are cached in ``ROUTER_STACK_CACHE`` or
``~/.cache/router-stream``.

``up --secure`` starts the same pair with TLS and passwords everywhere (see
:mod:`router_stream.stack.security`); a state directory is either secure or plaintext for life,
and ``stack.json`` records which, next to the ports.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from router_stream.stack import kafka, postgres, security
from router_stream.stack.process import rss_bytes


@dataclass(frozen=True)
class StackConfig:
    kafka: kafka.KafkaConfig
    postgres: postgres.PostgresConfig

    @property
    def secure(self) -> bool:
        return self.kafka.secure

    @property
    def env(self) -> dict[str, str]:
        """The ROUTER_* settings for this stack; in secure mode they include the passwords."""
        if not self.secure:
            return {
                "ROUTER_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
                "ROUTER_DATABASE_URL": self.postgres.url,
            }
        secrets = security.load_secrets(self.kafka.state_dir)
        ca = str(security.tls_files(self.kafka.state_dir).ca_cert)
        return {
            "ROUTER_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "ROUTER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ROUTER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "ROUTER_KAFKA_SASL_USERNAME": security.CLIENT_USER,
            "ROUTER_KAFKA_SASL_PASSWORD": secrets.kafka_password,
            "ROUTER_KAFKA_SSL_CAFILE": ca,
            "ROUTER_DATABASE_URL": self.postgres.url_with_password(secrets.postgres_password),
            "ROUTER_DATABASE_SSLMODE": "verify-full",
            "ROUTER_DATABASE_SSLROOTCERT": ca,
        }


def default_state_dir() -> Path:
    env = os.environ.get("ROUTER_STACK_DIR")
    return Path(env) if env else Path(f"/var/tmp/router-stream-{getpass.getuser()}")


def default_cache_dir() -> Path:
    env = os.environ.get("ROUTER_STACK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "router-stream"


DEFAULT_KAFKA_PORT = 19092
DEFAULT_PG_PORT = 15432


def make_config(
    state_dir: Path | None = None,
    cache_dir: Path | None = None,
    kafka_port: int | None = None,
    pg_port: int | None = None,
    secure: bool | None = None,
) -> StackConfig:
    """The stack's configuration. Ports (and ``secure``) not given are those the stack in
    ``state_dir`` was last started with (recorded in ``stack.json``), else the defaults, so
    ``status`` and ``down`` always talk about the processes ``up`` started."""
    state = (state_dir or default_state_dir()).resolve()
    cache = (cache_dir or default_cache_dir()).resolve()
    recorded = _recorded(state)
    kafka_port = kafka_port or int(recorded.get("kafka_port", DEFAULT_KAFKA_PORT))
    pg_port = pg_port or int(recorded.get("pg_port", DEFAULT_PG_PORT))
    secure = bool(recorded.get("secure", False)) if secure is None else secure
    return StackConfig(
        kafka=kafka.KafkaConfig(
            state_dir=state, cache_dir=cache, port=kafka_port, controller_port=kafka_port + 1,
            secure=secure,
        ),
        postgres=postgres.PostgresConfig(state_dir=state, port=pg_port, secure=secure),
    )


def _recorded(state: Path) -> dict[str, int | bool]:
    try:
        data = json.loads((state / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    recorded: dict[str, int | bool] = {
        k: int(v) for k, v in data.items() if k in ("kafka_port", "pg_port")
    }
    if "secure" in data:
        recorded["secure"] = bool(data["secure"])
    return recorded


def _record_ports(cfg: StackConfig) -> None:
    (cfg.kafka.state_dir / "stack.json").write_text(json.dumps(
        {"kafka_port": cfg.kafka.port, "pg_port": cfg.postgres.port, "secure": cfg.secure}
    ))


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    address: str
    rss_bytes: int | None
    security: str = "none"

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class UpReport:
    kafka_pid: int
    postgres_pid: int
    seconds: float
    reused: bool


def up(cfg: StackConfig) -> UpReport:
    """Start both servers, or reuse the ones already running; idempotent."""
    started = time.monotonic()
    cfg.kafka.state_dir.mkdir(parents=True, exist_ok=True)
    # Before recording anything: a plaintext state directory stays plaintext, and vice versa.
    postgres.check_data_matches(cfg.postgres)
    kafka.check_storage_matches(cfg.kafka)
    _record_ports(cfg)
    reused = (
        kafka.is_running(cfg.kafka) is not None and postgres.is_running(cfg.postgres) is not None
    )
    # Postgres first: it starts in about a second, Kafka's JVM takes longer.
    pg_pid = postgres.start(cfg.postgres)
    k_pid = kafka.start(cfg.kafka)
    return UpReport(k_pid, pg_pid, time.monotonic() - started, reused)


def status(cfg: StackConfig) -> list[ComponentStatus]:
    k_pid = kafka.is_running(cfg.kafka)
    pg_pid = postgres.is_running(cfg.postgres)
    if cfg.secure:
        k_sec = f"SASL_SSL ({', '.join(kafka.SASL_MECHANISMS)})"
        pg_sec = "TLS + scram-sha-256"
    else:
        k_sec, pg_sec = "PLAINTEXT", "no TLS, trust"
    return [
        ComponentStatus("kafka", k_pid, cfg.kafka.bootstrap, rss_bytes(k_pid) if k_pid else None,
                        k_sec),
        ComponentStatus(
            "postgres", pg_pid, cfg.postgres.url, rss_bytes(pg_pid) if pg_pid else None, pg_sec
        ),
    ]


def down(cfg: StackConfig, wipe: bool = False) -> list[str]:
    """Stop exactly the processes this stack started; optionally delete all state."""
    stopped = []
    if kafka.stop(cfg.kafka):
        stopped.append("kafka")
    if postgres.stop(cfg.postgres):
        stopped.append("postgres")
    if wipe and cfg.kafka.state_dir.exists():
        shutil.rmtree(cfg.kafka.state_dir)
    return stopped
