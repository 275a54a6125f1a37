"""Kafka SASL_SSL and Postgres TLS, end to end, against ``router-stream stack up --secure``.

The session starts its own secure stack (own state dir, free ports, so the shared plaintext
servers are untouched) through the CLI itself, and stops and wipes it at the end. Every command
runs as a subprocess, as a user would run it, each bounded by a timeout, and every output is
checked for the stack's passwords; the last test greps the servers' own logs for them too.

What a failure must look like: exit code 2, one ``error: …`` line on stderr that says what to
fix, no traceback, within the timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "examples" / "policy.yaml"
WRONG = "wrong-Pw-0c1d2e3f"
CLI_TIMEOUT = 60.0


@dataclass
class SecureStack:
    state_dir: Path
    env: dict[str, str]  # the ROUTER_* exports `stack up --secure` printed
    secrets: list[str]
    outputs: list[str] = field(default_factory=list)  # everything any run printed

    @property
    def kafka_password(self) -> str:
        return self.env["ROUTER_KAFKA_SASL_PASSWORD"]

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``router-stream ARGS`` with the secure env (plus ``env``), bounded, output recorded."""
        full = _clean_environ() | self.env | (env or {})
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "router_stream.cli", *args], cwd=REPO,
                                env=full, capture_output=True, text=True, timeout=timeout)
        result.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
        self.outputs.append(result.stdout + result.stderr)
        for secret in self.secrets:
            assert secret not in result.stdout + result.stderr, f"a secret leaked from {args}"
        return result


def _free_port_pair() -> int:
    """A port p with p and p+1 free (Kafka's client and controller listeners)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and _port_free(port + 1):
            return port
    raise RuntimeError("no free pair of ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _clean_environ() -> dict[str, str]:
    """This process's environment without ROUTER_* settings (the Kafka jar cache may stay)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ROUTER_") or k == "ROUTER_STACK_CACHE"}


def _stack(state: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router_stream.cli", "stack", *args, "--state-dir", str(state)],
        cwd=REPO, env=_clean_environ(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[SecureStack]:
    # Under /var/tmp, not pytest's tmp_path: when run as root, the postgres user must traverse it.
    state = Path(tempfile.mkdtemp(prefix="rs-secure-test-", dir="/var/tmp"))
    kafka_port, pg_port = _free_port_pair(), _free_port_pair()
    try:
        up = _stack(state, "up", "--secure", "--kafka-port", str(kafka_port),
                    "--pg-port", str(pg_port), timeout=600)
        assert up.returncode == 0, up.stderr
        env = {}
        for line in up.stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0]
        secrets = list(json.loads((state / "secrets" / "passwords.json").read_text()).values())
        stack = SecureStack(state, env, secrets)
        stack.outputs.append(up.stderr)
        yield stack
    finally:
        _stack(state, "down", "--wipe", timeout=120)


@pytest.fixture
def prefix() -> dict[str, str]:
    """A fresh topic prefix and consumer group per test."""
    tid = uuid.uuid4().hex[:8]
    return {"ROUTER_TOPIC_PREFIX": f"s{tid}.", "ROUTER_GROUP_ID": f"g-{tid}"}


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert result.elapsed < 30, f"took {result.elapsed:.0f}s"  # type: ignore[attr-defined]


# --- the stack ------------------------------------------------------------------------------


def test_up_secure_prints_the_env_and_status_says_secure(secure_stack: SecureStack):
    env = secure_stack.env
    assert env["ROUTER_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["ROUTER_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["ROUTER_KAFKA_SASL_USERNAME"] == "router"
    assert env["ROUTER_DATABASE_SSLMODE"] == "verify-full"
    assert Path(env["ROUTER_KAFKA_SSL_CAFILE"]).is_file()
    assert env["ROUTER_DATABASE_SSLROOTCERT"] == env["ROUTER_KAFKA_SSL_CAFILE"]
    assert re.match(r"postgresql://router:[^@]+@127\.0\.0\.1:\d+/router$",
                    env["ROUTER_DATABASE_URL"])
    status = secure_stack.run("stack", "status", "--json", "--state-dir",
                              str(secure_stack.state_dir))
    assert status.returncode == 0, status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert rows["kafka"]["security"].startswith("SASL_SSL")
    assert rows["postgres"]["security"] == "TLS + scram-sha-256"
    assert (secure_stack.state_dir / "secrets" / "passwords.json").stat().st_mode & 0o077 == 0


def test_up_secure_again_reuses_the_running_stack(secure_stack: SecureStack):
    again = _stack(secure_stack.state_dir, "up", timeout=120)  # mode and ports as recorded
    assert again.returncode == 0, again.stderr
    assert "stack reused" in again.stderr
    assert f"ROUTER_KAFKA_SASL_PASSWORD={secure_stack.kafka_password}" in again.stdout


# --- right credentials ----------------------------------------------------------------------


def test_topics_apply_db_migrate_and_policy_publish_succeed(secure_stack: SecureStack, prefix):
    applied = secure_stack.run("topics", "apply", "--policy", str(POLICY), env=prefix)
    assert applied.returncode == 0, applied.stderr
    migrated = secure_stack.run("db", "migrate", env=prefix)
    assert migrated.returncode == 0, migrated.stderr
    published = secure_stack.run("policy", "publish", str(POLICY), env=prefix)
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published ")
    status = secure_stack.run("db", "status", "--json", env=prefix)
    assert status.returncode == 0, status.stderr


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_the_other_sasl_mechanisms_work_too(secure_stack: SecureStack, prefix, mechanism):
    listed = secure_stack.run("topics", "list", env=prefix | {
        "ROUTER_KAFKA_SASL_MECHANISM": mechanism})
    assert listed.returncode == 0, listed.stderr


def test_produce_consume_round_trip_through_the_adapters(secure_stack: SecureStack, prefix):
    from router_stream.adapters.kafka_io import OutRecord, RecordWriter, read_records
    from router_stream.config import Settings

    assert secure_stack.run("topics", "apply", env=prefix).returncode == 0
    settings = Settings(**{k.removeprefix("ROUTER_").lower(): v  # type: ignore[arg-type]
                           for k, v in (secure_stack.env | prefix).items()})
    topic = settings.topic("signals")
    values = [json.dumps({"sender_id": "s", "payload": {"n": i}}).encode() for i in range(5)]

    async def round_trip() -> list[bytes | None]:
        async with RecordWriter(settings) as writer:
            for value in values:
                await writer.send_and_wait(OutRecord(topic, value, key=b"s"))
        return [r.value async for r in read_records(settings, topic, until_end=True)]

    assert asyncio.run(asyncio.wait_for(round_trip(), 60)) == values


def test_postgres_verify_full_connects_over_tls(secure_stack: SecureStack):
    import asyncpg

    from router_stream.adapters import postgres
    from router_stream.config import Settings

    settings = Settings(
        database_url=secure_stack.env["ROUTER_DATABASE_URL"],  # type: ignore[arg-type]
        database_sslmode="verify-full",
        database_sslrootcert=secure_stack.env["ROUTER_DATABASE_SSLROOTCERT"])

    async def tls_in_use() -> bool:
        conn: asyncpg.Connection = await postgres.connect(settings)
        try:
            return bool(await conn.fetchval(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
        finally:
            await conn.close()

    assert asyncio.run(tls_in_use())


# --- wrong credentials, no TLS: one line, exit 2, bounded -----------------------------------


@pytest.mark.parametrize("command", [
    ("topics", "apply"),
    ("topics", "list"),
    ("policy", "publish", str(POLICY)),
])
def test_wrong_kafka_password_fails_with_one_line(secure_stack: SecureStack, prefix, command):
    result = secure_stack.run(*command, env=prefix | {"ROUTER_KAFKA_SASL_PASSWORD": WRONG})
    assert_one_clear_line(result, "rejected the credentials of user 'router'")
    assert WRONG not in result.stderr


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_kafka_without_tls_fails_with_one_line(secure_stack: SecureStack, prefix, protocol):
    result = secure_stack.run("topics", "apply", env=prefix | {
        "ROUTER_KAFKA_SECURITY_PROTOCOL": protocol})
    assert_one_clear_line(result, "expects TLS", "ROUTER_KAFKA_SECURITY_PROTOCOL")


def test_kafka_with_an_untrusted_certificate_fails_with_one_line(secure_stack: SecureStack, prefix):
    result = secure_stack.run("topics", "list", env=prefix | {"ROUTER_KAFKA_SSL_CAFILE": ""})
    assert_one_clear_line(result, "not trusted", "ROUTER_KAFKA_SSL_CAFILE")


def test_wrong_postgres_password_fails_with_one_line(secure_stack: SecureStack):
    url = re.sub(r"router:[^@]+@", f"router:{WRONG}@", secure_stack.env["ROUTER_DATABASE_URL"])
    result = secure_stack.run("db", "migrate", env={"ROUTER_DATABASE_URL": url})
    assert_one_clear_line(result, "password authentication failed")
    assert WRONG not in result.stderr


def test_postgres_without_tls_is_refused_with_one_line(secure_stack: SecureStack):
    result = secure_stack.run("db", "status", env={"ROUTER_DATABASE_SSLMODE": "disable"})
    assert_one_clear_line(result, "no encryption")


def test_postgres_with_an_untrusted_certificate_fails_with_one_line(secure_stack: SecureStack):
    result = secure_stack.run("db", "status", env={"ROUTER_DATABASE_SSLROOTCERT": ""})
    assert_one_clear_line(result, "CERTIFICATE_VERIFY_FAILED")


# --- the worker -----------------------------------------------------------------------------


def test_worker_connects_serves_metrics_and_exits_when_idle(secure_stack: SecureStack, prefix):
    assert secure_stack.run("topics", "apply", "--policy", str(POLICY), env=prefix).returncode == 0
    assert secure_stack.run("db", "migrate", env=prefix).returncode == 0
    env = _clean_environ() | secure_stack.env | prefix | {"ROUTER_POLICY_FILE": str(POLICY)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_stream.cli", "worker", "--exit-when-idle", "3",
         "--http-port", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        metrics, stderr_lines = _read_until_started(proc, deadline=time.monotonic() + 60)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = "".join(stderr_lines) + err + out
    secure_stack.outputs.append(logs + metrics)
    assert proc.returncode == 0, logs[-2000:]
    assert '"worker started"' in logs
    assert "# TYPE" in metrics  # Prometheus text: the endpoint answered for real
    for secret in secure_stack.secrets:
        assert secret not in logs and secret not in metrics


def _read_until_started(proc: subprocess.Popen[str], deadline: float) -> tuple[str, list[str]]:
    """Read the worker's JSON log until it started; then fetch /metrics once."""
    assert proc.stderr is not None
    lines: list[str] = []
    port = None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "http listening":
            port = record["port"]
        if record.get("msg") == "worker started":
            break
    assert port is not None, "".join(lines)[-2000:]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode(), lines


def test_worker_with_a_wrong_password_stops_with_one_error_line(secure_stack: SecureStack, prefix):
    result = secure_stack.run("worker", "--exit-when-idle", "1", "--http-port", "0", env=prefix | {
        "ROUTER_KAFKA_SASL_PASSWORD": WRONG, "ROUTER_POLICY_FILE": str(POLICY)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # The worker's JSON log lines are logs; what a person reads is the one `error:` line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "rejected the credentials" in errors[0], result.stderr[-2000:]


# --- no port answers an unauthenticated admin call ------------------------------------------


def _listening_ports(*pids: int) -> set[int]:
    import psutil

    return {c.laddr.port for pid in pids for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def _describe_configs_request(correlation_id: int) -> bytes:
    """DescribeConfigs v1 of broker 1's message.max.bytes, framed (request header v1)."""
    def string(text: str) -> bytes:
        return len(text).to_bytes(2, "big") + text.encode()

    body = (
        (32).to_bytes(2, "big") + (1).to_bytes(2, "big")  # api key DescribeConfigs, version 1
        + correlation_id.to_bytes(4, "big") + string("rs-probe")
        + (1).to_bytes(4, "big") + (4).to_bytes(1, "big") + string("1")  # 1 resource: BROKER 1
        + (1).to_bytes(4, "big") + string("message.max.bytes")
        + b"\x00"  # include_synonyms: false
    )
    return len(body).to_bytes(4, "big") + body


def _answered(port: int, tls_ca: str | None = None) -> bool:
    """True when ``port`` answers DescribeConfigs of broker 1 without credentials, sent straight
    to it (no Metadata bootstrap, so the KRaft controller listener answers it too): what
    `kafka-configs --bootstrap-controller` does before an alter. The Kafka protocol by hand:
    every client library bootstraps through Metadata first, which a controller does not serve."""
    import ssl

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.settimeout(10)
            conn: socket.socket = raw
            if tls_ca is not None:
                conn = ssl.create_default_context(cafile=tls_ca).wrap_socket(
                    raw, server_hostname="127.0.0.1")
            conn.sendall(_describe_configs_request(7))
            head = _read_exactly(conn, 4)
            answer = _read_exactly(conn, int.from_bytes(head, "big"))
    except (OSError, ValueError):  # refused, closed, timed out, handshake failed
        return False
    # correlation id, throttle ms, result count, then the first result's error code
    return (answer[:4] == (7).to_bytes(4, "big") and int.from_bytes(answer[8:12], "big") == 1
            and answer[12:14] == b"\x00\x00")


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
    return data


def _answered_with_credentials(port: int, ca: str, password: str) -> bool:
    """The same call through librdkafka with the client's credentials (SASL_SSL)."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}",
                         "security.protocol": "SASL_SSL", "ssl.ca.location": ca,
                         "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "router",
                         "sasl.password": password})
    [future] = admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")],
                                      request_timeout=10).values()
    return "message.max.bytes" in future.result(timeout=20)


def _postgres_admits(port: int, user: str, ssl: object) -> bool:
    import asyncpg

    async def attempt() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database="postgres",
                                     password="", ssl=ssl, timeout=5)
        await conn.close()

    try:
        asyncio.run(asyncio.wait_for(attempt(), 10))
    except Exception:
        return False
    return True


def test_the_probe_is_answered_by_an_open_broker(servers):
    """The hand-made request is valid: the shared test broker (PLAINTEXT, no ACLs) answers it,
    so a refusal below is the secure stack's doing."""
    assert _answered(int(servers.kafka_bootstrap.rsplit(":", 1)[1]))


def test_no_port_of_the_secure_stack_answers_an_unauthenticated_admin_call(
    secure_stack: SecureStack,
):
    from router_stream.stack import kafka, manager, postgres

    cfg = manager.make_config(secure_stack.state_dir)
    kafka_pid, pg_pid = kafka.is_running(cfg.kafka), postgres.is_running(cfg.postgres)
    assert kafka_pid is not None and pg_pid is not None
    ports = _listening_ports(kafka_pid, pg_pid)
    # the broker's client listener, its KRaft controller listener and Postgres: nothing else
    assert ports == {cfg.kafka.port, cfg.kafka.controller_port, cfg.postgres.port}, ports

    ca = secure_stack.env["ROUTER_KAFKA_SSL_CAFILE"]
    # the call is one the client listener answers, with the client's credentials
    assert _answered_with_credentials(cfg.kafka.port, ca, secure_stack.kafka_password)
    for port in sorted(ports):
        assert not _answered(port), f"port {port} answered without TLS or credentials"
        assert not _answered(port, tls_ca=ca), f"port {port} answered over TLS without credentials"
        for user in ("router", "postgres"):
            for ssl in ("require", False):
                assert not _postgres_admits(port, user, ssl), f"port {port} admitted {user}"


# --- last: nothing anywhere holds a secret --------------------------------------------------


def test_no_secret_in_any_output_or_server_log(secure_stack: SecureStack):
    assert len(secure_stack.outputs) > 10  # the tests above ran in this session
    logs = [secure_stack.state_dir / "kafka" / "broker.log",
            secure_stack.state_dir / "kafka" / "stdout.log",
            secure_stack.state_dir / "postgres" / "postgres.log"]
    texts = [*secure_stack.outputs, *(p.read_text(errors="replace") for p in logs if p.exists())]
    assert any("password authentication failed" in t for t in texts)  # the logs are the real ones
    for secret in [*secure_stack.secrets, WRONG]:
        assert not any(secret in t for t in texts)
