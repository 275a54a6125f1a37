"""Outputs the broker refused for good, and what becomes of the records they came from.

A produce error that retrying cannot fix (record too large for the topic, invalid record, not
authorised, topic gone) is a fault of one record, not of the environment, so it must not hold
back the batch (issue 21). The worker hands the refused outputs of a decided batch here and gets
the batch's result rewritten so every input still ends as exactly one decision or one DLQ
entry:

* a refused routed, decision or retry record: the input it came from loses its decision, routed
  records and retry, and is dead-lettered as ``processing_error`` naming the refused topic and
  the error; its destination is reported so the worker can count it and report a failed outcome;
* a refused DLQ record (too large for ``router.dlq``): replaced by a *reference* — no value, no
  original headers, ``x-dlq-reference: true`` and ``x-dlq-original-size`` beside the usual
  ``x-dlq-original-topic/partition/offset`` — so the original can still be found on its topic.

Pure: no I/O. Which sends failed, and how, is for the worker to find out
(:mod:`router_stream.worker.sink`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from router_stream.core.deadletter import dead_letter
from router_stream.core.models import DlqReason, InboundRecord
from router_stream.core.outputs import BatchResult, DlqRecord
from router_stream.core.wire import (
    DLQ_HEADERS,
    H_ERROR,
    H_OFFSET,
    H_ORIGINAL_SIZE,
    H_PARTITION,
    H_REFERENCE,
    H_SUPERSEDES,
    H_TOPIC,
    header_text,
    origin_key,
)

OutputKind = Literal["routed", "decision", "dlq", "retry"]


@dataclass(frozen=True, slots=True)
class Refused:
    """One output the broker refused: which list of the :class:`BatchResult` and where in it."""

    kind: OutputKind
    index: int
    topic: str
    error: str


@dataclass(slots=True)
class Repair:
    """What :func:`settle_refusals` changed: DLQ records to send now (in ``result.dlq`` order,
    at its end) and the (destination, signal_id) of every refused route."""

    dlq: list[DlqRecord] = field(default_factory=list)
    failed_routes: list[tuple[str, str]] = field(default_factory=list)


def output_at(result: BatchResult, position: int) -> tuple[OutputKind, int]:
    """Which output the ``position``-th send of a batch was: outputs are sent routed records
    first, then decisions, DLQ records and retry records (``send_outputs``)."""
    for kind, items in (("routed", result.routed), ("decision", result.decisions),
                        ("dlq", result.dlq), ("retry", result.retries)):
        if position < len(items):
            return kind, position  # type: ignore[return-value]
        position -= len(items)
    raise IndexError("a send position beyond the batch's outputs")


REFERENCE_MARK = "| stored as a reference:"
"""In a reference's error text (and so in its ``dlq_entries`` row): what ``dlq replay`` and
``dlq show`` go by."""


def is_reference(error: str | None) -> bool:
    """True for the error text of a DLQ entry stored as a reference (:func:`as_reference`)."""
    return error is not None and REFERENCE_MARK in error


def as_reference(q: DlqRecord, error: str) -> DlqRecord:
    """A DLQ record that names its original instead of carrying it."""
    e = q.entry
    size = len(e.original_value or b"") + len(e.original_key or b"") + sum(
        len(k) + len(v or b"") for k, v in e.original_headers)
    text = f"{e.error} {REFERENCE_MARK} {error}"
    entry = e.model_copy(update={"original_value": None, "original_headers": [],
                                 "error": " ".join(text.split())[:1000]})
    headers: list[tuple[str, bytes | None]] = [
        (H_REFERENCE, b"true"), (H_ORIGINAL_SIZE, str(size).encode())]
    # the record's own router headers (context, supersedes, ...), none of its original ones
    headers += [(k, v) for k, v in q.headers
                if k in DLQ_HEADERS and k not in (H_ERROR, H_REFERENCE, H_ORIGINAL_SIZE)]
    headers.append((H_ERROR, header_text(entry.error)))
    return DlqRecord(entry, headers)


def settle_refusals(result: BatchResult, records: Sequence[InboundRecord],
                    refused: Sequence[Refused], now: float,
                    consumer_group: str | None = None) -> Repair:
    """Rewrite ``result`` (in place) so no refused output is part of it; see the module
    docstring. The new and replacement DLQ records are appended to ``result.dlq`` and returned
    in :attr:`Repair.dlq` — the caller still has to send them."""
    repair = Repair()
    by_origin = {origin_key(r): r for r in records}
    failed: dict[str, tuple[str, str]] = {}  # origin key -> (topic, error), first refusal wins
    references: dict[int, DlqRecord] = {}
    for r in refused:
        if r.kind == "dlq":
            references[r.index] = as_reference(result.dlq[r.index], f"{r.topic}: {r.error}")
            continue
        key = _origin_of(result, r)
        if key is not None:
            failed.setdefault(key, (r.topic, r.error))
        if r.kind == "routed":
            routed = result.routed[r.index]
            repair.failed_routes.append((routed.destination, routed.signal_id))
    signal_ids = {key: _signal_id_of(result, key) for key in failed}
    if failed:
        _drop_outputs_of(result, set(failed))
    kept = [q for i, q in enumerate(result.dlq) if i not in references]
    repair.dlq.extend(references.values())
    for key, (topic, error) in failed.items():
        record = by_origin.get(key)
        if record is not None:
            q = dead_letter(record, DlqReason.PROCESSING_ERROR,
                            f"produce to {topic} refused: {error}", now, signal_ids[key],
                            consumer_group=consumer_group)
            q.headers.append((H_SUPERSEDES, b"true"))  # its decision record may be out
            repair.dlq.append(q)
    result.dlq = kept + repair.dlq
    return repair


def _origin_of(result: BatchResult, r: Refused) -> str | None:
    if r.kind == "decision":
        d = result.decisions[r.index]
        return d.input_key
    signal_id = (result.routed[r.index].signal_id if r.kind == "routed"
                 else result.retries[r.index].signal_id)
    for d in result.decisions:
        if d.signal_id == signal_id:
            return d.input_key
    if r.kind == "retry":
        return _retry_origin(result.retries[r.index].headers)
    return None


def _retry_origin(headers: Sequence[tuple[str, bytes | None]]) -> str | None:
    """The origin key a retry record's headers name (the engine wrote them)."""
    found = {k: v for k, v in headers if k in (H_TOPIC, H_PARTITION, H_OFFSET) and v is not None}
    if len(found) < 3:
        return None
    try:
        return (f"{found[H_TOPIC].decode('utf-8', 'replace')}/{int(found[H_PARTITION])}/"
                f"{int(found[H_OFFSET])}")
    except ValueError:
        return None


def _signal_id_of(result: BatchResult, key: str) -> str | None:
    for d in result.decisions:
        if d.input_key == key:
            return d.signal_id
    return None


def _drop_outputs_of(result: BatchResult, keys: set[str]) -> None:
    """Remove the decisions, routed records and retries of the inputs at ``keys``."""
    gone = {d.signal_id for d in result.decisions
            if d.input_key in keys}
    result.decisions = [d for d in result.decisions if d.signal_id not in gone]
    result.routed = [r for r in result.routed if r.signal_id not in gone]
    result.retries = [t for t in result.retries
                      if t.signal_id not in gone and _retry_origin(t.headers) not in keys]
