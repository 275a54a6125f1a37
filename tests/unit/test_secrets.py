"""Secrets stay secret: Settings, --help, error messages and the secure stack's files.

The integration side (tests/integration/test_security.py) greps the output and server logs of
real secure runs; these tests pin the properties that need no servers.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from router_stream.adapters import postgres
from router_stream.adapters.kafka_failures import RdkafkaLog, describe_rdkafka
from router_stream.cli import _register, cli
from router_stream.config import Settings
from router_stream.errors import ConfigError
from router_stream.stack import kafka, manager, security

KAFKA_PW = "kafka-Pw-7f3a9c-secret"
DB_PW = "db-Pw-51e0d2-secret"
SECRET_ENV = {
    "ROUTER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "ROUTER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "ROUTER_KAFKA_SASL_USERNAME": "router",
    "ROUTER_KAFKA_SASL_PASSWORD": KAFKA_PW,
    "ROUTER_DATABASE_URL": f"postgresql://router:{DB_PW}@127.0.0.1:5432/router",
}


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _leaks(text: str) -> list[str]:
    return [s for s in (KAFKA_PW, DB_PW) if s in text]


# --- Settings ----------------------------------------------------------------------------------


def test_settings_repr_str_and_dumps_hide_secrets(secret_settings: Settings):
    assert secret_settings.kafka_sasl_password is not None
    assert secret_settings.kafka_sasl_password.get_secret_value() == KAFKA_PW  # really loaded
    for text in (repr(secret_settings), str(secret_settings),
                 secret_settings.model_dump_json(), str(secret_settings.model_dump()),
                 f"{secret_settings!r} {secret_settings}"):
        assert _leaks(text) == [], text


def test_invalid_settings_error_names_the_variable_not_the_value(monkeypatch):
    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ROUTER_BATCH_MAX", "not-a-number")
    with pytest.raises(ConfigError) as info:
        Settings()
    message = str(info.value)
    assert "ROUTER_BATCH_MAX" in message and "\n" not in message
    assert _leaks(message) == []
    assert "not-a-number" not in message  # no input values at all, whatever the field
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_sasl_without_credentials_is_a_config_error_not_a_client_traceback(monkeypatch):
    monkeypatch.setenv("ROUTER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ROUTER_KAFKA_SASL_PASSWORD", KAFKA_PW)  # a password but no user
    with pytest.raises(ConfigError, match="ROUTER_KAFKA_SASL_USERNAME") as info:
        Settings()
    assert _leaks(str(info.value)) == []


def test_missing_ca_file_is_a_config_error(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("ROUTER_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("ROUTER_KAFKA_SSL_CAFILE", str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match="ROUTER_KAFKA_SSL_CAFILE: no such file"):
        Settings()


def test_empty_path_variable_means_unset(monkeypatch):
    monkeypatch.setenv("ROUTER_DATABASE_SSLROOTCERT", "")
    assert Settings().database_sslrootcert is None


# --- --help ------------------------------------------------------------------------------------


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            paths += _command_paths(cmd, (*prefix, name))
        elif cmd is not None:
            paths.append((*prefix, name))
    return paths


def test_no_help_output_shows_a_secret_from_the_environment():
    _register()
    paths = _command_paths(cli)
    assert ("stack", "up") in paths and ("policy", "publish") in paths and len(paths) > 10
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"], env=SECRET_ENV)
        assert result.exit_code == 0, (path, result.output)
        assert _leaks(result.output) == [], path


# --- errors of failed connections --------------------------------------------------------------


def test_kafka_auth_failure_is_one_line_without_the_password(secret_settings: Settings):
    log = RdkafkaLog()
    log.log(40, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
            "sasl_ssl://127.0.0.1:19092/bootstrap: SASL authentication error: Authentication "
            "failed during authentication due to invalid credentials with SASL mechanism "
            "SCRAM-SHA-512 (after 12ms in state AUTH_REQ)")
    message = describe_rdkafka(secret_settings, log, "Unable to bootstrap")
    assert "rejected the credentials of user 'router' (SCRAM-SHA-512)" in message
    assert "ROUTER_KAFKA_SASL_PASSWORD" in message and "\n" not in message
    assert _leaks(message) == []


def test_kafka_failure_without_a_logged_reason_keeps_the_generic_message(
    secret_settings: Settings,
):
    message = describe_rdkafka(secret_settings, RdkafkaLog(), "Connect call failed")
    assert message == "cannot reach Kafka at 127.0.0.1:19092: Connect call failed"


def test_postgres_errors_name_host_port_db_never_user_or_password(secret_settings: Settings):
    err = postgres.connections._unreachable(secret_settings, OSError("password authentication failed"))
    assert str(err).startswith("cannot connect to Postgres at 127.0.0.1:5432/router:")
    assert _leaks(str(err)) == [] and "router:" not in str(err).split(" at ")[1][:20]


# --- the secure stack's files and output -------------------------------------------------------


def test_generated_secrets_are_private_random_and_not_in_repr(tmp_path: Path):
    first = security.ensure_secrets(tmp_path)
    again = security.ensure_secrets(tmp_path)
    assert first == again  # created once, then reused
    assert len(set(first.values())) == 4 and all(len(v) >= 32 for v in first.values())
    assert all(v not in repr(first) for v in first.values())
    directory = security.secrets_dir(tmp_path)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "passwords.json").stat().st_mode) == 0o600


def test_tls_material_is_created_once_with_private_keys(tmp_path: Path):
    assert shutil.which("openssl"), "openssl is missing: apt-get install openssl (.ci/run does)"
    files = security.ensure_tls(tmp_path, security.ensure_secrets(tmp_path))
    for key in (files.ca_key, files.server_key, files.keystore):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    mtime = files.server_cert.stat().st_mtime_ns
    assert security.ensure_tls(tmp_path, security.load_secrets(tmp_path)) == files
    assert files.server_cert.stat().st_mtime_ns == mtime


def test_secure_broker_has_no_unauthenticated_listener(tmp_path: Path):
    cfg = kafka.KafkaConfig(state_dir=tmp_path, cache_dir=tmp_path, port=39092,
                            controller_port=39093, secure=True)
    secrets = security.ensure_secrets(tmp_path)
    props = dict(line.split("=", 1) for line in
                 kafka._server_properties(cfg, secrets, security.tls_files(tmp_path)).splitlines()
                 if line)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:39092"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL"
    # the controller listener takes only the broker's own PLAIN login (KRaft has no SCRAM there)
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    jaas = props["listener.name.controller.plain.sasl.jaas.config"]
    assert f'user_broker="{secrets.broker_password}";' in jaas
    assert "user_router" not in jaas
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"
    assert props["ssl.client.auth"] == "none"


def test_secure_env_carries_the_passwords_but_status_never_does(tmp_path: Path):
    cfg = manager.make_config(tmp_path, tmp_path, kafka_port=39092, pg_port=35432, secure=True)
    secrets = security.ensure_secrets(tmp_path)
    env = cfg.env
    assert env["ROUTER_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["ROUTER_KAFKA_SASL_PASSWORD"] == secrets.kafka_password
    assert env["ROUTER_DATABASE_URL"] == (
        f"postgresql://router:{secrets.postgres_password}@127.0.0.1:35432/router")
    assert env["ROUTER_DATABASE_SSLMODE"] == "verify-full"
    assert env["ROUTER_KAFKA_SSL_CAFILE"] == env["ROUTER_DATABASE_SSLROOTCERT"]
    rows = manager.status(cfg)
    assert [r.security for r in rows] == [
        "SASL_SSL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN)", "TLS + scram-sha-256"]
    assert all(s not in repr(rows) for s in secrets.values())


def test_secure_mode_is_recorded_and_cannot_switch(tmp_path: Path):
    cfg = manager.make_config(tmp_path, tmp_path, secure=True)
    manager._record_ports(cfg)
    assert manager.make_config(tmp_path, tmp_path).secure  # `status`/`down` find it secure
    (cfg.kafka.data_dir).mkdir(parents=True)
    (cfg.kafka.data_dir / "meta.properties").write_text("")  # formatted, but not as secure
    from router_stream.stack.process import StackError

    with pytest.raises(StackError, match="holds a plaintext stack"):
        kafka.check_storage_matches(cfg.kafka)
