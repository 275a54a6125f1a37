"""What ``stack up --secure`` needs: generated passwords and a private CA with one server cert.

Everything is created once, into ``<state>/secrets`` (mode 0700), and reused by later starts:

* ``passwords.json`` (0600): the Kafka client user's password (SCRAM and PLAIN), the broker's own
  inter-broker SCRAM password, the PKCS#12 keystore password and the Postgres user's password;
  random (``secrets.token_urlsafe``: URL-, shell- and JAAS-safe characters, so they never need
  quoting anywhere they are written);
* ``ca.crt`` / ``ca.key``: a self-signed CA, valid 10 years (the key never leaves this directory);
* ``server.crt`` / ``server.key``: one server certificate for both Kafka and Postgres, signed by
  the CA, with subjectAltName ``IP:127.0.0.1, DNS:localhost`` so clients can verify the host name
  (``verify-full``, Kafka's https endpoint identification);
* ``broker.p12``: the server key and chain as a PKCS#12 keystore, which the broker's JVM reads.

The certificates are made with the machine's ``openssl`` (the JDK's keytool cannot sign with a
CA). Passwords never go on a command line, where other users could read them in ``ps``: openssl
reads them from a file descriptor.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from router_stream.stack.process import StackError, require_binary

CLIENT_USER = "router"
BROKER_USER = "broker"
_OPENSSL_HINT = "install OpenSSL (apt-get install openssl)"


@dataclass(frozen=True)
class StackSecrets:
    """The generated passwords; ``repr`` never shows them."""

    kafka_password: str = field(repr=False)
    broker_password: str = field(repr=False)
    keystore_password: str = field(repr=False)
    postgres_password: str = field(repr=False)

    def values(self) -> list[str]:
        return [self.kafka_password, self.broker_password, self.keystore_password,
                self.postgres_password]


@dataclass(frozen=True)
class TlsFiles:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"


def secrets_dir(state_dir: Path) -> Path:
    return state_dir / "secrets"


def tls_files(state_dir: Path) -> TlsFiles:
    return TlsFiles(secrets_dir(state_dir))


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (no window where it is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def load_secrets(state_dir: Path) -> StackSecrets:
    path = secrets_dir(state_dir) / "passwords.json"
    try:
        data = json.loads(path.read_text())
        return StackSecrets(**{k: str(data[k]) for k in StackSecrets.__dataclass_fields__})
    except FileNotFoundError as exc:
        raise StackError(
            f"no secure stack in {state_dir}: run `router-stream stack up --secure` first"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is unreadable or incomplete ({type(exc).__name__})") from exc


def ensure_secrets(state_dir: Path) -> StackSecrets:
    """The stack's passwords, generated on the first secure start."""
    path = secrets_dir(state_dir) / "passwords.json"
    if path.exists():
        return load_secrets(state_dir)
    _private_dir(secrets_dir(state_dir))
    created = StackSecrets(*(secrets.token_urlsafe(24) for _ in range(4)))
    write_private(path, json.dumps({k: getattr(created, k)
                                    for k in StackSecrets.__dataclass_fields__}, indent=2))
    return created


def _openssl(args: list[str], what: str, password: str | None = None) -> None:
    """Run openssl; a password is handed over on fd 3 (``pass:fd:3``), never in argv."""
    openssl = require_binary("openssl", _OPENSSL_HINT)
    read_fd = write_fd = None
    pass_fds: tuple[int, ...] = ()
    if password is not None:
        read_fd, write_fd = os.pipe()
        os.write(write_fd, password.encode() + b"\n")
        os.close(write_fd)
        pass_fds = (read_fd,)
        args = [a.replace("fd:PASSFD", f"fd:{read_fd}") for a in args]
    try:
        result = subprocess.run([openssl, *args], capture_output=True, text=True, check=False,
                                pass_fds=pass_fds, stdin=subprocess.DEVNULL)
    finally:
        if read_fd is not None:
            os.close(read_fd)
    if result.returncode != 0:
        raise StackError(f"openssl could not {what}: {result.stderr.strip()[-300:]}")


_SERVER_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
"""


def ensure_tls(state_dir: Path, stack_secrets: StackSecrets) -> TlsFiles:
    """CA, server certificate and the broker's keystore; created once, then reused."""
    files = tls_files(state_dir)
    if files.keystore.exists() and files.server_cert.exists() and files.ca_cert.exists():
        return files
    d = _private_dir(files.directory)
    # Unencrypted keys in a 0700 directory: PostgreSQL cannot read an encrypted key without a
    # passphrase command, and this is a development stack's throwaway CA.
    old_umask = os.umask(0o077)
    try:
        _openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
                  "-subj", "/CN=router-stream local stack CA", "-keyout", str(files.ca_key),
                  "-out", str(files.ca_cert),
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "create the CA")
        csr = d / "server.csr"
        ext = d / "server.ext"
        ext.write_text(_SERVER_EXT)
        _openssl(["req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", "/CN=127.0.0.1",
                  "-keyout", str(files.server_key), "-out", str(csr)], "create the server key")
        _openssl(["x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert),
                  "-CAkey", str(files.ca_key), "-CAcreateserial", "-days", "825", "-sha256",
                  "-extfile", str(ext), "-out", str(files.server_cert)],
                 "sign the server certificate")
        _openssl(["pkcs12", "-export", "-in", str(files.server_cert),
                  "-inkey", str(files.server_key), "-certfile", str(files.ca_cert),
                  "-name", "broker", "-out", str(files.keystore), "-passout", "fd:PASSFD"],
                 "write the broker keystore", password=stack_secrets.keystore_password)
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
    finally:
        os.umask(old_umask)
    # The CA certificate is public: clients of any user may need to read it.
    os.chmod(files.ca_cert, 0o644)
    return files
