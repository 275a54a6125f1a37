"""The one error tree of router-stream.

Every error the project raises on purpose is a :class:`RouterError`. The class attribute
``retriable`` decides what the worker does with a failure: retry it (the cause is expected to go
away: a broker or database that is briefly unreachable, a tier of destinations that will heal) or
give up and send the record to the DLQ / exit with a clear message. Each DLQ reason of SPEC §2 has
exactly one :class:`SignalRejected` subclass, so ``REASON_TO_ERROR[reason]`` and ``exc.reason`` are
the two directions of one mapping.

This module is imported by the pure core, so it must stay free of I/O imports.

Hierarchy::

    RouterError                      retriable=False
    ├── UserError                    the user's input is wrong: CLI exit code 1
    │   ├── ConfigError              bad settings / environment
    │   └── PolicyError              bad policy file; carries [(path, reason), ...]
    ├── CannotListen                 the worker's HTTP port cannot be bound: exit code 2
    ├── ProducerFailed               a producer failed for good (KafkaError.fatal()): exit code 2
    │   └── ProducerFenced           exactly_once: another worker holds the transactional.id
    ├── ConsumerFailed               the signal consumer failed for good (fenced): exit code 2
    ├── TransientError               retriable=True: CLI exit code 2, worker retries
    │   ├── BrokerUnavailable
    │   ├── DatabaseUnavailable
    │   └── OperationTimeout
    └── SignalRejected               one signal cannot be routed -> router.dlq
        ├── InvalidJson              reason=invalid_json
        ├── InvalidSignal            reason=invalid_signal
        ├── Unclassified             reason=unclassified
        ├── NoRoute                  reason=no_route
        ├── NoHealthyDestination     reason=no_healthy_destination   retriable=True
        ├── RateLimited              reason=rate_limited
        ├── Expired                  reason=expired
        ├── Duplicate                reason=duplicate
        ├── ProcessingError          reason=processing_error
        └── RetriesExhausted         reason=retries_exhausted
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

__all__ = [
    "REASON_TO_ERROR",
    "BrokerUnavailable",
    "CannotListen",
    "ConfigError",
    "ConsumerFailed",
    "DatabaseUnavailable",
    "Duplicate",
    "Expired",
    "InvalidJson",
    "InvalidSignal",
    "NoHealthyDestination",
    "NoRoute",
    "OperationTimeout",
    "PolicyError",
    "PolicyIssue",
    "ProcessingError",
    "ProducerFailed",
    "ProducerFenced",
    "RateLimited",
    "RetriesExhausted",
    "RouterError",
    "SignalRejected",
    "TransientError",
    "Unclassified",
    "UserError",
    "error_for_reason",
]


class RouterError(Exception):
    """Root of every router-stream error."""

    retriable: ClassVar[bool] = False


# --- the user's fault ------------------------------------------------------------------------


class UserError(RouterError):
    """The user's input is wrong (bad file, bad argument, unknown id): exit code 1."""


class ConfigError(UserError):
    """The settings (``ROUTER_*`` environment, ``.env``) are invalid or inconsistent."""


PolicyIssue = tuple[str, str]
"""One policy problem: (dotted path such as ``routes.alert.tiers[1]``, reason incl. line)."""


class PolicyError(UserError):
    """A policy file failed validation.

    Carries every issue found (not just the first) so ``policy validate`` can print them all;
    ``str(exc)`` is one issue per line, prefixed with the source file name.
    """

    def __init__(self, issues: Iterable[PolicyIssue], source: str = "<string>") -> None:
        self.issues: list[PolicyIssue] = list(issues)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.issues:
            return f"{self.source}: invalid policy"
        lines = [f"{self.source}: invalid policy ({len(self.issues)} issue(s))"]
        lines.extend(f"  {line}" for line in self.lines())
        return "\n".join(lines)

    def lines(self) -> list[str]:
        """The issues as ``path: reason`` lines (what tests and the CLI compare against)."""
        return [f"{path}: {reason}" if path else reason for path, reason in self.issues]

    def fields(self) -> list[dict[str, str | int | None]]:
        """The issues as ``{path, line, message}`` (``policy validate --json``): the line is
        the ``(line N)`` a reason ends with, None when it has none."""
        out: list[dict[str, str | int | None]] = []
        for path, reason in self.issues:
            found = _LINE_SUFFIX.search(reason)
            out.append({"path": path, "line": int(found.group(1)) if found else None,
                        "message": reason[:found.start()] if found else reason})
        return out


_LINE_SUFFIX = re.compile(r" \(line (\d+)\)$")


class CannotListen(RouterError):
    """The worker's HTTP endpoint cannot bind its port (in use, not permitted): exit code 2."""


class ProducerFailed(RouterError):
    """A Kafka producer failed for good (``KafkaError.fatal()``): every later send fails, so the
    worker stops (exit code 2) and its restart makes a new one."""


class ProducerFenced(ProducerFailed):
    """exactly_once: the worker's transactional producer was fenced (a newer instance took its
    transactional.id) or failed fatally; the worker stops without committing (exit code 2)."""


class ConsumerFailed(RouterError):
    """The signal consumer failed for good (librdkafka's ``_FATAL``: with static membership,
    another live worker joined under the same ``group.instance.id`` and fenced this one): it
    can consume nothing more, so the worker stops (exit code 2) rather than idle in the group."""


# --- the world's fault, expected to pass -----------------------------------------------------


class TransientError(RouterError):
    """Something outside us is briefly unavailable; retrying later is expected to succeed."""

    retriable: ClassVar[bool] = True


class BrokerUnavailable(TransientError):
    """Kafka cannot be reached or refused the request (translated at the adapter seam)."""


class DatabaseUnavailable(TransientError):
    """Postgres cannot be reached or the connection dropped."""


class OperationTimeout(TransientError):
    """A bounded wait ran out (produce, flush, query, admin call)."""


# --- one signal cannot be routed: the DLQ ----------------------------------------------------


class SignalRejected(RouterError):
    """A single signal that goes to ``router.dlq`` with :attr:`reason` in ``x-dlq-reason``.

    ``signal_id`` is set when the signal was parsed far enough to know it (``x-signal-id``).
    """

    reason: ClassVar[str] = "processing_error"

    def __init__(self, message: str, *, signal_id: str | None = None) -> None:
        super().__init__(message)
        self.signal_id = signal_id

    @property
    def error(self) -> str:
        """The one-line text for ``x-dlq-error``."""
        return str(self).replace("\n", " ")


class InvalidJson(SignalRejected):
    """The record value is not valid UTF-8 JSON (incl. NaN/Infinity, which JSON does not have)."""

    reason: ClassVar[str] = "invalid_json"


class InvalidSignal(SignalRejected):
    """Valid JSON but not a Signal: not an object, a field of the wrong type, a tombstone."""

    reason: ClassVar[str] = "invalid_signal"


class Unclassified(SignalRejected):
    """No classification rule matched and the policy's default is ``dlq``."""

    reason: ClassVar[str] = "unclassified"


class NoRoute(SignalRejected):
    """The signal's kind has no route in the active policy."""

    reason: ClassVar[str] = "no_route"


class NoHealthyDestination(SignalRejected):
    """Every destination of every tier has an open breaker.

    Retriable: breakers half-open after their cooldown, so the route's retry parameters
    (``retry.max_attempts``/``delay_ms``) apply before the signal is given up on.
    """

    reason: ClassVar[str] = "no_healthy_destination"
    retriable: ClassVar[bool] = True


class RateLimited(SignalRejected):
    """The tenant's token bucket is empty."""

    reason: ClassVar[str] = "rate_limited"


class Expired(SignalRejected):
    """``ts + ttl_ms`` is in the past (or a synthetic consensus value aged out)."""

    reason: ClassVar[str] = "expired"


class Duplicate(SignalRejected):
    """The signal_id was seen within the dedupe window and the route says ``on_duplicate: dlq``."""

    reason: ClassVar[str] = "duplicate"


class ProcessingError(SignalRejected):
    """An unexpected error while deciding: a bug, recorded rather than crashing the worker.

    Not retriable: the same input would fail the same way; the DLQ keeps it for replay after
    the fix.
    """

    reason: ClassVar[str] = "processing_error"


class RetriesExhausted(SignalRejected):
    """A retriable rejection (e.g. no healthy destination) failed ``max_attempts`` times."""

    reason: ClassVar[str] = "retries_exhausted"


REASON_TO_ERROR: dict[str, type[SignalRejected]] = {
    cls.reason: cls
    for cls in (
        InvalidJson,
        InvalidSignal,
        Unclassified,
        NoRoute,
        NoHealthyDestination,
        RateLimited,
        Expired,
        Duplicate,
        ProcessingError,
        RetriesExhausted,
    )
}
"""Every DLQ reason (SPEC §2, closed set) to its one error class."""


def error_for_reason(
    reason: str, message: str, *, signal_id: str | None = None
) -> SignalRejected:
    """Build the error for a DLQ reason; an unknown reason is a bug, so it is a ProcessingError."""
    cls = REASON_TO_ERROR.get(reason, ProcessingError)
    return cls(message, signal_id=signal_id)
