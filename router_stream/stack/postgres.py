"""PostgreSQL from the machine's server binaries (Debian's ``postgresql`` package).

``initdb`` in the stack's state directory, ``pg_ctl start`` on a loopback port, create the
database, wait until it accepts connections. PostgreSQL refuses to run as root, so when the stack
runs as root the server runs as the ``postgres`` system user that Debian's package creates.

Plain mode trusts every loopback connection. Secure mode (``stack up --secure``) sets the
``router`` user's password at ``initdb`` (SCRAM-SHA-256), turns ``ssl`` on with the stack's
server certificate, and writes a ``pg_hba.conf`` that accepts TCP only over TLS with a password
and asks for the password on the Unix socket too: nothing is trusted.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from router_stream.stack import security
from router_stream.stack.process import MissingTool, StackError, port_open, read_pid, stop_pid

_INSTALL_HINT = "install PostgreSQL server binaries (apt-get install postgresql)"


@dataclass(frozen=True)
class PostgresConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "router"
    database: str = "router"
    secure: bool = False

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "postgres" / "data"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "postgres" / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def url(self) -> str:
        """The server's URL, never with a password (it is shown by ``stack status``)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def url_with_password(self, password: str) -> str:
        return f"postgresql://{self.user}:{password}@{self.host}:{self.port}/{self.database}"

    @property
    def security_marker(self) -> Path:
        return self.state_dir / "postgres" / "initdb-secure"


def bin_dir() -> Path:
    """The newest installed server's bin directory (initdb, pg_ctl, postgres)."""
    def major(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major)
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise MissingTool(f"PostgreSQL 'initdb' not found: {_INSTALL_HINT}")


def _run_as() -> list[str]:
    """Prefix that runs a command as the server's user (root cannot run PostgreSQL)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise MissingTool(
            f"running as root needs the 'postgres' system user: {_INSTALL_HINT}"
        ) from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise MissingTool("'runuser' not found: apt-get install util-linux")
    return [runuser, "-u", "postgres", "--"]


def _chown_for_server(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for p in [path, *path.rglob("*")]:
            os.chown(p, entry.pw_uid, entry.pw_gid)


def _pid_file(cfg: PostgresConfig) -> Path:
    return cfg.data_dir / "postmaster.pid"


def is_running(cfg: PostgresConfig) -> int | None:
    return read_pid(_pid_file(cfg))


def start(cfg: PostgresConfig, timeout: float = 60.0) -> int:
    """Start (or reuse) the server and make sure the database exists."""
    pid = is_running(cfg)
    if pid is None:
        if port_open(cfg.host, cfg.port):
            raise StackError(
                f"port {cfg.port} is taken by a process this stack did not start; "
                "stop it or choose --pg-port"
            )
        pid = _start_server(cfg, timeout)
    _wait_accepting(cfg, timeout)
    _ensure_database(cfg)
    return pid


def _start_server(cfg: PostgresConfig, timeout: float) -> int:
    bins = bin_dir()
    pg_root = cfg.state_dir / "postgres"
    pg_root.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o755)
    _chown_for_server(pg_root)
    prefix = _run_as()
    if not (cfg.data_dir / "PG_VERSION").exists():
        _initdb(cfg, bins, prefix)
    check_data_matches(cfg)
    options = (
        f"-p {cfg.port} -c listen_addresses={cfg.host} -k {cfg.socket_dir} "
        "-c max_connections=200"
    )
    if cfg.secure:
        _install_tls(cfg)
        options += " -c ssl=on -c password_encryption=scram-sha-256"
    result = subprocess.run(
        [*prefix, str(bins / "pg_ctl"), "-D", str(cfg.data_dir), "-o", options,
         "-l", str(cfg.log_file), "-w", "-t", str(int(timeout)), "start"],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )
    pid = is_running(cfg)
    if result.returncode != 0 or pid is None:
        raise StackError(
            f"PostgreSQL did not start: {result.stderr.strip()[-300:]}; see {cfg.log_file}"
        )
    return pid


def _initdb(cfg: PostgresConfig, bins: Path, prefix: list[str]) -> None:
    if not cfg.secure:
        # trust on loopback only: this is a development stack bound to 127.0.0.1.
        _run_initdb(cfg, bins, prefix, ["--auth=trust"])
        return
    # The password reaches initdb through a 0600 file the server's user owns, never argv.
    pwfile = cfg.state_dir / "postgres" / "initdb.pw"
    security.write_private(pwfile, security.ensure_secrets(cfg.state_dir).postgres_password)
    _chown_for_server(pwfile)
    try:
        _run_initdb(cfg, bins, prefix, ["--auth=scram-sha-256", f"--pwfile={pwfile}"])
    finally:
        pwfile.unlink(missing_ok=True)
    (cfg.data_dir / "pg_hba.conf").write_text(_SECURE_HBA)
    _chown_for_server(cfg.data_dir / "pg_hba.conf")
    cfg.security_marker.write_text("ssl+scram-sha-256\n")


def _run_initdb(cfg: PostgresConfig, bins: Path, prefix: list[str], auth: list[str]) -> None:
    result = subprocess.run(
        [*prefix, str(bins / "initdb"), "-D", str(cfg.data_dir), "-U", cfg.user, *auth,
         "--encoding=UTF8", "--no-instructions"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise StackError(f"initdb failed: {result.stderr.strip()[-400:]}")


# TCP only over TLS and with a password; the socket asks for the password as well.
_SECURE_HBA = """# written by `router-stream stack up --secure`
# TYPE    DATABASE  USER  ADDRESS       METHOD
local     all       all                 scram-sha-256
hostssl   all       all   127.0.0.1/32  scram-sha-256
host      all       all   0.0.0.0/0     reject
host      all       all   ::/0          reject
"""


def check_data_matches(cfg: PostgresConfig) -> None:
    """A data directory keeps the authentication it was created with; refuse to mix modes."""
    if not (cfg.data_dir / "PG_VERSION").exists():
        return
    if cfg.security_marker.exists() != cfg.secure:
        held = "a --secure" if cfg.security_marker.exists() else "a plaintext"
        raise StackError(
            f"{cfg.state_dir} holds {held} PostgreSQL; use another --state-dir "
            "(ROUTER_STACK_DIR) or `router-stream stack down --wipe` first"
        )


def _install_tls(cfg: PostgresConfig) -> None:
    """Copy the stack's server certificate into the data directory, owned by the server's user
    (PostgreSQL refuses a key that others can read)."""
    tls = security.ensure_tls(cfg.state_dir, security.ensure_secrets(cfg.state_dir))
    for source, name in ((tls.server_cert, "server.crt"), (tls.server_key, "server.key")):
        target = cfg.data_dir / name
        security.write_private(target, source.read_text())
        _chown_for_server(target)


def _psql_env(cfg: PostgresConfig) -> dict[str, str] | None:
    """libpq's environment for the stack's own psql calls: password and CA, not argv."""
    if not cfg.secure:
        return None
    return {
        **os.environ,
        "PGPASSWORD": security.load_secrets(cfg.state_dir).postgres_password,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(security.tls_files(cfg.state_dir).ca_cert),
    }


def _psql_args(cfg: PostgresConfig, database: str) -> list[str]:
    return [str(bin_dir() / "psql") if (bin_dir() / "psql").exists() else "psql",
            "-h", cfg.host, "-p", str(cfg.port), "-U", cfg.user, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-qtA"]


def _wait_accepting(cfg: PostgresConfig, timeout: float) -> None:
    isready = bin_dir() / "pg_isready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [str(isready), "-h", cfg.host, "-p", str(cfg.port), "-U", cfg.user, "-d", "postgres"],
            capture_output=True, check=False,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise StackError(f"PostgreSQL not accepting connections within {timeout:.0f}s")


def _ensure_database(cfg: PostgresConfig) -> None:
    exists = subprocess.run(
        [*_psql_args(cfg, "postgres"), "-c",
         f"SELECT 1 FROM pg_database WHERE datname = '{cfg.database}'"],
        capture_output=True, text=True, check=False, env=_psql_env(cfg),
    )
    if exists.returncode != 0:
        raise StackError(f"cannot query PostgreSQL: {exists.stderr.strip()}")
    if exists.stdout.strip() != "1":
        created = subprocess.run(
            [*_psql_args(cfg, "postgres"), "-c", f'CREATE DATABASE "{cfg.database}"'],
            capture_output=True, text=True, check=False, env=_psql_env(cfg),
        )
        if created.returncode != 0:
            raise StackError(f"cannot create database {cfg.database}: {created.stderr.strip()}")


def stop(cfg: PostgresConfig) -> bool:
    pid = is_running(cfg)
    if pid is None:
        return False
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, exit cleanly.
    result = subprocess.run(
        [*_run_as(), str(bin_dir() / "pg_ctl"), "-D", str(cfg.data_dir), "-m", "fast", "-w",
         "stop"], capture_output=True, check=False,
    )
    if result.returncode != 0:
        stop_pid(pid, timeout=10)
    return True
