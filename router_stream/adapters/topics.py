"""Kafka topics as declared in ``topics/topics.yaml``: load, create, verify, list.

``apply_topics`` creates what is missing and verifies what exists; ``verify_topics`` only
verifies (the worker calls it at start and refuses to run on a problem); ``list_topics`` shows
router-stream's topics as the cluster has them. Problems are collected, not raised one by one,
so an operator sees everything that is wrong at once (:class:`TopicMismatch`).

Rules (the header of topics.yaml explains why):

* replication_factor is clamped to the broker count, with a warning, and min.insync.replicas
  with it; verification accepts the clamped value only while the cluster is that small;
* an existing topic's partition count is never changed; fewer partitions than declared is a
  problem, more is a warning;
* every config a declaration lists must match exactly (string comparison, as Kafka reports it).

aiokafka's and the OS's errors are translated at this seam into
:class:`~router_stream.errors.BrokerUnavailable` / ``OperationTimeout`` (``raise ... from exc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from router_stream.adapters import data_path
from router_stream.adapters.kafka_failures import ConnectFailures
from router_stream.config import ROUTED_PREFIX, Settings
from router_stream.errors import BrokerUnavailable, OperationTimeout, RouterError, UserError

__all__ = [
    "TopicCreationFailed",
    "TopicDeclarations",
    "TopicInfo",
    "TopicMismatch",
    "TopicProblem",
    "TopicSpec",
    "TopicsReport",
    "apply_topics",
    "default_topics_file",
    "list_topics",
    "load_declarations",
    "policy_destinations",
    "verify_topics",
]

_TOPIC_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
_MIN_ISR = "min.insync.replicas"
_TOPIC_ALREADY_EXISTS = 36  # Kafka error code: another `apply` created it first


# --- declarations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic, by its logical name (no prefix)."""

    logical: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]
    schema: str | None = None
    key: str | None = None
    description: str = ""

    def for_cluster(self, brokers: int) -> TopicSpec:
        """This spec as it can exist on a cluster of ``brokers`` brokers (see module doc)."""
        rf = min(self.replication_factor, max(brokers, 1))
        configs = dict(self.configs)
        if _MIN_ISR in configs:
            configs[_MIN_ISR] = str(min(int(configs[_MIN_ISR]), rf))
        return TopicSpec(self.logical, self.partitions, rf, configs, self.schema, self.key,
                         self.description)


@dataclass(frozen=True)
class TopicDeclarations:
    """topics.yaml: the fixed topics plus the template for ``routed.<destination>``."""

    topics: tuple[TopicSpec, ...]
    routed: TopicSpec
    source: Path

    def routed_spec(self, destination: str) -> TopicSpec:
        if not _TOPIC_SAFE.match(destination):
            raise UserError(
                f"destination {destination!r} cannot be a topic name: use [A-Za-z0-9._-]"
            )
        r = self.routed
        return TopicSpec(f"{ROUTED_PREFIX}{destination}", r.partitions, r.replication_factor,
                         r.configs, r.schema, r.key, r.description)

    def expected(self, destinations: Iterable[str] = ()) -> list[TopicSpec]:
        """Every topic a deployment routing to ``destinations`` needs."""
        return [*self.topics, *(self.routed_spec(d) for d in sorted(set(destinations)))]

    def declares(self, logical: str) -> bool:
        return logical.startswith(ROUTED_PREFIX) or any(t.logical == logical for t in self.topics)


def default_topics_file() -> Path:
    """The topic declarations shipped with the package (the repository's ``topics/``)."""
    return data_path("topics") / "topics.yaml"


def _spec(logical: str, raw: Any, defaults: Mapping[str, Any], source: Path) -> TopicSpec:
    where = f"{source}: topics.{logical}"
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: must be a mapping")
    partitions = raw.get("partitions")
    rf = raw.get("replication_factor", defaults.get("replication_factor", 1))
    if not isinstance(partitions, int) or partitions < 1:
        raise UserError(f"{where}.partitions: must be an integer >= 1")
    if not isinstance(rf, int) or rf < 1:
        raise UserError(f"{where}.replication_factor: must be an integer >= 1")
    configs = {**(defaults.get("configs") or {}), **(raw.get("configs") or {})}
    bad = [k for k, v in configs.items() if not isinstance(v, str)]
    if bad:
        raise UserError(f"{where}.configs: values must be strings (quote them): {', '.join(bad)}")
    return TopicSpec(logical, partitions, rf, configs, raw.get("schema"), raw.get("key"),
                     " ".join(str(raw.get("description", "")).split()))


def load_declarations(path: Path | None = None) -> TopicDeclarations:
    """Read and check topics.yaml; a bad file is a UserError naming the file and the field."""
    source = path or default_topics_file()
    try:
        doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read topic declarations {source}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, Mapping) or not isinstance(doc.get("topics"), Mapping):
        raise UserError(f"{source}: expected a mapping with a `topics` mapping")
    defaults = doc.get("defaults") or {}
    topics = tuple(_spec(name, raw, defaults, source) for name, raw in doc["topics"].items())
    if "routed" not in doc:
        raise UserError(f"{source}: missing the `routed` template")
    routed = _spec(f"{ROUTED_PREFIX}<destination>", doc["routed"], defaults, source)
    return TopicDeclarations(topics, routed, source)


def policy_destinations(policy_file: Path) -> list[str]:
    """Every destination a policy can route to, its rollout candidate's included.

    The file is validated as ``policy validate`` does: a bad policy raises PolicyError (exit 1)
    with the path and line of each issue.
    """
    from router_stream.core.policy import Policy, load_policy

    found: set[str] = set()
    seen: set[Path] = set()
    pending = [policy_file]
    while pending:
        path = pending.pop().resolve()
        if path in seen:
            continue
        seen.add(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read policy {path}: {exc.strerror}") from exc
        policies: list[Policy] = [load_policy(text, str(path))]
        while policies:
            policy = policies.pop()
            found.update(policy.destinations)
            for route in policy.routes.values():
                found.update(route.all_destinations())
            if policy.rollout is not None and policy.rollout.candidate is not None:
                policies.append(policy.rollout.candidate)
            elif policy.rollout is not None and policy.rollout.candidate_file:
                pending.append(path.parent / policy.rollout.candidate_file)
    return sorted(found)


# --- reports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicProblem:
    """One way a topic differs from its declaration (``what`` is "missing" or the field)."""

    topic: str
    what: str
    declared: str
    actual: str

    def __str__(self) -> str:
        if self.what == "missing":
            return f"{self.topic}: missing"
        return f"{self.topic}: {self.what} is {self.actual}, declared {self.declared}"


@dataclass
class TopicsReport:
    created: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    problems: list[TopicProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "verified": self.verified,
            "problems": [asdict(p) | {"message": str(p)} for p in self.problems],
            "warnings": self.warnings,
        }


class TopicMismatch(RouterError):
    """Topics are missing or differ from topics.yaml; ``problems`` lists every one."""

    def __init__(self, report: TopicsReport) -> None:
        self.report = report
        self.problems = report.problems
        lines = [f"{len(report.problems)} topic problem(s):"]
        lines += [f"  {p}" for p in report.problems]
        if any(p.what == "missing" for p in report.problems):
            lines.append("  (create missing topics with `router-stream topics apply`)")
        super().__init__("\n".join(lines))


class TopicCreationFailed(RouterError):
    """The broker refused to create a topic (invalid config, policy violation, ...)."""


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the cluster has it (``exists`` False: declared but missing)."""

    name: str
    logical: str
    exists: bool
    partitions: int | None = None
    replication_factor: int | None = None
    configs: Mapping[str, str] = field(default_factory=dict)


# --- the admin seam -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _admin(settings: Settings, timeout: float) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; Kafka/OS errors leave as BrokerUnavailable/OperationTimeout."""
    client = AIOKafkaAdminClient(
        **settings.kafka_client_options, request_timeout_ms=int(timeout * 1000)
    )
    failures = ConnectFailures()
    try:
        try:
            with failures:
                await asyncio.wait_for(client.start(), timeout)
            yield client
        finally:
            await client.close()
    except TimeoutError as exc:
        raise OperationTimeout(
            f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f}s"
        ) from exc
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(failures.describe(settings, exc)) from exc


@dataclass(frozen=True)
class _Observed:
    partitions: int
    replication_factor: int
    leaders_ready: bool
    configs: Mapping[str, str]


async def _describe(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, _Observed]:
    """What the cluster has for ``names``; absent names are missing topics.

    Only names the cluster lists are described: a metadata request for a missing topic makes a
    broker with ``auto.create.topics.enable=true`` (Kafka's default) create it with default
    settings, which would turn "missing" into a wrong topic.
    """
    existing = set(await admin.list_topics())
    names = [n for n in names if n in existing]
    if not names:
        return {}
    described = await admin.describe_topics(names)
    shapes = {
        t["topic"]: t["partitions"] for t in described if t["error_code"] == 0 and t["partitions"]
    }
    if not shapes:
        return {}
    configs: dict[str, dict[str, str]] = {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in shapes]
    for response in await admin.describe_configs(resources):
        for _err, _msg, _type, name, entries, *_ in response.resources:
            configs[name] = {entry[0]: entry[1] for entry in entries}
    return {
        name: _Observed(
            partitions=len(parts),
            replication_factor=min(len(p["replicas"]) for p in parts),
            leaders_ready=all(p["leader"] is not None and p["leader"] >= 0 for p in parts),
            configs=configs.get(name, {}),
        )
        for name, parts in shapes.items()
    }


def _compare(
    name: str, declared: TopicSpec, effective: TopicSpec, seen: _Observed, report: TopicsReport
) -> None:
    problems: list[TopicProblem] = []
    if seen.partitions < declared.partitions:
        problems.append(TopicProblem(name, "partitions", str(declared.partitions),
                                     str(seen.partitions)))
    elif seen.partitions > declared.partitions:
        report.warnings.append(
            f"{name}: {seen.partitions} partitions, more than the {declared.partitions} declared"
        )
    if seen.replication_factor < effective.replication_factor:
        problems.append(TopicProblem(name, "replication_factor",
                                     str(effective.replication_factor),
                                     str(seen.replication_factor)))
    for key, want in effective.configs.items():
        have = seen.configs.get(key)
        if have != want:
            problems.append(TopicProblem(name, key, want, "unset" if have is None else have))
    report.problems.extend(problems)
    if not problems:
        report.verified.append(name)


async def _wait_until_ready(
    admin: AIOKafkaAdminClient, names: Sequence[str], timeout: float
) -> None:
    """Creation is acknowledged before every broker has the metadata: wait for leaders."""
    deadline = asyncio.get_running_loop().time() + timeout
    pending = list(names)
    while pending:
        seen = await _describe(admin, pending)
        pending = [n for n in pending if n not in seen or not seen[n].leaders_ready]
        if not pending:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise OperationTimeout(
                f"created topics have no partition leaders after {timeout:.0f}s: "
                + ", ".join(pending)
            )
        await asyncio.sleep(0.1)


async def _wait_until_serving(settings: Settings, partitions: Mapping[str, int],
                              timeout: float) -> None:
    """A leader in the metadata is not yet a leader that answers: for a moment after creation
    a broker refuses offset requests with NotLeaderForPartition, which a worker started right
    away (the demo, `topics apply && worker`) logs at ERROR before aiokafka retries. Asking for
    the end offsets here retries that silently, so created topics are returned serving."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_options, enable_auto_commit=False)
    tps = [TopicPartition(name, p) for name, n in partitions.items() for p in range(n)]
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        await asyncio.wait_for(consumer.end_offsets(tps), timeout)
    except TimeoutError as exc:
        raise OperationTimeout(
            f"created topics do not answer offset requests after {timeout:.0f}s") from exc
    except KafkaError as exc:
        raise BrokerUnavailable(f"created topics do not answer offset requests: {exc!r}") from exc
    finally:
        await consumer.stop()


def _clamp_warnings(expected: Sequence[TopicSpec], brokers: int) -> list[str]:
    clamped = sorted({t.replication_factor for t in expected if t.replication_factor > brokers})
    if not clamped:
        return []
    return [
        f"the cluster has {brokers} broker(s): replication factor {', '.join(map(str, clamped))} "
        f"clamped to {brokers} (and {_MIN_ISR} with it); fine for development only"
    ]


async def _create(
    admin: AIOKafkaAdminClient, specs: Mapping[str, TopicSpec], timeout: float
) -> tuple[list[str], list[str]]:
    """Create ``specs`` (physical name -> effective spec); returns (created, created_by_others)."""
    new = [
        NewTopic(name, s.partitions, s.replication_factor, topic_configs=dict(s.configs))
        for name, s in specs.items()
    ]
    response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
    created, raced, failed = [], [], []
    for name, code, message, *_ in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code == _TOPIC_ALREADY_EXISTS:
            raced.append(name)
        else:
            failed.append(f"{name}: {message or f'error code {code}'}")
    if failed:
        raise TopicCreationFailed("the broker refused to create topics:\n  " + "\n  ".join(failed))
    return sorted(created), sorted(raced)


async def _reconcile(
    settings: Settings,
    destinations: Iterable[str],
    declarations: TopicDeclarations | None,
    *,
    create: bool,
    timeout: float,
) -> TopicsReport:
    decl = declarations or load_declarations()
    expected = {settings.topic(s.logical): s for s in decl.expected(destinations)}
    report = TopicsReport()
    async with _admin(settings, timeout) as admin:
        brokers = len((await admin.describe_cluster())["brokers"])
        effective = {name: s.for_cluster(brokers) for name, s in expected.items()}
        report.warnings.extend(_clamp_warnings(list(expected.values()), brokers))
        seen = await _describe(admin, list(expected))
        missing = {name: effective[name] for name in expected if name not in seen}
        if create and missing:
            report.created, raced = await _create(admin, missing, timeout)
            await _wait_until_ready(admin, [*report.created, *raced], timeout)
            seen.update(await _describe(admin, raced))
        for name, spec in expected.items():
            if name in report.created:
                continue
            if name not in seen:
                report.problems.append(TopicProblem(name, "missing", "exists", "missing"))
            else:
                _compare(name, spec, effective[name], seen[name], report)
    if report.created:
        await _wait_until_serving(settings, {n: effective[n].partitions for n in report.created},
                                  timeout)
    return report


# --- entry points ---------------------------------------------------------------------------


async def apply_topics(
    settings: Settings,
    destinations: Iterable[str] = (),
    declarations: TopicDeclarations | None = None,
    *,
    timeout: float = 30.0,
) -> TopicsReport:
    """Create missing topics, verify existing ones; raise TopicMismatch listing every problem."""
    report = await _reconcile(settings, destinations, declarations, create=True, timeout=timeout)
    if report.problems:
        raise TopicMismatch(report)
    return report


async def verify_topics(
    settings: Settings,
    destinations: Iterable[str] = (),
    declarations: TopicDeclarations | None = None,
    *,
    timeout: float = 30.0,
) -> TopicsReport:
    """Check without changing anything (the worker's start-up gate); raise TopicMismatch."""
    report = await _reconcile(settings, destinations, declarations, create=False, timeout=timeout)
    if report.problems:
        raise TopicMismatch(report)
    return report


async def list_topics(
    settings: Settings,
    destinations: Iterable[str] = (),
    declarations: TopicDeclarations | None = None,
    *,
    timeout: float = 30.0,
) -> list[TopicInfo]:
    """router-stream's topics under the configured prefix, plus declared ones that are missing.

    A topic is router-stream's when its name without the prefix is declared in topics.yaml or
    is ``routed.<something>``.
    """
    decl = declarations or load_declarations()
    prefix = settings.topic_prefix
    wanted = {settings.topic(s.logical): s.logical for s in decl.expected(destinations)}
    async with _admin(settings, timeout) as admin:
        for name in await admin.list_topics():
            if name.startswith(prefix) and decl.declares(name[len(prefix):]):
                wanted.setdefault(name, name[len(prefix):])
        seen = await _describe(admin, sorted(wanted))
    return [
        TopicInfo(name, logical, True, seen[name].partitions, seen[name].replication_factor,
                  dict(seen[name].configs))
        if name in seen else TopicInfo(name, logical, False)
        for name, logical in sorted(wanted.items())
    ]
