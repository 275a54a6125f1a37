"""``router-stream produce`` and ``router-stream tail``: JSON lines into a topic, records out.

The click commands parse options; :func:`produce_lines` and :func:`tail_topic` do the work and
are what tests call. Kafka is reached through :mod:`router_stream.adapters.kafka_io`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import click
import orjson
from pydantic import ValidationError

from router_stream.adapters.kafka_io import (
    ConsumedRecord,
    OutRecord,
    RateLimiter,
    RecordWriter,
    read_records,
)
from router_stream.cli import cli
from router_stream.cli.terminal import printable_json_bytes
from router_stream.config import Settings
from router_stream.errors import ConfigError, RouterError, UserError

_IN_FLIGHT = 1000  # records awaiting their ack before produce waits for them


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid ROUTER_* settings: {exc}") from exc


def _topic(settings: Settings, name: str, logical: bool) -> str:
    return settings.topic(name) if logical else name


# --- produce -------------------------------------------------------------------------------


@dataclass
class ProduceReport:
    topic: str
    produced: int = 0
    without_key: int = 0  # lines that lacked --key-field
    partitions: dict[int, int] = field(default_factory=dict)


def _key_of(line: bytes, number: int, key_field: str | None, raw: bool
            ) -> tuple[bytes | None, bool]:
    """(key, had_key) for one line; the line must be JSON unless ``raw``."""
    if raw and key_field is None:
        return None, True
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if raw:
            return None, False
        raise UserError(f"line {number}: not JSON ({exc}); use --raw to send it as is") from None
    if key_field is None:
        return None, True
    found = value.get(key_field) if isinstance(value, dict) else None
    if found is None:
        return None, False
    text = found if isinstance(found, str) else orjson.dumps(found).decode()
    return text.encode(), True


async def produce_lines(
    settings: Settings, topic: str, lines: Iterable[bytes], *, key_field: str | None = None,
    rate: float | None = None, raw: bool = False,
    headers: list[tuple[str, bytes | None]] | None = None,
) -> ProduceReport:
    """Send each non-blank line as one record (the line's bytes unchanged, newline removed) and
    wait for every ack. A line that is not JSON stops the run with its number (unless ``raw``);
    lines sent before it stay sent."""
    report = ProduceReport(topic)
    pacer = RateLimiter(rate)
    pending: list[asyncio.Future[tuple[int, int]]] = []
    async with RecordWriter(settings) as writer:
        await writer.ensure_topics([topic])
        try:
            for number, line in enumerate(lines, start=1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                key, had_key = _key_of(line, number, key_field, raw)
                report.without_key += not had_key
                await pacer.wait()
                pending.append(await writer.send(OutRecord(topic, line, key, list(headers or []))))
                if len(pending) >= _IN_FLIGHT:
                    await _settle(pending, report)
        finally:
            await _settle(pending, report)
    return report


async def _settle(pending: list[asyncio.Future[tuple[int, int]]], report: ProduceReport) -> None:
    results = await asyncio.gather(*pending, return_exceptions=True)
    pending.clear()
    failure: BaseException | None = None
    for result in results:
        if isinstance(result, BaseException):
            failure = failure or result
            continue
        report.produced += 1
        report.partitions[result[0]] = report.partitions.get(result[0], 0) + 1
    if failure is not None:
        if isinstance(failure, RouterError):
            raise failure
        raise RouterError(f"producing to {report.topic} failed: {failure!r}") from failure


def _read_lines(stream: IO[bytes]) -> Iterable[bytes]:
    yield from stream


def _parse_header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UserError(f"--header must be NAME=VALUE, got {text!r}")
    return name, value.encode()


@cli.command()
@click.argument("topic")
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--key-field", metavar="NAME",
              help="Use this top-level field of each JSON line as the record key.")
@click.option("--rate", type=float, default=None, help="At most N records per second.")
@click.option("--logical", is_flag=True,
              help="TOPIC is a logical name (signals, outcomes, ...): add ROUTER_TOPIC_PREFIX.")
@click.option("--raw", is_flag=True, help="Send lines as they are, even if they are not JSON.")
@click.option("--header", "header_args", multiple=True, metavar="NAME=VALUE",
              help="A header on every record (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def produce(topic: str, file: IO[bytes], key_field: str | None, rate: float | None,
            logical: bool, raw: bool, header_args: tuple[str, ...], as_json: bool) -> None:
    """Send JSON lines from FILE (default: stdin) to TOPIC, one record per line.

    Each line's bytes are sent unchanged. Exit 1 on a line that is not JSON (its number is
    printed; --raw sends it anyway) or a topic that does not exist.

    examples/ holds one file per input topic, each line a complete message of the shape
    docs/contract.md describes (signals.jsonl, health.jsonl, outcomes.jsonl).

    \b
    Examples:
      router-stream produce --logical signals examples/signals.jsonl --key-field sender_id
      router-stream produce --logical source-health examples/health.jsonl --key-field source_id
      router-stream produce --logical outcomes examples/outcomes.jsonl --key-field destination
      cat events.jsonl | router-stream produce --logical source-health - --key-field source_id
      router-stream produce prod.signals signals.jsonl --rate 100
    """
    settings = _settings()
    headers: list[tuple[str, bytes | None]] = [_parse_header(h) for h in header_args]
    report = asyncio.run(produce_lines(
        settings, _topic(settings, topic, logical), _read_lines(file), key_field=key_field,
        rate=rate, raw=raw, headers=headers))
    if as_json:
        click.echo(json.dumps({"topic": report.topic, "produced": report.produced,
                               "without_key": report.without_key,
                               "partitions": report.partitions}))
        return
    click.echo(f"produced {report.produced} records to {report.topic}")
    if key_field and report.without_key:
        click.echo(f"{report.without_key} lines had no {key_field!r} field and were sent "
                   "without a key", err=True)


# --- tail ----------------------------------------------------------------------------------


def _text(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def record_json(record: ConsumedRecord) -> dict[str, Any]:
    """A consumed record for printing: the value parsed when it is JSON, else text/base64."""
    value: Any
    try:
        value = orjson.loads(record.value) if record.value is not None else None
    except orjson.JSONDecodeError:
        value = _text(record.value)
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset,
            "timestamp": record.timestamp, "key": _text(record.key),
            "headers": [[k, _text(v)] for k, v in record.headers], "value": value}


async def tail_topic(
    settings: Settings, topic: str, emit: Callable[[ConsumedRecord], None], *,
    from_beginning: bool = False, max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> int:
    """Call ``emit`` for each record; returns how many. See :func:`read_records` for stops."""
    count = 0
    records: AsyncIterator[ConsumedRecord] = read_records(
        settings, topic, from_beginning=from_beginning, max_records=max_records,
        idle_timeout_s=idle_timeout_s)
    async for record in records:
        emit(record)
        count += 1
    return count


@cli.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record [the end].")
@click.option("--max", "max_records", type=click.IntRange(min=1), default=None,
              help="Stop after N records.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=86_400), default=None,
              help="Stop after S seconds without a new record [follow forever].")
@click.option("--logical", is_flag=True, help="TOPIC is a logical name: add ROUTER_TOPIC_PREFIX.")
@click.option("--raw", is_flag=True, help="Print only each value's bytes, one per line.")
@click.option("--pretty", is_flag=True, help="Indented JSON instead of one object per line.")
def tail(topic: str, from_beginning: bool, max_records: int | None, timeout: float | None,
         logical: bool, raw: bool, pretty: bool) -> None:
    """Print records of TOPIC (every partition, no consumer group, nothing committed).

    Default: one JSON object per record with topic, partition, offset, timestamp, key, headers
    and the value (parsed when it is JSON). --raw prints the value bytes only.

    \b
    Examples:
      router-stream tail --logical router.dlq --from-beginning --max 10 --pretty
      router-stream tail --logical routed.pagerduty --timeout 30 | jq .value.route
      router-stream tail prod.signals --raw > captured.jsonl
    """
    settings = _settings()
    out = click.get_binary_stream("stdout")

    def emit(record: ConsumedRecord) -> None:
        if raw:
            out.write((record.value or b"") + b"\n")
        else:
            option = orjson.OPT_INDENT_2 if pretty else 0
            # orjson escapes C0 only: DEL and C1 as \u00NN too, the same JSON, inert on a tty
            out.write(printable_json_bytes(orjson.dumps(record_json(record), option=option))
                      + b"\n")
        out.flush()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a follow ends
        asyncio.run(tail_topic(settings, _topic(settings, topic, logical), emit,
                               from_beginning=from_beginning, max_records=max_records,
                               idle_timeout_s=timeout))
