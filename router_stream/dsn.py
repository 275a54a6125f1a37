"""The Postgres DSN: what makes one usable, and how to show one without its password.

``ROUTER_DATABASE_URL`` is a secret (it usually holds the password), yet a bad one must be
reported with enough of it to fix. :func:`mask_dsn` keeps everything but the password, whatever
the form — a URL (``postgresql://user:pw@host/db``, also with unencoded ``/ # ? @`` in the
password, which break URL parsing), a ``?password=`` parameter, libpq's ``key=value`` form — and
:func:`dsn_problem` says in one line why a value cannot be used, never echoing parser messages
(``int('pw-part')`` failures are how passwords leaked into tracebacks before).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

__all__ = ["dsn_problem", "dsn_secrets", "mask_dsn", "scrub"]

MASK = "***"
SCHEMES = ("postgresql", "postgres")
EXPECTED = "postgresql://user:password@host:port/dbname"

_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:\\.|[^'\\])*'?|\S*)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)([^&]*)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_KEY_VALUE = re.compile(r"^\s*[A-Za-z_]+\s*=")


def _is_key_value(dsn: str) -> bool:
    return _SCHEME.match(dsn) is None and _KEY_VALUE.match(dsn) is not None


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (the user, host, port and db kept)."""
    if _is_key_value(dsn):
        return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, dsn)
    scheme = _SCHEME.match(dsn)
    start = scheme.end() if scheme else 0
    rest = dsn[start:]
    at = rest.rfind("@")  # the last '@' ends the user info, even with '@' in the password
    if at >= 0:
        user = rest[:at].split(":", 1)[0]
        has_password = ":" in rest[:at]
        rest = (f"{user}:{MASK}" if has_password else user) + rest[at:]
    return dsn[:start] + _QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, rest)


def dsn_secrets(dsn: str) -> list[str]:
    """The password as written and percent-decoded, for scrubbing other libraries' messages."""
    if _is_key_value(dsn):
        found = [m.group(2).strip("'") for m in _KV_PASSWORD.finditer(dsn)]
    else:
        found = [m.group(2) for m in _QUERY_PASSWORD.finditer(dsn)]
        scheme = _SCHEME.match(dsn)
        rest = dsn[scheme.end():] if scheme else dsn
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            found.append(rest[:at].split(":", 1)[1])
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= 1}, key=len, reverse=True)


def scrub(text: str, dsn: str) -> str:
    """``text`` with every occurrence of ``dsn``'s password replaced by ``***``."""
    for secret in dsn_secrets(dsn):
        text = text.replace(secret, MASK)
    return text


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a usable ``postgresql://`` URL, in one line; ``None`` when it is."""
    scheme = _SCHEME.match(dsn)
    if scheme is None:
        if _is_key_value(dsn):
            return f"key=value connection strings are not supported: give a URL {EXPECTED}"
        return f"not a URL: expected {EXPECTED}"
    if dsn[: scheme.end() - 3].lower() not in SCHEMES:
        return f"the scheme must be postgresql:// or postgres:// (expected {EXPECTED})"
    try:
        parts = urlsplit(dsn)
    except ValueError:  # e.g. "Invalid IPv6 URL"
        return "the host is not a valid name, IPv4 or [IPv6] address"
    if parts.netloc.count("@") > 1 or "@" in parts.path + parts.query + parts.fragment:
        return ("the user or password holds an unencoded '/', '?', '#' or '@': percent-encode "
                "it (%2F, %3F, %23, %40)")
    if parts.fragment:
        return "unexpected '#' in the URL: percent-encode it (%23)"
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(","):
        problem = _host_problem(host)
        if problem:
            return problem
    return None


def _host_problem(hostspec: str) -> str | None:
    if hostspec.startswith("["):
        host, bracket, port = hostspec[1:].partition("]")
        if not bracket or not host or (port and not port.startswith(":")):
            return "the host is not a valid [IPv6] address"
        port = port[1:]
    else:
        host, _, port = hostspec.partition(":")
        if ":" in port:
            return "an IPv6 host must be written in brackets: [::1]:5432"
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return "the port must be a number from 1 to 65535"
    return None
