"""The supervisor of `worker --processes N` without processes: restart policy, readiness and
liveness of the whole, what each child is told."""

from __future__ import annotations

import signal
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_stream.config import Settings
from router_stream.errors import ConfigError
from router_stream.worker.supervisor import (
    ChildHealth,
    GiveUp,
    Restart,
    RestartPolicy,
    child_command,
    child_environment,
    child_ports,
    describe_exit,
    whole_liveness,
    whole_readiness,
)


def test_restart_delay_doubles_with_each_crash_up_to_the_cap():
    policy = RestartPolicy(max_restarts=10, window_s=1000, first_delay_s=0.5, max_delay_s=3)
    delays = [policy.on_crash(1, now=float(t)) for t in range(5)]
    assert delays == [Restart(0.5), Restart(1.0), Restart(2.0), Restart(3), Restart(3)]


def test_a_child_crashing_past_the_limit_within_the_window_is_given_up():
    policy = RestartPolicy(max_restarts=3, window_s=60)
    decisions = [policy.on_crash(2, now=t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert all(isinstance(d, Restart) for d in decisions[:3])
    assert isinstance(decisions[3], GiveUp)
    assert "4 times within 60 s (limit 3)" in decisions[3].reason


def test_crashes_older_than_the_window_are_forgotten_and_the_delay_starts_over():
    policy = RestartPolicy(max_restarts=3, window_s=60, first_delay_s=0.5)
    for t in (0.0, 1.0, 2.0):
        policy.on_crash(1, now=t)
    assert policy.on_crash(1, now=100.0) == Restart(0.5)


def test_children_are_counted_apart():
    policy = RestartPolicy(max_restarts=1, window_s=60)
    assert isinstance(policy.on_crash(1, now=0.0), Restart)
    assert isinstance(policy.on_crash(2, now=0.0), Restart)
    assert isinstance(policy.on_crash(1, now=1.0), GiveUp)


@given(st.lists(st.floats(min_value=0, max_value=10_000), min_size=1, max_size=50))
def test_never_more_restarts_in_a_window_than_the_limit(gaps):
    policy = RestartPolicy(max_restarts=5, window_s=60)
    now, restarted = 0.0, []
    for gap in gaps:
        now += gap
        decision = policy.on_crash(1, now)
        if isinstance(decision, GiveUp):
            break
        assert 0 < decision.delay_s <= policy.max_delay_s
        restarted.append(now)
    for t in restarted:
        assert sum(1 for u in restarted if t <= u < t + 60) <= 5


def test_exits_are_described_by_code_or_signal():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(0) == "exit code 0"


def health(child: int, ready: bool | None, alive: bool | None = True) -> ChildHealth:
    return ChildHealth(child, f"w-{child}", 7000 + child, 100 + child, 0, ready=ready, alive=alive)


def test_the_whole_is_ready_only_when_every_child_is():
    assert whole_readiness([health(1, True), health(2, True)], draining=False)
    assert not whole_readiness([health(1, True), health(2, False)], draining=False)
    assert not whole_readiness([health(1, True), health(2, None)], draining=False)  # restarting
    assert not whole_readiness([health(1, True), health(2, True)], draining=True)
    assert not whole_readiness([], draining=False)


def test_a_restarting_child_is_alive_a_dead_task_or_a_given_up_child_is_not():
    assert whole_liveness([health(1, True), health(2, None, alive=None)], gave_up=False)
    assert not whole_liveness([health(1, True), health(2, True, alive=False)], gave_up=False)
    assert not whole_liveness([health(1, True)], gave_up=True)


def test_child_ports_follow_the_supervisor_port_or_are_free_ones_with_port_zero():
    assert child_ports(6066, 3) == [6067, 6068, 6069]
    free = child_ports(0, 2)
    assert len(set(free)) == 2 and all(p > 0 for p in free)
    with pytest.raises(ConfigError, match="past port 65535"):
        child_ports(65534, 2)


def test_each_child_is_one_member_with_its_own_id_and_port_and_only_the_first_persists():
    s = Settings(worker_persist=True, policy_file="/p.yaml", worker_processes=2)
    envs = [child_environment(s, {"PATH": "/bin", "ROUTER_WORKER_PROCESSES": "2"}, child=i,
                              worker_id=f"pod-{i}", port=7000 + i) for i in (1, 2)]
    assert [e["ROUTER_WORKER_ID"] for e in envs] == ["pod-1", "pod-2"]
    assert [e["ROUTER_HTTP_PORT"] for e in envs] == ["7001", "7002"]
    assert [e["ROUTER_WORKER_PERSIST"] for e in envs] == ["true", "false"]
    assert all(e["ROUTER_WORKER_PROCESSES"] == "1" and e["PATH"] == "/bin" for e in envs)
    assert all(e["ROUTER_POLICY_FILE"] == "/p.yaml" for e in envs)
    for env in envs:  # what a child makes of it
        child = Settings(**{k.removeprefix("ROUTER_").lower(): v for k, v in env.items()
                            if k.startswith("ROUTER_")})
        assert child.worker_processes == 1


def test_without_persist_no_child_runs_the_projection():
    s = Settings(worker_persist=False)
    env = child_environment(s, {}, child=1, worker_id="w-1", port=1)
    assert env["ROUTER_WORKER_PERSIST"] == "false"


def test_the_child_command_is_the_worker_command_with_burst_mode_passed_on():
    assert child_command(None) == [sys.executable, "-m", "router_stream.cli", "worker"]
    assert child_command(2.5)[-2:] == ["--exit-when-idle", "2.5"]
