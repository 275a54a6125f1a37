"""The demo's consuming services: one :mod:`router_stream.client` consumer per destination,
reporting every delivery's outcome, so the router learns from real consumers and not only from
health events.

While the demo's own traffic runs, notifications (the ``thompson`` route over email, slack and
webhook) go out in small waves in three stages: slack delivers, slack fails (its consumer's
handler raises), slack delivers again. The outcomes its consumer reports open slack's breaker
(``failure_threshold`` failed outcomes in a row) and move the bandit's share away from it; the
demo prints the share per stage and the breaker transitions (which ``_report`` reads from
Postgres). A notification is routed a moment after it is produced and its outcome reported a
moment later, so the waves are paced: a burst would be decided before any outcome arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson

from router_stream.adapters.kafka_io import OutRecord, RecordWriter
from router_stream.client import DestinationConsumer, RoutedSignal
from router_stream.config import SIGNALS, Settings

Say = Callable[[str], None]

FAILING = "slack"
STAGES = (("slack_ok", 10), ("slack_failing", 16), ("slack_back", 10))  # (stage, waves)
WAVE = 8
WAVE_GAP_S = 0.3


class SlackDown(Exception):
    """The simulated slack API answering 500."""


@dataclass
class _Services:
    failing: bool = False
    received: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stage, destination)
    failed: int = 0
    last_seen: float = 0.0

    async def deliver(self, routed: RoutedSignal) -> None:
        self.last_seen = time.monotonic()
        stage = routed.signal_id.split("@")[0].split("-", 1)[1].rsplit("-", 1)[0]
        self.received[(stage, routed.destination)] += 1
        if routed.destination == FAILING and self.failing:
            self.failed += 1
            raise SlackDown(routed.signal_id)


def _note(stage: str, i: int, run_id: str) -> bytes:
    return orjson.dumps({"signal_id": f"note-{stage}-{i}@{run_id}", "sender_id": "app-billing",
                         "tenant": "acme", "payload": {"text": f"invoice {i} ready"}})


async def _notifications(settings: Settings, services: _Services, run_id: str, say: Say) -> int:
    sent = 0
    async with RecordWriter(settings) as writer:
        for stage, waves in STAGES:
            services.failing = stage == "slack_failing"
            say(f"consumers: {FAILING} {'FAILS' if services.failing else 'delivers'} — "
                f"{waves * WAVE} notifications in waves of {WAVE} ({stage})")
            for _ in range(waves):
                futures = await writer.send_many([
                    OutRecord(settings.topic(SIGNALS), _note(stage, sent + j, run_id),
                              key=b"app-billing") for j in range(WAVE)])
                await asyncio.gather(*futures)
                sent += WAVE
                await asyncio.sleep(WAVE_GAP_S)
    return sent


async def close_the_loop(settings: Settings, destinations: Sequence[str], run_id: str,
                         traffic: Awaitable[int], say: Say) -> int:
    """Run ``traffic`` with a consumer per destination and the notification stages; returns the
    number of signals sent (the traffic's and the notifications')."""
    logging.getLogger("router_stream.client").setLevel(logging.ERROR)  # slack's failures
    services = _Services()
    consumers = [DestinationConsumer(d, bootstrap_servers=settings.kafka_bootstrap,
                                     topic_prefix=settings.topic_prefix,
                                     group_id=f"{settings.group_id}-svc-{d}",
                                     kafka_options=_options(settings))
                 for d in destinations]
    for c in consumers:
        await c.start()
    say(f"consumers started for {', '.join(destinations)} (router_stream.client): each "
        "reports its outcomes to `outcomes`")
    runs = [asyncio.create_task(c.run(services.deliver)) for c in consumers]
    try:
        sent, notes = await asyncio.gather(traffic, _notifications(settings, services, run_id,
                                                                     say))
        await _settle(services)
    finally:
        for c in consumers:
            c.request_stop()
        await asyncio.gather(*runs, return_exceptions=True)
        for c in consumers:
            await c.stop()
    _summary(services, consumers, say)
    return sent + notes


def _options(settings: Settings) -> dict[str, object]:
    return {k: v for k, v in settings.librdkafka_config.items() if k != "bootstrap.servers"}


async def _settle(services: _Services, quiet_s: float = 1.5, timeout_s: float = 15.0) -> None:
    """Until the consumers have seen nothing new for ``quiet_s`` (the last waves delivered)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() - services.last_seen < quiet_s and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def _summary(services: _Services, consumers: Sequence[DestinationConsumer], say: Say) -> None:
    outcomes = sum(c.reporter.stats.sent for c in consumers)
    say(f"consumers: {sum(c.stats.handled for c in consumers)} deliveries, {outcomes} outcomes "
        f"reported ({services.failed} failed, all at {FAILING})")
    say("thompson share of notifications per stage (what the consumers received):")
    for stage, _ in STAGES:
        row = {d: n for (s, d), n in services.received.items() if s == stage}
        total = sum(row.values()) or 1
        shares = "  ".join(f"{d} {n / total:4.0%}" for d, n in sorted(row.items()))
        say(f"  {stage:<14} {shares}")
