"""What the figures came from: CPU, cores, RAM, load, Kafka and library versions."""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import re
from importlib import metadata
from typing import Any

import psutil


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def kafka_version(bootstrap: str) -> str:
    """The broker's version from the jar names of the process listening on the bootstrap port
    (works for the local stack and any broker on this host); "unknown" otherwise."""
    port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    with contextlib.suppress(Exception):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                places = [os.path.join(proc.cwd(), "libs")]
                places += [p.rstrip("*").rstrip("/") for p in " ".join(proc.cmdline()).split()
                           if "libs" in p]
                for place in places:
                    for jar in glob.glob(os.path.join(place, "kafka_2.*-*.jar")):
                        m = re.search(r"kafka_[\d.]+-([\d.]+)\.jar$", jar)
                        if m:
                            return m.group(1)
    return "unknown"


BROKER_SETTINGS = ("log.index.size.max.bytes",)
"""Broker settings that change the figures on this kind of machine (docs/performance.md)."""


def broker_facts(bootstrap: str) -> dict[str, Any]:
    """What the broker says about itself, asked once with one client (each part empty when it
    cannot be asked): ``broker_settings``, :data:`BROKER_SETTINGS` as it reports them; and
    ``broker_at_start``, how many topics and partitions it holds before the run creates its
    own — idle partitions left by other runs cost the broker CPU under load
    (docs/performance.md, 2026-12-07 10:10)."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    from bench.drivers import quiet

    facts: dict[str, Any] = {"broker_settings": {}, "broker_at_start": {}}
    with contextlib.suppress(Exception):
        admin = AdminClient({"bootstrap.servers": bootstrap, **quiet()})
        metadata = admin.list_topics(timeout=10)
        topics = metadata.topics
        facts["broker_at_start"] = {
            "topics": len(topics), "partitions": sum(len(t.partitions) for t in topics.values()),
            "bench_topics": sum(name.startswith("bench-") for name in topics)}
        resource = ConfigResource(ConfigResource.Type.BROKER, str(next(iter(metadata.brokers))))
        entries = admin.describe_configs([resource])[resource].result(timeout=10)
        facts["broker_settings"] = {k: entries[k].value for k in BROKER_SETTINGS if k in entries}
    return facts


def local_broker_pid(bootstrap: str) -> int | None:
    """The process listening on the bootstrap's first address when that is this machine's
    loopback (the local stack's broker), else None: a remote broker's CPU is not ours to read."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    if host.strip("[]") not in ("127.0.0.1", "localhost", "::1") or not port.isdigit():
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for c in connections:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == int(port) and c.pid:
            return int(c.pid)
    return None


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot, every core summed: user, nice,
    system, irq and softirq (not idle, iowait or the time the hypervisor stole)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0))


def read_ahead_kb() -> dict[str, int]:
    """Each disk's read-ahead: on a first access, the kernel reads a memory-mapped file (Kafka's
    indexes) this far around the fault."""
    out = {}
    for path in sorted(glob.glob("/sys/block/*/queue/read_ahead_kb")):
        device = path.split("/")[3]
        if device.startswith(("loop", "ram", "zram")):
            continue
        with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as f:
            out[device] = int(f.read())
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def describe(bootstrap: str) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(vm.total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kafka": kafka_version(bootstrap),
        **broker_facts(bootstrap),
        "read_ahead_kb": read_ahead_kb(),
        "aiokafka": _version("aiokafka"),
        "confluent_kafka": _version("confluent-kafka"),
        "faust_streaming": _version("faust-streaming"),
        "router_stream": _version("router-stream"),
    }
