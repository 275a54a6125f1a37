"""The tables the router writes: their columns, natural keys, and how a Python value becomes
a column value.

Values: timestamps are ``datetime`` (naive ones are taken as UTC), ISO-8601 strings, or epoch
numbers (> 1e11 is read as milliseconds, otherwise seconds); JSON columns take any
JSON-serialisable value or already-serialised JSON text (``str``, or UTF-8 ``bytes``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError) as exc:  # OSError: EOVERFLOW from the C library
            # a ValueError is a row's content (writer.is_row_content_error), not the database
            raise ValueError(f"timestamp out of range: {value!r}") from exc
    if isinstance(value, str):
        return _ts(datetime.fromisoformat(value.replace("Z", "+00:00")))
    raise TypeError(f"not a timestamp: {value!r}")


def json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    return orjson.dumps(value).decode()


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"not bytes: {value!r}")


def dlq_key(topic: str, partition: int, offset: int) -> str:
    """The DLQ idempotency key of an input record ('/' cannot occur in a topic name)."""
    return f"{topic}/{partition}/{offset}"


def encode_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> list[list[Any]]:
    """Kafka headers -> JSON: ``[[name, base64(value) | null], ...]``, order and repeats kept."""
    return [
        [name, None if value is None else base64.b64encode(value).decode("ascii")]
        for name, value in headers or ()
    ]


def decode_headers(stored: Sequence[Sequence[Any]]) -> list[tuple[str, bytes | None]]:
    """The inverse of :func:`encode_headers`, for replay (byte-exact)."""
    return [(name, None if value is None else base64.b64decode(value)) for name, value in stored]


@dataclass(frozen=True)
class _Column:
    name: str
    staging_type: str  # column type in the session's staging table
    convert: Callable[[Any], Any] | None = None  # Python value -> what COPY encodes
    required: bool = True
    select: str = ""  # expression moving the staged value into the table (default: as is)


@dataclass(frozen=True)
class _Table:
    """How one table is written: staged with COPY, then moved with INSERT ... ON CONFLICT."""

    name: str
    columns: tuple[_Column, ...]
    conflict: str  # the natural key, e.g. "signal_id"
    on_conflict: str = "DO NOTHING"

    @property
    def staging(self) -> str:
        return f"_rs_staging_{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def staging_ddl(self) -> str:
        cols = ", ".join(f"{c.name} {c.staging_type}" for c in self.columns)
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.staging} ({cols}) ON COMMIT DELETE ROWS"

    def insert_sql(self) -> str:
        names = ", ".join(self.column_names)
        selected = ", ".join(c.select or c.name for c in self.columns)
        # ORDER BY the key: concurrent writers (a rebalance overlap) lock keys in the same order
        # and so cannot deadlock each other.
        return (
            f"INSERT INTO {self.name} ({names}) SELECT {selected} FROM {self.staging}"
            f" ORDER BY {self.conflict} ON CONFLICT ({self.conflict}) {self.on_conflict}"
        )


def _records(table: _Table, rows: Sequence[Any]) -> list[list[Any]]:
    """Rows (tuples in column order, or mappings) -> converted value lists for COPY."""
    columns = table.columns
    converters = [(i, c.convert) for i, c in enumerate(columns) if c.convert is not None]
    records: list[list[Any]] = []
    for n, row in enumerate(rows):
        if isinstance(row, Mapping):
            missing = [c.name for c in columns if c.required and row.get(c.name) is None]
            if missing:
                raise ValueError(f"{table.name} row {n}: missing {', '.join(missing)}")
            values = [row.get(c.name) for c in columns]
        else:
            values = list(row)
            if len(values) != len(columns):
                raise ValueError(
                    f"{table.name} row {n}: {len(values)} values for {len(columns)} columns"
                )
        for i, convert in converters:
            if values[i] is not None:
                values[i] = convert(values[i])
        records.append(values)
    return records


def _jsonb(name: str, default: str | None = None) -> _Column:
    """A jsonb column, staged as JSON text."""
    select = f"{name}::jsonb" if default is None else f"COALESCE({name}::jsonb, '{default}')"
    return _Column(name, "text", json_text, required=False, select=select)


_DECISIONS = _Table("routing_decisions", (
    _Column("decision_id", "text"),
    _Column("signal_id", "text"),
    _Column("tenant", "text"),
    _Column("kind", "text"),
    _Column("destinations", "text[]", list),
    _Column("strategy", "text"),
    _Column("tier", "int4", int, required=False),
    _Column("policy_version", "text"),
    _Column("confidence", "float8", float),
    _jsonb("state", "{}"),
    _jsonb("consensus"),
    _Column("input_topic", "text"),
    _Column("input_partition", "int4"),
    _Column("input_offset", "int8"),
    _Column("signal_ts", "timestamptz", _ts, required=False),
    _Column("decided_at", "timestamptz", _ts),
), conflict="signal_id",
   # The same input decided again (a worker re-processed it after a crash) replaces its row
   # with the later decision: that attempt's outputs were all acknowledged before its offset
   # was committed, while an earlier attempt may have died before its routed records were
   # written, and a weighted or bandit draw may have chosen another destination. A signal_id
   # from another input (a producer's duplicate) keeps the first row.
   on_conflict="DO UPDATE SET tenant = EXCLUDED.tenant, kind = EXCLUDED.kind,"
               " destinations = EXCLUDED.destinations, strategy = EXCLUDED.strategy,"
               " tier = EXCLUDED.tier, policy_version = EXCLUDED.policy_version,"
               " confidence = EXCLUDED.confidence, state = EXCLUDED.state,"
               " consensus = EXCLUDED.consensus, signal_ts = EXCLUDED.signal_ts,"
               " decided_at = EXCLUDED.decided_at"
               " WHERE routing_decisions.decided_at < EXCLUDED.decided_at"
               " AND routing_decisions.input_topic = EXCLUDED.input_topic"
               " AND routing_decisions.input_partition = EXCLUDED.input_partition"
               " AND routing_decisions.input_offset = EXCLUDED.input_offset")
DECISION_COLUMNS: tuple[str, ...] = _DECISIONS.column_names
"""Column order for tuple rows of :func:`insert_decisions`.

``state`` is the trust/breaker state that mattered (JSON object), ``consensus`` the consensus
result (``value``, ``method``, ``sources_used``, ``outliers``) or None.
"""


def _headers_json(headers: Any) -> str | None:
    return json_text(headers if isinstance(headers, str) else encode_headers(headers))


_DLQ = _Table("dlq_entries", (
    _Column("dlq_key", "text"),
    _Column("reason", "text"),
    _Column("error", "text", str),
    _Column("signal_id", "text", required=False),
    _Column("tenant", "text", required=False),
    _Column("kind", "text", required=False),
    _Column("attempts", "int4"),
    _Column("original_topic", "text"),
    _Column("original_partition", "int4"),
    _Column("original_offset", "int8"),
    _Column("original_key", "bytea", _bytes, required=False),
    _Column("original_headers", "text", _headers_json, required=False,
            select="COALESCE(original_headers::jsonb, '[]')"),
    _Column("original_value", "bytea", _bytes, required=False),
    _Column("original_timestamp", "timestamptz", _ts, required=False),
    _Column("first_failed_at", "timestamptz", _ts),
    _Column("last_failed_at", "timestamptz", _ts),
    _Column("masked", "bool", bool, required=False, select="COALESCE(masked, false)"),
    _Column("dlq_topic", "text", required=False),
    _Column("dlq_partition", "int4", required=False),
    _Column("dlq_offset", "int8", required=False),
), conflict="dlq_key",
   # A replayed entry that fails again comes back: more attempts than stored means a new failure
   # (re-writing the same failure after a crash carries the same count and changes nothing).
   # The new failure was masked under the policy in force now and has its own router.dlq record.
   on_conflict="DO UPDATE SET reason = EXCLUDED.reason, error = EXCLUDED.error,"
               " attempts = EXCLUDED.attempts, status = 'pending',"
               " last_failed_at = GREATEST(dlq_entries.last_failed_at, EXCLUDED.last_failed_at),"
               " signal_id = COALESCE(EXCLUDED.signal_id, dlq_entries.signal_id),"
               " tenant = COALESCE(EXCLUDED.tenant, dlq_entries.tenant),"
               " kind = COALESCE(EXCLUDED.kind, dlq_entries.kind),"
               " original_key = EXCLUDED.original_key,"
               " original_headers = EXCLUDED.original_headers,"
               " original_value = EXCLUDED.original_value, masked = EXCLUDED.masked,"
               " dlq_topic = EXCLUDED.dlq_topic, dlq_partition = EXCLUDED.dlq_partition,"
               " dlq_offset = EXCLUDED.dlq_offset"
               " WHERE dlq_entries.attempts < EXCLUDED.attempts")
DLQ_COLUMNS: tuple[str, ...] = _DLQ.column_names
"""Column order for tuple rows of :func:`insert_dlq_entries`.

``original_headers`` is the Kafka header list ``[(name, bytes | None), ...]`` (stored with
:func:`encode_headers`). ``dlq_key`` is :func:`dlq_key` of the original coordinates; in a mapping
row it may be omitted and is then derived from them. Status starts as ``pending``.
``masked`` (default false) says the ``original_*`` values are masked copies, and then
``dlq_topic``/``dlq_partition``/``dlq_offset`` must say where the original record is
(migrations/004_dlq_masking.sql).
"""


def _with_dlq_key(row: Any) -> Any:
    if isinstance(row, Mapping) and row.get("dlq_key") is None:
        key = dlq_key(row["original_topic"], row["original_partition"], row["original_offset"])
        return {**row, "dlq_key": key}
    return row


# Must match the expression index routing_decisions_input_key (migrations/002).
_INPUT_KEY = "(input_topic || '/' || input_partition::text || '/' || input_offset::text)"


_BREAKER_TRANSITIONS = _Table("breaker_transitions", (
    _Column("target", "text"),
    _Column("from_state", "text"),
    _Column("to_state", "text"),
    _Column("reason", "text", str, required=False, select="COALESCE(reason, '')"),
    _jsonb("details", "{}"),
    _Column("at", "timestamptz", _ts),
), conflict="target, at, from_state, to_state")
BREAKER_TRANSITION_COLUMNS: tuple[str, ...] = _BREAKER_TRANSITIONS.column_names
"""Column order for :func:`insert_breaker_transitions`; states are closed | open | half_open."""


_TRUST_SNAPSHOTS = _Table("trust_snapshots", (
    _Column("source_id", "text"),
    _Column("score", "float8", float),
    _jsonb("components", "{}"),
    _Column("at", "timestamptz", _ts),
), conflict="source_id, at")
TRUST_SNAPSHOT_COLUMNS: tuple[str, ...] = _TRUST_SNAPSHOTS.column_names
"""Column order for :func:`insert_trust_snapshots`; components maps name -> [0, 1]."""


_SHADOW = _Table("shadow_decisions", (
    _Column("signal_id", "text"),
    _Column("candidate_version", "text"),
    _jsonb("baseline"),
    _jsonb("candidate"),
    _Column("agree", "bool"),
    _Column("decided_at", "timestamptz", _ts),
), conflict="signal_id, candidate_version")
SHADOW_COLUMNS: tuple[str, ...] = _SHADOW.column_names
"""Column order for :func:`insert_shadow_decisions`; baseline/candidate are a list of
destinations or a DLQ reason."""
