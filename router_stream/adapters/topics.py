"""Kafka topics as declared in ``topics/topics.yaml`` (or the deployment's own copy,
``ROUTER_TOPICS_FILE``): load, create, verify, list.

``apply_topics`` creates what is missing and verifies what exists (and, asked to, sets the
configs an existing topic has otherwise than declared); ``verify_topics`` only
verifies (the worker calls it at start and refuses to run on a problem); ``list_topics`` shows
router-stream's topics as the cluster has them. Problems are collected, not raised one by one,
so an operator sees everything that is wrong at once (:class:`TopicMismatch`).

Rules (the header of topics.yaml explains why):

* replication_factor is clamped to the broker count, with a warning, and min.insync.replicas
  with it; verification accepts the clamped value only while the cluster is that small;
* an existing topic's partition count is never changed; fewer partitions than declared is a
  problem, more is a warning;
* every config a declaration lists must match exactly (string comparison, as Kafka reports it);
  ``apply_topics(alter_configs=True)`` sets those that differ, one by one, and nothing else.

The cluster is reached through :mod:`router_stream.adapters.topic_admin` (confluent-kafka's
AdminClient), which translates its errors into :class:`~router_stream.errors.BrokerUnavailable` /
``OperationTimeout`` (``raise ... from exc``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from router_stream.adapters import data_path
from router_stream.adapters.topic_admin import (
    ObservedTopic,
    TopicAdmin,
    TopicCreationFailed,
    alter_configs,
    connected_admin,
    create_topics,
    describe,
    wait_until_ready,
    wait_until_serving,
)
from router_stream.config import ROUTED_PREFIX, Settings
from router_stream.errors import RouterError, UserError

__all__ = [
    "TopicCreationFailed",
    "TopicDeclarations",
    "TopicInfo",
    "TopicMismatch",
    "TopicProblem",
    "TopicSpec",
    "TopicsReport",
    "apply_topics",
    "configured_declarations",
    "default_topics_file",
    "list_topics",
    "load_declarations",
    "policy_destinations",
    "verify_topics",
]

_TOPIC_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
_MIN_ISR = "min.insync.replicas"
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
    """topics.yaml: the fixed topics, the template for ``routed.<destination>``, and what
    differs from the template for particular destinations (``routed.destinations``)."""

    topics: tuple[TopicSpec, ...]
    routed: TopicSpec
    source: Path
    destinations: Mapping[str, TopicSpec] = field(default_factory=dict)

    def routed_spec(self, destination: str) -> TopicSpec:
        if not _TOPIC_SAFE.match(destination):
            raise UserError(
                f"destination {destination!r} cannot be a topic name: use [A-Za-z0-9._-]"
            )
        r = self.destinations.get(destination, self.routed)
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
    template = doc["routed"]
    routed = _spec(f"{ROUTED_PREFIX}<destination>", template, defaults, source)
    return TopicDeclarations(topics, routed, source, _per_destination(template, defaults, source))


def _per_destination(template: Mapping[str, Any], defaults: Mapping[str, Any],
                     source: Path) -> dict[str, TopicSpec]:
    """``routed.destinations``: per destination, the fields that differ from the template
    (partitions, replication_factor, configs merged over the template's)."""
    raw = template.get("destinations") or {}
    if not isinstance(raw, Mapping):
        raise UserError(f"{source}: routed.destinations: must be a mapping of destination names")
    found: dict[str, TopicSpec] = {}
    for name, differs in raw.items():
        where = f"{ROUTED_PREFIX}{name}"
        if not isinstance(name, str) or not _TOPIC_SAFE.match(name):
            raise UserError(f"{source}: routed.destinations: {name!r} cannot be a topic name: "
                            "use [A-Za-z0-9._-]")
        if not isinstance(differs, Mapping):
            raise UserError(f"{source}: topics.{where}: must be a mapping")
        unknown = sorted(set(differs) - {"partitions", "replication_factor", "configs"})
        if unknown:
            raise UserError(f"{source}: topics.{where}: unknown field(s) {', '.join(unknown)} "
                            "(partitions, replication_factor, configs)")
        configs = {**(template.get("configs") or {}), **(differs.get("configs") or {})}
        found[name] = _spec(where, {**template, **differs, "configs": configs}, defaults, source)
    return found


def configured_declarations(settings: Settings, path: Path | None = None) -> TopicDeclarations:
    """The declarations every command and the worker use: ``path`` (``topics --file``), else
    ``ROUTER_TOPICS_FILE``, else the file shipped with router-stream."""
    return load_declarations(path or settings.topics_file)


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


_SHAPE = frozenset({"partitions", "replication_factor"})
"""What ``apply`` never changes on an existing topic."""


@dataclass(frozen=True)
class TopicProblem:
    """One way a topic differs from its declaration (``what`` is "missing" or the field)."""

    topic: str
    what: str
    declared: str
    actual: str

    @property
    def is_config(self) -> bool:
        """A topic config that differs (what ``--alter-configs`` sets), not its shape."""
        return self.what not in _SHAPE and self.what != "missing"

    def __str__(self) -> str:
        if self.what == "missing":
            return f"{self.topic}: missing"
        return f"{self.topic}: {self.what} is {self.actual}, declared {self.declared}"


@dataclass
class TopicsReport:
    source: Path  # the declarations compared with
    created: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)  # "<topic>: <config> <was> -> <now>"
    verified: list[str] = field(default_factory=list)
    problems: list[TopicProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "altered": self.altered,
            "verified": self.verified,
            "problems": [asdict(p) | {"message": str(p)} for p in self.problems],
            "warnings": self.warnings,
        }


class TopicMismatch(RouterError):
    """Topics are missing or differ from their declarations; ``problems`` lists every one."""

    def __init__(self, report: TopicsReport) -> None:
        self.report = report
        self.problems = report.problems
        fixes = []
        if any(p.what == "missing" for p in report.problems):
            fixes.append("create the missing ones with `router-stream topics apply --policy FILE`")
        if any(p.is_config for p in report.problems):
            fixes.append("set the configs as declared with `router-stream topics apply "
                         "--alter-configs`")
        if any(p.what in _SHAPE for p in report.problems):
            fixes.append(f"make the others match {report.source}, or declare them as they are in a "
                         "topics file of your own (ROUTER_TOPICS_FILE)")
        self.fix = "; ".join(fixes)
        """What to do about the problems, in one line."""
        lines = [f"{len(report.problems)} topic problem(s):"]
        lines += [f"  {p}" for p in report.problems]
        lines.append(f"  ({self.fix})")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the cluster has it (``exists`` False: declared but missing)."""

    name: str
    logical: str
    exists: bool
    partitions: int | None = None
    replication_factor: int | None = None
    configs: Mapping[str, str] = field(default_factory=dict)


def _compare(
    name: str, declared: TopicSpec, effective: TopicSpec, seen: ObservedTopic, report: TopicsReport
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


def _clamp_warnings(expected: Sequence[TopicSpec], brokers: int) -> list[str]:
    clamped = sorted({t.replication_factor for t in expected if t.replication_factor > brokers})
    if not clamped:
        return []
    return [
        f"the cluster has {brokers} broker(s): replication factor {', '.join(map(str, clamped))} "
        f"clamped to {brokers} (and {_MIN_ISR} with it); fine for development only"
    ]


async def _reconcile(
    settings: Settings,
    destinations: Iterable[str],
    declarations: TopicDeclarations | None,
    *,
    create: bool,
    timeout: float,
    alter: bool = False,
) -> TopicsReport:
    decl = declarations or configured_declarations(settings)
    expected = {settings.topic(s.logical): s for s in decl.expected(destinations)}
    report = TopicsReport(decl.source)
    async with connected_admin(settings, timeout) as admin:
        brokers = len((await admin.metadata()).brokers)
        effective = {name: s.for_cluster(brokers) for name, s in expected.items()}
        report.warnings.extend(_clamp_warnings(list(expected.values()), brokers))
        seen = await describe(admin, list(expected))
        missing = {name: effective[name] for name in expected if name not in seen}
        if create and missing:
            report.created, raced = await create_topics(admin, missing)
            await wait_until_ready(admin, [*report.created, *raced])
            seen.update(await describe(admin, raced))
        for name, spec in expected.items():
            if name in report.created:
                continue
            if name not in seen:
                report.problems.append(TopicProblem(name, "missing", "exists", "missing"))
            else:
                _compare(name, spec, effective[name], seen[name], report)
        if alter:
            await _alter(admin, report, expected, effective)
        if report.created:
            await wait_until_serving(admin, {n: effective[n].partitions
                                              for n in report.created})
    return report


async def _alter(admin: TopicAdmin, report: TopicsReport, declared: Mapping[str, TopicSpec],
                 effective: Mapping[str, TopicSpec]) -> None:
    """Set the configs ``report`` found differing, then compare those topics again: what the
    cluster now has is what the report says."""
    changes: dict[str, dict[str, str]] = {}
    for p in report.problems:
        if p.is_config:
            changes.setdefault(p.topic, {})[p.what] = p.declared
    if not changes:
        return
    seen = await alter_configs(admin, changes)
    report.altered.extend(f"{p.topic}: {p.what} {p.actual} -> {p.declared}"
                          for p in report.problems if p.is_config)
    report.problems = [p for p in report.problems if p.topic not in changes]
    for name in changes:
        if name not in seen:  # deleted meanwhile
            report.problems.append(TopicProblem(name, "missing", "exists", "missing"))
        else:
            _compare(name, declared[name], effective[name], seen[name], report)


# --- entry points ---------------------------------------------------------------------------


async def apply_topics(
    settings: Settings,
    destinations: Iterable[str] = (),
    declarations: TopicDeclarations | None = None,
    *,
    timeout: float = 30.0,
    alter_configs: bool = False,
) -> TopicsReport:
    """Create missing topics, verify existing ones; raise TopicMismatch listing every problem.
    ``alter_configs``: set an existing topic's configs that differ from its declaration (its
    partitions and replication are never changed)."""
    report = await _reconcile(settings, destinations, declarations, create=True, timeout=timeout,
                              alter=alter_configs)
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
    decl = declarations or configured_declarations(settings)
    prefix = settings.topic_prefix
    wanted = {settings.topic(s.logical): s.logical for s in decl.expected(destinations)}
    async with connected_admin(settings, timeout) as admin:
        for name in (await admin.metadata()).topics:
            if name.startswith(prefix) and decl.declares(name[len(prefix):]):
                wanted.setdefault(name, name[len(prefix):])
        seen = await describe(admin, sorted(wanted))
    return [
        TopicInfo(name, logical, True, seen[name].partitions, seen[name].replication_factor,
                  dict(seen[name].configs))
        if name in seen else TopicInfo(name, logical, False)
        for name, logical in sorted(wanted.items())
    ]
