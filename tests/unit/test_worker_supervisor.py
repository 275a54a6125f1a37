"""The supervisor of `worker --processes N` without processes: restart policy, readiness and
liveness of the whole, what each child is told."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_stream.config import Settings
from router_stream.errors import CannotListen, ConfigError
from router_stream.worker.supervisor import (
    ChildHealth,
    GiveUp,
    Restart,
    RestartPolicy,
    Supervisor,
    child_command,
    child_environment,
    child_ports,
    child_worker_id,
    describe_exit,
    whole_liveness,
    whole_readiness,
)
from router_stream.worker.transactional import transactional_id


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


def test_child_ids_are_the_worker_id_or_the_host_name_and_the_child_number():
    assert [child_worker_id("pod", i) for i in (1, 2)] == ["pod-1", "pod-2"]
    assert child_worker_id(None, 3) == f"{socket.gethostname()}-3"


def test_without_persist_no_child_runs_the_projection():
    s = Settings(worker_persist=False)
    env = child_environment(s, {}, child=1, worker_id="w-1", port=1)
    assert env["ROUTER_WORKER_PERSIST"] == "false"


def test_the_child_command_is_the_worker_command_with_burst_mode_passed_on():
    assert child_command(None) == [sys.executable, "-m", "router_stream.cli", "worker"]
    assert child_command(2.5)[-2:] == ["--exit-when-idle", "2.5"]


# --- the supervisor with small child programs (no broker) ------------------------------------

def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def sleeper(sigterm_exit: int | None) -> list[str]:
    """A child that marks its start in $MARKS/<worker id>, then sleeps; on SIGTERM it exits with
    ``sigterm_exit`` (None: no handler, as a worker still starting)."""
    handler = ("" if sigterm_exit is None else
               f"signal.signal(signal.SIGTERM, lambda *_: sys.exit({sigterm_exit}))\n")
    return child("import os, signal, sys, time\n" + handler +
                 "open(os.environ['MARKS'] + '/' + os.environ['ROUTER_WORKER_ID'], 'a')"
                 ".write('started\\n')\n"
                 "time.sleep(120)\n")


async def until_marks(marks, count: int) -> None:
    for _ in range(600):
        if sum(len(p.read_text().splitlines()) for p in marks.iterdir()) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} children started")


async def stopped_once_started(supervisor: Supervisor, marks, children: int) -> int:
    """Run the supervisor, request a stop once every child started; its exit code."""
    run = asyncio.create_task(supervisor.run())
    await until_marks(marks, children)
    supervisor.request_stop()
    return await asyncio.wait_for(run, 30)


async def test_sigterm_drains_every_child_and_the_supervisor_exits_0(tmp_path):
    supervisor = Supervisor(Settings(http_port=0, worker_id="pod"), 2,
                            environ={"MARKS": str(tmp_path)}, command=sleeper(0))
    assert await stopped_once_started(supervisor, tmp_path, 2) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pod-1", "pod-2"]
    assert supervisor.metrics.registry.get_sample_value("router_worker_children_running") == 0


async def test_a_restarted_supervisor_gives_its_children_their_predecessors_ids(tmp_path,
                                                                                monkeypatch):
    """Not the supervisor's pid: in exactly_once mode the new child k's transactional.id is the
    old child k's, so its init_transactions aborts what the old one left open."""
    for run, supervisor_pid in enumerate((1001, 2002), 1):
        with monkeypatch.context() as patch:
            patch.setattr(os, "getpid", lambda pid=supervisor_pid: pid)
            supervisor = Supervisor(Settings(http_port=0), 2, environ={"MARKS": str(tmp_path)},
                                    command=sleeper(0))
        assert await stopped_once_started(supervisor, tmp_path, 2 * run) == 0
    host = socket.gethostname()
    marks = {p.name: p.read_text().count("started") for p in tmp_path.iterdir()}
    assert marks == {f"{host}-1": 2, f"{host}-2": 2}
    assert [transactional_id(Settings(group_id="g", worker_id=w)) for w in sorted(marks)] == [
        f"g.{host}-1", f"g.{host}-2"]


def test_static_membership_names_the_member_as_the_transactional_id_does():
    from router_stream.worker.hotpath import consumer_config

    dynamic = Settings(group_id="g", worker_id="pod-1")
    static = Settings(group_id="g", worker_id="pod-1", static_membership=True)
    assert "group.instance.id" not in consumer_config(dynamic)
    assert consumer_config(static)["group.instance.id"] == transactional_id(static) == "g.pod-1"
    unnamed = Settings(group_id="g", static_membership=True)
    assert consumer_config(unnamed)["group.instance.id"] == f"g.{socket.gethostname()}"


async def test_a_child_crashing_in_a_loop_is_given_up_and_the_supervisor_exits_2(caplog):
    policy = RestartPolicy(max_restarts=2, window_s=60, first_delay_s=0.01)
    supervisor = Supervisor(Settings(http_port=0), 1, policy=policy,
                            command=child("import sys; sys.exit(3)"))
    assert await asyncio.wait_for(supervisor.run(), 60) == 2
    registry = supervisor.metrics.registry
    assert registry.get_sample_value("router_worker_child_restarts_total", {"child": "1"}) == 2
    assert registry.get_sample_value("router_worker_child_gave_up", {"child": "1"}) == 1
    crashed = [r for r in caplog.records if r.getMessage() == "worker process crashed, restarting"]
    assert [(r.exit, r.restarts) for r in crashed] == [("exit code 3", 1), ("exit code 3", 2)]
    assert any("crashed 3 times within 60 s (limit 2)" in r.getMessage() for r in caplog.records)


async def test_a_child_refusing_its_settings_is_not_restarted_and_stops_the_rest(tmp_path):
    refuses_if_second = child(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "sys.exit(1) if os.environ['ROUTER_WORKER_ID'].endswith('-2') else time.sleep(120)\n")
    supervisor = Supervisor(Settings(http_port=0), 2, command=refuses_if_second)
    assert await asyncio.wait_for(supervisor.run(), 30) == 1
    assert supervisor.metrics.registry.get_sample_value(
        "router_worker_child_restarts_total", {"child": "2"}) in (None, 0)


async def test_burst_children_that_finish_are_not_restarted():
    supervisor = Supervisor(Settings(http_port=0), 2, command=child("pass"))
    assert await asyncio.wait_for(supervisor.run(), 30) == 0


async def test_readyz_is_503_while_children_do_not_answer_and_lists_them(tmp_path):
    supervisor = Supervisor(Settings(http_port=0, worker_id="pod"), 2,
                            environ={"MARKS": str(tmp_path)}, command=sleeper(0))
    run = asyncio.create_task(supervisor.run())
    try:
        await until_marks(tmp_path, 2)
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{supervisor.port}"
            async with session.get(f"{base}/readyz") as response:
                body = await response.json()
                assert response.status == 503 and body["ready"] is False
            async with session.get(f"{base}/livez") as response:
                assert response.status == 200  # children starting are alive
            async with session.get(f"{base}/metrics") as response:
                assert "router_worker_children_running 2.0" in await response.text()
        assert [c["worker_id"] for c in body["children"]] == ["pod-1", "pod-2"]
        assert all(c["pid"] and c["ready"] is None for c in body["children"])
    finally:
        supervisor.request_stop()
        await asyncio.wait_for(run, 30)


async def test_a_port_in_use_is_one_line_not_a_started_child():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = Supervisor(Settings(http_port=port), 2, command=child("raise SystemExit(9)"))
        with pytest.raises(CannotListen, match=f"cannot listen on 127.0.0.1:{port}"):
            await supervisor.run()


async def test_a_child_ended_by_sigterm_before_its_handlers_exist_counts_as_stopped(tmp_path):
    supervisor = Supervisor(Settings(http_port=0), 1, environ={"MARKS": str(tmp_path)},
                            command=sleeper(None))
    assert await stopped_once_started(supervisor, tmp_path, 1) == 0


async def test_a_child_that_fails_its_drain_makes_the_supervisor_exit_2(tmp_path):
    supervisor = Supervisor(Settings(http_port=0), 2, environ={"MARKS": str(tmp_path)},
                            command=sleeper(2))
    assert await stopped_once_started(supervisor, tmp_path, 2) == 2


async def test_a_child_that_answered_and_then_went_silent_is_not_alive():
    answers_once = child(
        "import http.server, os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "class Alive(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200)\n"
        "        self.send_header('Content-Type', 'application/json')\n"
        "        self.end_headers()\n"
        "        self.wfile.write(b'{\"alive\": true}')\n"
        "server = http.server.HTTPServer(('127.0.0.1', int(os.environ['ROUTER_HTTP_PORT'])), Alive)\n"
        "server.handle_request()\n"
        "server.server_close()\n"
        "time.sleep(120)\n")
    supervisor = Supervisor(Settings(http_port=0), 1, command=answers_once)
    run = asyncio.create_task(supervisor.run())
    try:
        async with aiohttp.ClientSession() as session:
            async def livez() -> tuple[int, dict]:
                async with session.get(f"http://127.0.0.1:{supervisor.port}/livez") as response:
                    return response.status, await response.json()

            for _ in range(300):  # starting: alive, not yet answering
                if supervisor.port is not None:
                    status, body = await livez()
                    assert status == 200, body
                    if body["children"][0]["alive"]:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the child never answered")
            status, body = await livez()  # its one answer was given: now silent
            assert status == 503 and body["children"][0]["alive"] is False
    finally:
        supervisor.request_stop()
        await asyncio.wait_for(run, 30)
