"""topics/topics.yaml and topics/schemas/*: complete, loadable, and in agreement with the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from router_stream.adapters import topics as tp
from router_stream.core.models import CONTROL_ADAPTER, Decision
from router_stream.errors import UserError

TOPICS_DIR = tp.default_topics_file().parent
SPEC_TOPICS = {"signals", "source-health", "outcomes", "router.control", "router.decisions",
               "router.dlq", "router.retry"}
EXTENSION_TOPICS = {"router.workers",  # heartbeats without Postgres (docs/operations.md)
                    "router.state",  # checkpoints of the shared state (docs/worker.md)
                    "router.events"}  # state events for the Postgres projection


def _registry() -> Registry:
    resources = []
    for path in (TOPICS_DIR / "schemas").glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validator(schema_file: str) -> Draft202012Validator:
    schema = json.loads((TOPICS_DIR / "schemas" / schema_file).read_text())
    return Draft202012Validator(schema, registry=REGISTRY)


def errors(schema_file: str, instance: Any) -> list[str]:
    return [e.message for e in validator(schema_file).iter_errors(instance)]


# --- declarations -----------------------------------------------------------------------------


def test_every_spec_topic_is_declared_with_an_existing_valid_schema():
    decl = tp.load_declarations()
    by_name = {t.logical: t for t in decl.topics}

    assert set(by_name) == SPEC_TOPICS | EXTENSION_TOPICS
    for spec in [*decl.topics, decl.routed]:
        if spec.logical == "router.workers":  # latest beat per worker, long-gone ones deleted
            assert spec.configs["cleanup.policy"] == "compact,delete"
        elif spec.logical == "router.state":  # the newest checkpoint, whatever its age
            assert spec.configs["cleanup.policy"] == "compact"
        else:
            assert spec.configs["cleanup.policy"] == "delete", spec.logical
        assert "retention.ms" in spec.configs, spec.logical
        if spec.logical in ("router.dlq", "router.state"):
            assert spec.schema is None  # original bytes / compressed checkpoint chunks
            continue
        schema = json.loads((TOPICS_DIR / spec.schema).read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_input_topics_are_co_partitioned_and_control_is_ordered():
    by_name = {t.logical: t for t in tp.load_declarations().topics}
    inputs = {by_name[n].partitions for n in ("signals", "source-health", "outcomes",
                                              "router.retry")}
    assert len(inputs) == 1
    assert by_name["router.control"].partitions == 1


def test_replication_is_clamped_to_the_cluster_with_min_insync():
    spec = tp.load_declarations().routed_spec("pager")
    assert (spec.replication_factor, spec.configs["min.insync.replicas"]) == (3, "2")
    one = spec.for_cluster(1)
    assert (one.replication_factor, one.configs["min.insync.replicas"]) == (1, "1")
    five = spec.for_cluster(5)
    assert (five.replication_factor, five.configs["min.insync.replicas"]) == (3, "2")


def test_routed_topic_for_a_destination_that_cannot_be_a_topic_name_is_refused():
    with pytest.raises(UserError, match="cannot be a topic name"):
        tp.load_declarations().routed_spec("bad/name")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topics: [", "not valid YAML"),
        ("topics: {}\n", "missing the `routed` template"),
        ("topics: {signals: {partitions: 0}}\nrouted: {partitions: 1}\n",
         "topics.signals.partitions"),
        ("topics: {signals: {partitions: 3, configs: {retention.ms: 1000}}}\n"
         "routed: {partitions: 1}\n", "quote them"),
    ],
)
def test_a_bad_declarations_file_names_the_file_and_the_problem(tmp_path: Path, text, message):
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        tp.load_declarations(path)
    assert str(path) in str(info.value)


def test_policy_destinations_from_routes_declarations_and_rollout(tmp_path: Path):
    (tmp_path / "candidate.yaml").write_text(
        "destinations: [opsgenie]\n"
        "routes:\n  alert: {strategy: first_healthy, tiers: [[opsgenie]]}\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "destinations: [archive, pagerduty, slack, email, metrics-store]\n"
        "routes:\n"
        "  alert: {strategy: first_healthy, tiers: [[pagerduty], [slack, email]]}\n"
        "  metric: {strategy: consensus, destinations: [metrics-store]}\n"
        "rollout: {mode: shadow, candidate_file: candidate.yaml}\n"
    )
    assert tp.policy_destinations(policy) == [
        "archive", "email", "metrics-store", "opsgenie", "pagerduty", "slack"
    ]


def test_an_invalid_policy_is_a_user_error_with_the_line(tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("routes:\n  alert: {strategy: teleport, destinations: [a]}\n")
    with pytest.raises(UserError, match=r"routes\.alert\.strategy.*line 2"):
        tp.policy_destinations(policy)


def test_mismatch_message_lists_every_problem_and_what_to_do():
    report = tp.TopicsReport(Path("/etc/router/topics.yaml"), problems=[
        tp.TopicProblem("p.signals", "partitions", "12", "2"),
        tp.TopicProblem("p.outcomes", "missing", "exists", "missing"),
    ])
    mismatch = tp.TopicMismatch(report)
    text = str(mismatch)
    assert "p.signals: partitions is 2, declared 12" in text
    assert "p.outcomes: missing" in text
    assert mismatch.fix == (
        "create the missing ones with `router-stream topics apply --policy FILE`; make the "
        "others match /etc/router/topics.yaml, or declare them as they are in a topics file of "
        "your own (ROUTER_TOPICS_FILE)")
    assert text.endswith(f"({mismatch.fix})")


def test_only_missing_topics_are_only_told_to_be_created():
    report = tp.TopicsReport(Path("t.yaml"), problems=[
        tp.TopicProblem("p.outcomes", "missing", "exists", "missing")])
    assert tp.TopicMismatch(report).fix == (
        "create the missing ones with `router-stream topics apply --policy FILE`")


ROUTED_WITH_DESTINATIONS = """\
defaults: {replication_factor: 3, configs: {min.insync.replicas: "2"}}
topics:
  signals: {partitions: 12, configs: {retention.ms: "1000"}}
routed:
  partitions: 12
  key: same key as the input record
  configs: {cleanup.policy: delete, retention.ms: "604800000"}
  destinations:
    sms: {partitions: 1}
    metrics-store: {partitions: 24, configs: {retention.ms: "86400000"}}
"""


def test_a_destination_may_differ_from_the_routed_template(tmp_path: Path):
    path = tmp_path / "topics.yaml"
    path.write_text(ROUTED_WITH_DESTINATIONS)
    decl = tp.load_declarations(path)

    sms, metrics, other = (decl.routed_spec(d) for d in ("sms", "metrics-store", "pagerduty"))
    assert (sms.logical, sms.partitions, sms.replication_factor) == ("routed.sms", 1, 3)
    assert sms.configs == other.configs == {
        "min.insync.replicas": "2", "cleanup.policy": "delete", "retention.ms": "604800000"}
    assert (metrics.partitions, metrics.configs["retention.ms"]) == (24, "86400000")
    assert metrics.configs["cleanup.policy"] == "delete"  # the template's, where not overridden
    assert (other.partitions, other.key) == (12, sms.key)
    assert [t.partitions for t in decl.expected(["sms", "pagerduty"])][-2:] == [12, 1]


@pytest.mark.parametrize(
    ("destinations", "message"),
    [
        ("[sms]", "routed.destinations: must be a mapping"),
        ("{sms: 1}", "topics.routed.sms: must be a mapping"),
        ("{sms: {partitions: 0}}", "topics.routed.sms.partitions"),
        ("{sms: {partitons: 1}}", r"topics.routed.sms: unknown field\(s\) partitons"),
        ("{sms: {configs: {retention.ms: 1}}}", "quote them"),
        ("{'a/b': {partitions: 1}}", "'a/b' cannot be a topic name"),
    ],
)
def test_a_bad_destination_declaration_names_the_file_and_the_problem(
        tmp_path: Path, destinations: str, message: str):
    path = tmp_path / "topics.yaml"
    path.write_text(f"topics: {{}}\nrouted: {{partitions: 3, destinations: {destinations}}}\n")
    with pytest.raises(UserError, match=message) as info:
        tp.load_declarations(path)
    assert str(path) in str(info.value)


def test_the_configured_topics_file_is_used_unless_one_is_named(tmp_path: Path):
    from router_stream.config import Settings

    mine, named = tmp_path / "mine.yaml", tmp_path / "named.yaml"
    mine.write_text(ROUTED_WITH_DESTINATIONS)
    named.write_text("topics: {}\nrouted: {partitions: 2}\n")

    assert tp.configured_declarations(Settings()).source == tp.default_topics_file()
    configured = Settings(topics_file=mine)  # ROUTER_TOPICS_FILE
    assert tp.configured_declarations(configured).routed_spec("sms").partitions == 1
    assert tp.configured_declarations(configured, named).routed_spec("sms").partitions == 2


# --- schemas agree with what producers send and the router writes -------------------------------


@pytest.mark.parametrize(
    "signal",
    [
        {"sender_id": "s1"},
        {"sender_id": "s1", "ts": "2025-01-02T03:04:05Z", "kind": "alert", "priority": 9,
         "ttl_ms": 1000, "payload": {"a": 1}, "extra_field": True},
        {"sender_id": "s1", "ts": 1735787045000, "metric": "temp", "source_id": "a", "value": 1.5},
    ],
)
def test_valid_signals(signal):
    assert errors("signal.schema.json", signal) == []


@pytest.mark.parametrize(
    "signal",
    [{}, {"sender_id": ""}, {"sender_id": "s", "priority": 10}, {"sender_id": "s", "ttl_ms": 0},
     {"sender_id": "s", "ts": True}, {"sender_id": "s", "payload": []}],
)
def test_invalid_signals(signal):
    assert errors("signal.schema.json", signal) != []


def test_health_event_and_outcome():
    assert errors("health-event.schema.json", {"source_id": "a", "ts": 1, "ok": True,
                                               "error_rate": 0.1}) == []
    assert errors("health-event.schema.json", {"source_id": "a", "ts": 1,
                                               "error_rate": 2}) != []
    assert errors("outcome.schema.json", {"signal_id": "s", "destination": "d", "ok": False,
                                          "reward": 0.5}) == []
    assert errors("outcome.schema.json", {"signal_id": "s", "destination": "d"}) != []


def test_every_control_command_the_model_accepts_validates():
    commands = [
        {"type": "policy_publish", "policy_yaml": "routes: {}", "version": "v1",
         "command_id": "c1", "issued_at": 1.0, "issued_by": "alice"},
        {"type": "policy_reload"},
        {"type": "override_set", "override_id": "o1", "kind": "alert",
         "destinations": ["slack"], "expires_at": 2e9, "reason": "maintenance"},
        {"type": "override_set", "override_id": "o2", "action": "drain", "target": "pager",
         "expires_at": 2e9},
        {"type": "override_set", "override_id": "o3", "action": "exclude_source",
         "target": "probe-7", "expires_at": 2e9},
        {"type": "override_clear", "override_id": "o1"},
        {"type": "breaker_force", "target": "pager", "state": "open", "expires_at": None},
        {"type": "breaker_reset", "target": "pager"},
        {"type": "rollout_rollback", "candidate_version": "p-0123456789ab", "reason": "worse"},
    ]
    for command in commands:
        model = CONTROL_ADAPTER.validate_python(command)
        assert errors("control-command.schema.json", command) == [], command
        assert errors("control-command.schema.json", model.model_dump()) == [], command
    assert errors("control-command.schema.json", {"type": "self_destruct"}) != []
    assert errors("control-command.schema.json", {"type": "breaker_force",
                                                  "target": "p", "state": "half_open"}) != []


def test_the_decision_the_core_publishes_validates():
    decision = Decision(
        decision_id="d1", signal_id="s1", tenant="t", kind="alert", destinations=["pager"],
        strategy="first_healthy", tier=0, policy_version="v1", confidence=0.9,
        trust={"pager": 0.8}, breakers={"pager": "closed"}, input_topic="signals",
        input_partition=0, input_offset=5, decided_at=1.5, signal_ts=1.0,
    )
    as_json = orjson.loads(decision.to_json())
    assert errors("decision.schema.json", as_json) == []
    assert errors("decision.schema.json", {**as_json, "confidence": 1.5}) != []


def test_routed_record_is_the_signal_plus_route():
    route = {"decision_id": "d1", "destination": "pager", "kind": "alert",
             "strategy": "first_healthy", "tier": 0, "policy_version": "v1", "confidence": 1.0,
             "routed_at": 1.5}
    signal = {"sender_id": "s1", "signal_id": "s1", "payload": {}}
    assert errors("routed.schema.json", {**signal, "route": route}) == []
    assert errors("routed.schema.json", signal) != []
    assert errors("routed.schema.json", {"route": route}) != []  # still a signal: sender_id


def test_the_heartbeat_a_worker_sends_validates_and_reads_back():
    from router_stream.core.heartbeat import WorkerHeartbeat

    hb = WorkerHeartbeat(
        worker_id="host-a:41", group_id="router-stream", host="host-a", pid=41,
        policy_version="p-0123456789ab", started_at=1.7e9, last_seen=1.7e9 + 5, status="running",
        interval_s=5.0, partitions=(("signals", 0), ("router.retry", 0)),
        candidate_version="p-ba9876543210", rollout_mode="canary", rollout_share=0.1,
        signals_processed=42, beats=2, software_version="0.1.0")
    as_sent = orjson.loads(orjson.dumps(hb.as_json()))
    assert errors("worker-heartbeat.schema.json", as_sent) == []
    assert WorkerHeartbeat.from_json(as_sent) == hb
    assert errors("worker-heartbeat.schema.json", {**as_sent, "status": "sleeping"}) != []
    assert errors("worker-heartbeat.schema.json", {**as_sent, "partitions": [["signals"]]}) != []
