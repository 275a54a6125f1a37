"""``router-stream worker --processes N``: N workers, each a consumer group member of its own,
under one supervisor process.

The supervisor routes nothing and holds no Kafka client: it starts each child as
``router-stream worker`` with its own settings (:func:`child_environment`), restarts a crashed
one with backoff (:class:`RestartPolicy`), forwards SIGTERM/SIGINT so that every child drains,
and answers ``/livez`` ``/readyz`` for the whole (:func:`whole_readiness`, :func:`whole_liveness`)
on the worker's port. Child ``i`` (1..N) is worker ``<ROUTER_WORKER_ID or host name>-<i>``
(:func:`child_worker_id`) with its own ``/metrics`` on port + i; with ``--persist`` only child 1
runs the Postgres projection.

Exit codes: 0 when every child ended with 0 (drained, or burst mode done); 1 when a child
refused its settings (exit 1: restarting it cannot help); 2 when a child crashed more than
:data:`MAX_RESTARTS` times within :data:`RESTART_WINDOW_S`, or did not drain in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from router_stream.config import Settings
from router_stream.errors import ConfigError
from router_stream.worker.http import listen

log = logging.getLogger("router_stream.worker.supervisor")

MAX_RESTARTS = 5
"""Crashes of one child within :data:`RESTART_WINDOW_S` that are restarted; one more ends the
supervisor (exit 2), so a child crashing in a tight loop shows up as a failed pod, not as a
member that joins and leaves the group forever."""
RESTART_WINDOW_S = 60.0
FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
DRAIN_TIMEOUT_S = 40.0
"""How long the supervisor waits for its children after SIGTERM (each drains in < 30 s) before
it kills the rest and exits 2."""
CHILD_PROBE_TIMEOUT_S = 2.0
"""How long /livez and /readyz wait for a child's answer: below the 3 s timeout of the probes in
deploy/k8s, so the supervisor answers before the kubelet gives up on it."""

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_RUNTIME_FAILURE = 2
STOPPED_CLEANLY = frozenset({EXIT_OK, -signal.SIGTERM, -signal.SIGINT})
"""Return codes of a child after a stop request that are a clean stop: drained (0), or ended by
the signal itself while it was still starting, before its drain handlers existed (nothing was
consumed yet)."""


# --- pure parts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


class RestartPolicy:
    """When a crashed child starts again: after 0.5, 1, 2, 4 … s (at most 30 s), doubling with
    each crash of that child within the window; past ``max_restarts`` crashes within the window
    it is not restarted. Times are passed in, so tests drive it without a clock."""

    def __init__(self, *, max_restarts: int = MAX_RESTARTS, window_s: float = RESTART_WINDOW_S,
                 first_delay_s: float = FIRST_RESTART_DELAY_S,
                 max_delay_s: float = MAX_RESTART_DELAY_S) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._crashes: dict[int, list[float]] = {}

    def on_crash(self, child: int, now: float) -> Restart | GiveUp:
        recent = [t for t in self._crashes.get(child, []) if now - t < self.window_s]
        recent.append(now)
        self._crashes[child] = recent
        if len(recent) > self.max_restarts:
            return GiveUp(f"crashed {len(recent)} times within {self.window_s:g} s "
                          f"(limit {self.max_restarts})")
        return Restart(min(self.max_delay_s, self.first_delay_s * 2 ** (len(recent) - 1)))


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``signal SIGKILL``, from a subprocess return code."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(frozen=True)
class ChildHealth:
    """One child as the supervisor sees it; ``ready``/``alive`` are None while its HTTP endpoint
    does not answer (starting, restarting)."""

    child: int
    worker_id: str
    port: int
    pid: int | None
    restarts: int
    ready: bool | None = None
    alive: bool | None = None
    checks: Mapping[str, bool] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"child": self.child, "worker_id": self.worker_id, "port": self.port,
                "pid": self.pid, "restarts": self.restarts, "ready": self.ready,
                "alive": self.alive, "checks": dict(self.checks)}


def whole_readiness(children: Sequence[ChildHealth], *, draining: bool) -> bool:
    """Ready when every child answers ready (a child restarting is not ready)."""
    return not draining and bool(children) and all(c.ready is True for c in children)


def whole_liveness(children: Sequence[ChildHealth], *, gave_up: bool) -> bool:
    """Alive unless a child was given up, or a running child says it is not alive or stopped
    answering; a child being (re)started is alive: restarting it is the supervisor's job, not
    the orchestrator's."""
    return not gave_up and not any(c.alive is False for c in children)


def child_worker_id(worker_id: str | None, child: int) -> str:
    """``<ROUTER_WORKER_ID>-<child>``, else ``<host name>-<child>``: never the supervisor's pid,
    so a restarted supervisor's child ``child`` has its predecessor's id — and, in exactly_once
    mode, its transactional.id, which aborts what the predecessor left open at once."""
    return f"{worker_id or socket.gethostname()}-{child}"


def child_ports(http_port: int, processes: int) -> list[int]:
    """Port + 1 … port + N; with port 0 the supervisor picks free ones (kept across restarts)."""
    if http_port == 0:
        return [_free_port() for _ in range(processes)]
    if http_port + processes > 65535:
        raise ConfigError(f"ROUTER_HTTP_PORT {http_port} + {processes} processes is past port "
                          "65535: the children listen on port+1 … port+N")
    return [http_port + i for i in range(1, processes + 1)]


def child_environment(settings: Settings, environ: Mapping[str, str], *, child: int,
                      worker_id: str, port: int) -> dict[str, str]:
    """The environment of child ``child``: the supervisor's, plus what makes it one member
    (its id and port, one process, the projection in child 1 only) and what the command line
    set on the supervisor (``--policy``, ``--persist``, ``--http-port``)."""
    env = dict(environ)
    env.update({
        "ROUTER_WORKER_PROCESSES": "1",
        "ROUTER_WORKER_ID": worker_id,
        "ROUTER_HTTP_HOST": settings.http_host,
        "ROUTER_HTTP_PORT": str(port),
        "ROUTER_WORKER_PERSIST": "true" if settings.worker_persist and child == 1 else "false",
    })
    if settings.policy_file is not None:
        env["ROUTER_POLICY_FILE"] = settings.policy_file
    return env


def child_command(exit_when_idle: float | None) -> list[str]:
    command = [sys.executable, "-m", "router_stream.cli", "worker"]
    if exit_when_idle is not None:
        command += ["--exit-when-idle", repr(exit_when_idle)]
    return command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the supervisor process ---------------------------------------------------------------------


class SupervisorMetrics:
    def __init__(self, processes: int) -> None:
        self.registry = CollectorRegistry()
        Gauge("router_worker_processes", "worker processes configured (--processes)",
              registry=self.registry).set(processes)
        self.running = Gauge("router_worker_children_running", "worker processes running now",
                             registry=self.registry)
        self.restarts = Counter("router_worker_child_restarts", "crashed worker processes "
                                "started again", ["child"], registry=self.registry)
        self.gave_up = Gauge("router_worker_child_gave_up", "1: the child crashed past the "
                             "restart limit and the supervisor is stopping", ["child"],
                             registry=self.registry)
        self.ready = Gauge("router_ready", "1 when every worker process is ready",
                           registry=self.registry)


@dataclass
class _Child:
    index: int
    worker_id: str
    port: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    returncode: int | None = None
    answered: bool = False  # its HTTP endpoint answered since it was (re)started


class Supervisor:
    def __init__(self, settings: Settings, processes: int, *, exit_when_idle: float | None = None,
                 policy: RestartPolicy | None = None,
                 environ: Mapping[str, str] | None = None,
                 command: Sequence[str] | None = None) -> None:
        """``command`` replaces ``router-stream worker`` as the child (tests)."""
        self.settings = settings
        self.metrics = SupervisorMetrics(processes)
        self._policy = policy or RestartPolicy()
        self._environ = dict(os.environ if environ is None else environ)
        self._command = list(command or child_command(exit_when_idle))
        self._children = [_Child(i, child_worker_id(settings.worker_id, i), port)
                          for i, port in enumerate(child_ports(settings.http_port, processes), 1)]
        self._stopping = asyncio.Event()
        self._exit_code = EXIT_OK
        self._gave_up = False
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def run(self) -> int:
        """Run the children until they all ended; returns the supervisor's exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._listen()
        keepers = [asyncio.create_task(self._keep_running(c), name=f"child-{c.index}")
                   for c in self._children]
        forward = asyncio.create_task(self._forward_stop(), name="forward-stop")
        try:
            await asyncio.gather(*keepers)
        finally:
            forward.cancel()
            for task in keepers:
                task.cancel()
            self._signal_all(signal.SIGTERM)  # only if the supervisor itself failed: they drain
            await self._close_http()
        log.info("supervisor stopped", extra={"exit_code": self._exit_code})
        return self._exit_code

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stop requested, draining every worker process")
            self._stopping.set()

    def _fail(self, exit_code: int) -> None:
        self._exit_code = max(self._exit_code, exit_code)
        self.request_stop()

    # --- children -------------------------------------------------------------------------------

    async def _keep_running(self, child: _Child) -> None:
        """Start the child, and again after each crash, until it ends cleanly or is given up."""
        while not self._stopping.is_set():
            returncode = await self._run_once(child)
            if self._stopping.is_set() or returncode == EXIT_OK:
                if returncode not in STOPPED_CLEANLY:
                    log.error("worker process did not drain cleanly",
                              extra=self._describe(child, returncode))
                    self._exit_code = max(self._exit_code, EXIT_RUNTIME_FAILURE)
                return
            if returncode == EXIT_USER_ERROR:
                log.error("worker process refused its settings; stopping",
                          extra=self._describe(child, returncode))
                self._fail(EXIT_USER_ERROR)
                return
            decision = self._policy.on_crash(child.index, time.monotonic())
            if isinstance(decision, GiveUp):
                self._gave_up = True
                self.metrics.gave_up.labels(str(child.index)).set(1)
                log.error(f"worker process not restarted: {decision.reason}; stopping",
                          extra=self._describe(child, returncode))
                self._fail(EXIT_RUNTIME_FAILURE)
                return
            child.restarts += 1
            self.metrics.restarts.labels(str(child.index)).inc()
            log.warning("worker process crashed, restarting",
                        extra=self._describe(child, returncode) | {"delay_s": decision.delay_s})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), decision.delay_s)

    async def _run_once(self, child: _Child) -> int:
        env = child_environment(self.settings, self._environ, child=child.index,
                                worker_id=child.worker_id, port=child.port)
        child.answered = False
        child.process = await asyncio.create_subprocess_exec(*self._command, env=env)
        self._count_running()
        if self._stopping.is_set():  # the stop request came while it was being started
            child.process.send_signal(signal.SIGTERM)
        log.info("worker process started", extra={"child": child.index, "pid": child.process.pid,
                                                  "worker_id": child.worker_id,
                                                  "port": child.port})
        try:
            child.returncode = await child.process.wait()
        finally:
            child.process = None
            self._count_running()
        return child.returncode

    def _describe(self, child: _Child, returncode: int) -> dict[str, object]:
        return {"child": child.index, "worker_id": child.worker_id,
                "exit": describe_exit(returncode), "restarts": child.restarts}

    def _count_running(self) -> None:
        self.metrics.running.set(sum(c.process is not None for c in self._children))

    async def _forward_stop(self) -> None:
        """On a stop request: SIGTERM every child (each drains); past the deadline, SIGKILL."""
        await self._stopping.wait()
        self._signal_all(signal.SIGTERM)
        await asyncio.sleep(DRAIN_TIMEOUT_S)
        if any(c.process is not None for c in self._children):
            log.error("worker processes did not drain in time; killing them",
                      extra={"drain_timeout_s": DRAIN_TIMEOUT_S})
            self._exit_code = max(self._exit_code, EXIT_RUNTIME_FAILURE)
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: signal.Signals) -> None:
        for child in self._children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)

    # --- /livez /readyz /metrics ----------------------------------------------------------------

    async def _listen(self) -> None:
        s = self.settings
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        self._runner, self.port = await listen(app, s.http_host, s.http_port)
        log.info("http listening", extra={"host": s.http_host, "port": self.port,
                                          "processes": len(self._children),
                                          "child_ports": [c.port for c in self._children]})

    async def _close_http(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def children_health(self, path: str) -> list[ChildHealth]:
        """Every child's answer to ``path`` (``/readyz`` or ``/livez``), all asked at once."""
        timeout = aiohttp.ClientTimeout(total=CHILD_PROBE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return list(await asyncio.gather(
                *(self._probe(session, child, path) for child in self._children)))

    async def _probe(self, session: aiohttp.ClientSession, child: _Child,
                     path: str) -> ChildHealth:
        process = child.process
        health = ChildHealth(child.index, child.worker_id, child.port,
                             process.pid if process is not None else None, child.restarts)
        if process is None:
            return health
        url = f"http://{_probe_host(self.settings.http_host)}:{child.port}{path}"
        try:
            async with session.get(url) as response:
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            # silent after it answered once: hung or gone (draining children close their port)
            hung = child.answered and not self._stopping.is_set()
            return replace(health, alive=False) if hung and path == "/livez" else health
        child.answered = True
        if path == "/livez":
            return replace(health, alive=response.status == 200)
        return replace(health, ready=bool(body.get("ready")), checks=body.get("checks") or {})

    async def _readyz(self, request: web.Request) -> web.Response:
        children = await self.children_health("/readyz")
        ready = whole_readiness(children, draining=self._stopping.is_set())
        self.metrics.ready.set(1 if ready else 0)
        return web.json_response({"ready": ready, "children": [c.as_json() for c in children]},
                                 status=200 if ready else 503)

    async def _livez(self, request: web.Request) -> web.Response:
        children = await self.children_health("/livez")
        alive = whole_liveness(children, gave_up=self._gave_up)
        return web.json_response({"alive": alive, "children": [c.as_json() for c in children]},
                                 status=200 if alive else 503)

    async def _metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def _probe_host(http_host: str) -> str:
    """Where the supervisor reaches a child that listens on ``http_host``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http_host, http_host)
    return f"[{host}]" if ":" in host else host


def run_supervised(settings: Settings, processes: int, *,
                   exit_when_idle: float | None = None) -> int:
    """``router-stream worker --processes N`` (N > 1): run the supervisor; its exit code."""
    return asyncio.run(Supervisor(settings, processes, exit_when_idle=exit_when_idle).run())
