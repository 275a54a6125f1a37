"""A routing scenario through a real worker on Kafka (``router-stream simulate --e2e``).

The same world and arrival times as the in-process run, in wall-clock time: signals are produced
to ``signals`` at their instants, a real :class:`~router_stream.worker.RouterWorker` decides them,
and each decision read back from ``router.decisions`` gets its delivery drawn from the world and
reported on ``outcomes``, as a destination's delivery report would be. The figures are computed
exactly as in process, so the two runs should agree within noise: the worker adds no decision
error. The run uses its own topic prefix and consumer group, Kafka only (``persist`` off), and
deletes its topics at the end.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from router_stream.config import DECISIONS, DLQ, OUTCOMES, SIGNALS, Settings
from router_stream.errors import BrokerUnavailable, RouterError
from router_stream.sim.routing_run import _choice_figures, _Choices, _instants
from router_stream.sim.scenarios import RoutingScenario

if TYPE_CHECKING:
    from router_stream.adapters.kafka_io import ConsumedRecord, RecordWriter


class E2eTimeout(RouterError):
    """The worker did not decide every signal in time."""


async def run_routing_e2e(scenario: RoutingScenario, strategy: str, seed: int,
                          settings: Settings, slack_s: float = 30.0) -> dict[str, Any]:
    """Figures of ``strategy`` on ``scenario`` through a worker; raises :class:`E2eTimeout` when
    the signals are not all decided within the scenario's duration plus ``slack_s``."""
    from confluent_kafka import KafkaException

    try:
        choices = await _run(scenario, strategy, seed, settings, slack_s)
    except KafkaException as exc:
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    figures = _choice_figures(scenario, choices)
    figures["breaker"] = []
    return figures


async def _run(scenario: RoutingScenario, strategy: str, seed: int, settings: Settings,
               slack_s: float) -> _Choices:
    from router_stream.adapters.kafka_io import RecordWriter
    from router_stream.adapters.topics import apply_topics
    from router_stream.worker import RouterWorker

    run_id = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(scenario.policy(strategy))
        s = settings.model_copy(update={"topic_prefix": f"sim-{run_id}.",
                                        "group_id": f"sim-{run_id}", "persist": False,
                                        "policy_file": str(policy)})
        await apply_topics(s, [d.name for d in scenario.destinations])
        try:
            worker = RouterWorker(s, http=False)
            await worker.start()
            runner = asyncio.create_task(worker.run())
            answers: asyncio.Queue[ConsumedRecord] = asyncio.Queue()
            readers = [asyncio.create_task(_follow(s, topic, answers))
                       for topic in (s.topic(DECISIONS), s.topic(DLQ))]
            try:
                async with RecordWriter(s, linger_ms=2) as producer:
                    choices = await _drive(scenario, strategy, seed, s, producer, answers,
                                           slack_s)
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                worker.request_stop()
                await runner
        finally:
            await _delete_topics(s)
    return choices


async def _follow(s: Settings, topic: str, into: asyncio.Queue[ConsumedRecord]) -> None:
    from router_stream.adapters.kafka_io import read_records

    async for record in read_records(s, topic):
        into.put_nowait(record)


async def _drive(scenario: RoutingScenario, strategy: str, seed: int, s: Settings,
                 producer: RecordWriter, answers: asyncio.Queue[ConsumedRecord],
                 slack_s: float) -> _Choices:
    from router_stream.adapters.kafka_io import OutRecord

    instants = _instants(scenario, seed)
    dests = {d.name: d for d in scenario.destinations}
    delivery = random.Random(f"{seed}/delivery/{strategy}")
    choices = _Choices()
    start = time.monotonic()
    t0_ms = time.time() * 1000.0
    acks: list[asyncio.Future[Any]] = []

    async def feed() -> None:
        for i, t in enumerate(instants):
            await asyncio.sleep(max(0.0, start + t - time.monotonic()))
            body = {"signal_id": f"sig-{i}", "sender_id": "sim", "ts": t0_ms + t * 1000.0}
            acks.append(await producer.send(OutRecord(s.topic(SIGNALS), orjson.dumps(body),
                                                      key=b"sim")))

    async def answer() -> None:
        while len(choices.chosen) < len(instants):
            record = await answers.get()
            t = time.monotonic() - start
            if record.topic == s.topic(DLQ):
                choices.add(t, None, 0.0)
                continue
            decision = orjson.loads(record.value or b"null")
            name = decision["destinations"][0]
            ok, latency = dests[name].deliver(t, delivery)
            outcome = {"signal_id": decision["signal_id"], "destination": name, "ok": ok,
                       "latency_ms": latency, "ts": time.time() * 1000.0}
            acks.append(await producer.send(OutRecord(
                s.topic(OUTCOMES), orjson.dumps(outcome), key=name.encode())))
            choices.add(t, name, dests[name].success(t))

    try:
        await asyncio.wait_for(asyncio.gather(feed(), answer()),
                               scenario.duration_s + slack_s)
        await asyncio.gather(*acks)
    except TimeoutError:
        raise E2eTimeout(f"the worker decided {len(choices.chosen)} of {len(instants)} signals "
                         f"within {scenario.duration_s + slack_s:.0f} s") from None
    return choices


async def _delete_topics(s: Settings) -> None:
    from router_stream.adapters.topic_admin import connected_admin, delete_topics

    async with connected_admin(s, timeout=30.0) as admin:
        await delete_topics(admin, [t for t in (await admin.metadata()).topics
                                    if t.startswith(s.topic_prefix)])


E2E_FIGURES = ("delivery", "best_share_second_half", "dlq_share", "dead_share", "regret")


def compare(in_process: dict[str, Any], worker: dict[str, Any]) -> dict[str, Any]:
    """The figures of both runs side by side (``E2E_FIGURES``)."""
    return {k: {"in_process": in_process.get(k), "worker": worker.get(k)} for k in E2E_FIGURES}
