"""A bad ``ROUTER_DATABASE_URL`` is one line naming what to fix, and never shows the password.

The malformed DSNs are the ones issue 21 found leaking: libpq's key=value form, passwords with
unencoded ``/ # ? @``, a bad port, a bad IPv6 host, and a value that is not a URL at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router_stream.adapters import postgres
from router_stream.config import Settings
from router_stream.dsn import dsn_problem, mask_dsn, scrub
from router_stream.errors import ConfigError

PW = "Pw9x-Zq"  # a substring of every password below, so one grep finds any part of them
ROOT = Path(__file__).resolve().parents[2]

# (DSN, what the one-line error must say)
MALFORMED = [
    (f"host=127.0.0.1 user=router password={PW}kv", "key=value connection strings"),
    (f"host=127.0.0.1 password='{PW} spaced' user=router", "key=value connection strings"),
    (f"postgresql://router:{PW}/slash@127.0.0.1:5432/router", "unencoded"),
    (f"postgresql://router:{PW}#hash@127.0.0.1:5432/router", "unencoded"),
    (f"postgresql://router:{PW}?q@127.0.0.1:5432/router", "unencoded"),
    (f"postgresql://router:{PW}@at@127.0.0.1:5432/router", "unencoded"),
    (f"postgresql://router:{PW}@127.0.0.1:99999/router", "port must be a number"),
    (f"postgresql://router:{PW}@127.0.0.1:abc/router", "port must be a number"),
    (f"postgresql://router:{PW}@[::1/router", "not a valid"),
    (f"postgresql://router:{PW}@::1/router", "IPv6 host must be written in brackets"),
    (f"mysql://router:{PW}@127.0.0.1/router", "scheme must be postgresql"),
    (f"router:{PW}@127.0.0.1/router", "not a URL"),
    ("notaurl", "not a URL: expected postgresql://user:password@host:port/dbname"),
]


@pytest.mark.parametrize(("dsn", "says"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_settings_refuse_a_malformed_dsn_in_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, dsn: str, says: str
) -> None:
    monkeypatch.setenv("ROUTER_DATABASE_URL", dsn)
    with pytest.raises(ConfigError) as info:
        Settings()
    message = str(info.value)
    assert message.startswith("invalid settings: ROUTER_DATABASE_URL: ")
    assert says in message and "\n" not in message
    assert PW not in message
    assert "(got " in message and mask_dsn(dsn) in message  # enough of it to find the typo


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://router:s3cret@db:5432/router", "postgresql://router:***@db:5432/router"),
        ("postgresql://router@db/router", "postgresql://router@db/router"),
        ("postgres://u:a@b@db/x", "postgres://u:***@db/x"),
        ("postgresql://u:a/b#c@db/x", "postgresql://u:***@db/x"),
        ("postgresql://db/x?sslmode=require&password=s3cret", "postgresql://db/x?sslmode=require"
         "&password=***"),
        ("host=db password=s3cret user=u", "host=db password=*** user=u"),
        ("host=db password = 'a b\\' c' user=u", "host=db password = *** user=u"),
        ("host=db password=a@b:c user=u", "host=db password=*** user=u"),
        ("notaurl", "notaurl"),
    ],
)
def test_mask_dsn_keeps_everything_but_the_password(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


@pytest.mark.parametrize("dsn", [
    "postgresql://router:pw@127.0.0.1:15432/router",
    "postgresql://router@127.0.0.1/router?sslmode=require",
    "postgres://router:p%2Fw%40x@[::1]:5432/router",
    "postgresql://router:pw@h1:5432,h2:5433/router",
    "postgresql:///router",
])
def test_usable_dsns_are_accepted(dsn: str) -> None:
    assert dsn_problem(dsn) is None
    assert Settings(database_url=dsn).database_url.get_secret_value() == dsn  # type: ignore[arg-type]


def test_a_driver_message_quoting_the_password_is_scrubbed() -> None:
    settings = Settings(database_url=f"postgresql://router:{PW}%2Fx@db:5432/router")  # type: ignore[arg-type]
    err = postgres.connections._unreachable(settings, ValueError(f"bad DSN postgresql://router:{PW}/x@db"))
    assert PW not in str(err)
    assert str(err).startswith("cannot connect to Postgres at db:5432/router: ")
    assert scrub(f"password {PW}", f"host=db password={PW}") == "password ***"


@pytest.mark.parametrize("args", [["db", "status"], ["dlq", "list"], ["worker"]])
@pytest.mark.parametrize(("dsn", "says"), [MALFORMED[0], MALFORMED[3], MALFORMED[6],
                                           MALFORMED[8], MALFORMED[-1]],
                         ids=["key-value", "hash", "port", "ipv6", "notaurl"])
def test_cli_prints_one_line_rc1_and_no_password(args: list[str], dsn: str, says: str) -> None:
    env = {**os.environ, "ROUTER_DATABASE_URL": dsn, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "router_stream.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert PW not in output
    assert "Traceback" not in output
    assert output.strip().count("\n") == 0 and says in output, output
