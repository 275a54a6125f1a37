"""``/livez``, ``/readyz`` and ``/metrics`` on a small aiohttp server (port 0 binds a free
port and reports it), for the worker and the projection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge

from router_stream.errors import CannotListen


class ServedMetrics(Protocol):
    """What the server needs of a process's metrics: the readiness gauge and the exposition."""

    ready: Gauge

    async def exposition_off_loop(self) -> bytes: ...


class HealthServer:
    def __init__(
        self,
        metrics: ServedMetrics,
        *,
        alive: Callable[[], bool],
        readiness: Callable[[], dict[str, bool]],
    ) -> None:
        self._metrics = metrics
        self._alive = alive
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        self._runner, self.port = await listen(app, host, port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _livez(self, request: web.Request) -> web.Response:
        ok = self._alive()
        return web.json_response({"alive": ok}, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = self._readiness()
        ready = all(checks.values())
        self._metrics.ready.set(1 if ready else 0)
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=await self._metrics.exposition_off_loop(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


async def listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port; returns its runner and the bound port (port 0: a free one).
    A port that cannot be bound is :class:`CannotListen`, one line naming how to choose another."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotListen(
            f"cannot listen on {host}:{port} for /livez /readyz /metrics: "
            f"{exc.strerror or exc} (choose another with --http-port or ROUTER_HTTP_PORT; "
            "0 picks a free one)") from exc
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    sockets = getattr(server, "sockets", None) or []
    return runner, sockets[0].getsockname()[1] if sockets else port
